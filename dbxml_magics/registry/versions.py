"""Talking to the registry: probe a name, create a version (undo on failure), say what was made."""

from ..errors import RegisterError
from ..masking import first_line
from ..session import ModelRecord, Session
from .request import RegisterRequest, Source


def registry_client(target):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=target.uri, registry_uri=target.registry_uri or target.uri)


def probe_registry(client, name: str, display: str) -> bool:
    """Whether `name` is registered already; one clear line when the registry cannot be reached."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        problem = first_line(exc)
    except Exception as exc:  # noqa: BLE001 - connection errors of any client library
        problem = first_line(exc)
    raise RegisterError(
        f"Cannot reach the model registry of {display}: {problem}. Nothing was registered; "
        "check that the store is running, or %aml_link to another one."
    )


def store_error(what: str, exc: Exception) -> RegisterError:
    return RegisterError(f"{what}: {first_line(exc)}. Nothing was registered.")


def create_version(client, request: RegisterRequest, source: Source, name_exists: bool, display: str):
    """Registered model (when new), version, alias: all of them, or none of them."""
    created_model = False
    version = None
    try:
        if not name_exists:
            created_model = _create_registered_model(client, request.name)
        version = client.create_model_version(
            request.name,
            source.source,
            run_id=source.run_id,
            tags=request.tags or None,
            description=request.description,
            # Links the version to an MLflow 3 logged model; MLflow 2.x has neither the models nor the argument.
            **({"model_id": source.model_id} if source.model_id else {}),
        )
        if request.alias:
            client.set_registered_model_alias(request.name, request.alias, version.version)
    except Exception as exc:  # noqa: BLE001 - undo, then one line
        _undo(client, request.name, version, created_model)
        raise RegisterError(
            f"{display} refused to register {request.name!r}: {first_line(exc).rstrip('.')}. Nothing was registered."
        ) from None
    return version


def _create_registered_model(client, name: str) -> bool:
    """Create `name`; False when another kernel created it since the probe (then it is simply used)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_ALREADY_EXISTS":
            return False
        raise
    return True


def _undo(client, name: str, version, created_model: bool) -> None:
    try:
        if created_model:
            client.delete_registered_model(name)
        elif version is not None:
            client.delete_model_version(name, version.version)
    except Exception:  # noqa: BLE001 - the original failure is the one to report
        pass


# ---------------------------------------------------------------------- output
def registry_summary(session: Session, record: ModelRecord) -> str:
    run = session.find_run(record.source_run_id) if record.source_run_id else None
    source = f"run {record.source_run_id}" + (f" ({run.name})" if run else "") if record.source_run_id else "no run"
    lines = [f"Registered {record.name} version {record.version} from {source} on {session.link.primary.display}"]
    if record.alias:
        lines[0] += f", alias @{record.alias}"
    if session.link.mirror is not None and record.mirror_version is not None:
        lines.append(f"Mirror {session.link.mirror.display}: {record.name} version {record.mirror_version}")
    return "\n".join(lines)

"""Where a version comes from: the run a model is logged to, a run's artifact, or a model URI."""

from pathlib import Path

from ..errors import RegisterError
from ..experiments import use_experiment
from ..masking import first_line
from ..session import RunRecord, Session
from ..stores import list_artifacts
from .flavors import SavedModel
from .request import DEFAULT_ARTIFACT_PATH, RegisterRequest, Source
from .versions import store_error


def _current_run(session: Session, display: str) -> RunRecord | None:
    """The last run tracked in this session on the current primary store."""
    return next((r for r in reversed(session.runs) if r.target == display), None)


def _run_or_error(session: Session, client, run_id: str):
    from mlflow.exceptions import MlflowException

    if session.journal.owns(run_id) and not session.journal.flush(run_id, primary_only=True):
        raise RegisterError(
            f"Run {run_id} has writes still waiting for {session.link.primary.display}; "
            "run %aml_sync --flush when the store is reachable, then register again."
        )
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise RegisterError(
                f"Run {run_id!r} is not in {session.link.primary.display}. Pass a run id from this store, or --run last."
            ) from None
        raise store_error(f"Cannot read run {run_id}", exc) from None
    except Exception as exc:  # noqa: BLE001
        raise store_error(f"Cannot read run {run_id}", exc) from None


def _run_artifact_names(client, run_id: str) -> set[str]:
    return {info.path for info in list_artifacts(client, run_id)}


def _run_logged_models(client, run) -> dict[str, str]:
    """name -> model id of the MLflow 3 logged models this run produced (newest wins)."""
    outputs = getattr(run, "outputs", None)
    found: dict[str, str] = {}
    for output in getattr(outputs, "model_outputs", None) or []:
        try:
            model = client.get_logged_model(output.model_id)
        except Exception:  # noqa: BLE001 - a store without logged models (older servers, AML)
            continue
        found[model.name] = model.model_id
    return found


def log_to_run(session: Session, client, request: RegisterRequest, saved: SavedModel) -> Source:
    """Upload the saved model to the session's last run on this store (or a new run)."""
    from mlflow.models import Model

    link = session.link
    record = _current_run(session, link.primary.display)
    created = None
    if record is None:
        record = created = _new_run(session, client, request.name)
    run = _run_or_error(session, client, record.run_id)
    try:
        taken = _run_artifact_names(client, run.info.run_id) | set(_run_logged_models(client, run))
    except Exception as exc:  # noqa: BLE001
        raise store_error(f"Cannot list the artifacts of run {run.info.run_id}", exc) from None
    path = _free_artifact_path(request.artifact_path, taken, run.info.run_id)
    model = Model.load(str(saved.path))
    model.run_id = run.info.run_id
    model.artifact_path = path
    model.save(str(saved.path / "MLmodel"))
    status = "FAILED"
    try:
        client.log_artifacts(run.info.run_id, str(saved.path), path)
        status = "FINISHED"
    except Exception as exc:  # noqa: BLE001
        raise store_error(f"Cannot upload the model to run {run.info.run_id}", exc) from None
    finally:
        if created is not None:
            _end_run(session, client, created, status)
    source = run_artifact_source(client, run.info.run_id, path)
    return Source(source=source, run_id=run.info.run_id, artifact_path=path, local_dir=saved.path)


def _free_artifact_path(requested: str | None, taken: set[str], run_id: str) -> str:
    """A version's files must never change, so a second model of a run gets its own folder."""
    if requested is not None:
        path = requested.strip("/")
        if path in taken:
            raise RegisterError(
                f"Run {run_id} already has {path!r}; choose another --artifact-path, or register it with --run {run_id} "
                f"--artifact-path {path}."
            )
        return path
    path, n = DEFAULT_ARTIFACT_PATH, 1
    while path in taken:
        n += 1
        path = f"{DEFAULT_ARTIFACT_PATH}-{n}"
    return path


def _new_run(session: Session, client, name: str) -> RunRecord:
    """A run holding the model when nothing was tracked on this store in the session."""
    session.activate()
    experiment_id, experiment_name = use_experiment(session, error=RegisterError)
    try:
        run = client.create_run(experiment_id, run_name=f"register-{name}", tags={"dbxml.created_by": "%aml_register"})
    except Exception as exc:  # noqa: BLE001
        raise store_error(f"Cannot create a run for the model on {session.link.primary.display}", exc) from None
    return session.add_run(
        RunRecord(
            run_id=run.info.run_id,
            name=run.info.run_name,
            experiment_id=experiment_id,
            experiment=experiment_name,
            target=session.link.primary.display,
        )
    )


def _end_run(session: Session, client, record: RunRecord, status: str) -> None:
    import time

    client.set_terminated(record.run_id, status)
    session.journal.flush(record.run_id, primary_only=True)
    session.update_run(record, status=status, end_time=time.time())


def run_artifact_source(client, run_id: str, path: str) -> str:
    import inspect

    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
    from mlflow.tracking.artifact_utils import get_artifact_uri

    if "tracking_uri" in inspect.signature(RunsArtifactRepository.get_underlying_uri).parameters:
        return RunsArtifactRepository.get_underlying_uri(f"runs:/{run_id}/{path}", tracking_uri=client.tracking_uri)
    return get_artifact_uri(run_id, path, client.tracking_uri)  # MLflow 2.x: the same, on the client's store


def source_from_run(session: Session, client, run_ref: str, path: str) -> Source:
    display = session.link.primary.display
    if run_ref == "last":
        record = session.last_run
        if record is None:
            raise RegisterError("No run in this session yet: run a %%track cell first, or pass --run RUN_ID.")
        if record.target != display:
            raise RegisterError(
                f"The last run ({record.run_id}) was tracked on {record.target}, not on the current store {display}. "
                "Pass --uri runs:/<id>/<path> on the right link, or --run RUN_ID."
            )
        run_id = record.run_id
    else:
        run_id = run_ref
    run = _run_or_error(session, client, run_id)
    path = path.strip("/")
    try:
        top = {info.path: info for info in list_artifacts(client, run_id)}
        in_folder = {info.path for info in list_artifacts(client, run_id, path)} if path in top and top[path].is_dir else set()
        logged = _run_logged_models(client, run)
    except Exception as exc:  # noqa: BLE001
        raise store_error(f"Cannot list the models of run {run_id}", exc) from None
    if f"{path}/MLmodel" in in_folder:
        return Source(source=run_artifact_source(client, run_id, path), run_id=run_id, artifact_path=path)
    if path in logged:
        return Source(source=f"models:/{logged[path]}", run_id=run_id, artifact_path=path, model_id=logged[path])
    models = sorted(set(logged) | {p for p, info in top.items() if info.is_dir and _has_mlmodel(client, run_id, p)})
    hint = f"its models: {', '.join(models)}; pass --artifact-path {models[0]}" if models else "it has no logged model"
    raise RegisterError(f"Run {run_id} has no MLflow model at {path!r} ({hint}).")


def _has_mlmodel(client, run_id: str, path: str) -> bool:
    return f"{path}/MLmodel" in {info.path for info in list_artifacts(client, run_id, path)}


def source_from_uri(session: Session, client, uri: str) -> Source:
    from urllib.parse import urlsplit

    from mlflow.exceptions import MlflowException

    scheme = urlsplit(uri).scheme
    if scheme == "runs":
        from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

        try:
            run_id, path = RunsArtifactRepository.parse_runs_uri(uri)
        except MlflowException:
            raise RegisterError(f"{uri!r} is not a runs:/ URI. Example: --uri runs:/<run_id>/model") from None
        if not path:
            raise RegisterError(f"{uri!r} names no model folder. Example: --uri runs:/{run_id}/model")
        return source_from_run(session, client, run_id, path)
    if scheme == "models":
        return _source_from_registry(client, uri)
    if scheme in ("", "file"):
        local = Path(urlsplit(uri).path if scheme == "file" else uri).expanduser().resolve()
        if not (local / "MLmodel").is_file():
            raise RegisterError(f"There is no MLflow model in {local} (no MLmodel file).")
        return Source(source=local.as_uri(), run_id=None, local_dir=local)
    try:
        from mlflow.artifacts import list_artifacts as list_uri_artifacts

        names = {Path(info.path).name for info in list_uri_artifacts(artifact_uri=uri, tracking_uri=client.tracking_uri)}
    except Exception as exc:  # noqa: BLE001
        raise store_error(f"Cannot read {uri}", exc) from None
    if "MLmodel" not in names:
        raise RegisterError(f"There is no MLflow model at {uri} (no MLmodel file).")
    return Source(source=uri, run_id=None)


def _source_from_registry(client, uri: str) -> Source:
    """A models:/ URI: a registered version (by number, alias, or latest) or a logged model id."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    try:
        resolved = get_model_name_and_version(client, uri)
        if len(resolved) == 1:
            model = client.get_logged_model(resolved[0])
            return Source(source=f"models:/{model.model_id}", run_id=model.source_run_id, model_id=model.model_id,
                           artifact_path=model.name)
        version = client.get_model_version(*resolved)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            raise RegisterError(f"No model behind {uri}: {first_line(exc)}") from None
        raise store_error(f"Cannot read {uri}", exc) from None
    return Source(source=version.source, run_id=version.run_id, model_id=getattr(version, "model_id", None))

"""%aml_register: flavor detection, model logging, registration, version semantics.

Order of work, so that a mistake never leaves half a model behind:
1. check everything that needs no store (arguments, variables, flavor, the model saves);
2. ask the registry once, quickly, whether it is reachable and whether the name exists;
3. find (or log to) the source run and check the model is where the user says;
4. create the registered model and version together, deleting what was created if a later
   step fails.
In `both` mode the mirror registration is a journal row: it is shipped after the mirror run
exists, and waits in the journal while the mirror is down.

Models given with `--model` are written to the run's artifacts (`<run>/model`), the layout
every MLflow store understands (AML's MLflow endpoint included), and the folder that the
mirror receives.
"""

import re
import shutil
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RegisterError
from .experiments import use_experiment
from .journal import register_kind
from .masking import first_line
from .session import ModelRecord, RunRecord, Session
from .stores import quick_requests
from .userns import parse_tags, require_variable

__all__ = [
    "RegisterRequest",
    "register_from_args",
    "register_model",
    "detect_flavor",
    "FLAVORS",
    "MIRROR_KIND",
    "SOURCE_VERSION_TAG",
]

FLAVORS = ("sklearn", "spark", "pyfunc")
MIRROR_KIND = "register_model"
# Marks a mirror version with the primary version it copies, so a replayed row finds it.
SOURCE_VERSION_TAG = "dbxml.source_version"
DEFAULT_ARTIFACT_PATH = "model"
# Rows of an example are enough to infer a signature; more only bloats the artifact.
_EXAMPLE_ROWS = 5
# Azure ML model names: letters, digits, '-', '_', '.', starting with a letter or digit.
_AML_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_ALIAS = re.compile(r"^[\w-]{1,255}$")
_RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)


@dataclass
class RegisterRequest:
    """A parsed %aml_register line."""

    name: str
    model: str | None = None
    run: str | None = None
    artifact_path: str | None = None
    uri: str | None = None
    flavor: str | None = None
    alias: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    input_example: str | None = None


@dataclass
class _Source:
    """What a version is created from: where the model is and which run made it."""

    source: str
    run_id: str | None
    artifact_path: str | None = None
    model_id: str | None = None
    local_dir: Path | None = None  # a local copy, when one exists already (--model)


def register_from_args(session: Session, namespace: dict, args) -> None:
    """The %aml_register magic: parse, register, print what was registered where."""
    tags = parse_tags(args.tags or [], RegisterError)
    # The magics already removed the quotes IPython keeps (parse_tags those inside a pair).
    request = RegisterRequest(
        name=args.name,
        model=args.model,
        run=args.run,
        artifact_path=args.artifact_path,
        uri=args.uri,
        flavor=args.flavor,
        alias=args.alias,
        tags=tags,
        description=args.description,
        input_example=args.input_example,
    )
    record, notes = register_model(session, namespace, request)
    print(_summary(session, record))
    for note in notes:
        print(f"dbxml: {note}", file=sys.stderr)


def register_model(session: Session, namespace: dict, request: RegisterRequest) -> tuple[ModelRecord, list[str]]:
    """Register `request` on the current link; returns the session's record and notes for the user."""
    _check_request(session, request)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dbxml-model-") as workdir:
        saved = None
        if request.model is not None:
            saved = _save_in_memory_model(namespace, request, Path(workdir) / "model", notes)
        link = session.activate()
        client = _client(link.primary)
        with quick_requests(10):
            name_exists = _probe_registry(client, request.name, link.primary.display)
        if saved is not None:
            source = _log_to_run(session, client, request, saved)
        elif request.run is not None:
            source = _source_from_run(session, client, request.run, request.artifact_path or DEFAULT_ARTIFACT_PATH)
        else:
            source = _source_from_uri(session, client, request.uri)
        version = _create_version(client, request, source, name_exists, link.primary.display)
        record = session.add_model(
            ModelRecord(
                name=request.name,
                version=str(version.version),
                source_run_id=source.run_id,
                model_uri=f"models:/{request.name}/{version.version}",
                alias=request.alias,
            )
        )
        if link.mirror is not None:
            notes.extend(_queue_mirror(session, client, request, source, record))
    return record, notes


# ---------------------------------------------------------------------- checks without a store
def _check_request(session: Session, request: RegisterRequest) -> None:
    sources = [opt for opt, given in (("--model", request.model), ("--run", request.run), ("--uri", request.uri)) if given]
    if not sources:
        raise RegisterError(
            "Say what to register: --model VAR (an in-memory model), --run RUN_ID|last, or --uri MODEL_URI."
        )
    if len(sources) > 1:
        raise RegisterError(f"Choose one of {', '.join(sources)}: they name different models.")
    if request.uri is not None and request.artifact_path is not None:
        raise RegisterError("--artifact-path goes with --model or --run; a --uri already names the model's path.")
    if request.flavor is not None and request.model is None:
        raise RegisterError("--flavor goes with --model; a logged model already has its flavor.")
    if request.input_example is not None and request.model is None:
        raise RegisterError("--input-example goes with --model; a logged model already has its signature.")
    if request.artifact_path is not None:
        path = request.artifact_path.strip("/")
        if not path or ".." in path.split("/"):
            raise RegisterError(f"--artifact-path {request.artifact_path!r} is not a folder inside the run. Example: --artifact-path model")
    _check_name(session, request.name)
    if request.alias is not None:
        _check_alias(request.alias)


def _check_name(session: Session, name: str) -> None:
    if not name.strip():
        raise RegisterError("The model name is empty. Example: %aml_register iris-clf --model clf")
    if "/" in name or ":" in name or name != name.strip():
        raise RegisterError(
            f"Invalid model name {name!r}: names cannot contain '/' or ':' or start or end with spaces. Example: iris-clf"
        )
    aml = [t.display for t in session.link.targets if t.kind == "aml"]
    if aml and not _AML_NAME.match(name):
        raise RegisterError(
            f"Invalid model name {name!r} for Azure ML ({aml[0]}): use letters, digits, '-', '_' and '.', "
            "starting with a letter or digit. Example: iris-clf"
        )


def _check_alias(alias: str) -> None:
    if not _ALIAS.match(alias):
        raise RegisterError(f"Invalid alias {alias!r}: use letters, digits, '_' and '-'. Example: --alias champion")
    if _RESERVED_ALIAS.match(alias):
        raise RegisterError(f"The alias {alias!r} is reserved by MLflow ('latest', 'v<number>'). Example: --alias champion")


def _class_names(obj) -> set[str]:
    """Qualified names of the object's classes, so flavors are told apart without importing them."""
    return {f"{cls.__module__}.{cls.__name__}" for cls in type(obj).__mro__}


def detect_flavor(obj) -> str | None:
    """'sklearn', 'spark' or 'pyfunc' for a model object, None for anything else."""
    classes = _class_names(obj)
    if "sklearn.base.BaseEstimator" in classes:
        return "sklearn"
    if "pyspark.ml.base.Transformer" in classes:
        return "spark"
    if "mlflow.pyfunc.model.PythonModel" in classes or callable(getattr(obj, "predict", None)):
        return "pyfunc"
    return None


def _describe(obj) -> str:
    module = type(obj).__module__.split(".")[0]
    return type(obj).__name__ if module == "builtins" else f"{module} {type(obj).__name__}"


def _check_model(var: str, obj, forced: str | None) -> str:
    classes = _class_names(obj)
    if "pyspark.ml.base.Estimator" in classes and "pyspark.ml.base.Transformer" not in classes:
        raise RegisterError(
            f"{var} is a Spark ML {type(obj).__name__} that is not fitted; register the fitted model, e.g. "
            f"model = {var}.fit(df), then %aml_register NAME --model model."
        )
    detected = detect_flavor(obj)
    if detected is None:
        raise RegisterError(
            f"{var} ({_describe(obj)}) is not a model: pass a fitted scikit-learn estimator or pipeline, a Spark ML "
            "model (PipelineModel, Transformer), or an object with a predict method."
        )
    flavor = forced or detected
    if flavor == "sklearn" and detected != "sklearn":
        raise RegisterError(f"--flavor sklearn: {var} ({_describe(obj)}) is not a scikit-learn estimator.")
    if flavor == "spark" and detected != "spark":
        raise RegisterError(f"--flavor spark: {var} ({_describe(obj)}) is not a Spark ML model.")
    if flavor == "pyfunc" and not (
        "mlflow.pyfunc.model.PythonModel" in classes or callable(getattr(obj, "predict", None))
    ):
        raise RegisterError(f"--flavor pyfunc: {var} ({_describe(obj)}) has no predict method.")
    if flavor == "sklearn":
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted

        try:
            check_is_fitted(obj)
        except NotFittedError:
            raise RegisterError(
                f"{var} is a scikit-learn {type(obj).__name__} that is not fitted; call {var}.fit(X, y) first."
            ) from None
        except TypeError:  # not an estimator sklearn can judge; saving will tell
            pass
    return flavor


# ---------------------------------------------------------------------- saving an in-memory model
@dataclass
class _SavedModel:
    path: Path
    flavor: str


def _save_in_memory_model(namespace: dict, request: RegisterRequest, path: Path, notes: list[str]) -> _SavedModel:
    """Save the model locally first: a model that cannot be saved fails before any store is touched."""
    obj = require_variable(namespace, request.model, "--model", RegisterError)
    flavor = _check_model(request.model, obj, request.flavor)
    example = None
    if request.input_example is not None:
        example = _example_rows(require_variable(namespace, request.input_example, "--input-example", RegisterError), flavor)
    from mlflow.models import Model

    mlflow_model = Model(artifact_path=request.artifact_path or DEFAULT_ARTIFACT_PATH)
    try:
        if flavor == "sklearn":
            import mlflow.sklearn

            signature = None if example is not None else _signature_from_training(obj)
            if example is None and signature is None:
                notes.append(f"{request.name}: no signature recorded; pass --input-example VAR to record one.")
            mlflow.sklearn.save_model(obj, str(path), mlflow_model=mlflow_model, signature=signature, input_example=example)
        elif flavor == "spark":
            import mlflow.spark

            if example is None:
                notes.append(f"{request.name}: no signature recorded; pass --input-example VAR (pandas rows) to record one.")
            mlflow.spark.save_model(obj, str(path), mlflow_model=mlflow_model, input_example=example)
        else:
            import mlflow.pyfunc

            mlflow.pyfunc.save_model(
                str(path), python_model=_as_python_model(obj), mlflow_model=mlflow_model, input_example=example
            )
    except RegisterError:
        raise
    except Exception as exc:  # noqa: BLE001 - any serialisation failure is the user's to fix
        raise RegisterError(
            f"Cannot save {request.model} as a {flavor} model: {first_line(exc)}. Nothing was registered."
        ) from None
    return _SavedModel(path=path, flavor=flavor)


def _example_rows(value, flavor: str):
    """The first rows of an input example; a Spark DataFrame becomes pandas (what MLflow stores)."""
    is_spark_frame = any(n.startswith("pyspark.sql.") and n.endswith(".DataFrame") for n in _class_names(value))
    if is_spark_frame:
        return value.limit(_EXAMPLE_ROWS).toPandas()
    if flavor == "spark" and not hasattr(value, "iloc"):
        raise RegisterError("--input-example for a Spark model must be a pandas or Spark DataFrame.")
    if hasattr(value, "iloc"):
        return value.iloc[:_EXAMPLE_ROWS]
    if len(getattr(value, "shape", ())) >= 1 and value.shape[0] > _EXAMPLE_ROWS:
        return value[:_EXAMPLE_ROWS]
    return value


def _signature_from_training(estimator):
    """A signature from what a fitted estimator remembers of its training data.

    scikit-learn keeps feature names (`feature_names_in_`) or only their count
    (`n_features_in_`), not their types. The features are declared double, and the
    signature is kept only if the estimator predicts on such a row: a model trained on
    text columns is left without a signature rather than given a wrong one.
    """
    import numpy as np
    from mlflow.models import infer_signature

    names = getattr(estimator, "feature_names_in_", None)
    count = getattr(estimator, "n_features_in_", None)
    if names is not None:
        import pandas as pd

        row = pd.DataFrame([[0.0] * len(names)], columns=[str(n) for n in names])
    elif isinstance(count, int) and count > 0:
        row = np.zeros((1, count))
    else:
        return None
    try:
        prediction = estimator.predict(row)
    except Exception:  # noqa: BLE001 - see the docstring: no signature beats a wrong one
        return None
    return infer_signature(row, prediction)


def _as_python_model(obj):
    """A PythonModel as is; any object with predict wrapped in one.

    The wrapper class is made here, not at module level, so that cloudpickle stores it by
    value: a scoring cluster then loads the model without dbxml_magics installed.
    """
    from mlflow.pyfunc import PythonModel

    if isinstance(obj, PythonModel):
        return obj

    class PredictingObject(PythonModel):
        def __init__(self, inner):
            self.inner = inner

        def predict(self, context, model_input, params=None):
            return self.inner.predict(model_input)

    return PredictingObject(obj)


# ---------------------------------------------------------------------- the stores
def _client(target):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=target.uri, registry_uri=target.registry_uri or target.uri)


def _probe_registry(client, name: str, display: str) -> bool:
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


def _store_error(what: str, exc: Exception) -> RegisterError:
    return RegisterError(f"{what}: {first_line(exc)}. Nothing was registered.")


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
        raise _store_error(f"Cannot read run {run_id}", exc) from None
    except Exception as exc:  # noqa: BLE001
        raise _store_error(f"Cannot read run {run_id}", exc) from None


def _run_artifact_names(client, run_id: str) -> set[str]:
    return {info.path for info in client.list_artifacts(run_id)}


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


def _log_to_run(session: Session, client, request: RegisterRequest, saved: _SavedModel) -> _Source:
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
        raise _store_error(f"Cannot list the artifacts of run {run.info.run_id}", exc) from None
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
        raise _store_error(f"Cannot upload the model to run {run.info.run_id}", exc) from None
    finally:
        if created is not None:
            _end_run(session, client, created, status)
    source = _run_artifact_source(client, run.info.run_id, path)
    return _Source(source=source, run_id=run.info.run_id, artifact_path=path, local_dir=saved.path)


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
        raise _store_error(f"Cannot create a run for the model on {session.link.primary.display}", exc) from None
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


def _run_artifact_source(client, run_id: str, path: str) -> str:
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    return RunsArtifactRepository.get_underlying_uri(f"runs:/{run_id}/{path}", tracking_uri=client.tracking_uri)


def _source_from_run(session: Session, client, run_ref: str, path: str) -> _Source:
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
        top = {info.path: info for info in client.list_artifacts(run_id)}
        in_folder = {info.path for info in client.list_artifacts(run_id, path)} if path in top and top[path].is_dir else set()
        logged = _run_logged_models(client, run)
    except Exception as exc:  # noqa: BLE001
        raise _store_error(f"Cannot list the models of run {run_id}", exc) from None
    if f"{path}/MLmodel" in in_folder:
        return _Source(source=_run_artifact_source(client, run_id, path), run_id=run_id, artifact_path=path)
    if path in logged:
        return _Source(source=f"models:/{logged[path]}", run_id=run_id, artifact_path=path, model_id=logged[path])
    models = sorted(set(logged) | {p for p, info in top.items() if info.is_dir and _has_mlmodel(client, run_id, p)})
    hint = f"its models: {', '.join(models)}; pass --artifact-path {models[0]}" if models else "it has no logged model"
    raise RegisterError(f"Run {run_id} has no MLflow model at {path!r} ({hint}).")


def _has_mlmodel(client, run_id: str, path: str) -> bool:
    return f"{path}/MLmodel" in {info.path for info in client.list_artifacts(run_id, path)}


def _source_from_uri(session: Session, client, uri: str) -> _Source:
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
        return _source_from_run(session, client, run_id, path)
    if scheme == "models":
        return _source_from_registry(client, uri)
    if scheme in ("", "file"):
        local = Path(urlsplit(uri).path if scheme == "file" else uri).expanduser().resolve()
        if not (local / "MLmodel").is_file():
            raise RegisterError(f"There is no MLflow model in {local} (no MLmodel file).")
        return _Source(source=local.as_uri(), run_id=None, local_dir=local)
    try:
        from mlflow.artifacts import list_artifacts

        names = {Path(info.path).name for info in list_artifacts(artifact_uri=uri, tracking_uri=client.tracking_uri)}
    except Exception as exc:  # noqa: BLE001
        raise _store_error(f"Cannot read {uri}", exc) from None
    if "MLmodel" not in names:
        raise RegisterError(f"There is no MLflow model at {uri} (no MLmodel file).")
    return _Source(source=uri, run_id=None)


def _source_from_registry(client, uri: str) -> _Source:
    """A models:/ URI: a registered version (by number, alias, or latest) or a logged model id."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    try:
        resolved = get_model_name_and_version(client, uri)
        if len(resolved) == 1:
            model = client.get_logged_model(resolved[0])
            return _Source(source=f"models:/{model.model_id}", run_id=model.source_run_id, model_id=model.model_id,
                           artifact_path=model.name)
        version = client.get_model_version(*resolved)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            raise RegisterError(f"No model behind {uri}: {first_line(exc)}") from None
        raise _store_error(f"Cannot read {uri}", exc) from None
    return _Source(source=version.source, run_id=version.run_id, model_id=getattr(version, "model_id", None))


def _create_version(client, request: RegisterRequest, source: _Source, name_exists: bool, display: str):
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
            model_id=source.model_id,
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


# ---------------------------------------------------------------------- the mirror (both mode)
_awaiting_mirror: dict[str, tuple[Session, ModelRecord]] = {}
_awaiting_lock = threading.Lock()


def _queue_mirror(session: Session, client, request: RegisterRequest, source: _Source, record: ModelRecord) -> list[str]:
    """Queue the mirror registration behind the run's mirror rows; wait for it a little."""
    mirror = session.link.mirror
    journal = session.journal
    if source.run_id is None or not journal.owns(source.run_id):
        return [
            f"mirror {mirror.display}: not registered; only models of runs tracked in this session are mirrored "
            "(their run is mirrored with them)."
        ]
    copy = journal.blob_dir / "models" / uuid.uuid4().hex
    try:
        if source.local_dir is not None:
            shutil.copytree(source.local_dir, copy)
        else:
            from mlflow.artifacts import download_artifacts

            copy.mkdir(parents=True)
            download_artifacts(artifact_uri=source.source, dst_path=str(copy), tracking_uri=client.tracking_uri)
            copy = _model_root(copy)
    except Exception as exc:  # noqa: BLE001 - the primary version stands; say what the mirror misses
        shutil.rmtree(copy, ignore_errors=True)
        return [f"mirror {mirror.display}: not registered; the model could not be copied ({first_line(exc)})."]
    key = uuid.uuid4().hex
    with _awaiting_lock:
        _awaiting_mirror[key] = (session, record)
    payload = {
        "name": request.name,
        "model_dir": str(copy),
        "artifact_path": source.artifact_path or DEFAULT_ARTIFACT_PATH,
        "source_version": f"{source.run_id}/{record.version}",
        "tags": request.tags,
        "description": request.description,
        "alias": request.alias,
        "record": key,
    }
    journal.append(source.run_id, MIRROR_KIND, payload, mirror_only=True)
    mirror_known_down = any(
        s["target"] == mirror.display and s["last_error"] for s in journal.status()
    )
    journal.flush(source.run_id, timeout=1.0 if mirror_known_down else session.settings.flush_timeout)
    if record.mirror_version is None:
        return [
            f"mirror {mirror.display}: registration queued; it is sent when the store is reachable (see %aml_sync)."
        ]
    return []


def _model_root(folder: Path) -> Path:
    """download_artifacts puts a folder's files under its own name; find the MLmodel's folder."""
    hits = sorted(folder.rglob("MLmodel"), key=lambda p: len(p.parts))
    return hits[0].parent if hits else folder


def _register_on_mirror(target, remote_run_id: str, payload: dict) -> None:
    """Journal handler: upload the model to the mirror run and register it there, once."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=target.uri, registry_uri=target.registry_uri or target.uri)
    name, marker = payload["name"], payload["source_version"]
    version = _mirror_version(client, name, marker)
    if version is None:
        model_dir = Path(payload["model_dir"])
        if not (model_dir / "MLmodel").is_file():
            raise MlflowException(
                f"the local copy of {name} for the mirror is gone ({model_dir})", error_code="INVALID_STATE"
            )
        path = payload["artifact_path"]
        client.log_artifacts(remote_run_id, str(model_dir), path)
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        tags = {**(payload["tags"] or {}), SOURCE_VERSION_TAG: marker}
        version = client.create_model_version(
            name,
            _run_artifact_source(client, remote_run_id, path),
            run_id=remote_run_id,
            tags=tags,
            description=payload["description"],
        )
    if payload["alias"]:
        client.set_registered_model_alias(name, payload["alias"], version.version)
    shutil.rmtree(payload["model_dir"], ignore_errors=True)
    with _awaiting_lock:
        waiting = _awaiting_mirror.pop(payload["record"], None)
    if waiting is not None:
        session, record = waiting
        record.mirror_version = str(version.version)
        session.emit("model_mirrored", record)


def _mirror_version(client, name: str, marker: str):
    """The mirror version made from `marker` by an earlier attempt, if any (replays stay single)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return next((v for v in versions if (v.tags or {}).get(SOURCE_VERSION_TAG) == marker), None)


register_kind(MIRROR_KIND, _register_on_mirror)


# ---------------------------------------------------------------------- output
def _summary(session: Session, record: ModelRecord) -> str:
    run = session.find_run(record.source_run_id) if record.source_run_id else None
    source = f"run {record.source_run_id}" + (f" ({run.name})" if run else "") if record.source_run_id else "no run"
    lines = [f"Registered {record.name} version {record.version} from {source} on {session.link.primary.display}"]
    if record.alias:
        lines[0] += f", alias @{record.alias}"
    if session.link.mirror is not None and record.mirror_version is not None:
        lines.append(f"Mirror {session.link.mirror.display}: {record.name} version {record.mirror_version}")
    return "\n".join(lines)



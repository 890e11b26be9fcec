"""Delivery: one function per kind of row, each turning rows into calls on the real store.

`deliver(journal, key, rows)` sends one group (rows of one run, merged when they are
batches) to the target `key`. It raises on any failure; the shipper sorts the error.
Rows are (id, run_key, kind, payload) as the outbox stores them.
"""

import base64
import functools
import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable

from ..errors import JournalError
from ..experiments import resolve_experiment
from ..targets import Target

__all__ = [
    "SOURCE_RUN_TAG", "SOURCE_MODEL_TAG", "deliver", "register_kind", "Transient",
    "metric_to_list", "entities_to_text", "batch_limits",
]

SOURCE_RUN_TAG = "dbxml.source_run_id"
SOURCE_MODEL_TAG = "dbxml.source_model_id"

_handlers: dict[str, Callable[[Target, str, dict], None]] = {}


class Transient(Exception):
    """A condition that resolves itself by waiting (e.g. a mirror run not created yet)."""


def register_kind(kind: str, handler: Callable[[Target, str, dict], None]) -> None:
    """Let another module queue its own writes: `handler(target, remote_run_id, payload)`
    is called by the shipper, after every earlier row of the same run reached `target`.
    It raises to be retried later (MlflowException with a 4xx code: failed for good)."""
    _handlers[kind] = handler


def deliver(journal, key: str, rows: list) -> None:
    kind, run_key = rows[0][2], rows[0][1]
    store = journal.inner_store(key)
    if kind == "create_run":
        _create_mirror_run(journal, key, store, run_key, json.loads(rows[0][3]))
        return
    remote_id = journal.outbox.remote_id(key, run_key)
    if remote_id is None:
        raise Transient("the mirror run is not created yet")
    # A mirror knows the primary's logged models under its own ids (those the journal created
    # there); a link to any other model is dropped on the mirror rather than refused.
    on_mirror = journal.primary_key(run_key) != key
    model_id_here = functools.partial(journal.outbox.remote_model, key) if on_mirror else None
    if kind == "batch":
        _log_batch(store, remote_id, rows, batch_limits(journal.targets[key].kind), model_id_here)
        return
    payload = json.loads(rows[0][3])
    if kind in _SIMPLE:
        _SIMPLE[kind](store, remote_id, payload)
    elif kind in _LINKS:
        _LINKS[kind](store, remote_id, payload, model_id_here)
    elif kind in _MODEL_WRITES:
        _MODEL_WRITES[kind](store, _mirror_model(journal, key, payload["model_id"]), payload)
    elif kind == "create_model":
        _create_mirror_model(journal, key, store, remote_id, payload)
    elif kind == "model_artifacts":
        _copy_model_artifacts(journal, key, store, run_key, payload["model_id"])
    elif kind == "artifact":
        _upload_artifact(journal, key, store, remote_id, rows[0][0], payload)
    elif kind == "copy_artifacts":
        _copy_artifacts(journal, key, store, run_key, remote_id)
    elif kind in _handlers:
        _handlers[kind](journal.targets[key], remote_id, payload)
    else:
        raise JournalError(f"unknown journal entry kind {kind!r}")


# ---------------------------------------------------------------------- batches
# Per-request limits of log_batch per kind of store: (metrics, params or tags each, entities).
# MLflow's own (1000, 100, 1000) hold for MLflow servers, the embedded store and Databricks.
# Azure ML's endpoint has been seen refusing more than 200 metrics per request (mlflow#2441):
# it gets batches of at most 200 entities.
_BATCH_LIMITS = {"aml": (200, 100, 200)}


def batch_limits(kind: str | None = None) -> tuple[int, int, int]:
    """The log_batch limits of a kind of store: metrics, params or tags, entities per request."""
    from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH, MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

    mlflow_limits = (MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH, MAX_ENTITIES_PER_BATCH)
    return tuple(min(a, b) for a, b in zip(_BATCH_LIMITS.get(kind, mlflow_limits), mlflow_limits))


def _log_batch(store, remote_id: str, rows: list, limits: tuple[int, int, int], model_id_here=None) -> None:
    from mlflow.entities import Metric, Param, RunTag

    max_metrics, max_params_tags, max_entities = limits
    metrics, params, tags = [], {}, {}
    for row in rows:
        payload = json.loads(row[3])
        metrics.extend(payload["metrics"])
        params.update(dict(payload["params"]))
        tags.update(dict(payload["tags"]))
    if model_id_here is not None:
        metrics = [_relinked(m, model_id_here) for m in metrics]
    metric_objs = [_list_to_metric(m, Metric) for m in metrics]
    param_objs = [Param(k, v) for k, v in params.items()]
    tag_objs = [RunTag(k, v) for k, v in tags.items()]
    while metric_objs or param_objs or tag_objs:
        p, param_objs = param_objs[:max_params_tags], param_objs[max_params_tags:]
        t, tag_objs = tag_objs[:max_params_tags], tag_objs[max_params_tags:]
        room = min(max_metrics, max_entities - len(p) - len(t))
        m, metric_objs = metric_objs[:room], metric_objs[room:]
        store.log_batch(remote_id, m, p, t)  # params and tags positionally (RestStore)


def _relinked(metric: list, model_id_here) -> list:
    """A point linked to a logged model, linked to that model's copy on this store; a plain
    run metric when this store has no copy of it."""
    model_id = metric[4] if len(metric) > 4 else None
    if model_id is None:
        return metric
    here = model_id_here(model_id)
    return metric[:4] if here is None else [*metric[:4], here, *metric[5:]]


def metric_to_list(metric) -> list:
    return [
        metric.key,
        metric.value,
        metric.timestamp,
        metric.step,
        getattr(metric, "model_id", None),
        getattr(metric, "dataset_name", None),
        getattr(metric, "dataset_digest", None),
    ]


def _list_to_metric(item: list, metric_cls):
    key, value, timestamp, step, model_id, dataset_name, dataset_digest = (item + [None] * 7)[:7]
    kwargs = {}
    if model_id is not None:
        kwargs.update(model_id=model_id, dataset_name=dataset_name, dataset_digest=dataset_digest)
    return metric_cls(key, value, timestamp, step, **kwargs)


# ---------------------------------------------------------------------- run info, tags, datasets
def _update_run(store, remote_id: str, payload: dict) -> None:
    from mlflow.entities import RunStatus

    status = RunStatus.from_string(payload["status"]) if payload["status"] else None
    if status is None:
        status = store.get_run(remote_id).info.status
        status = RunStatus.from_string(status) if isinstance(status, str) else status
    store.update_run_info(remote_id, status, payload["end_time"], payload["run_name"])


def _delete_tag(store, remote_id: str, payload: dict) -> None:
    from mlflow.exceptions import MlflowException

    try:
        store.delete_tag(remote_id, payload["key"])
    except MlflowException as exc:
        # A replay after a crash deletes twice; the second finds nothing, which is the goal.
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def entities_to_text(entities) -> list[str]:
    """MLflow entities (datasets, logged-model inputs/outputs) as base64 protobuf, for JSON rows."""
    return [base64.b64encode(e.to_proto().SerializeToString()).decode("ascii") for e in entities or ()]


def _log_inputs(store, remote_id: str, payload: dict, model_id_here=None) -> None:
    from mlflow.entities import DatasetInput

    datasets = _decode(payload.get("datasets"), DatasetInput)
    models = payload.get("models")
    if models:
        from mlflow.entities import LoggedModelInput

        models = [
            LoggedModelInput(here) for m in _decode(models, LoggedModelInput)
            if (here := _model_here(m.model_id, model_id_here)) is not None
        ]
    if models:
        store.log_inputs(remote_id, datasets=datasets, models=models)
    elif datasets:
        store.log_inputs(remote_id, datasets=datasets)


def _log_outputs(store, remote_id: str, payload: dict, model_id_here=None) -> None:
    from mlflow.entities import LoggedModelOutput

    outputs = [
        LoggedModelOutput(here, m.step) for m in _decode(payload["models"], LoggedModelOutput)
        if (here := _model_here(m.model_id, model_id_here)) is not None
    ]
    if outputs:
        store.log_outputs(remote_id, outputs)


def _model_here(model_id: str, model_id_here) -> str | None:
    """A logged model's id on this store (None: this store has no copy of it)."""
    return model_id if model_id_here is None else model_id_here(model_id)


def _decode(texts, cls) -> list:
    """The entities `entities_to_text` encoded: each class's proto comes from its own to_proto."""
    out = []
    for text in texts or ():
        message = _proto_class(cls)()
        message.ParseFromString(base64.b64decode(text))
        out.append(cls.from_proto(message))
    return out


def _proto_class(cls):
    from mlflow.protos import service_pb2

    name = {"DatasetInput": "DatasetInput", "LoggedModelInput": "ModelInput", "LoggedModelOutput": "ModelOutput"}[
        cls.__name__
    ]
    return getattr(service_pb2, name)


def _record_model(store, remote_id: str, payload: dict) -> None:
    from mlflow.models import Model

    store.record_logged_model(remote_id, Model.from_dict(payload["model"]))


def _delete_run(store, remote_id: str, payload: dict) -> None:
    store.delete_run(remote_id)


def _restore_run(store, remote_id: str, payload: dict) -> None:
    store.restore_run(remote_id)


_SIMPLE = {
    "update": _update_run, "delete_tag": _delete_tag, "record_model": _record_model,
    "delete_run": _delete_run, "restore_run": _restore_run,
}
_LINKS = {"inputs": _log_inputs, "outputs": _log_outputs}


# ---------------------------------------------------------------------- artifacts
def _artifact_repo(journal, key: str, store, remote_id: str):
    from ..stores import artifact_repository

    return artifact_repository(store.get_run(remote_id).info.artifact_uri, journal.targets[key].uri)


def _upload_artifact(journal, key: str, store, remote_id: str, row_id: int, payload: dict) -> None:
    blob = Path(payload["blob"])
    if not blob.exists():
        return
    repo = _artifact_repo(journal, key, store, remote_id)
    # The blob's name carries a unique prefix; the store must see the user's file name.
    staged = blob.parent / "staging" / uuid.uuid4().hex / blob.name.split("-", 1)[1]
    staged.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(blob, staged)
    try:
        repo.log_artifact(str(staged), payload["artifact_path"])
    finally:
        shutil.rmtree(staged.parent, ignore_errors=True)
    if not journal.outbox.blob_in_use(blob.name, except_id=row_id):
        blob.unlink(missing_ok=True)


def _copy_artifacts(journal, key: str, store, run_key: str, remote_id: str) -> None:
    """Bring artifacts logged straight to the primary (models, user files) to the mirror."""
    primary_key = journal.primary_key(run_key)
    primary_store = journal.inner_store(primary_key)
    source = _artifact_repo(journal, primary_key, primary_store, run_key)
    _copy_tree(source, _artifact_repo(journal, key, store, remote_id))


def _copy_tree(source, destination) -> None:
    # A run or model with no artifact may have no folder, which MLflow 2.x fails to download.
    if not source.list_artifacts():
        return
    with tempfile.TemporaryDirectory(prefix="dbxml-copy-") as tmp:
        destination.log_artifacts(source.download_artifacts("", tmp))


# ---------------------------------------------------------------------- MLflow 3 logged models
# The primary creates a logged model (its id comes from there) and receives its writes
# synchronously; a mirror gets the same model as rows of the model's source run, in order:
# created (found again by its source tag after a crash), params, tags, metrics linked to it
# (batches, relinked above), its artifacts copied from the primary, then finalized.
def _create_mirror_model(journal, key: str, store, remote_run_id: str, payload: dict) -> None:
    model_id = payload["model_id"]
    if journal.outbox.remote_model(key, model_id) is not None:
        return
    from mlflow.entities import LoggedModelParameter, LoggedModelTag

    experiment_id = store.get_run(remote_run_id).info.experiment_id
    found = store.search_logged_models(
        [experiment_id], filter_string=f"tags.`{SOURCE_MODEL_TAG}` = '{model_id}'", max_results=1
    )
    if found:
        remote = found[0].model_id
    else:
        tags = [LoggedModelTag(k, v) for k, v in payload["tags"]] + [LoggedModelTag(SOURCE_MODEL_TAG, model_id)]
        remote = store.create_logged_model(
            experiment_id, name=payload["name"], source_run_id=remote_run_id, tags=tags,
            params=[LoggedModelParameter(k, v) for k, v in payload["params"]], model_type=payload["model_type"],
        ).model_id
    journal.outbox.set_remote_model(key, model_id, remote)


def _mirror_model(journal, key: str, model_id: str) -> str:
    remote = journal.outbox.remote_model(key, model_id)
    if remote is None:
        raise JournalError(f"the logged model {model_id} was not created on this store")
    return remote


def _log_model_params(store, remote_model: str, payload: dict) -> None:
    from mlflow.entities import LoggedModelParameter

    store.log_logged_model_params(remote_model, [LoggedModelParameter(k, v) for k, v in payload["params"]])


def _set_model_tags(store, remote_model: str, payload: dict) -> None:
    from mlflow.entities import LoggedModelTag

    store.set_logged_model_tags(remote_model, [LoggedModelTag(k, v) for k, v in payload["tags"]])


def _delete_model_tag(store, remote_model: str, payload: dict) -> None:
    from mlflow.exceptions import MlflowException

    try:
        store.delete_logged_model_tag(remote_model, payload["key"])
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # a replay: already deleted
            raise


def _finalize_model(store, remote_model: str, payload: dict) -> None:
    from mlflow.entities import LoggedModelStatus

    store.finalize_logged_model(remote_model, LoggedModelStatus(payload["status"]))


def _delete_model(store, remote_model: str, payload: dict) -> None:
    store.delete_logged_model(remote_model)


_MODEL_WRITES = {
    "model_params": _log_model_params, "model_tags": _set_model_tags, "model_delete_tag": _delete_model_tag,
    "finalize_model": _finalize_model, "delete_model": _delete_model,
}


def _copy_model_artifacts(journal, key: str, store, run_key: str, model_id: str) -> None:
    """The model's files, uploaded by MLflow straight to the primary's artifact store."""
    from ..stores import artifact_repository

    primary_key = journal.primary_key(run_key)
    source = journal.inner_store(primary_key).get_logged_model(model_id).artifact_location
    destination = store.get_logged_model(_mirror_model(journal, key, model_id)).artifact_location
    _copy_tree(
        artifact_repository(source, journal.targets[primary_key].uri),
        artifact_repository(destination, journal.targets[key].uri),
    )


# ---------------------------------------------------------------------- the mirror run
def _create_mirror_run(journal, key: str, store, run_key: str, payload: dict) -> None:
    """Create the mirror run once: an earlier attempt's run is found by its source tag."""
    if journal.outbox.db().execute(
        "SELECT 1 FROM runs WHERE target=? AND run_key=? AND remote_id IS NOT NULL", (key, run_key)
    ).fetchone():
        return
    from mlflow.entities import RunTag, ViewType

    name = resolve_experiment(journal.targets[key], payload["experiment"] or "Default", journal.settings)
    experiment = store.get_experiment_by_name(name)
    experiment_id = store.create_experiment(name) if experiment is None else experiment.experiment_id
    existing = store.search_runs([experiment_id], f"tags.`{SOURCE_RUN_TAG}` = '{run_key}'", ViewType.ALL, max_results=1)
    if existing:
        remote_id = existing[0].info.run_id
    else:
        tags = [RunTag(k, v) for k, v in payload["tags"].items() if not k.startswith("mlflow.log-model")]
        tags.append(RunTag(SOURCE_RUN_TAG, run_key))
        run = store.create_run(experiment_id, payload["user_id"], payload["start_time"], tags, payload["run_name"])
        remote_id = run.info.run_id
    journal.outbox.set_remote_id(key, run_key, remote_id)

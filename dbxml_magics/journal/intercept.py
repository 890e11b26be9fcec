"""Interception: MLflow's tracking-store registry hands out journaled stores.

`install(journal)` wraps every store builder in the registry, so every store MLflow builds
while the journal is installed (fluent API, any `MlflowClient`, any URI) is a
`JournaledStore`. Creating a run adopts it for the store it was created on; every write
method of an adopted run then becomes a journal row, in call order; reads of an adopted run
first wait (bounded) for that run's rows. Runs created elsewhere pass through untouched.

MLflow builds stores under a non-reentrant lock: the wrapper calls the inner builder, never
`get_store`, or it deadlocks.
"""

import email.utils
import functools
import inspect
import os
import threading
import time

from ..stores import prepare_sqlite_store

__all__ = ["JournaledStore", "install", "uninstall", "completed", "validate_metric", "take_retry_after", "shipping_thread"]

# MLflow's default HTTP retries wait minutes on a dead server; the journal retries by
# itself, so a down store costs seconds. A user's own setting wins.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def _registry():
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    return _tracking_store_registry


def install(journal) -> dict[str, str]:
    """Wrap every builder; returns the environment defaults set (for `uninstall`)."""
    registry = _registry()
    for scheme, builder in list(registry._registry.items()):
        if not isinstance(builder, _JournaledBuilder):
            registry._registry[scheme] = _JournaledBuilder(builder, journal)
    registry._get_store_with_resolved_uri.cache_clear()
    _record_retry_after(True)
    env = {k: v for k, v in _HTTP_DEFAULTS.items() if k not in os.environ}
    os.environ.update(env)
    return env


def uninstall(journal, env: dict[str, str]) -> None:
    registry = _registry()
    for scheme, builder in list(registry._registry.items()):
        if isinstance(builder, _JournaledBuilder) and builder.journal is journal:
            registry._registry[scheme] = builder.inner
    registry._get_store_with_resolved_uri.cache_clear()
    _record_retry_after(False)
    for key, value in env.items():
        if os.environ.get(key) == value:
            del os.environ[key]


def completed():
    """What an asynchronous write returns: the journal already holds it."""
    from concurrent.futures import Future

    from mlflow.utils.async_logging.run_operations import RunOperations

    future = Future()
    future.set_result(None)
    return RunOperations([future])


def validate_metric(key, value, timestamp, step) -> None:
    """MLflow's own check of a metric, as every store applies it."""
    from mlflow.utils.validation import _validate_metric

    _validate_metric(key, value, timestamp, step)


def validate_param(key, value):
    from mlflow.utils.validation import _validate_param

    return _validate_param(key, value)


def validate_tag(key, value):
    from mlflow.utils.validation import _validate_tag

    return _validate_tag(key, value)


def _validated(check, entity):
    """MLflow 3's checks return the entity as stored (long values truncated); 2.x's return None."""
    return check(entity.key, entity.value) or entity


def validate_batch(metrics, params, tags) -> tuple[list, list, list]:
    """MLflow's checks of a log_batch call, as its SQL store and server apply them."""
    from mlflow.utils import validation

    checked = validation._validate_batch_log_data(metrics, params, tags)
    metrics, params, tags = checked if checked is not None else (metrics, params, tags)
    validation._validate_batch_log_limits(metrics, params, tags)
    validation._validate_param_keys_unique(params)
    return metrics, params, tags


# ---------------------------------------------------------------------- Retry-After
# MLflow turns a refused response into an exception without its headers (and once its own
# retries are spent, urllib3 raises without the response at all), so a server's Retry-After
# (429, 503) would never reach the shippers' backoff. The function MLflow's REST calls go
# through is wrapped: on a shipper's thread it asks for the last response instead of
# urllib3's error (MLflow then raises its usual exception from that response) and notes the
# header for that thread. Other threads' requests are untouched.
_RETRY_STATUSES = (429, 503)
_retry_after = threading.local()


def shipping_thread() -> None:
    """Mark the calling thread as a shipper: its refused requests tell it when to come back."""
    _retry_after.shipping = True


def take_retry_after() -> float | None:
    """Seconds the last refused request of this thread was told to wait (then forgotten)."""
    seconds = getattr(_retry_after, "seconds", None)
    _retry_after.seconds = None
    return seconds


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header: delay-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _record_retry_after(on: bool) -> None:
    from mlflow.utils import rest_utils

    current = getattr(rest_utils, "_get_http_response_with_retries", None)
    if current is None:
        return  # an MLflow without that function: the shippers' own backoff applies
    ours = getattr(current, "_dbxml_retry_after", False)
    if on and not ours and "raise_on_status" in inspect.signature(current).parameters:
        rest_utils._get_http_response_with_retries = _noting_retry_after(current)
    elif not on and ours:
        rest_utils._get_http_response_with_retries = current.__wrapped__


def _noting_retry_after(send):
    # MLflow passes raise_on_status by position; its place is read once, not assumed.
    position = list(inspect.signature(send).parameters).index("raise_on_status")

    @functools.wraps(send)
    def request(*args, **kwargs):
        if not getattr(_retry_after, "shipping", False):
            return send(*args, **kwargs)
        if len(args) > position:
            args = (*args[:position], False, *args[position + 1:])
        else:
            kwargs["raise_on_status"] = False
        response = send(*args, **kwargs)
        if getattr(response, "status_code", None) in _RETRY_STATUSES:
            _retry_after.seconds = parse_retry_after(response.headers.get("Retry-After"))
        return response

    request._dbxml_retry_after = True
    return request


def _deleted_run_error(store, run_id: str):
    """MLflow's refusal of a write to a deleted run (its stores' `_check_run_is_active`); a REST
    store raises it from the server's answer, error code in front of the message."""
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    from mlflow.store.tracking.rest_store import RestStore

    message = f"The run {run_id} must be in the 'active' state. Current state is deleted."
    if isinstance(store, RestStore):
        return RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": message})
    return MlflowException(message, INVALID_PARAMETER_VALUE)


class _JournaledBuilder:
    """Stands in for an MLflow store builder; returns the real store wrapped."""

    def __init__(self, inner, journal):
        self.inner = inner
        self.journal = journal
        self.__module__ = getattr(inner, "__module__", __name__)

    def __call__(self, store_uri=None, artifact_uri=None, **kwargs):
        artifact_uri = artifact_uri or self.journal.artifact_root_for(store_uri)
        prepare_sqlite_store(store_uri)
        store = self.inner(store_uri=store_uri, artifact_uri=artifact_uri, **kwargs)
        return JournaledStore(store, self.journal, store_uri, artifact_uri)


class JournaledStore:
    """A tracking store whose writes for adopted runs go to the journal; the rest passes through."""

    def __init__(self, inner, journal, store_uri: str, artifact_uri: str | None = None):
        self._inner = inner
        self._journal = journal
        self._store_uri = store_uri
        self._artifact_uri = artifact_uri

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def _owned(self, run_id) -> bool:
        return self._journal.owns(run_id)

    def _journaled(self, run_id) -> bool:
        """Whether a write of this run goes to the journal; one to a run deleted through the
        journal is refused here, at the call, as the store itself would refuse it."""
        if not self._journal.owns(run_id):
            return False
        if run_id in self._journal.deleted_runs:
            raise _deleted_run_error(self._inner, run_id)
        return True

    # -- creation: adopt the run for the store it was created on
    def create_run(self, experiment_id, user_id, start_time, tags, run_name):
        run = self._inner.create_run(experiment_id, user_id, start_time, tags, run_name)
        self._journal.own(
            run.info.run_id, self._store_uri, lambda: self._experiment_name(experiment_id), run,
            self._artifact_uri, self._inner,
        )
        return run

    def _experiment_name(self, experiment_id) -> str | None:
        try:
            return self._inner.get_experiment(experiment_id).name
        except Exception:  # noqa: BLE001 - the name only names the mirror's experiment
            return None

    # -- writes: validated here as the store would, so a bad name or value fails at the call,
    # not later on the shipper
    def log_metric(self, run_id, metric):
        if not self._journaled(run_id):
            return self._inner.log_metric(run_id, metric)
        validate_metric(metric.key, metric.value, metric.timestamp, metric.step)
        self._journal.log_metric(
            run_id, metric.key, metric.value, metric.timestamp, metric.step, getattr(metric, "model_id", None),
            getattr(metric, "dataset_name", None), getattr(metric, "dataset_digest", None),
        )

    def log_param(self, run_id, param):
        if not self._journaled(run_id):
            return self._inner.log_param(run_id, param)
        self._journal.log_batch(run_id, params=[_validated(validate_param, param)])

    def set_tag(self, run_id, tag):
        if not self._journaled(run_id):
            return self._inner.set_tag(run_id, tag)
        self._journal.log_batch(run_id, tags=[_validated(validate_tag, tag)])

    def log_batch(self, run_id, metrics, params, tags):
        if not self._journaled(run_id):
            return self._inner.log_batch(run_id, metrics, params, tags)
        self._journal.log_batch(run_id, *validate_batch(metrics, params, tags))

    def delete_tag(self, run_id, key):
        if not self._journaled(run_id):
            return self._inner.delete_tag(run_id, key)
        self._journal.append(run_id, "delete_tag", {"key": key})

    def log_inputs(self, run_id, datasets=None, models=None):
        if not self._journaled(run_id):
            return self._inner.log_inputs(run_id, datasets=datasets, models=models) if models else (
                self._inner.log_inputs(run_id, datasets=datasets)
            )
        self._journal.log_inputs(run_id, datasets, models)

    def log_outputs(self, run_id, models):
        if not self._journaled(run_id):
            return self._inner.log_outputs(run_id, models)
        self._journal.log_outputs(run_id, models)

    def update_run_info(self, run_id, run_status, end_time, run_name):
        if not self._owned(run_id):
            return self._inner.update_run_info(run_id, run_status, end_time, run_name)
        if run_id in self._journal.deleted_runs:
            # MLflow's store refuses this too, but ending a run is all the caller wants (the
            # `with` of a run the block deleted, a %%track cell that deleted its run): nothing
            # is left to send, and nothing is raised.
            return
        from mlflow.entities import RunStatus

        status = RunStatus.to_string(run_status) if isinstance(run_status, int) else run_status
        self._journal.update_run(run_id, status, end_time, run_name)

    def record_logged_model(self, run_id, mlflow_model):
        """The run's `mlflow.log-model.history` entry (MLflow 2.x's log_model)."""
        from mlflow.models import Model

        if not isinstance(mlflow_model, Model) or not self._journaled(run_id):
            return self._inner.record_logged_model(run_id, mlflow_model)  # the store's own TypeError
        self._journal.append(run_id, "record_model", {"model": mlflow_model.to_dict()})

    def delete_run(self, run_id):
        if not self._owned(run_id):
            return self._inner.delete_run(run_id)
        self._journal.delete_run(run_id)

    def restore_run(self, run_id):
        if not self._owned(run_id):
            return self._inner.restore_run(run_id)
        self._journal.restore_run(run_id)

    # -- MLflow 3 logged models: the primary creates them (the id comes from it) and takes
    # their writes synchronously; those of an owned, mirrored run are queued for the mirror.
    # MLflow 2.x stores have none of these methods: the calls fail there as without the journal.
    def create_logged_model(self, *args, **kwargs):
        model = self._inner.create_logged_model(*args, **kwargs)
        if model.source_run_id is not None and self._owned(model.source_run_id):
            self._journal.own_model(model)
        return model

    def log_logged_model_params(self, model_id, params):
        self._inner.log_logged_model_params(model_id, params)
        self._journal.model_write(model_id, "model_params", {"params": [[p.key, p.value] for p in params]})

    def set_logged_model_tags(self, model_id, tags):
        self._inner.set_logged_model_tags(model_id, tags)
        self._journal.model_write(model_id, "model_tags", {"tags": [[t.key, t.value] for t in tags]})

    def delete_logged_model_tag(self, model_id, key):
        self._inner.delete_logged_model_tag(model_id, key)
        self._journal.model_write(model_id, "model_delete_tag", {"key": key})

    def finalize_logged_model(self, model_id, status):
        model = self._inner.finalize_logged_model(model_id, status)
        self._journal.model_write(model_id, "finalize_model", {"status": str(status)})
        return model

    def delete_logged_model(self, model_id):
        self._inner.delete_logged_model(model_id)
        self._journal.model_write(model_id, "delete_model", {})

    # Async variants: the journal already returns at once, so they complete immediately.
    def log_metric_async(self, run_id, metric):
        return self._done(self.log_metric, run_id, metric)

    def log_param_async(self, run_id, param):
        return self._done(self.log_param, run_id, param)

    def set_tag_async(self, run_id, tag):
        return self._done(self.set_tag, run_id, tag)

    def log_batch_async(self, run_id, metrics, params, tags):
        return self._done(self.log_batch, run_id, metrics, params, tags)

    def _done(self, method, run_id, *args):
        if not self._journaled(run_id):
            return getattr(self._inner, method.__name__ + "_async")(run_id, *args)
        method(run_id, *args)
        return completed()

    # -- reads of an adopted run see its queued writes first
    def get_run(self, run_id):
        self._settle(run_id)
        return self._inner.get_run(run_id)

    def get_metric_history(self, run_id, metric_key, *args, **kwargs):
        self._settle(run_id)
        return self._inner.get_metric_history(run_id, metric_key, *args, **kwargs)

    def get_metric_history_bulk_interval_from_steps(self, run_id, *args, **kwargs):
        self._settle(run_id)
        return self._inner.get_metric_history_bulk_interval_from_steps(run_id, *args, **kwargs)

    def search_runs(self, *args, **kwargs):
        self._journal.settle_store(self._store_uri)
        return self._inner.search_runs(*args, **kwargs)

    def _settle(self, run_id) -> None:
        if self._owned(run_id):
            self._journal.flush(run_id, timeout=self._journal.settings.flush_timeout, primary_only=True)


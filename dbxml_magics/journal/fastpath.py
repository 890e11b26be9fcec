"""The fast path: `mlflow.log_metric` for a journaled run, without MLflow's per-call overhead.

MLflow's fluent `log_metric` costs more than the journal's whole write: it builds two
`MlflowClient`s per call (tracking URI, workspace and environment lookups), looks for model
inputs and outputs to link, and wraps the call in its usage telemetry. For the plain case it
ends in exactly one thing: `store.log_metric(run_id, Metric(key, float(value), timestamp or
now, step or 0))`. While the journal is installed, `mlflow.log_metric` is this function: in the
plain case (no run_id, model_id or dataset argument, an active run owned by the journal and
not deleted, no active model and no logged model output on the run) it applies the same
conversions and the same validation and writes the point straight to the journal; in any
other case it calls MLflow's own function. Same result, same errors, same return value (None, or a completed
`RunOperations` when asynchronous); the only difference is that MLflow's usage telemetry
does not see these calls. A `from mlflow import log_metric` made before the journal was
installed keeps MLflow's function, which is slower but writes to the same journal.
"""

import functools
import inspect

from .intercept import completed

__all__ = ["install", "uninstall"]

# MLflow 3's signature; with another one (MLflow 2.x) the fast path is not installed.
_SIGNATURE = ["key", "value", "step", "synchronous", "timestamp", "run_id", "model_id", "dataset"]


def install(journal) -> None:
    import mlflow
    from mlflow.tracking import fluent

    original = fluent.log_metric
    if hasattr(original, "_dbxml_journal") or list(inspect.signature(original).parameters) != _SIGNATURE:
        return  # another journal's fast path is still there, or an MLflow this was not written for
    fast = _fast_log_metric(journal, original, fluent)
    fluent.log_metric = fast
    if mlflow.log_metric is original:
        mlflow.log_metric = fast


def uninstall(journal) -> None:
    import mlflow
    from mlflow.tracking import fluent

    for module in (fluent, mlflow):
        current = module.log_metric
        if getattr(current, "_dbxml_journal", None) is journal:
            module.log_metric = current.__wrapped__


def _fast_log_metric(journal, original, fluent):
    from mlflow.environment_variables import MLFLOW_ENABLE_ASYNC_LOGGING
    from mlflow.tracking.metric_value_conversion_utils import convert_metric_value_to_float_if_possible
    from mlflow.utils.time import get_current_time_millis
    from mlflow.utils.validation import _validate_metric

    active_run = fluent.active_run
    active_model_id = fluent.get_active_model_id
    owns = journal.owns
    deleted = journal.deleted_runs  # a write to one is refused by MLflow's path (the store's check)
    valid_keys: set[str] = set()  # names MLflow's check accepted: that check depends on the name only

    @functools.wraps(original)
    def log_metric(key, value, step=None, synchronous=None, timestamp=None, run_id=None, model_id=None, dataset=None):
        run = active_run() if run_id is None and model_id is None and dataset is None else None
        if (
            run is None
            or not owns(active_id := run.info.run_id)
            or active_id in deleted
            or (run.outputs is not None and run.outputs.model_outputs)
            or active_model_id() is not None
        ):
            return original(key, value, step, synchronous, timestamp, run_id, model_id, dataset)
        synchronous = synchronous if synchronous is not None else not MLFLOW_ENABLE_ASYNC_LOGGING.get()
        # The conversions of fluent.log_metric and TrackingServiceClient.log_metric, in order.
        timestamp = timestamp or get_current_time_millis()
        step = step or 0
        if type(value) is not float:
            value = convert_metric_value_to_float_if_possible(value)  # identity on a float
        # MLflow's check, skipped only where its outcome is known: a name it accepted, and
        # values of the exact types it accepts.
        if not (key in valid_keys and type(value) is float and type(step) is int
                and type(timestamp) is int and timestamp >= 0):
            _validate_metric(key, value, timestamp, step)
            if len(valid_keys) < 10_000:
                valid_keys.add(key)
        journal.log_metric(active_id, key, value, timestamp, step)
        return None if synchronous else completed()

    log_metric._dbxml_journal = journal
    return log_metric

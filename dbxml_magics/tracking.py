"""The %%track run lifecycle: start a run, execute the cell as IPython would, log, end.

Follows MLflow's run stack (`mlflow/tracking/fluent.py`): the run ends FINISHED, FAILED
(exception; traceback logged) or KILLED (interrupt), and is never left active. All writes
travel through MLflow's fluent API, which the journal intercepts, so user `mlflow.log_*`
calls in the cell and the magic's own logging take the same batched, durable path.
"""

import ast
import json
import numbers
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .cell_runs import CellRuns
from .errors import TrackError
from .masking import first_line, redact
from .experiments import use_experiment
from .session import RunRecord, Session
from .userns import lookup, notebook_path

__all__ = ["TrackRequest", "run_tracked_cell", "prepare_cell", "start_tracked_run", "end_tracked_run"]


@dataclass
class TrackRequest:
    """A parsed %%track line."""

    name: str | None = None
    experiment: str | None = None
    params: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    autolog: bool = False
    nested: bool = False
    log_source: bool = True
    # Variables put into the namespace before the cell and logged as params (re-runs, sweeps).
    inputs: dict[str, object] = field(default_factory=dict)

    def recorded(self) -> str:
        """The options a re-run of the cell needs again, as the `dbxml.track` tag's JSON."""
        options = {"params": self.params, "metrics": self.metrics, "artifacts": self.artifacts, "autolog": self.autolog}
        return json.dumps({key: value for key, value in options.items() if value})


def _check_names(option: str, names: list[str]) -> None:
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise TrackError(f"{option} expects variable names; {name!r} is not one. Example: {option} alpha l1_ratio")


def run_tracked_cell(session: Session, shell, request: TrackRequest, cell: str):
    """Run `cell` as an MLflow run; returns the value of the cell's last expression."""
    __tracebackhide__ = True  # noqa: F841 - IPython hides this frame in user tracebacks
    code = prepare_cell(shell, request, cell)

    import mlflow

    record = start_tracked_run(session, request, {"dbxml.track": request.recorded()})
    run_id = record.run_id
    if request.inputs:
        from mlflow.entities import Param

        shell.user_ns.update(request.inputs)
        values = {name: _param_value(value) for name, value in request.inputs.items()}
        mlflow.MlflowClient().log_batch(run_id, metrics=[], params=[Param(k, v) for k, v in values.items()], tags=[])
        record.params.update(values)
    started = time.time()
    status = "FINISHED"
    error = None
    autolog_before = _enable_autolog() if request.autolog else None
    cell_runs = CellRuns(run_id, record.experiment_id, record.experiment, lambda name: session.update_run(record, name=name))
    try:
        try:
            with cell_runs:
                return _execute(shell, code)
        except KeyboardInterrupt:
            status, error = "KILLED", "interrupted"
            raise
        except BaseException as exc:
            status, error = "FAILED", first_line(exc)
            session.journal.log_text(run_id, redact(traceback.format_exc()), "traceback.txt")
            raise
    finally:
        if status == "FINISHED" and cell_runs.status:
            status, error = cell_runs.status, f"the cell ended its run {cell_runs.status} (mlflow.end_run)"
        outcome_error = None
        try:
            if run_id not in session.journal.deleted_runs:  # a cell that deleted its run: nothing to log
                _log_outcome(session, shell, request, cell, run_id, record, started)
        except Exception as exc:  # noqa: BLE001 - a run whose outcome is not logged did not finish
            outcome_error = f"Logging the outcome of run {run_id} failed: {first_line(exc)}"
        finally:
            if autolog_before is not None:
                _restore_autolog(autolog_before)
            if outcome_error and status == "FINISHED":
                status, error = "FAILED", outcome_error
            mlflow.end_run(status)
            _settle(session, run_id)
            session.update_run(record, status=status, end_time=time.time(), error=error)
        if outcome_error:
            if error != outcome_error:
                # The cell's own exception is on its way to the user; this one only adds to it.
                print(f"dbxml: {outcome_error}.", file=sys.stderr)
            else:
                raise TrackError(f"{outcome_error}. The run ended FAILED; the cell's variables are kept.")


def prepare_cell(shell, request: TrackRequest, cell: str) -> "_CompiledCell":
    """Check the request and compile the cell; a mistake is one line, before any run starts."""
    if not cell.strip():
        raise TrackError("The %%track cell is empty: put the code to track below the %%track line.")
    if request.experiment is not None and not request.experiment.strip():
        raise TrackError("--experiment needs a name. Example: --experiment churn-model")
    _check_names("--params", request.params)
    _check_names("--metrics", request.metrics)
    return _compile_cell(shell, cell)


def start_tracked_run(session: Session, request: TrackRequest, extra_tags: dict[str, str] | None = None) -> RunRecord:
    """Start the run of a tracked cell (or of a sweep) on the primary store; the session records it."""
    import mlflow

    link = session.activate()
    active = mlflow.active_run()
    if active is not None and not request.nested:
        raise TrackError(
            f"Run {active.info.run_id} is still active. End it with mlflow.end_run(), or use %%track --nested."
        )
    experiment_id, experiment_name = use_experiment(session, request.experiment, TrackError)
    tags = {
        "mlflow.source.name": notebook_path(session.namespace),
        "mlflow.source.type": "NOTEBOOK",
        "dbxml.kernel": f"python {platform.python_version()} pid {os.getpid()}",
        **(extra_tags or {}),
        **request.tags,
    }
    try:
        run = mlflow.start_run(
            run_name=request.name, experiment_id=experiment_id, nested=request.nested, tags=tags
        )
    except Exception as exc:  # noqa: BLE001 - any store failure becomes one line
        if getattr(exc, "error_code", None) == "INVALID_PARAMETER_VALUE":
            # The store answered: the request (a tag key, a run name) is what needs fixing.
            raise TrackError(f"{link.primary.display} refused the run: {first_line(exc)}. The cell was not run.") from None
        raise TrackError(
            f"Could not start a run on {link.primary.display}: {first_line(exc)}. The cell was not run; "
            "check that the store is reachable, or run %aml_link --local to use the embedded store."
        ) from None
    return session.add_run(
        RunRecord(
            run_id=run.info.run_id,
            name=run.info.run_name,
            experiment_id=experiment_id,
            experiment=experiment_name,
            target=link.primary.display,
            parent_run_id=active.info.run_id if active is not None else None,
        )
    )


def end_tracked_run(session: Session, record: RunRecord, status: str, error: str | None = None) -> None:
    """End a run of start_tracked_run that runs no cell itself (a sweep's parent) with `status`."""
    import mlflow

    mlflow.end_run(status)
    _settle(session, record.run_id)
    session.update_run(record, status=status, end_time=time.time(), error=error)


def _param_value(value) -> str:
    return redact(str(value))[:6000]


def _enable_autolog() -> dict:
    """Turn on mlflow.autolog() for the cell; returns the configuration found, to put back after."""
    import copy

    import mlflow
    from mlflow.utils.autologging_utils import AUTOLOGGING_INTEGRATIONS

    before = copy.deepcopy(AUTOLOGGING_INTEGRATIONS)
    mlflow.autolog(silent=True)
    return before


def _restore_autolog(before: dict) -> None:
    """Put autologging back as the cell found it (on Databricks it is on by default): integrations
    enabled only for the cell go back to their absent, disabled state."""
    from mlflow.utils.autologging_utils import AUTOLOGGING_INTEGRATIONS

    AUTOLOGGING_INTEGRATIONS.clear()
    AUTOLOGGING_INTEGRATIONS.update(before)


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


class _CompiledCell:
    def __init__(self, body, last_expr, filename):
        self.body = body
        self.last_expr = last_expr
        self.filename = filename


def _compile_cell(shell, cell: str) -> _CompiledCell:
    """Transform and compile the cell like IPython does; a syntax error is one line, before any run."""
    raw = cell
    transformed = shell.transform_cell(cell)
    try:
        filename = shell.compile.cache(transformed, shell.execution_count, raw_code=raw)
    except TypeError:
        filename = shell.compile.cache(transformed, shell.execution_count)
    try:
        tree = ast.parse(transformed, filename=filename)
        tree = shell.transform_ast(tree)
    except SyntaxError as exc:
        raise TrackError(f"The cell has a syntax error (line {exc.lineno}: {exc.msg}); no run was started.") from None
    last_expr = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last_expr = ast.Expression(tree.body.pop().value)
    flags = shell.compile.flags
    body = compile(ast.Module(tree.body, type_ignores=[]), filename, "exec", flags=flags, dont_inherit=True)
    expr = compile(last_expr, filename, "eval", flags=flags, dont_inherit=True) if last_expr else None
    return _CompiledCell(body, expr, filename)


def _execute(shell, code: _CompiledCell):
    """Run in the user namespace; exceptions propagate so IPython shows them as usual."""
    __tracebackhide__ = True  # noqa: F841
    exec(code.body, shell.user_global_ns, shell.user_ns)
    if code.last_expr is not None:
        return eval(code.last_expr, shell.user_global_ns, shell.user_ns)
    return None


def _log_outcome(session, shell, request, cell, run_id, record, started) -> None:
    import mlflow

    namespace = shell.user_ns
    params, metrics_now, histories, notes = {}, {}, {}, []
    for name in request.params:
        found, value = lookup(namespace, name)
        if not found:
            notes.append(f"--params: no variable {name!r} after the cell; not logged")
            continue
        params[name] = _param_value(value)
    for name in request.metrics:
        found, value = lookup(namespace, name)
        if not found:
            notes.append(f"--metrics: no variable {name!r} after the cell; not logged")
            continue
        series = _as_series(value)
        if series is None:
            notes.append(f"--metrics: {name!r} is not a number or a sequence of numbers; not logged")
        elif isinstance(series, float):
            metrics_now[name] = series
        else:
            histories[name] = series
    client = mlflow.MlflowClient()
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    metric_objs = [Metric(k, v, now, 0) for k, v in metrics_now.items()]
    for name, values in histories.items():
        metric_objs.extend(Metric(name, v, now, step) for step, v in enumerate(values))
    tags = [RunTag("dbxml.duration_s", f"{time.time() - started:.3f}")]
    client.log_batch(run_id, metrics=metric_objs, params=[Param(k, v) for k, v in params.items()], tags=tags)
    if request.log_source:
        session.journal.log_text(run_id, cell, "cell.py")
    for pattern in request.artifacts:
        paths = sorted(Path().glob(pattern)) if _is_glob(pattern) else [Path(pattern).expanduser()]
        if not paths or not all(p.exists() for p in paths):
            notes.append(f"--artifacts: {pattern!r} does not exist after the cell; not logged")
            continue
        for path in paths:
            if path.is_dir():
                for file in sorted(p for p in path.rglob("*") if p.is_file()):
                    relative = file.parent.relative_to(path)
                    target = str(Path(path.name) / relative) if str(relative) != "." else path.name
                    session.journal.log_artifact(run_id, str(file), target)
            else:
                session.journal.log_artifact(run_id, str(path), None)
    # Metrics the cell logged itself (mlflow.log_metric) count too, for the panel's table.
    summary = {**session.journal.latest_metrics(run_id), **metrics_now, **{k: v[-1] for k, v in histories.items() if v}}
    record.metrics.update(summary)
    record.params.update(params)
    for note in notes:
        print(f"dbxml: {note}", file=sys.stderr)


def _settle(session: Session, run_id: str) -> None:
    """The cell ends once its writes are on disk; with wait_at_cell_end it waits (bounded) for
    them to reach the primary store. Either way, a store known to be failing is named."""
    journal = session.journal
    if session.settings.wait_at_cell_end and journal.flush(run_id, primary_only=True):
        return
    primary = session.link.primary.display
    error = next((s["last_error"] for s in journal.status() if s["target"] == primary), None)
    previous = session.runs[-2] if len(session.runs) > 1 else None
    waiting_since = journal.waiting_since(primary)
    behind = waiting_since is not None and time.time() - waiting_since > session.settings.shutdown_flush_timeout
    if not error and behind and previous is not None and journal.owns(previous.run_id):
        # Back-pressure: a cell never waits for its own run, and waits for the one before it
        # only once the shipper has fallen behind (a write older than a kernel exit's flush
        # still unsent), so the backlog stays about what an exit can ship in time.
        journal.flush(previous.run_id, primary_only=True)
    if error:
        print(
            f"dbxml: {primary} is not reachable ({error}); {journal.pending(run_id)} writes of run {run_id} are "
            "kept in the journal and will be retried (see %aml_sync).",
            file=sys.stderr,
        )
    elif session.settings.wait_at_cell_end and session.settings.flush_timeout > 0:
        print(
            f"dbxml: {primary} is slow; {journal.pending(run_id)} writes of run {run_id} are still being sent "
            "in the background (see %aml_sync).",
            file=sys.stderr,
        )


def _as_series(value):
    """A float for a number, a list of floats for a sequence of numbers, else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        try:
            return float(value.item())
        except (TypeError, ValueError):
            return None
    if isinstance(value, (str, bytes, dict)):
        return None
    try:
        values = [float(v) for v in list(value)]
    except (TypeError, ValueError):
        return None
    return values

"""MLflow's own run calls inside a %%track cell, so the MLflow code people already have runs unchanged.

For the duration of one cell, `start_run`, `end_run` and `set_experiment` are replaced, in
`mlflow` and in `mlflow.tracking.fluent` (whose `ActiveRun.__exit__` calls `end_run` there), by
versions that know the cell's run (`mlflow/tracking/fluent.py`, MLflow 2.13 to 3.x):

- `start_run()` without `nested` (any `run_name`, `tags`, `description`), or with the cell's
  `run_id`, continues the cell's run: the name, tags and description are applied to it and its
  `with` block does not end it. A second top-level `start_run()` after the first one ended (a
  loop over settings) starts a child of the cell's run instead.
- `start_run(nested=True)` (or `parent_run_id=` the cell's run) makes a child, always in the
  cell's experiment, so a cell's runs are never split across experiments.
- `end_run()` of the cell's run only records the status it asks for; the cell ends its run after
  logging its outcome.
- `set_experiment` / `experiment_id=` naming another experiment than the cell's: one line.

What was there before is put back when the cell ends, whichever way it ends; children the
cell left open are ended with the cell's status, so no run stays active.
"""

import functools
import inspect
import sys
import threading

from .errors import TrackError

__all__ = ["CellRuns"]

_REPLACED = ("start_run", "end_run", "set_experiment")
_NOTE_TAG = "mlflow.note.content"  # MLflow's tag for a run's description


class CellRuns:
    """Context manager: MLflow's run calls made by the code of one tracked cell."""

    def __init__(self, run_id: str, experiment_id: str, experiment_name: str, rename=None):
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.experiment_name = experiment_name
        self.status: str | None = None  # FAILED/KILLED the cell asked for its own run
        self._rename = rename
        self._thread = threading.get_ident()
        self._claimed = False  # a start_run() of the cell holds the cell's run ...
        self._released = False  # ... and has let it go (its `with` block ended, or end_run())
        self._noted: set[str] = set()
        self._found: list[tuple[object, str, object]] = []
        self._originals: dict[str, object] = {}

    # ------------------------------------------------------------------ scope
    def __enter__(self) -> "CellRuns":
        import mlflow
        from mlflow.tracking import fluent

        for name in _REPLACED:
            self._originals[name] = getattr(fluent, name)
            for module in (mlflow, fluent):
                self._found.append((module, name, getattr(module, name)))
        self._signature = inspect.signature(self._originals["start_run"])
        # Put in place only once everything is read: a failure above leaves MLflow untouched.
        for module, name, _ in self._found:
            setattr(module, name, getattr(self, f"_{name}"))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for module, name, found in reversed(self._found):
            setattr(module, name, found)
        self._found.clear()
        self._end_children(_status_of(exc_type))

    def _end_children(self, status: str) -> None:
        """End the runs the cell started under its run and left active (plain MLflow would leave
        them RUNNING, and the cell's own end_run would end the wrong run)."""
        import mlflow

        ids = [run.info.run_id for run in _run_stack()]
        if self.run_id not in ids:
            return
        for _ in ids[ids.index(self.run_id) + 1 :]:
            mlflow.end_run(status)

    def _mine(self) -> bool:
        return threading.get_ident() == self._thread

    def _note(self, text: str) -> None:
        if text not in self._noted:
            self._noted.add(text)
            print(f"dbxml: {text}", file=sys.stderr)

    # ------------------------------------------------------------------ replacements
    def _start_run(self, *args, **kwargs):
        original = self._originals["start_run"]
        if not self._mine():
            return original(*args, **kwargs)
        call = self._signature.bind(*args, **kwargs).arguments
        run_id = call.get("run_id")
        experiment_id = call.get("experiment_id")
        if experiment_id is not None and str(experiment_id) != self.experiment_id:
            self._note(
                f"mlflow.start_run(experiment_id={experiment_id!r}) in a %%track cell: its runs stay in the cell's "
                f"experiment {self.experiment_name!r}. To track the cell in another experiment: %%track --experiment NAME"
            )
        if run_id == self.run_id:
            return self._continue(call)
        child = call.get("nested") or call.get("parent_run_id")
        if not child and run_id is None and self._claimed and self._released:
            self._note(
                "a second mlflow.start_run() in this %%track cell: each further run is a child of the cell's run "
                f"{self.run_id} (%%track --sweep runs a cell once per setting)"
            )
            child = True
        if child:
            call["nested"] = True
            if run_id is None:
                call["experiment_id"] = self.experiment_id
            return original(**call)
        if run_id is not None:
            raise TrackError(
                f"mlflow.start_run(run_id={run_id!r}) in a %%track cell: the cell's run {self.run_id} is active. "
                "Remove run_id to continue the cell's run, pass nested=True, or run this cell without %%track."
            )
        return self._continue(call)

    def _continue(self, call: dict):
        """The cell's run, with the name, tags and description this start_run() asked for."""
        from mlflow import MlflowClient
        from mlflow.entities import RunTag

        client = MlflowClient()
        name = call.get("run_name")
        tags = {key: str(value) for key, value in (call.get("tags") or {}).items()}
        if call.get("description"):
            tags[_NOTE_TAG] = str(call["description"])
        if name:
            client.update_run(self.run_id, name=name)
            if self._rename is not None:
                self._rename(name)
        if tags:
            client.log_batch(self.run_id, metrics=[], params=[], tags=[RunTag(k, v) for k, v in tags.items()])
        self._claimed, self._released = True, False
        return _continued_run_class()(client.get_run(self.run_id), self)

    def _end_run(self, status: str = "FINISHED") -> None:
        import mlflow

        active = mlflow.active_run()
        if not self._mine() or active is None or active.info.run_id != self.run_id:
            return self._originals["end_run"](status)
        self._release(status)
        return None

    def _release(self, status: str) -> None:
        self._released = self._claimed
        if status != "FINISHED":
            self.status = status

    def _set_experiment(self, *args, **kwargs):
        experiment = self._originals["set_experiment"](*args, **kwargs)
        if self._mine() and experiment.experiment_id != self.experiment_id:
            self._note(
                f"mlflow.set_experiment({experiment.name!r}) in a %%track cell: this cell's runs stay in experiment "
                f"{self.experiment_name!r} (the cell's run started before the cell). To track the cell there: "
                f"%%track --experiment {experiment.name}"
            )
        return experiment


def _run_stack() -> list:
    from mlflow.tracking import fluent

    stack = fluent._active_run_stack
    return stack.get() if hasattr(stack, "get") else stack  # a thread-local holder since MLflow 2.10


@functools.cache
def _continued_run_class():
    from mlflow.tracking.fluent import ActiveRun

    class ContinuedRun(ActiveRun):
        """What start_run() returns for the cell's run: leaving its `with` block does not end it."""

        def __init__(self, run, scope: CellRuns):
            super().__init__(run)
            self._scope = scope

        def __exit__(self, exc_type, exc_val, exc_tb):
            self._scope._release(_status_of(exc_type))
            return exc_type is None

    return ContinuedRun


def _status_of(exc_type) -> str:
    """The status MLflow gives a run whose block ended with `exc_type` (None: no exception)."""
    if exc_type is None:
        return "FINISHED"
    return "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"

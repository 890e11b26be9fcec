"""%%track --sweep: the cell once per combination of values, each a child run of one parent run.

The parent records the sweep (`dbxml.sweep*` tags, `sweep.json`) and, with `--metric`, the best
child. A combination that fails ends its child FAILED and the sweep goes on; an interrupt ends
the running child KILLED, the parent KILLED, and lists the combinations that were not run.
"""

import itertools
import json
import numbers
import random
import sys
import time
from dataclasses import dataclass, field, replace

from .errors import TrackError
from .masking import first_line
from .session import RunRecord, Session
from .tracking import TrackRequest, end_tracked_run, prepare_cell, run_tracked_cell, start_tracked_run
from .userns import literal, parse_assignment

__all__ = ["SweepRequest", "run_sweep", "best_child"]

GOALS = ("min", "max")
NOT_RUN = "NOT_RUN"


@dataclass
class SweepRequest:
    """The sweep part of a %%track line: `--sweep NAME=V1,V2 ... [--random N] [--metric M --goal G]`."""

    values: list[str]
    random: int | None = None
    metric: str | None = None
    goal: str | None = None


def run_sweep(session: Session, shell, request: TrackRequest, sweep: SweepRequest, cell: str):
    """Run the sweep; returns its table (a pandas DataFrame: one row per combination)."""
    __tracebackhide__ = True  # noqa: F841
    axes = _axes(sweep.values)
    if sweep.metric and sweep.goal not in GOALS:
        raise TrackError(f"--metric {sweep.metric} needs --goal min or --goal max (which {sweep.metric} is best).")
    if sweep.goal and not sweep.metric:
        raise TrackError("--goal needs --metric: the metric whose best child the parent records. Example: --metric r2 --goal max")
    if sweep.random is not None and sweep.random < 1:
        raise TrackError(f"--random expects a number of combinations >= 1, got {sweep.random}.")
    combinations = _combinations(axes, sweep.random)
    prepare_cell(shell, request, cell)  # a syntax error or a bad option: one line, no parent run

    spec = " ".join(f"{name}={','.join(map(repr, values))}" for name, values in axes.items())
    tags = {"dbxml.sweep": spec[:5000], "dbxml.sweep.size": str(len(combinations))}
    if sweep.metric:
        tags.update({"dbxml.sweep.metric": sweep.metric, "dbxml.sweep.goal": sweep.goal})
    parent = start_tracked_run(session, request, tags)
    parent.best_by = (sweep.metric, sweep.goal) if sweep.metric else None  # for the panel's sweep row
    if request.log_source:
        session.journal.log_text(parent.run_id, cell, "cell.py")
    children = [_Child(values) for values in combinations]
    status, error = "FINISHED", None
    try:
        for child in children:
            started = len(session.runs)
            try:
                run_tracked_cell(session, shell, replace(request, name=child.run_name(parent), nested=True, inputs=child.values), cell)
            except KeyboardInterrupt:
                child.record(session.runs[started:], parent, "KILLED", "interrupted")
                raise
            except Exception as exc:  # noqa: BLE001 - one combination failing does not stop the sweep
                child.record(session.runs[started:], parent, "FAILED", f"{type(exc).__name__}: {first_line(exc)}")
                print(f"dbxml: sweep {parent.name!r}: {child.label} failed ({child.error}); going on.", file=sys.stderr)
            else:
                child.record(session.runs[started:], parent, "FINISHED")
    except KeyboardInterrupt:
        status, error = "KILLED", "interrupted"
        raise
    except BaseException as exc:
        status, error = "FAILED", first_line(exc)
        raise
    else:
        if not any(child.status == "FINISHED" for child in children):
            status, error = "FAILED", "every combination failed"
    finally:
        _finish(session, parent, children, sweep, status, error)
    return _table(children, sweep.metric)


@dataclass
class _Child:
    """One combination of the sweep and what became of it."""

    values: dict
    status: str = NOT_RUN
    run_id: str | None = None
    error: str | None = None
    metrics: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return " ".join(f"{name}={value!r}" for name, value in self.values.items())

    def run_name(self, parent: RunRecord) -> str:
        """`tune[alpha=0.1,max_iter=300]`: one word, so `%aml_rerun` takes it as typed."""
        return f"{parent.name}[{','.join(f'{name}={value!r}' for name, value in self.values.items())}]"

    def record(self, new_runs: list[RunRecord], parent: RunRecord, status: str, error: str | None = None) -> None:
        """Take the outcome from the child run just made (none when the run could not start)."""
        run = next((r for r in new_runs if r.parent_run_id == parent.run_id), None)
        if run is not None:
            self.run_id, self.metrics = run.run_id, dict(run.metrics)
            status = run.status if run.status != "RUNNING" else status
        self.status, self.error = status, error

    def as_dict(self) -> dict:
        return {"values": self.values, "status": self.status, "run_id": self.run_id, "error": self.error, "metrics": self.metrics}


def _axes(items: list[str]) -> dict[str, list]:
    """`alpha=0.01,0.1 solver=lbfgs,saga` -> {"alpha": [0.01, 0.1], "solver": ["lbfgs", "saga"]}."""
    axes: dict[str, list] = {}
    for item in items:
        name, text = parse_assignment(item, "--sweep", TrackError)
        values = [literal(part) for part in _split_values(text)]
        if not values or any(part.strip() == "" for part in _split_values(text)):
            raise TrackError(f"--sweep {item!r}: give comma-separated values. Example: --sweep {name}=0.01,0.1,1")
        if name in axes:
            raise TrackError(f"--sweep names {name!r} twice: give all its values once, e.g. {name}=1,2,3")
        axes[name] = values
    return axes


def _split_values(text: str) -> list[str]:
    """Split at commas outside brackets and quotes, so `(10,),(20, 10)` gives two tuples."""
    parts, depth, quote, start = [], 0, None, 0
    for index, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _combinations(axes: dict[str, list], sample: int | None) -> list[dict]:
    """The grid in order, or `sample` of its combinations drawn without repeats (the grid is not built)."""
    names, sizes = list(axes), [len(values) for values in axes.values()]
    total = 1
    for size in sizes:
        total *= size
    if sample is None or sample >= total:
        return [dict(zip(names, values)) for values in itertools.product(*axes.values())]
    combinations = []
    for index in random.sample(range(total), sample):
        combination = {}
        for name, size in zip(reversed(names), reversed(sizes)):
            index, position = divmod(index, size)
            combination[name] = axes[name][position]
        combinations.append({name: combination[name] for name in names})
    return combinations


def best_child(children: list, metric: str, goal: str):
    """The finished child with the best numeric `metric` (children: _Child or RunRecord), or None."""
    scored = [c for c in children if c.status == "FINISHED" and isinstance(c.metrics.get(metric), numbers.Real)]
    if not scored:
        return None
    return (max if goal == "max" else min)(scored, key=lambda c: c.metrics[metric])


def _finish(session: Session, parent: RunRecord, children: list[_Child], sweep: SweepRequest, status: str, error) -> None:
    """Record the sweep on the parent (table, best child, what was not run), end it, say how it went."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    counts = {s: sum(c.status == s for c in children) for s in ("FINISHED", "FAILED", "KILLED", NOT_RUN)}
    tags = {f"dbxml.sweep.{s.lower()}": str(n) for s, n in counts.items() if n}
    metrics = []
    summary = f"sweep {parent.name!r}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    best = best_child(children, sweep.metric, sweep.goal) if sweep.metric else None
    if best is not None:
        value = float(best.metrics[sweep.metric])
        tags.update({"dbxml.sweep.best_run_id": best.run_id, "dbxml.sweep.best": best.label[:5000]})
        metrics.append(Metric(sweep.metric, value, int(time.time() * 1000), 0))
        parent.metrics[sweep.metric] = value
        summary += f"; best {sweep.metric} = {value:g} with {best.label} (run {best.run_id})"
    elif sweep.metric:
        summary += f"; no finished combination logged a metric {sweep.metric!r}"
    not_run = [c.label for c in children if c.status == NOT_RUN]
    if not_run:
        summary += f"; not run: {'; '.join(not_run)}"
    try:
        MlflowClient().log_batch(parent.run_id, metrics=metrics, params=[], tags=[RunTag(k, v) for k, v in tags.items()])
        table = json.dumps([c.as_dict() for c in children], indent=1, default=repr)
        session.journal.log_text(parent.run_id, table, "sweep.json")
    finally:
        end_tracked_run(session, parent, status, error)
    print(summary, file=sys.stderr if status != "FINISHED" else sys.stdout)


def _table(children: list[_Child], metric: str | None):
    import pandas as pd

    records = []
    for child in children:
        record = {**child.values, "status": child.status}
        if metric:
            record[metric] = child.metrics.get(metric)
        records.append({**record, "run_id": child.run_id, "error": child.error})
    return pd.DataFrame.from_records(records)

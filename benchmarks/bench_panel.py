"""Cost of one new run in the live panel with 10 vs 1,000 runs already in the session.

The panel must change only what a run changed (one new row, the oldest visible row out)
rather than rebuild the table, so the cost per new run should not grow with the session.
Each new run goes through the Session's real API (add_run, then update_run to FINISHED),
with the panel subscribed, exactly as %%track drives it. Widget state is serialized as
it would be for a frontend (ipywidgets serializes even without a kernel).

Prints per-run costs and their ratio (1,000 runs / 10 runs); ~1 means no growth.
Run: .venv/bin/python benchmarks/bench_panel.py
"""

import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dbxml_magics.config import Settings  # noqa: E402
from dbxml_magics.panel import SessionPanel  # noqa: E402
from dbxml_magics.session import RunRecord, Session  # noqa: E402

NEW_RUNS = 200


def _record(index: int) -> RunRecord:
    return RunRecord(
        run_id=uuid.uuid4().hex,
        name=f"run-{index}",
        experiment_id="0",
        experiment="Default",
        target="sqlite:///bench/mlflow.db",
    )


def _finish(session: Session, record: RunRecord, index: int) -> None:
    record.metrics.update({"accuracy": 0.5 + index % 50 / 100, "loss": 1 / (index + 1), "f1": 0.7})
    session.update_run(record, status="FINISHED", end_time=time.time())


def cost_per_new_run(existing: int, folder: Path) -> float:
    """Median seconds the panel adds to one run's start + end, with `existing` runs before it."""
    settings = Settings(store_dir=str(folder / f"s{existing}"), key_metrics=["accuracy"])
    session = Session(settings)
    panel = SessionPanel(session)
    for index in range(existing):
        _finish(session, session.add_run(_record(index)), index)
    timings = []
    for index in range(existing, existing + NEW_RUNS):
        record = _record(index)
        started = time.perf_counter()
        session.add_run(record)
        _finish(session, record, index)
        timings.append(time.perf_counter() - started)
    assert len(panel.runs.box.children) == min(panel.runs.limit, existing + NEW_RUNS)
    panel.close()
    return statistics.median(timings)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cost_per_new_run(10, folder)  # warm-up: imports, first widget classes
        small = cost_per_new_run(10, folder)
        large = cost_per_new_run(1000, folder)
    print(f"panel update per new run, 10 runs in session:    {small * 1000:.2f} ms")
    print(f"panel update per new run, 1,000 runs in session: {large * 1000:.2f} ms")
    print(f"ratio (1,000 runs / 10 runs): {large / small:.2f}x")


if __name__ == "__main__":
    main()

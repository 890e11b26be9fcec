"""What the live panel costs: a new run with 10 vs 1,000 runs in the session, and a cell
logging 10,000 points with the panel closed vs open (its row live, and with the inspector
redrawing the running run's plots).

The panel must change only what a run changed (one new row, the oldest visible row out)
rather than rebuild the table, so the cost per new run should not grow with the session.
Each new run goes through the Session's real API (add_run, then update_run to FINISHED),
with the panel subscribed, exactly as %%track drives it. Widget state is serialized as
it would be for a frontend (ipywidgets serializes even without a kernel).

Prints per-run costs and their ratio (1,000 runs / 10 runs); ~1 means no growth. The live
part runs real `%%track` cells (embedded store, journal) in an IPython shell; the SPEC's
bound is open / closed <= 1.2x.
Run: .venv/bin/python benchmarks/bench_panel.py
"""

import os
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
POINTS = 10_000
LIVE_CELL = """
import mlflow
if WATCH:
    from dbxml_magics.panel import live_panel
    from dbxml_magics.session import get_session
    live_panel(get_session()).inspect(mlflow.active_run().info.run_id).result()
for step in range(POINTS):
    mlflow.log_metric("loss", 1 / (step + 1), step=step)
"""


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


def live_cell_seconds(shell, folder: Path, mode: str) -> float:
    """Seconds of one tracked cell logging POINTS metric points; mode: closed, open, inspector."""
    from dbxml_magics.panel import close_panel, live_panel
    from dbxml_magics.session import get_session

    folder.mkdir(parents=True)
    os.chdir(folder)
    shell.run_line_magic("load_ext", "dbxml_magics")
    session = get_session(shell)
    if mode != "closed":
        live_panel(session)
    shell.user_ns.update(WATCH=mode == "inspector", POINTS=POINTS)
    started = time.perf_counter()
    shell.run_cell_magic("track", f"bench-{mode}", LIVE_CELL)
    seconds = time.perf_counter() - started
    assert session.runs[-1].status == "FINISHED", session.runs[-1].error
    if mode == "inspector":
        # The ended run is read back from the store in the background: let that finish here,
        # untimed, rather than in the next mode's cell.
        live_panel(session).inspector.pending.result(timeout=300)
    session.journal.flush(timeout=300)  # every mode's shipping done before the next cell
    close_panel(session)
    shell.run_line_magic("unload_ext", "dbxml_magics")
    return seconds


def live_costs(folder: Path, rounds: int = 5) -> dict[str, float]:
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython()
    home = os.getcwd()
    timings: dict[str, list[float]] = {"closed": [], "open": [], "inspector": []}
    live_cell_seconds(shell, folder / "warm-up", "inspector")
    for round_ in range(rounds):  # interleaved, so a busy moment of the machine hits all modes
        for mode in timings:
            timings[mode].append(live_cell_seconds(shell, folder / f"{mode}-{round_}", mode))
    os.chdir(home)  # the folders go with the temporary directory
    return {mode: statistics.median(values) for mode, values in timings.items()}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cost_per_new_run(10, folder)  # warm-up: imports, first widget classes
        small = cost_per_new_run(10, folder)
        large = cost_per_new_run(1000, folder)
        live = live_costs(folder / "live")
    print(f"panel update per new run, 10 runs in session:    {small * 1000:.2f} ms")
    print(f"panel update per new run, 1,000 runs in session: {large * 1000:.2f} ms")
    print(f"ratio (1,000 runs / 10 runs): {large / small:.2f}x")
    print(f"cell logging {POINTS:,} points, panel closed:                  {live['closed']:.2f} s")
    print(f"cell logging {POINTS:,} points, panel open (live row):         {live['open']:.2f} s")
    print(f"cell logging {POINTS:,} points, panel open, inspector on it:   {live['inspector']:.2f} s")
    print(f"ratio open / closed: {live['open'] / live['closed']:.2f}x; "
          f"with the inspector: {live['inspector'] / live['closed']:.2f}x (bound 1.2x)")


if __name__ == "__main__":
    main()

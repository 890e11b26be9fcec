"""What the live panel costs: a new run with 10 vs 1,000 runs in the session, and a cell
logging 10,000 points with the panel closed vs open (its row live, and with the inspector
redrawing the running run's plots).

The panel must change only what a run changed (one new row, the oldest visible row out)
rather than rebuild the table, so the cost per new run should not grow with the session.
Each new run goes through the Session's real API (add_run, then update_run to FINISHED),
with the panel subscribed, exactly as %%track drives it. Widget state is serialized as
it would be for a frontend (ipywidgets serializes even without a kernel).

Prints per-run costs and their ratio (1,000 runs / 10 runs); ~1 means no growth. The live
part runs real `%%track` cells (embedded store, journal) in an IPython shell, modes
alternating per round; the SPEC's bound is open / closed <= 1.2x. CPU seconds of the process
are printed next to wall seconds: on a shared machine they vary much less.
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


def live_cell_seconds(shell, folder: Path, mode: str) -> tuple[float, float]:
    """Wall and CPU seconds (the whole process: cell, journal shipper, panel threads) of one
    tracked cell logging POINTS metric points; mode: closed, open, inspector."""
    from dbxml_magics.panel import close_panel, live_panel
    from dbxml_magics.session import get_session

    folder.mkdir(parents=True)
    os.chdir(folder)
    shell.run_line_magic("load_ext", "dbxml_magics")
    session = get_session(shell)
    if mode != "closed":
        live_panel(session)
    shell.user_ns.update(WATCH=mode == "inspector", POINTS=POINTS)
    started, cpu = time.perf_counter(), time.process_time()
    shell.run_cell_magic("track", f"bench-{mode}", LIVE_CELL)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert session.runs[-1].status == "FINISHED", session.runs[-1].error
    if mode == "inspector":
        # The ended run is read back from the store in the background: let that finish here,
        # untimed, rather than in the next mode's cell.
        live_panel(session).inspector.pending.result(timeout=300)
    session.journal.flush(timeout=300)  # every mode's shipping done before the next cell
    close_panel(session)
    shell.run_line_magic("unload_ext", "dbxml_magics")
    return seconds, cpu


MODES = ("closed", "open", "inspector")


def live_costs(folder: Path, rounds: int = 7) -> dict[str, dict[str, float]]:
    """Per mode: median wall and CPU seconds, and the median over rounds of the ratio to the
    closed panel in the same round (the order alternating, so a busy minute of the shared
    machine weighs on every mode alike)."""
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython()
    home = os.getcwd()
    wall: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
    live_cell_seconds(shell, folder / "warm-up", "inspector")
    for round_ in range(rounds):
        for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
            seconds, cpu_seconds = live_cell_seconds(shell, folder / f"{mode}-{round_}", mode)
            wall[mode].append(seconds)
            cpu[mode].append(cpu_seconds)
    os.chdir(home)  # the folders go with the temporary directory
    return {
        mode: {
            "wall": statistics.median(wall[mode]),
            "cpu": statistics.median(cpu[mode]),
            "ratio": statistics.median(w / c for w, c in zip(wall[mode], wall["closed"])),
            "cpu_ratio": statistics.median(w / c for w, c in zip(cpu[mode], cpu["closed"])),
        }
        for mode in MODES
    }


def main() -> None:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cost_per_new_run(10, folder)  # warm-up: imports, first widget classes
        small = cost_per_new_run(10, folder)
        large = cost_per_new_run(1000, folder)
        live = live_costs(folder / "live")
    print(f"load average at start / end: {load:.1f} / {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    print(f"panel update per new run, 10 runs in session:    {small * 1000:.2f} ms")
    print(f"panel update per new run, 1,000 runs in session: {large * 1000:.2f} ms")
    print(f"ratio (1,000 runs / 10 runs): {large / small:.2f}x")
    labels = {"closed": "panel closed", "open": "panel open (live row)", "inspector": "panel open, inspector on it"}
    for mode in MODES:
        cost = live[mode]
        print(
            f"cell logging {POINTS:,} points, {labels[mode]:<28} {cost['wall']:.2f} s wall, {cost['cpu']:.2f} s CPU; "
            f"vs closed {cost['ratio']:.2f}x wall, {cost['cpu_ratio']:.2f}x CPU"
        )
    print("bound: open / closed <= 1.2x (ratios are medians of the per-round ratios)")


if __name__ == "__main__":
    main()

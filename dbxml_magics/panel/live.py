"""Live metrics while a tracked cell runs: its row and the open inspector, at most twice a second.

Everything shown comes from what the journal has already accepted in this process
(`Journal.live_history`), so watching a run costs the store nothing. The updates run on
one daemon thread of the panel; ipykernel hands comm messages from any thread to its IOPub
thread, and the table's and inspector's locks keep this thread and the kernel's from
interleaving changes to one widget. The thread ends when no run is running and starts
again with the next run.
"""

import threading
import time

from ..session import Session
from .text import live_text

__all__ = ["LiveUpdates", "INTERVAL"]

# Rows: at most twice a second, as the SPEC asks.
INTERVAL = 0.5
# Share of the time the inspector's plots may take: drawing holds the GIL the training cell
# needs, so plots are redrawn less often than rows when drawing is slow (measured in
# benchmarks/bench_panel.py).
PLOT_SHARE = 0.04
# ...but a watched run's plots are never older than this.
MAX_PLOT_WAIT = 10.0


class LiveUpdates:
    """The panel's updater thread for running runs."""

    def __init__(self, session: Session, runs, inspector, report):
        self.session = session
        self.runs = runs
        self.inspector = inspector
        self.report = report
        self.ticks = 0  # passes that changed something (for tests and the benchmark)
        self._seen: dict[str, tuple[int, bool]] = {}  # run id -> (points, inspector shown) at the last pass
        self._plotted: dict[str, int] = {}  # run id -> points when its plots were last drawn
        self._next_plot = 0.0  # monotonic time the inspector's plots may be drawn again
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """A run started: make sure the thread runs."""
        with self._lock:
            if self._stop.is_set() or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(target=self._loop, name="dbxml-panel-live", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                running = self._running()
                if not running:
                    self._thread = None
                    return
            try:
                for record in running:
                    self.update(record)
            except Exception as exc:  # noqa: BLE001 - shown in the panel, never lost in a thread
                self.report(exc)
            self._stop.wait(INTERVAL)

    def _running(self) -> list:
        if not self.session.journal_started:
            return []
        return [record for record in self.session.runs[-50:] if record.status == "RUNNING"]

    def update(self, record) -> bool:
        """One pass for one running run; False when nothing new was logged."""
        history = self.session.journal.live_history(record.run_id)
        if not history or record.status != "RUNNING":
            return False
        shown = self.inspector.run_id == record.run_id
        count = sum(len(points) for points in history.values())
        changed = self._seen.get(record.run_id) != (count, shown)
        if changed:
            self._seen[record.run_id] = (count, shown)
            self.runs.show_live(record.run_id, live_text(history, self.session.settings))
            if shown:
                self.inspector.show_live(record, history)
        started = time.monotonic()
        if shown and self._plotted.get(record.run_id) != count and started >= self._next_plot:
            self.inspector.show_live_plots(record, history)
            self._plotted[record.run_id] = count
            spent = time.monotonic() - started
            self._next_plot = started + min(MAX_PLOT_WAIT, spent / PLOT_SHARE)
            changed = True
        self.ticks += changed
        return changed

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

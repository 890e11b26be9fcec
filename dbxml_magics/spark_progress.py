"""Visible progress of the Spark jobs a magic runs: a widget in a notebook, text in a terminal.

Spark's own console bar goes to the kernel's stderr, which a notebook never shows. Here the
jobs of one block are grouped (a job group on classic Spark, a tag on Spark Connect) so
that only they are followed, a KeyboardInterrupt cancels exactly them, and their task
counts reach the user:
- classic: a thread polls `SparkContext.statusTracker()` for the group's jobs and stages;
- Spark Connect: the client's progress handler receives stage counts with each response.
Nothing appears for jobs shorter than `show_after` seconds.
"""

import sys
import threading
import time
import uuid
from dataclasses import dataclass, replace

from .spark_session import is_connect

__all__ = ["JobProgress", "Snapshot", "TextView", "WidgetView", "default_view"]


@dataclass(frozen=True)
class Snapshot:
    """Task counts over every stage seen so far, and the time since the block began."""

    done_tasks: int
    total_tasks: int
    done_stages: int
    total_stages: int
    elapsed: float
    unit: str = "tasks"  # the local engine counts rows, in no stages

    def text(self) -> str:
        if not self.total_tasks:
            return f"running, {self.elapsed:.0f} s"
        stages = f"{self.done_stages}/{self.total_stages} stages, " if self.total_stages else ""
        return f"{self.done_tasks:,}/{self.total_tasks:,} {self.unit}, {stages}{self.elapsed:.0f} s"


class TextView:
    """Plain lines on a stream, at most one every `every` seconds (terminals, logs)."""

    def __init__(self, label: str, stream=None, every: float = 2.0):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self._last_time = 0.0

    def update(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        if self._last_time and now - self._last_time < self.every:
            return
        self._last_time = now
        print(f"dbxml: {self.label}: {snapshot.text()}", file=self.stream, flush=True)

    def finish(self, snapshot: Snapshot, ok: bool) -> None:
        outcome = "done" if ok else "stopped"
        print(f"dbxml: {self.label}: {outcome}, {snapshot.text()}", file=self.stream, flush=True)


class WidgetView:
    """An ipywidgets progress bar with a caption, updated in place."""

    def __init__(self, label: str):
        import ipywidgets as widgets
        from IPython.display import display

        self.label = label
        self.bar = widgets.IntProgress(value=0, min=0, max=1, bar_style="info", layout=widgets.Layout(width="40%"))
        self.caption = widgets.Label(value=f"{label}: starting")
        self.box = widgets.HBox([self.bar, self.caption])
        display(self.box)

    def update(self, snapshot: Snapshot) -> None:
        self.bar.max = max(1, snapshot.total_tasks)
        self.bar.value = min(snapshot.done_tasks, self.bar.max)
        self.caption.value = f"{self.label}: {snapshot.text()}"

    def finish(self, snapshot: Snapshot, ok: bool) -> None:
        self.update(snapshot)
        if ok:
            self.bar.value = self.bar.max
        self.bar.bar_style = "success" if ok else "danger"
        self.caption.value = f"{self.label}: {'done' if ok else 'stopped'}, {snapshot.text()}"


def default_view(label: str):
    """A widget when a notebook front end is attached, else text on stderr."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None and getattr(shell, "kernel", None) is not None:
            return WidgetView(label)
    except ImportError:
        pass
    return TextView(label)


class JobProgress:
    """`with JobProgress(spark, label):` follows, shows, and on interrupt cancels the block's jobs."""

    def __init__(self, spark, label: str, show_after: float = 1.0, interval: float = 0.5, view_factory=default_view):
        self.spark = spark
        self.label = label
        self.show_after = show_after
        self.interval = interval
        self.view_factory = view_factory
        self.group = f"dbxml-{uuid.uuid4().hex[:12]}"
        self.view = None
        self._view_tried = False
        self._connect = is_connect(spark)
        self._stages: dict[int, tuple[int, int, bool]] = {}  # stage id -> (tasks, done tasks, finished)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved_properties: dict[str, str | None] = {}
        self._started = 0.0

    # -------------------------------------------------------------- context
    def __enter__(self) -> "JobProgress":
        self._started = time.monotonic()
        if self._connect:
            self.spark.addTag(self.group)
            self.spark.registerProgressHandler(self._on_connect_progress)
        else:
            context = self.spark.sparkContext
            for key in ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel"):
                self._saved_properties[key] = context.getLocalProperty(key)
            context.setJobGroup(self.group, self.label, interruptOnCancel=True)
        self._thread = threading.Thread(target=self._watch, name="dbxml-spark-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            if exc_type is KeyboardInterrupt:
                self._cancel()
        finally:
            self._release()
        if self.view is not None:
            self._poll()
            final = self.snapshot()
            if exc_type is None:
                # Success means every stage that had to run ran: stages Spark skipped (their
                # output was cached) and a Connect report that missed the last tasks count as done.
                final = replace(final, done_tasks=final.total_tasks, done_stages=final.total_stages)
            self._safely(self.view.finish, final, exc_type is None)
        return False

    # -------------------------------------------------------------- state
    def snapshot(self) -> Snapshot:
        with self._lock:
            stages = list(self._stages.values())
        return Snapshot(
            done_tasks=sum(done for _, done, _ in stages),
            total_tasks=sum(total for total, _, _ in stages),
            done_stages=sum(1 for total, done, finished in stages if finished or (total and done >= total)),
            total_stages=len(stages),
            elapsed=time.monotonic() - self._started,
        )

    def _on_connect_progress(self, stages, inflight_tasks, operation_id, done) -> None:
        with self._lock:
            for stage in stages or ():
                self._stages[stage.stage_id] = (stage.num_tasks, stage.num_completed_tasks, stage.done)

    def _poll(self) -> None:
        if self._connect:
            return
        try:
            tracker = self.spark.sparkContext.statusTracker()
            seen = {}
            for job_id in tracker.getJobIdsForGroup(self.group):
                job = tracker.getJobInfo(job_id)
                for stage_id in job.stageIds if job else ():
                    stage = tracker.getStageInfo(stage_id)
                    if stage is not None:
                        seen[stage_id] = (stage.numTasks, stage.numCompletedTasks, False)
        except Exception:  # noqa: BLE001 - progress is best effort; the job itself reports failures
            return
        with self._lock:
            self._stages.update(seen)

    def _watch(self) -> None:
        # Nothing is asked of Spark before `show_after`: a short job pays no status calls,
        # and the first poll after it still sees every job of the group from its start.
        if self._stop.wait(self.show_after):
            return
        while True:
            self._poll()
            if not self._view_tried:
                self._view_tried = True
                self.view = self._safely(self.view_factory, self.label)
            if self.view is not None:
                self._safely(self.view.update, self.snapshot())
            if self._stop.wait(self.interval):
                return

    # -------------------------------------------------------------- cleanup
    def _cancel(self) -> None:
        if self._connect:
            self._safely(self.spark.interruptTag, self.group)
        else:
            self._safely(self.spark.sparkContext.cancelJobGroup, self.group)

    def _release(self) -> None:
        if self._connect:
            self._safely(self.spark.removeProgressHandler, self._on_connect_progress)
            self._safely(self.spark.removeTag, self.group)
            return
        context = self.spark.sparkContext
        for key, value in self._saved_properties.items():
            self._safely(context.setLocalProperty, key, value)

    @staticmethod
    def _safely(function, *args):
        try:
            return function(*args)
        except Exception:  # noqa: BLE001 - a display or cleanup hiccup must not fail the scoring
            return None

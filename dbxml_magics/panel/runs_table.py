"""The runs table: one row per run of the session, updated row by row as events arrive."""

import threading
from collections import deque

from ..session import Session
from .text import PAGE_SIZE, format_clock, format_duration, format_metrics
from .widgets import close_tree, guarded, status_html


class _Columns:
    """Layouts and styles shared by every row: one model each instead of one per cell."""

    WIDTHS = {
        "select": "32px", "name": "190px", "status": "90px", "start": "80px", "duration": "75px", "metrics": "300px", "versions": "200px",
    }

    def __init__(self):
        import ipywidgets as widgets
        from ipywidgets.widgets.widget_string import HTMLStyle, LabelStyle

        self.layouts = {name: widgets.Layout(width=width, overflow="hidden") for name, width in self.WIDTHS.items()}
        self.row = widgets.Layout(align_items="center", min_height="28px")
        self.button_style = widgets.ButtonStyle()
        self.label_style = LabelStyle()
        self.html_style = HTMLStyle()

    def heading(self):
        import ipywidgets as widgets

        cells = [
            widgets.HTML(f"<b>{name}</b>" if name != "select" else "", layout=self.layouts[name], style=self.html_style)
            for name in self.WIDTHS
        ]
        return widgets.HBox(cells, layout=self.row)


class RunRow:
    """One line of the runs table, refreshed in place from its RunRecord."""

    def __init__(self, record, settings, columns: _Columns, on_select, on_check):
        import ipywidgets as widgets

        self.record = record
        self.settings = settings
        layouts = columns.layouts
        self.live: str | None = None  # the latest metrics while the cell runs (see LiveUpdates)
        self.check = widgets.Checkbox(
            value=False, indent=False, description="", tooltip="Select to compare", layout=layouts["select"]
        )
        self.check.observe(lambda change: on_check(record.run_id, change["new"]), names="value")
        self.name = widgets.Button(
            description=record.name, tooltip=f"{record.name} ({record.run_id}): click for details",
            layout=layouts["name"], style=columns.button_style,
        )
        self.name.on_click(lambda _button: on_select(record.run_id))
        self.status = widgets.HTML(layout=layouts["status"], style=columns.html_style)
        self.start = widgets.Label(format_clock(record.start_time), layout=layouts["start"], style=columns.label_style)
        self.duration = widgets.Label(layout=layouts["duration"], style=columns.label_style)
        self.metrics = widgets.Label(layout=layouts["metrics"], style=columns.label_style)
        self.versions = widgets.Label(layout=layouts["versions"], style=columns.label_style)
        self.widget = widgets.HBox(
            [self.check, self.name, self.status, self.start, self.duration, self.metrics, self.versions], layout=columns.row
        )
        self.refresh()

    def refresh(self) -> None:
        # traitlets sends nothing for a value that did not change.
        record = self.record
        self.name.description = record.name
        self.status.value = status_html(record.status)
        self.duration.value = format_duration(record.duration)
        running = record.status == "RUNNING" and self.live is not None
        self.metrics.value = self.live if running else format_metrics(record, self.settings)
        self.versions.value = ", ".join(record.model_versions)

    def close(self) -> None:
        for widget in (self.check, self.name, self.status, self.start, self.duration, self.metrics, self.versions, self.widget):
            widget.close()


class RunsTable:
    """Runs of the session, newest first: a bounded window of rows, older pages on request."""

    def __init__(self, session: Session, on_select, report, on_compare=None, page_size: int = PAGE_SIZE):
        import ipywidgets as widgets

        self.session = session
        self.on_select = guarded(report, on_select)
        self.on_check = guarded(report, self._checked)
        self.checked: list[str] = []  # run ids ticked for comparison, in the order ticked
        self.page_size = page_size
        self.limit = page_size
        self.columns = _Columns()
        self.rows: dict[str, RunRow] = {}  # visible rows by run id
        self._order: deque[str] = deque()  # visible run ids, newest first
        self._lock = threading.RLock()
        self.box = widgets.VBox()
        self.count = widgets.Label()
        self.older = widgets.Button(description="Show older runs", tooltip=f"Show {page_size} more runs")
        self.older.on_click(guarded(report, lambda _button: self.show_older()))
        self.compare = widgets.Button(
            description="Compare selected", disabled=True, tooltip="Tick 2 to 10 runs, then compare them"
        )
        self.compare.on_click(guarded(report, lambda _button: on_compare(list(self.checked))))
        self.widget = widgets.VBox(
            [self.columns.heading(), self.box, widgets.HBox([self.count, self.older, self.compare])]
        )
        with self._lock:
            for record in self.session.runs[-self.limit :][::-1]:
                self._order.append(record.run_id)
                self.rows[record.run_id] = RunRow(record, self.session.settings, self.columns, self.on_select, self.on_check)
            self.box.children = tuple(self.rows[run_id].widget for run_id in self._order)
            self._update_count()

    def _checked(self, run_id: str, ticked: bool) -> None:
        from .compare import MAX_RUNS, MIN_RUNS

        if ticked and run_id not in self.checked:
            self.checked.append(run_id)
        elif not ticked and run_id in self.checked:
            self.checked.remove(run_id)
        count = len(self.checked)
        self.compare.disabled = not MIN_RUNS <= count <= MAX_RUNS
        self.compare.description = f"Compare selected ({count})" if count else "Compare selected"

    def _update_count(self) -> None:
        total = len(self.session.runs)
        shown = len(self._order)
        self.count.value = f"{total} runs" if shown == total else f"showing the newest {shown} of {total} runs"
        self.older.layout.display = None if shown < total else "none"

    def add(self, record) -> RunRow:
        """A run started: prepend its row; the oldest visible row leaves the window."""
        with self._lock:
            row = RunRow(record, self.session.settings, self.columns, self.on_select, self.on_check)
            self.rows[record.run_id] = row
            self._order.appendleft(record.run_id)
            children = (row.widget,) + self.box.children
            if len(self._order) > self.limit:
                dropped = self.rows.pop(self._order.pop())
                children = children[:-1]
                dropped.close()
            self.box.children = children
            self._update_count()
            return row

    def update(self, run_id: str) -> None:
        with self._lock:
            row = self.rows.get(run_id)
            if row is not None:
                row.refresh()

    def show_live(self, run_id: str, text: str) -> None:
        """The latest metrics of a running run (from the live updater's thread)."""
        with self._lock:
            row = self.rows.get(run_id)
            if row is not None and row.live != text:
                row.live = text
                row.refresh()

    def tick(self) -> None:
        """Running rows show their growing duration (called from the journal's flusher thread)."""
        with self._lock:
            for row in self.rows.values():
                if row.record.status == "RUNNING":
                    row.refresh()

    def show_older(self) -> None:
        """Append the next page of older runs below the visible ones."""
        with self._lock:
            runs = self.session.runs
            shown = len(self._order)
            start = max(0, len(runs) - shown - self.page_size)
            older = runs[start : len(runs) - shown][::-1]
            new_rows = []
            for record in older:
                row = RunRow(record, self.session.settings, self.columns, self.on_select, self.on_check)
                self.rows[record.run_id] = row
                self._order.append(record.run_id)
                new_rows.append(row.widget)
            self.limit = len(self._order)
            self.box.children = self.box.children + tuple(new_rows)
            self._update_count()

    def close(self) -> None:
        close_tree(self.widget)
        self.rows.clear()

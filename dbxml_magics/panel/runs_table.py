"""The runs table: one row per run of the session, updated row by row as events arrive.

A run with children in the session (a sweep's combinations, `%%track --nested`) is one row
that expands: it shows its children's count and best child, a toggle reveals their rows, and
its Compare button opens the compare view on them. Children are never top-level rows.
"""

import threading
from collections import deque

from ..session import Session
from .compat import description_tip, text_styles
from .text import PAGE_SIZE, format_clock, format_duration, format_metrics, group_text, ranked_children, run_tree
from .widgets import close_tree, guarded, status_html


class _Columns:
    """Layouts and styles shared by every row: one model each instead of one per cell."""

    WIDTHS = {
        "select": "32px", "name": "190px", "status": "90px", "start": "80px", "duration": "75px", "metrics": "300px", "versions": "200px",
    }
    GROUP_WIDTHS = {"toggle": "90px", "compare": "115px"}  # a parent row's controls, after its cells

    def __init__(self):
        import ipywidgets as widgets

        self.layouts = {
            name: widgets.Layout(width=width, overflow="hidden") for name, width in {**self.WIDTHS, **self.GROUP_WIDTHS}.items()
        }
        self.row = widgets.Layout(align_items="center", min_height="28px")
        self.button_style = widgets.ButtonStyle()
        self.label_style, self.html_style = text_styles()

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
        self.columns = columns
        self.kids: dict[str, RunRow] = {}  # child rows by run id, in run order (see make_group)
        self.toggle = self.compare = self.kids_box = None
        layouts = columns.layouts
        self.live: str | None = None  # the latest metrics while the cell runs (see LiveUpdates)
        self.check = widgets.Checkbox(
            value=False, indent=False, description="", layout=layouts["select"], **{description_tip(): "Select to compare"}
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
        self.line = widgets.HBox(
            [self.check, self.name, self.status, self.start, self.duration, self.metrics, self.versions], layout=columns.row
        )
        self.widget = self.line  # a VBox of the line and the child rows once it is a parent
        self.refresh()

    def make_group(self, on_compare) -> None:
        """This run has children: add the toggle, the Compare button and the (folded) child rows."""
        import ipywidgets as widgets

        layouts = self.columns.layouts
        self.toggle = widgets.Button(
            layout=layouts["toggle"], tooltip="Show or hide this run's child runs (a sweep's combinations)",
            style=self.columns.button_style,
        )
        self.toggle.on_click(lambda _button: self.expand(self.kids_box.layout.display == "none"))
        self.compare = widgets.Button(
            description="Compare", icon="columns", disabled=True, layout=layouts["compare"], style=self.columns.button_style,
            tooltip="Compare the child runs (the best 10 first): params that differ, overlaid metrics",
        )
        self.compare.on_click(lambda _button: on_compare(self.compared()))
        self.kids_box = widgets.VBox(layout=widgets.Layout(display="none", margin="0 0 0 32px"))
        self.line.children = self.line.children + (self.toggle, self.compare)
        self.widget = widgets.VBox([self.line, self.kids_box])
        self.widget.add_class("dbxml-run-group")

    def add_kid(self, row: "RunRow") -> None:
        self.kids[row.record.run_id] = row
        self.kids_box.children = self.kids_box.children + (row.widget,)
        self.refresh()

    def expand(self, shown: bool) -> None:
        self.kids_box.layout.display = None if shown else "none"
        self.refresh()

    def compared(self) -> list[str]:
        """The children the Compare button compares: best first, at most the compare view's limit."""
        from .compare import MAX_RUNS

        _, _, ranked = ranked_children(self.record, [row.record for row in self.kids.values()], self.settings)
        return [child.run_id for child in ranked[:MAX_RUNS]]

    def refresh(self) -> None:
        # traitlets sends nothing for a value that did not change.
        record = self.record
        self.name.description = record.name
        self.status.value = status_html(record.status)
        self.duration.value = format_duration(record.duration)
        running = record.status == "RUNNING" and self.live is not None
        if self.kids:
            self.metrics.value = group_text(record, [row.record for row in self.kids.values()], self.settings)
            setattr(self.metrics, description_tip(), self.metrics.value)
            arrow = "\u25b8" if self.kids_box.layout.display == "none" else "\u25be"  # folded / unfolded
            self.toggle.description = f"{arrow} {len(self.kids)} runs"
            self.compare.disabled = len(self.kids) < 2
        else:
            self.metrics.value = self.live if running else format_metrics(record, self.settings)
        self.versions.value = ", ".join(record.model_versions)

    def close(self) -> None:
        for row in self.kids.values():
            row.close()
        for widget in (self.check, self.name, self.status, self.start, self.duration, self.metrics, self.versions,
                       self.toggle, self.compare, self.kids_box, self.line, self.widget):
            if widget is not None:
                widget.close()


class RunsTable:
    """Runs of the session, newest first: a bounded window of top-level rows, older pages on request."""

    def __init__(self, session: Session, on_select, report, on_compare=None, page_size: int = PAGE_SIZE):
        import ipywidgets as widgets

        self.session = session
        self.on_select = guarded(report, on_select)
        self.on_check = guarded(report, self._checked)
        self.on_compare = guarded(report, on_compare or (lambda _run_ids: None))
        self.checked: list[str] = []  # run ids ticked for comparison, in the order ticked
        self.page_size = page_size
        self.limit = page_size
        self.columns = _Columns()
        self.rows: dict[str, RunRow] = {}  # visible rows by run id, child rows included
        self._order: deque[str] = deque()  # visible top-level run ids, newest first
        self._lock = threading.RLock()
        self.box = widgets.VBox()
        self.count = widgets.Label()
        self.older = widgets.Button(description="Show older runs", tooltip=f"Show {page_size} more runs")
        self.older.on_click(guarded(report, lambda _button: self.show_older()))
        self.compare = widgets.Button(
            description="Compare selected", disabled=True, tooltip="Tick 2 to 10 runs, then compare them"
        )
        self.compare.on_click(guarded(report, lambda _button: self.on_compare(list(self.checked))))
        self.widget = widgets.VBox(
            [self.columns.heading(), self.box, widgets.HBox([self.count, self.older, self.compare])]
        )
        with self._lock:
            top, children = run_tree(list(self.session.runs))
            self._top_total = len(top)
            for record in top[-self.limit :][::-1]:
                self._order.append(record.run_id)
                self._build(record, children)
            self.box.children = tuple(self.rows[run_id].widget for run_id in self._order)
            self._update_count()

    def _build(self, record, children: dict[str, list]) -> RunRow:
        """The row of `record` and, under it, the rows of its children (theirs too)."""
        row = self.rows[record.run_id] = RunRow(record, self.session.settings, self.columns, self.on_select, self.on_check)
        kids = children.get(record.run_id)
        if kids:
            row.make_group(self.on_compare)
            for kid in kids:
                row.add_kid(self._build(kid, children))
        return row

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
        shown = len(self._order)
        total = self._top_total
        self.count.value = f"{len(self.session.runs)} runs" if shown == total else f"showing the newest {shown} of {total} runs"
        self.older.layout.display = None if shown < total else "none"

    def add(self, record) -> RunRow | None:
        """A run started: prepend its row (the oldest visible row leaves the window), or put it
        under its parent's row; None for a child of a parent outside the window."""
        with self._lock:
            if record.parent_run_id and self.session.find_run(record.parent_run_id) is not None:
                return self._add_kid(record)
            row = RunRow(record, self.session.settings, self.columns, self.on_select, self.on_check)
            self.rows[record.run_id] = row
            self._order.appendleft(record.run_id)
            self._top_total += 1
            children = (row.widget,) + self.box.children
            if len(self._order) > self.limit:
                self._forget(self.rows[self._order.pop()])
                children = children[:-1]
            self.box.children = children
            self._update_count()
            return row

    def _add_kid(self, record) -> RunRow | None:
        parent = self.rows.get(record.parent_run_id)
        if parent is None:
            return None
        row = self.rows[record.run_id] = RunRow(record, self.session.settings, self.columns, self.on_select, self.on_check)
        if parent.kids_box is None:
            folded = parent.widget
            parent.make_group(self.on_compare)
            self._replace(parent, folded)
        parent.add_kid(row)
        self._update_count()
        return row

    def _replace(self, row: RunRow, old) -> None:
        """Put `row`'s new widget where `old` was shown (the table, or its parent's child rows)."""
        holder = self.rows[row.record.parent_run_id].kids_box if row.record.run_id not in self._order else self.box
        holder.children = tuple(row.widget if child is old else child for child in holder.children)

    def _forget(self, row: RunRow) -> None:
        for kid in list(row.kids.values()):
            self._forget(kid)
        self.rows.pop(row.record.run_id, None)
        row.close()

    def update(self, run_id: str) -> None:
        with self._lock:
            row = self.rows.get(run_id)
            if row is not None:
                row.refresh()
                parent = self.rows.get(row.record.parent_run_id)
                if parent is not None:
                    parent.refresh()  # its children's count and best child

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
        """Append the next page of older top-level runs below the visible ones."""
        with self._lock:
            top, children = run_tree(list(self.session.runs))
            self._top_total = len(top)
            shown = len(self._order)
            start = max(0, len(top) - shown - self.page_size)
            new_rows = []
            for record in top[start : len(top) - shown][::-1]:
                self._order.append(record.run_id)
                new_rows.append(self._build(record, children).widget)
            self.limit = len(self._order)
            self.box.children = self.box.children + tuple(new_rows)
            self._update_count()

    def close(self) -> None:
        close_tree(self.widget)
        self.rows.clear()

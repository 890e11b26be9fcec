"""The live panel of a session: header, runs table, run inspector, workspace picker.

The panel observes the Session (`Session.subscribe`) and never calls MLflow itself: run
details come from `Session.run_details`, linking goes through `link.link_from_args`, the
same code path as `%aml_link`. Widgets are built once and updated by setting `.value` /
`.children` from the observer, touching only what an event changed. Where ipywidgets is
not installed, or the frontend cannot render widgets (terminal IPython), the same
information is shown as text through IPython's display protocol.
"""

import argparse
import functools
import html
import io
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from .errors import DbxmlError
from .masking import redact
from .session import Session

__all__ = [
    "SessionPanel",
    "PanelView",
    "StoreChoice",
    "live_panel",
    "show_panel",
    "close_panel",
    "panel_text",
    "run_text",
    "history_png",
]

STATUS_COLOURS = {
    "RUNNING": "#0969da",
    "FINISHED": "#1a7f37",
    "FAILED": "#cf222e",
    "KILLED": "#9a6700",
    "SCHEDULED": "#6e7781",
}
# Rows shown at once. Keeping the visible window bounded is what makes a new run cost the
# same with 10 or 1,000 runs in the session: older rows are built only when asked for.
PAGE_SIZE = 25

_panels: dict[int, "SessionPanel"] = {}


# ---------------------------------------------------------------------- formatting
def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m {int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h {int(seconds % 3600 // 60):02d}m"


def format_clock(timestamp: float | None) -> str:
    """Absolute times: a live widget showing "3s ago" would be wrong a second later."""
    if not timestamp:
        return "never"
    if time.strftime("%Y%m%d", time.localtime(timestamp)) == time.strftime("%Y%m%d"):
        return time.strftime("%H:%M:%S", time.localtime(timestamp))
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def key_metrics(metrics: dict[str, float], preferred: list[str], limit: int) -> list[tuple[str, float]]:
    """The metrics a row shows: the configured key metrics first, then the others by name."""
    first = [name for name in preferred if name in metrics]
    rest = sorted(name for name in metrics if name not in first)
    return [(name, metrics[name]) for name in (first + rest)[: max(0, limit)]]


def format_metrics(record, settings) -> str:
    shown = key_metrics(record.metrics, list(settings.key_metrics), settings.panel_max_metrics)
    return "  ".join(f"{name}={value:.4g}" for name, value in shown)


def journal_lines(link, statuses: list[dict]) -> list[tuple[str, str, str]]:
    """(role, masked URI, state) for each linked store, then earlier stores still holding writes."""
    by_target = {status["target"]: status for status in statuses}
    lines = []
    for role, target in (("primary", link.primary), ("mirror", link.mirror)):
        if target is None:
            continue
        status = by_target.pop(target.display, None)
        lines.append((role, target.display, _journal_state(status)))
    for key, status in by_target.items():
        if status["pending"] or status["failed"]:
            lines.append(("earlier", key, _journal_state(status)))
    return lines


def _journal_state(status: dict | None) -> str:
    if status is None:
        return "nothing written yet"
    state = f"{status['pending']} pending, last sync {format_clock(status['last_sync'])}"
    if status.get("failed"):
        state += f", {status['failed']} failed"
    if status.get("last_error"):
        state += f", last error: {status['last_error']}"
    return state


def _journal_statuses(session: Session) -> list[dict]:
    # The journal opens on the first link or run; the panel alone must not create it.
    return session.journal.status() if session.journal_started else []


def panel_text(session: Session, statuses: list[dict] | None = None, limit: int = PAGE_SIZE) -> str:
    """The panel as plain text: what a terminal (or a frontend without widgets) shows."""
    link = session.link
    statuses = _journal_statuses(session) if statuses is None else statuses
    lines = [f"dbxml panel: mode {link.mode}, experiment {session.experiment or 'Default'}"]
    for role, uri, state in journal_lines(link, statuses):
        lines.append(f"  {role:<8}{uri}: {state}")
    runs = session.runs[-limit:][::-1] if limit else []
    if not session.runs:
        lines.append("No runs yet in this session: run a cell with %%track <name>.")
        return "\n".join(lines)
    lines.append(f"Runs ({len(session.runs)}, newest first):")
    lines += _text_table(
        ("name", "status", "start", "duration", "metrics", "versions"),
        [
            (
                run.name,
                run.status,
                format_clock(run.start_time),
                format_duration(run.duration),
                format_metrics(run, session.settings),
                ", ".join(run.model_versions),
            )
            for run in runs
        ],
    )
    older = len(session.runs) - len(runs)
    if older > 0:
        lines.append(f"  ... and {older} older runs")
    return "\n".join(lines)


def run_text(details) -> str:
    """One run's details as plain text: what the inspector shows, for a terminal."""
    lines = [
        f"Run {details.name}: {details.status}, {details.run_id}, started {format_clock(details.start_time)}, "
        f"{run_duration(details)}, in {details.store}",
        f"  {details.ui_url}" if details.ui_url else
        f"  no web UI for this store; see it with: mlflow ui --backend-store-uri {details.store}",
    ]

    def section(title: str, header: tuple, rows: list, empty: str) -> None:
        lines.extend([f"{title}:", *_text_table(header, rows)] if rows else [f"{title}: {empty}"])

    section("Metrics", METRIC_HEADER, metric_rows(details), "none logged")
    section("Params", ("param", "value"), list(details.params.items()), "none logged")
    section(
        "Tags", ("tag", "value"),
        [(k, _shortened(v, 100)) for k, v in details.tags.items() if not k.startswith("mlflow.")],
        "none besides MLflow's own",
    )
    artifacts = ", ".join(details.artifacts) + (" (first files only)" if details.artifacts_truncated else "")
    lines.append(f"Artifacts: {artifacts or 'none'}")
    section("Models registered from it in this session", MODEL_HEADER, model_rows(details), "none")
    section("Scorings with those models", SCORING_HEADER, scoring_rows(details), "none")
    return "\n".join(lines)


# What the inspector shows, as rows: the widgets render them as HTML, run_text as text.
METRIC_HEADER = ("metric", "last", "steps", "min", "max")
MODEL_HEADER = ("model", "version", "mirror version", "alias", "registered")
SCORING_HEADER = ("scored with", "input", "rows", "seconds", "output")


def metric_rows(details) -> list[tuple]:
    rows = []
    for name, value in details.metrics.items():
        values = [v for _, v in details.histories.get(name, [])]
        rows.append(
            (name, f"{value:.6g}", len(values), f"{min(values):.6g}" if values else "",
             f"{max(values):.6g}" if values else "")
        )
    return rows


def model_rows(details) -> list[tuple]:
    return [
        (m.name, m.version, m.mirror_version or "", m.alias or "", format_clock(m.registered_at))
        for m in details.models
    ]


def scoring_rows(details) -> list[tuple]:
    return [(s.model_uri, s.input, f"{s.rows:,}", f"{s.seconds:.1f}", s.output) for s in details.scorings]


def run_duration(details) -> str:
    if details.end_time and details.start_time:
        return format_duration(details.end_time - details.start_time)
    return "running"


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _text_table(header: tuple, rows: list[tuple]) -> list[str]:
    """Rows as aligned, indented text lines under their header."""
    table = [tuple(str(cell) for cell in row) for row in [header, *rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]


def history_png(name: str, points: list[tuple[int, float]]) -> bytes:
    """A small line plot of one metric history, as PNG bytes.

    Figure + Agg canvas, not pyplot: pyplot would change the user's backend and figures.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.6, 2.3), dpi=90)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    steps = [step for step, _ in points]
    values = [value for _, value in points]
    axes.plot(steps, values, marker="." if len(points) <= 50 else None, linewidth=1.2)
    axes.set_title(name, fontsize=10)
    axes.set_xlabel("step", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _status_html(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#6e7781")
    return f'<span style="color:{colour};font-weight:600">{html.escape(status)}</span>'


def _table_html(header: tuple[str, ...], rows: list[tuple], empty: str) -> str:
    if not rows:
        return f"<i>{html.escape(empty)}</i>"
    head = "".join(f"<th style='text-align:left;padding-right:1em'>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td style='padding-right:1em'>{html.escape(str(c))}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def guarded(report, callback):
    """`callback`, with any exception handed to `report`.

    Widget callbacks run inside the kernel's comm handler, where an exception would only
    reach the kernel log; the panel shows it instead.
    """

    @functools.wraps(callback)
    def run(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            report(exc)
            return None

    return run


def _close_tree(root) -> None:
    """Close a widget, everything it holds (children, layouts, styles), once each."""
    from ipywidgets import Widget

    seen: set[int] = set()
    stack = [root]
    while stack:
        widget = stack.pop()
        if id(widget) in seen:
            continue
        seen.add(id(widget))
        for name in widget.keys:
            value = getattr(widget, name, None)
            if isinstance(value, Widget):
                stack.append(value)
            elif isinstance(value, (tuple, list)):
                stack.extend(item for item in value if isinstance(item, Widget))
        widget.close()


# ---------------------------------------------------------------------- runs table
class _Columns:
    """Layouts and styles shared by every row: one model each instead of one per cell."""

    WIDTHS = {
        "name": "190px", "status": "90px", "start": "80px", "duration": "75px", "metrics": "300px", "versions": "200px",
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
            widgets.HTML(f"<b>{name}</b>", layout=self.layouts[name], style=self.html_style) for name in self.WIDTHS
        ]
        return widgets.HBox(cells, layout=self.row)


class RunRow:
    """One line of the runs table, refreshed in place from its RunRecord."""

    def __init__(self, record, settings, columns: _Columns, on_select):
        import ipywidgets as widgets

        self.record = record
        self.settings = settings
        layouts = columns.layouts
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
            [self.name, self.status, self.start, self.duration, self.metrics, self.versions], layout=columns.row
        )
        self.refresh()

    def refresh(self) -> None:
        # traitlets sends nothing for a value that did not change.
        record = self.record
        self.name.description = record.name
        self.status.value = _status_html(record.status)
        self.duration.value = format_duration(record.duration)
        self.metrics.value = format_metrics(record, self.settings)
        self.versions.value = ", ".join(record.model_versions)

    def close(self) -> None:
        for widget in (self.name, self.status, self.start, self.duration, self.metrics, self.versions, self.widget):
            widget.close()


class RunsTable:
    """Runs of the session, newest first: a bounded window of rows, older pages on request."""

    def __init__(self, session: Session, on_select, report, page_size: int = PAGE_SIZE):
        import ipywidgets as widgets

        self.session = session
        self.on_select = guarded(report, on_select)
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
        self.widget = widgets.VBox([self.columns.heading(), self.box, widgets.HBox([self.count, self.older])])
        with self._lock:
            for record in self.session.runs[-self.limit :][::-1]:
                self._order.append(record.run_id)
                self.rows[record.run_id] = RunRow(record, self.session.settings, self.columns, self.on_select)
            self.box.children = tuple(self.rows[run_id].widget for run_id in self._order)
            self._update_count()

    def _update_count(self) -> None:
        total = len(self.session.runs)
        shown = len(self._order)
        self.count.value = f"{total} runs" if shown == total else f"showing the newest {shown} of {total} runs"
        self.older.layout.display = None if shown < total else "none"

    def add(self, record) -> RunRow:
        """A run started: prepend its row; the oldest visible row leaves the window."""
        with self._lock:
            row = RunRow(record, self.session.settings, self.columns, self.on_select)
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
        row = self.rows.get(run_id)
        if row is not None:
            row.refresh()

    def tick(self) -> None:
        """Running rows show their growing duration (called from the journal's flusher thread)."""
        with self._lock:
            running = [row for row in self.rows.values() if row.record.status == "RUNNING"]
        for row in running:
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
                row = RunRow(record, self.session.settings, self.columns, self.on_select)
                self.rows[record.run_id] = row
                self._order.append(record.run_id)
                new_rows.append(row.widget)
            self.limit = len(self._order)
            self.box.children = self.box.children + tuple(new_rows)
            self._update_count()

    def close(self) -> None:
        _close_tree(self.widget)
        self.rows.clear()


# ---------------------------------------------------------------------- inspector
class Inspector:
    """Details of the clicked run, read through the Session in a worker thread.

    Reading a run can take seconds (a remote store, writes still being flushed); a thread
    keeps the kernel free meanwhile. `pending` is the Future of the latest read.
    """

    TABS = ("Metrics", "Params", "Tags", "Artifacts", "Models & scoring")

    def __init__(self, session: Session, report):
        import ipywidgets as widgets

        self.session = session
        self.report = report
        self.run_id: str | None = None
        self.pending: Future | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbxml-panel-inspector")
        self._lock = threading.Lock()
        self.title = widgets.HTML("<i>Click a run to see its params, metrics, artifacts and models.</i>")
        self.link = widgets.HTML()
        self.metrics = widgets.HTML()
        self.plots = widgets.Box(layout=widgets.Layout(flex_flow="row wrap"))
        self.params = widgets.HTML()
        self.tags = widgets.HTML()
        self.artifacts = widgets.HTML()
        self.models = widgets.HTML()
        self.tabs = widgets.Tab(
            children=[widgets.VBox([self.metrics, self.plots]), self.params, self.tags, self.artifacts, self.models],
            titles=self.TABS,
        )
        self.tabs.layout.display = "none"
        self.widget = widgets.VBox([self.title, self.link, self.tabs])

    def show(self, run_id: str) -> Future:
        """Start reading `run_id`; the widgets fill in when the read is done."""
        record = self.session.find_run(run_id)
        name = record.name if record else run_id
        with self._lock:
            self.run_id = run_id
            self.title.value = f"<b>{html.escape(name)}</b> <i>loading...</i>"
            self.pending = self._executor.submit(self._load, run_id)
        return self.pending

    def show_details(self, details) -> None:
        """Show a run already read (by `%aml_panel RUN`), without a second read."""
        with self._lock:
            self.run_id = details.run_id
            self.pending = None
            self._render(details)

    def refresh_if_showing(self, run_id: str | None) -> None:
        if run_id is not None and run_id == self.run_id:
            self.show(run_id)

    def _load(self, run_id: str):
        try:
            details = self.session.run_details(run_id)
        except DbxmlError as exc:
            if run_id == self.run_id:
                self.title.value = f'<span style="color:#cf222e">{html.escape(str(exc))}</span>'
                self.link.value = ""
                self.tabs.layout.display = "none"
            return None
        except Exception as exc:  # noqa: BLE001 - shown in the panel, never lost in a thread
            self.report(exc)
            return None
        with self._lock:
            if run_id != self.run_id:  # a later click won
                return details
            try:
                self._render(details)
            except Exception as exc:  # noqa: BLE001
                self.report(exc)
        return details

    def _render(self, details) -> None:
        import ipywidgets as widgets

        self.title.value = (
            f"<b>{html.escape(details.name)}</b> &nbsp;{_status_html(details.status)} &nbsp;"
            f"<code>{html.escape(details.run_id)}</code> &nbsp;started {format_clock(details.start_time)}, "
            f"{run_duration(details)} &nbsp;in {html.escape(details.store)}"
        )
        self.link.value = self._link_html(details)
        self.metrics.value = _table_html(METRIC_HEADER, metric_rows(details), "No metrics logged.")
        old_plots = self.plots.children
        self.plots.children = tuple(
            widgets.Image(value=history_png(name, points), format="png")
            for name, points in details.histories.items()
            if len(points) > 1
        )
        for image in old_plots:
            image.close()
        self.params.value = _table_html(("param", "value"), list(details.params.items()), "No params logged.")
        self.tags.value = _table_html(
            ("tag", "value"), [(k, _shortened(v, 200)) for k, v in details.tags.items()], "No tags."
        )
        artifacts = "".join(f"<li><code>{html.escape(path)}</code></li>" for path in details.artifacts)
        self.artifacts.value = (
            f"<ul>{artifacts}</ul>" + ("<i>(first files only)</i>" if details.artifacts_truncated else "")
            if artifacts
            else "<i>No artifacts.</i>"
        )
        self.models.value = _table_html(
            MODEL_HEADER, model_rows(details), "No model registered from this run in this session."
        ) + "<br>" + _table_html(SCORING_HEADER, scoring_rows(details), "No scoring with this run's models in this session.")
        self.tabs.layout.display = None

    @staticmethod
    def _link_html(details) -> str:
        if details.ui_url:
            where = (
                "Azure ML studio" if "ml.azure.com" in details.ui_url
                else "Databricks" if "#mlflow/" in details.ui_url
                else "the MLflow UI"
            )
            url = html.escape(details.ui_url, quote=True)
            return f'<a href="{url}" target="_blank" rel="noopener">Open the run in {where}</a>'
        return (
            "This store has no web UI; see it with "
            f"<code>mlflow ui --backend-store-uri {html.escape(details.store)}</code>"
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        _close_tree(self.widget)


# ---------------------------------------------------------------------- workspace picker
@dataclass(frozen=True)
class StoreChoice:
    """One entry of the store selector and the %aml_link options it stands for."""

    label: str
    local: str | None = None
    uri: str | None = None
    config: str | None = None
    subscription: str | None = None
    resource_group: str | None = None
    workspace: str | None = None
    typed: bool = False  # the URI comes from the text box

    def link_args(self, typed_uri: str, mode: str | None, auth: str, experiment: str) -> argparse.Namespace:
        """The Namespace `%aml_link` would parse for this choice."""
        return argparse.Namespace(
            local=self.local,
            uri=typed_uri.strip() if self.typed else self.uri,
            config=self.config,
            subscription=self.subscription,
            resource_group=self.resource_group,
            workspace=self.workspace,
            mode=mode,
            auth=auth,
            experiment=experiment.strip() or None,
        )


def config_workspace_choices(start: str | None = None) -> list[StoreChoice]:
    """Workspaces named by AML config.json files on the SDK's search path from `start`."""
    from .workspace import workspaces_in_config_files

    return [
        StoreChoice(label=f"AML {ref.workspace} ({ref.resource_group}) from {ref.source}", config=ref.source)
        for ref in workspaces_in_config_files(start)
    ]


def account_workspace_choice(ref) -> StoreChoice:
    """A workspace of the signed-in Azure account, linked by its ids like -s/-g/-w."""
    return StoreChoice(
        label=f"AML {ref.workspace} ({ref.resource_group}, subscription {ref.subscription[:8]}...)",
        subscription=ref.subscription,
        resource_group=ref.resource_group,
        workspace=ref.workspace,
    )


def azure_sign_in_hint() -> bool:
    """Whether some Azure credential is likely there: asking Azure without one only waits and fails.

    Environment credentials, a managed identity endpoint, or an `az login` profile.
    """
    import os
    from pathlib import Path

    if os.environ.get("AZURE_CLIENT_ID") or os.environ.get("IDENTITY_ENDPOINT") or os.environ.get("MSI_ENDPOINT"):
        return True
    config_dir = Path(os.environ.get("AZURE_CONFIG_DIR") or Path.home() / ".azure")
    return (config_dir / "msal_token_cache.json").is_file() or (config_dir / "msal_token_cache.bin").is_file()


class WorkspacePicker:
    """Choose a store, mode, auth and experiment, then link: the form of `%aml_link`."""

    TYPED = StoreChoice(label="Typed URI (below)", typed=True)
    # "" stands for "no --mode": a None value would leave the dropdown with no selection.
    MODES = (("single store (default)", ""), ("aml-only", "aml-only"), ("both: keep current, mirror here", "both"))

    def __init__(self, session: Session, link_request, report):
        import ipywidgets as widgets

        from .workspace import AUTH_CHOICES

        self.session = session
        self.link_request = link_request
        self.report = report
        self.embedded = StoreChoice(label=f"Embedded store ({session.store_dir})", local="")
        self.account_choices: list[StoreChoice] = []
        self.account_lookup: Future | None = None
        wide = widgets.Layout(width="560px")
        self.store = widgets.Dropdown(description="Store", options=self._options(), value=self.embedded, layout=wide)
        self.uri = widgets.Text(
            description="URI",
            placeholder="http://127.0.0.1:5000, databricks, sqlite:///path/mlflow.db, azureml://...",
            layout=wide,
        )
        self.uri.observe(guarded(report, self._on_uri_typed), names="value")
        self.mode = widgets.Dropdown(description="Mode", options=self.MODES, value="")
        self.auth = widgets.Dropdown(description="Auth", options=AUTH_CHOICES, value="default")
        self.experiment = widgets.Text(description="Experiment", value=session.experiment or "", layout=wide)
        self.link_button = widgets.Button(description="Link", button_style="primary", icon="link")
        self.link_button.on_click(guarded(report, lambda _button: self.link()))
        self.find_button = widgets.Button(
            description="Find my Azure workspaces", tooltip="List the workspaces of the signed-in Azure account"
        )
        self.find_button.on_click(guarded(report, lambda _button: self.find_account_workspaces()))
        self.message = widgets.HTML()
        self.account_message = widgets.HTML()
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.store, self.find_button, self.account_message]),
                self.uri,
                widgets.HBox([self.mode, self.auth]),
                self.experiment,
                widgets.HBox([self.link_button, self.message]),
            ]
        )
        if azure_sign_in_hint():
            self.find_account_workspaces()

    def _options(self) -> list[tuple[str, StoreChoice]]:
        try:
            # The working directory, like `%aml_link --config` and the SDK search.
            from_config = config_workspace_choices()
        except Exception as exc:  # noqa: BLE001 - a broken config file must not hide the panel
            self.report(exc)
            from_config = []
        choices = [self.embedded, *from_config, *self.account_choices, self.TYPED]
        return [(choice.label, choice) for choice in choices]

    def find_account_workspaces(self) -> Future:
        """List the account's workspaces in a worker thread; the selector grows when they arrive."""
        from .workspace import list_account_workspaces

        self.account_message.value = "<i>asking Azure...</i>"
        self.account_lookup = list_account_workspaces(
            self.session.settings, auth=self.auth.value, callback=self._account_listed
        )
        return self.account_lookup

    def _account_listed(self, future: Future) -> None:
        try:
            refs = future.result()
        except DbxmlError as exc:
            self.account_message.value = f'<span style="color:#9a6700">{html.escape(str(exc))}</span>'
            return
        except Exception as exc:  # noqa: BLE001 - shown in the panel, never lost in a thread
            self.report(exc)
            return
        self.account_choices = [account_workspace_choice(ref) for ref in refs]
        selected = self.store.value
        self.store.options = self._options()
        self.store.value = selected if selected in [value for _, value in self.store.options] else self.embedded
        self.account_message.value = f"{len(refs)} workspaces in the Azure account"

    def _on_uri_typed(self, change) -> None:
        if change["new"].strip():
            self.store.value = self.TYPED

    def link(self) -> None:
        """Link like `%aml_link` with these options; a refused link is shown here, never raised."""
        choice = self.store.value
        if choice.typed and not self.uri.value.strip():
            self.message.value = '<span style="color:#cf222e">Type a tracking URI first.</span>'
            return
        args = choice.link_args(self.uri.value, self.mode.value or None, self.auth.value, self.experiment.value)
        self.message.value = "<i>linking...</i>"
        try:
            link = self.link_request(args)
        except DbxmlError as exc:
            self.message.value = f'<span style="color:#cf222e">{html.escape(redact(" ".join(str(exc).split())))}</span>'
            return
        self.message.value = f'<span style="color:#1a7f37">Linked: {html.escape(repr(link))}</span>'

    def close(self) -> None:
        _close_tree(self.widget)


# ---------------------------------------------------------------------- the panel
class SessionPanel:
    """The live panel of one Session; one per shell (see `live_panel`)."""

    def __init__(self, session: Session):
        import ipywidgets as widgets

        self.session = session
        self.statuses: list[dict] = _journal_statuses(session)
        self.header = widgets.HTML()
        self.message = widgets.HTML()
        self.log = widgets.Output()  # tracebacks of unexpected errors, so none is lost
        self.runs = RunsTable(session, on_select=self.inspect, report=self.report)
        self.inspector = Inspector(session, report=self.report)
        self.picker = WorkspacePicker(session, link_request=self._link, report=self.report)
        # Open when nothing is linked yet: that is when the picker is what the user wants.
        self.workspace = widgets.Accordion(
            children=[self.picker.widget], titles=("Link a workspace",), selected_index=None if session.linked else 0
        )
        self.widget = widgets.VBox(
            [self.header, self.runs.widget, self.inspector.widget, self.workspace, self.message, self.log]
        )
        self.refresh_header()
        self._closed = False
        session.subscribe(self.on_event)

    # -- errors
    def report(self, exc: BaseException) -> None:
        """Show an error in the panel: one line for a user's problem, a traceback for a bug."""
        if isinstance(exc, DbxmlError):
            text = redact(" ".join(str(exc).split()))
        else:
            text = f"Unexpected error in the panel: {type(exc).__name__}: {redact(str(exc).strip()[:300])}"
            self.log.append_stderr(redact("".join(traceback.format_exception(exc))))
        self.message.value = f'<span style="color:#cf222e">{html.escape(text)}</span>'

    # -- actions
    def inspect(self, run_id: str) -> Future:
        return self.inspector.show(run_id)

    def _link(self, args):
        from .link import link_from_args

        return link_from_args(self.session, args)

    # -- observing the session
    def on_event(self, event: str, payload) -> None:
        try:
            self._apply(event, payload)
        except Exception as exc:  # noqa: BLE001 - Session.emit would swallow it silently
            self.report(exc)

    def _apply(self, event: str, payload) -> None:
        if event == "run_started":
            self.runs.add(payload)
        elif event in ("run_updated", "run_ended"):
            self.runs.update(payload.run_id)
            if event == "run_ended":
                self.inspector.refresh_if_showing(payload.run_id)
        elif event == "model_registered":
            self.runs.update(payload.source_run_id)
            self.inspector.refresh_if_showing(payload.source_run_id)
        elif event == "scored":
            self.inspector.refresh_if_showing(payload.run_id)
        elif event == "link":
            self.statuses = _journal_statuses(self.session)
            self.refresh_header()
            self.picker.experiment.value = self.session.experiment or ""
        elif event == "journal":
            self.statuses = list(payload or [])
            self.refresh_header()
            self.runs.tick()

    def refresh_header(self) -> None:
        session = self.session
        link = session.link
        lines = [
            f"<b>dbxml</b> &nbsp;mode <b>{html.escape(link.mode)}</b> &nbsp;experiment "
            f"<b>{html.escape(session.experiment or 'Default')}</b>"
        ]
        for role, uri, state in journal_lines(link, self.statuses):
            colour = "#cf222e" if "last error" in state else "inherit"
            lines.append(
                f"{role}: <code>{html.escape(uri)}</code> &nbsp;"
                f'<span style="color:{colour}">{html.escape(state)}</span>'
            )
        self.header.value = "<br>".join(lines)

    def text(self) -> str:
        return panel_text(self.session, self.statuses)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.session.unsubscribe(self.on_event)
        self.inspector.close()
        self.runs.close()
        self.picker.close()
        _close_tree(self.widget)


class PanelView:
    """What `show_panel` displays: the live widgets where a frontend renders them, else text."""

    def __init__(self, session: Session, panel: SessionPanel | None, details=None):
        self.session = session
        self.panel = panel
        self.details = details  # a run opened in the inspector: its text is what a terminal shows

    def text(self) -> str:
        if self.details is not None:
            return run_text(self.details)
        return self.panel.text() if self.panel is not None else panel_text(self.session)

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = self.panel.widget._repr_mimebundle_() if self.panel is not None else {}
        bundle["text/plain"] = self.text()
        return bundle

    def _repr_pretty_(self, printer, cycle):
        printer.text(self.text())

    def __repr__(self) -> str:
        return self.text()


def live_panel(session: Session) -> SessionPanel | None:
    """The session's panel, built on first use; None where ipywidgets is not installed."""
    panel = _panels.get(id(session))
    if panel is None:
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            return None
        panel = _panels[id(session)] = SessionPanel(session)
    return panel


def show_panel(session: Session, details=None) -> None:
    """Display the session's one live panel (again): every display shows the same state.

    With `details` (a RunDetails) the inspector opens on that run; a terminal gets the run's text.
    """
    from IPython.display import display

    panel = live_panel(session)
    if panel is not None and details is not None:
        panel.inspector.show_details(details)
    display(PanelView(session, panel, details))


def close_panel(session: Session) -> None:
    """Stop observing the session and close the widgets (for %unload_ext / %reload_ext)."""
    panel = _panels.pop(id(session), None)
    if panel is not None:
        panel.close()

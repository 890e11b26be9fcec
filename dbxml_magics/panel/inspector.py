"""The run inspector: params, tags, metrics with history plots, artifacts, models, links."""

import html
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from ..errors import DbxmlError
from ..session import Session
from .text import (
    METRIC_HEADER,
    MODEL_HEADER,
    SCORING_HEADER,
    format_clock,
    metric_rows,
    model_rows,
    run_duration,
    scoring_rows,
    shortened,
)
from .compat import set_titles
from .widgets import close_tree, guarded, line_data, plot_axes, plot_png, status_html, table_html


def history_png(name: str, points: list[tuple[int, float]]) -> bytes:
    """A small line plot of one metric history, as PNG bytes."""
    figure, axes = plot_axes(3.6, 2.3)
    steps, values, style = line_data(points)
    axes.plot(steps, values, **style, linewidth=1.2)
    return plot_png(figure, axes, name)


def live_svg(name: str, points: list[tuple[int, float]], width: int = 324, height: int = 207) -> bytes:
    """A running run's metric history as a small SVG line, the size of `history_png`'s picture.

    Drawn while the training cell runs, on a thread that holds the GIL the cell needs: this costs
    about a millisecond where a matplotlib figure costs 100-400 ms on a busy machine. The run's
    plots are drawn by matplotlib once it ended.
    """
    steps, values, _ = line_data([(step, value) for step, value in points if math.isfinite(value)])
    left, right, top, bottom = 52, 10, 22, 26
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="9">',
        f'<text x="{width / 2}" y="14" font-size="12" text-anchor="middle">{html.escape(name)}</text>',
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" fill="none" stroke="#d0d7de"/>',
    ]
    if steps:
        x0, y0, y1 = steps[0], min(values), max(values)
        sx = (width - left - right) / ((steps[-1] - x0) or 1)
        sy = (height - top - bottom) / ((y1 - y0) or 1)
        line = " ".join(f"{left + (x - x0) * sx:.1f},{height - bottom - (y - y0) * sy:.1f}" for x, y in zip(steps, values))
        parts += [
            f'<polyline points="{line}" fill="none" stroke="#1f77b4" stroke-width="1.2"/>',
            f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{y1:.4g}</text>',
            f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">{y0:.4g}</text>',
            f'<text x="{left}" y="{height - 10}">{x0}</text>',
            f'<text x="{width - right}" y="{height - 10}" text-anchor="end">step {steps[-1]}</text>',
        ]
    return ("".join(parts) + "</svg>").encode()


# ---------------------------------------------------------------------- inspector
class Inspector:
    """Details of the clicked run, read through the Session in a worker thread.

    Reading a run can take seconds (a remote store, writes still being flushed); a thread
    keeps the kernel free meanwhile. `pending` is the Future of the latest read.
    """

    TABS = ("Metrics", "Params", "Tags", "Artifacts", "Models & scoring")

    def __init__(self, session: Session, report, on_rerun=None):
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
        )
        set_titles(self.tabs, self.TABS)
        self.tabs.layout.display = "none"
        self._plotted: tuple[str, list[str]] = ("png", [])  # format and metric of each plot shown, in order
        self.rerun_button = widgets.Button(
            description="Re-run", icon="repeat", disabled=True,
            tooltip="Run this run's recorded cell again as a new run, its params restored: %aml_rerun RUN",
        )
        if on_rerun is None:
            self.rerun_button.layout.display = "none"
        else:
            self.rerun_button.on_click(guarded(report, lambda _button: on_rerun(self.run_id)))
        self.widget = widgets.VBox([widgets.HBox([self.title, self.rerun_button]), self.link, self.tabs])

    def show(self, run_id: str) -> Future:
        """Start reading `run_id`; the widgets fill in when the read is done."""
        record = self.session.find_run(run_id)
        name = record.name if record else run_id
        with self._lock:
            self.run_id = run_id
            self.rerun_button.disabled = False
            self.title.value = f"<b>{html.escape(name)}</b> <i>loading...</i>"
            self.pending = self._executor.submit(self._load, run_id)
        return self.pending

    def show_details(self, details) -> None:
        """Show a run already read (by `%aml_panel RUN`), without a second read."""
        with self._lock:
            self.run_id = details.run_id
            self.rerun_button.disabled = False
            self.pending = None
            self._render(details)

    def refresh_if_showing(self, run_id: str | None) -> None:
        if run_id is not None and run_id == self.run_id:
            self.show(run_id)

    def show_live(self, record, history: dict[str, list[tuple[int, float]]]) -> None:
        """A running run's title and metric table from the journal (the live updater's thread)."""
        from .text import format_duration

        rows = [
            (name, f"{points[-1][1]:.6g}", len(points), f"{min(v for _, v in points):.6g}",
             f"{max(v for _, v in points):.6g}")
            for name, points in sorted(history.items()) if points
        ]
        with self._lock:
            if self.run_id != record.run_id or record.status != "RUNNING":
                return
            self.title.value = (
                f"<b>{html.escape(record.name)}</b> &nbsp;{status_html('RUNNING')} &nbsp;"
                f"<code>{html.escape(record.run_id)}</code> &nbsp;started {format_clock(record.start_time)}, "
                f"live for {format_duration(record.duration)}"
            )
            self.metrics.value = table_html(METRIC_HEADER, rows, "No metrics logged yet.")
            self.tabs.layout.display = None

    def show_live_plots(self, record, history: dict[str, list[tuple[int, float]]]) -> None:
        """Redraw a running run's plots in place (the Image widgets keep their ids), so the
        frontend swaps pictures instead of rebuilding the tab."""
        import ipywidgets as widgets

        names = [name for name, points in history.items() if len(points) > 1]
        pictures = {name: live_svg(name, history[name]) for name in names}
        with self._lock:
            if self.run_id != record.run_id or record.status != "RUNNING":
                return
            if self._plotted == ("svg+xml", names):
                for image, name in zip(self.plots.children, names):
                    image.value = pictures[name]
            else:
                old = self.plots.children
                self.plots.children = tuple(widgets.Image(value=pictures[name], format="svg+xml") for name in names)
                self._plotted = ("svg+xml", names)
                for image in old:
                    image.close()

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
            f"<b>{html.escape(details.name)}</b> &nbsp;{status_html(details.status)} &nbsp;"
            f"<code>{html.escape(details.run_id)}</code> &nbsp;started {format_clock(details.start_time)}, "
            f"{run_duration(details)} &nbsp;in {html.escape(details.store)}"
        )
        self.link.value = self._link_html(details)
        self.metrics.value = table_html(METRIC_HEADER, metric_rows(details), "No metrics logged.")
        old_plots = self.plots.children
        self.plots.children = tuple(
            widgets.Image(value=history_png(name, points), format="png")
            for name, points in details.histories.items()
            if len(points) > 1
        )
        self._plotted = ("png", [name for name, points in details.histories.items() if len(points) > 1])
        for image in old_plots:
            image.close()
        self.params.value = table_html(("param", "value"), list(details.params.items()), "No params logged.")
        self.tags.value = table_html(
            ("tag", "value"), [(k, shortened(v, 200)) for k, v in details.tags.items()], "No tags."
        )
        artifacts = "".join(f"<li><code>{html.escape(path)}</code></li>" for path in details.artifacts)
        self.artifacts.value = (
            f"<ul>{artifacts}</ul>" + ("<i>(first files only)</i>" if details.artifacts_truncated else "")
            if artifacts
            else "<i>No artifacts.</i>"
        )
        self.models.value = table_html(
            MODEL_HEADER, model_rows(details), "No model registered from this run in this session."
        ) + "<br>" + table_html(SCORING_HEADER, scoring_rows(details), "No scoring with this run's models in this session.")
        self.tabs.layout.display = None

    @staticmethod
    def _link_html(details) -> str:
        links = [_run_link(details.ui_url, details.store, "")]
        if details.mirror_run_id:
            links.append(
                _run_link(details.mirror_ui_url, details.mirror_store, f" (mirror copy <code>{html.escape(details.mirror_run_id)}</code>)")
            )
        return "<br>".join(links)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        close_tree(self.widget)


def _run_link(url: str | None, store: str, what: str) -> str:
    """A link to one copy of a run, or how to see a store that has no web UI."""
    if url:
        where = (
            "Azure ML studio" if "ml.azure.com" in url
            else "Databricks" if "#mlflow/" in url
            else "the MLflow UI"
        )
        return (
            f'<a href="{html.escape(url, quote=True)}" target="_blank" rel="noopener">Open the run in {where}</a>{what}'
        )
    return (
        f"This store has no web UI running{what}: run <code>%aml_ui</code> (or the panel's MLflow UI button) "
        f"to see <code>{html.escape(store)}</code> in MLflow's UI"
    )

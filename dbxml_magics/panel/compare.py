"""Compare 2-10 runs: params that differ (equal ones folded), overlaid metric histories, and
the best run per metric, as widgets and as text (`%aml_panel --compare RUN RUN...`)."""

import html
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import DbxmlError
from ..session import Session
from .compat import set_titles
from .text import metric_goal, text_table
from .widgets import close_tree, line_data, plot_axes, plot_png, table_html

__all__ = ["Comparison", "compare", "read_comparison", "comparison_text", "metric_goal", "overlay_lines", "CompareView"]

MIN_RUNS, MAX_RUNS = 2, 10

@dataclass
class Comparison:
    """What the compare view and its text form show."""

    runs: list  # RunDetails, in the order asked
    labels: list[str]  # one per run: its name, with the id's start where names repeat
    differing: list[tuple[str, list[str]]]  # param -> value per run ("" where missing)
    equal: list[tuple[str, str]]
    metrics: list[str]
    goals: dict[str, str]  # metric -> min / max
    best: dict[str, int]  # metric -> index of the best run


def compare(runs: list, goals: dict) -> Comparison:
    names = [run.name for run in runs]
    labels = [
        f"{run.name} ({run.run_id[:8]})" if names.count(run.name) > 1 else run.name for run in runs
    ]
    differing, equal = [], []
    for key in sorted({key for run in runs for key in run.params}):
        values = [run.params.get(key, "") for run in runs]
        if len(set(values)) == 1:
            equal.append((key, values[0]))
        else:
            differing.append((key, values))
    metrics = sorted({key for run in runs for key in run.metrics})
    chosen = {name: metric_goal(name, goals) for name in metrics}
    best = {}
    for name in metrics:
        scored = [(run.metrics[name], index) for index, run in enumerate(runs) if name in run.metrics]
        if scored:
            best[name] = (min if chosen[name] == "min" else max)(scored)[1]
    return Comparison(runs, labels, differing, equal, metrics, chosen, best)


def read_comparison(session: Session, run_ids: list[str]) -> Comparison:
    """Read each run through the Session (never from the store directly) and compare them."""
    run_ids = list(dict.fromkeys(run_ids))
    if not MIN_RUNS <= len(run_ids) <= MAX_RUNS:
        raise DbxmlError(
            f"Compare takes {MIN_RUNS} to {MAX_RUNS} different runs; got {len(run_ids)}. "
            "Example: %aml_panel --compare baseline tuned"
        )
    return compare([session.run_details(run_id) for run_id in run_ids], dict(session.settings.metric_goals))


def metric_cells(comparison: Comparison) -> tuple[tuple[str, ...], list[tuple]]:
    """Header and rows of the metric table: one row per metric, the best value starred."""
    header = ("metric", "goal", *comparison.labels)
    rows = []
    for name in comparison.metrics:
        cells = []
        for index, run in enumerate(comparison.runs):
            value = run.metrics.get(name)
            text = "" if value is None else f"{value:.6g}"
            cells.append(f"{text} *" if comparison.best.get(name) == index else text)
        rows.append((name, comparison.goals[name], *cells))
    return header, rows


def comparison_text(comparison: Comparison) -> str:
    lines = [f"Comparing {len(comparison.runs)} runs: " + ", ".join(
        f"{label} ({run.status}, {run.run_id})" for label, run in zip(comparison.labels, comparison.runs)
    )]
    if comparison.metrics:
        header, rows = metric_cells(comparison)
        lines += ["Metrics (* best; goal from %config DbxmlMagics.metric_goals or the name):", *text_table(header, rows)]
    else:
        lines.append("Metrics: none logged")
    if comparison.differing:
        lines += ["Params that differ:", *text_table(("param", *comparison.labels), [
            (key, *values) for key, values in comparison.differing
        ])]
    else:
        lines.append("Params that differ: none")
    if comparison.equal:
        lines.append("Params equal in all runs: " + ", ".join(f"{k}={v}" for k, v in comparison.equal))
    return "\n".join(lines)


def overlay_lines(name: str, comparison: Comparison) -> list[tuple[str, list[tuple[int, float]], bool]]:
    """The lines of one metric's overlaid plot: (label, history, best) of each run that logged it."""
    lines = []
    for index, (label, run) in enumerate(zip(comparison.labels, comparison.runs)):
        points = run.histories.get(name) or ([(0, run.metrics[name])] if name in run.metrics else [])
        if points:
            lines.append((label, points, comparison.best.get(name) == index))
    return lines


def overlay_png(name: str, comparison: Comparison) -> bytes:
    """One metric's histories of every run in one plot."""
    figure, axes = plot_axes(4.2, 2.6)
    for label, points, best in overlay_lines(name, comparison):
        steps, values, style = line_data(points)
        axes.plot(steps, values, **style, linewidth=2.2 if best else 1.1, label=label + (" (best)" if best else ""))
    axes.legend(fontsize=7)
    return plot_png(figure, axes, f"{name} ({comparison.goals[name]})")


class CompareView:
    """The compare view of the panel, filled in a worker thread (reading runs takes time)."""

    def __init__(self, session: Session, report):
        import ipywidgets as widgets

        self.session = session
        self.report = report
        self.comparison: Comparison | None = None
        self.pending: Future | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbxml-panel-compare")
        self._lock = threading.Lock()
        self._asked: tuple[str, ...] = ()
        self.title = widgets.HTML()
        self.metrics = widgets.HTML()
        self.differing = widgets.HTML()
        self.equal = widgets.HTML()
        self.folded = widgets.Accordion(children=[self.equal], selected_index=None)
        set_titles(self.folded, ("Params equal in all runs",))
        self.plots = widgets.Box(layout=widgets.Layout(flex_flow="row wrap"))
        self.close_button = widgets.Button(description="Close comparison", icon="times")
        self.close_button.on_click(lambda _button: self.hide())
        self.widget = widgets.VBox(
            [self.title, self.metrics, self.differing, self.folded, self.plots, self.close_button],
            layout=widgets.Layout(display="none", border="1px solid #d0d7de", padding="4px"),
        )
        self.widget.add_class("dbxml-compare")

    def show(self, run_ids: list[str]) -> Future:
        with self._lock:
            self._asked = tuple(run_ids)
            self.title.value = f"<b>Comparing {len(run_ids)} runs</b> <i>loading...</i>"
            self.widget.layout.display = None
            self.pending = self._executor.submit(self._load, tuple(run_ids))
        return self.pending

    def show_comparison(self, comparison: Comparison) -> None:
        """Show runs already compared (by `%aml_panel --compare`), without reading them again."""
        with self._lock:
            self._asked = tuple(run.run_id for run in comparison.runs)
            self.widget.layout.display = None
            self._render(comparison)

    def hide(self) -> None:
        self.widget.layout.display = "none"

    def _load(self, run_ids: tuple[str, ...]):
        try:
            comparison = read_comparison(self.session, list(run_ids))
        except DbxmlError as exc:
            if run_ids == self._asked:
                self.title.value = f'<span style="color:#cf222e">{html.escape(str(exc))}</span>'
            return None
        except Exception as exc:  # noqa: BLE001 - shown in the panel, never lost in a thread
            self.report(exc)
            return None
        with self._lock:
            if run_ids == self._asked:
                try:
                    self._render(comparison)
                except Exception as exc:  # noqa: BLE001
                    self.report(exc)
        return comparison

    def _render(self, comparison: Comparison) -> None:
        import ipywidgets as widgets

        # Drawn first, so the view changes at once, never showing the new runs over old plots.
        pictures = [overlay_png(name, comparison) for name in comparison.metrics]
        self.comparison = comparison
        self.title.value = f"<b>Comparing {len(comparison.runs)} runs</b>: " + ", ".join(
            html.escape(label) for label in comparison.labels
        )
        header, rows = metric_cells(comparison)
        self.metrics.value = "<b>Metrics</b> (* best)" + table_html(header, rows, "No metrics logged.")
        self.differing.value = "<b>Params that differ</b>" + table_html(
            ("param", *comparison.labels), [(key, *values) for key, values in comparison.differing],
            "No param differs.",
        )
        self.equal.value = table_html(("param", "value"), comparison.equal, "No param is shared by all runs.")
        set_titles(self.folded, (f"Params equal in all runs ({len(comparison.equal)})",))
        old = self.plots.children
        self.plots.children = tuple(widgets.Image(value=picture, format="png") for picture in pictures)
        for image in old:
            image.close()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        close_tree(self.widget)

"""Small helpers every widget of the panel uses: callback errors captured, trees closed."""

import functools
import html
import io


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


def close_tree(root) -> None:
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


STATUS_COLOURS = {
    "RUNNING": "#0969da",
    "FINISHED": "#1a7f37",
    "FAILED": "#cf222e",
    "KILLED": "#9a6700",
    "SCHEDULED": "#6e7781",
}


def status_html(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#6e7781")
    return f'<span style="color:{colour};font-weight:600">{html.escape(status)}</span>'


def table_html(header: tuple[str, ...], rows: list[tuple], empty: str) -> str:
    if not rows:
        return f"<i>{html.escape(empty)}</i>"
    head = "".join(f"<th style='text-align:left;padding-right:1em'>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td style='padding-right:1em'>{html.escape(str(c))}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---------------------------------------------------------------------- runs table


# A plot has a few hundred pixels across: more points only cost drawing time.
MAX_PLOTTED_POINTS = 600


def plot_axes(width: float, height: float):
    """A figure on its own Agg canvas and its axes: pyplot would change the user's backend and figures."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def line_data(points: list[tuple[int, float]]) -> tuple[list, list, dict]:
    """Steps, values and line style of a history, thinned to MAX_PLOTTED_POINTS (the last kept)."""
    count = len(points)
    if count > MAX_PLOTTED_POINTS:
        points = points[:: count // MAX_PLOTTED_POINTS + 1] + points[-1:]
    return [step for step, _ in points], [value for _, value in points], {"marker": "." if count <= 50 else ""}


def plot_png(figure, axes, title: str) -> bytes:
    """The panel's plot style (small title, step axis, light grid), rendered to PNG bytes."""
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("step", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()

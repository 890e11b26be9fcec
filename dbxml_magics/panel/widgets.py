"""Small helpers every widget of the panel uses: callback errors captured, trees closed."""

import functools


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

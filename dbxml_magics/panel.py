"""The session panel. (Text form only for now; the ipywidgets panel is issue 7.)"""

from .session import Session

__all__ = ["show_panel", "close_panel", "panel_text"]


def panel_text(session: Session) -> str:
    link = session.link
    lines = [f"dbxml: mode {link.mode}, primary {link.primary.display}"]
    if link.mirror:
        lines.append(f"  mirror {link.mirror.display}")
    for run in reversed(session.runs):
        lines.append(f"  {run.name} [{run.status}] {run.run_id}")
    return "\n".join(lines)


def show_panel(session: Session) -> None:
    print(panel_text(session))


def close_panel(session: Session) -> None:
    return None

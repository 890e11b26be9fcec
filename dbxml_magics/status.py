"""Plain-text reports of the session: what %aml_sync prints and the panel's text form."""

import time

from .session import Session

__all__ = ["sync_report", "format_age"]


def format_age(timestamp: float | None) -> str:
    if not timestamp:
        return "never"
    seconds = max(0, time.time() - timestamp)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def sync_report(session: Session, flush: bool = False, timeout: float = 30.0) -> str:
    """One line per target store: role, URI (masked), pending, failed, last sync, last error."""
    journal = session.journal
    session.activate()
    if flush:
        journal.flush(timeout=timeout)
    lines = []
    for status in journal.status():
        line = (
            f"{status['role']:<7} {status['target']}: {status['pending']} pending, {status['failed']} failed, "
            f"last sync {format_age(status['last_sync'])}"
        )
        if status["last_error"]:
            line += f", last error: {status['last_error']}"
        lines.append(line)
    for target, kind, error in journal.failures(limit=5):
        lines.append(f"  failed {kind} for {target}: {error}")
    return "\n".join(lines) if lines else "Nothing linked yet: no stores, nothing pending."

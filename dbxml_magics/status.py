"""Plain-text reports of the session: what %aml_sync prints and the panel's text form."""

import time

from .session import Session

__all__ = ["sync_report", "retry_failed", "discard_failed", "format_age"]


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
        journal.flush(timeout=timeout, everyone=True)
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


def retry_failed(session: Session) -> str:
    """Failed rows go back in the queue, in their original order."""
    session.activate()
    count = session.journal.retry_failed()
    if not count:
        return "No failed writes to retry."
    return f"{count} failed writes queued again; see %aml_sync for their progress."


def discard_failed(session: Session) -> str:
    """Delete failed rows, saying exactly what is dropped (per store, run and kind)."""
    dropped = session.journal.discard_failed()
    if not dropped:
        return "No failed writes to discard."
    total = sum(count for *_, count in dropped)
    lines = [f"Discarded {total} failed writes (they will never reach their store):"]
    for target, run_key, kind, count in dropped:
        lines.append(f"  {target}: run {run_key}: {count} {_KIND_NAMES.get(kind, kind)}")
    return "\n".join(lines)


_KIND_NAMES = {
    "batch": "metric/param/tag batches",
    "create_run": "mirror run creation",
    "update": "run status updates",
    "artifact": "artifact uploads",
    "copy_artifacts": "artifact copies to the mirror",
    "delete_tag": "tag deletions",
    "inputs": "dataset inputs",
    "outputs": "model outputs",
    "record_model": "logged-model history entries",
    "delete_run": "run deletions",
    "restore_run": "run restorations",
    "create_model": "logged-model creations on the mirror",
    "model_params": "logged-model params",
    "model_tags": "logged-model tags",
    "model_delete_tag": "logged-model tag deletions",
    "model_artifacts": "logged-model file copies to the mirror",
    "finalize_model": "logged-model status updates",
    "delete_model": "logged-model deletions",
}

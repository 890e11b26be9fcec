"""Shippers: one thread per target store that claims its rows and delivers them.

Within a pass, claimed rows are grouped per run (consecutive batch rows of one run merge,
however the runs interleave), each group is one request, acknowledged as soon as the store
accepted it, so a crash resends at most the group in flight. Errors are sorted once
(`is_transient`): a transient error ends the pass and backs off, leaving every row pending;
a permanent refusal splits the group in halves down to the row at fault, which alone fails;
a run whose mirror run could not be created fails its later rows instead of blocking others.
"""

import json
import threading
import time

from ..masking import first_line
from .delivery import Transient, batch_limits, deliver
from .intercept import shipping_thread, take_retry_after

__all__ = ["Shipper", "TargetStatus", "is_transient", "plan"]

# MLflow error codes that say "this request will never succeed as it is".
_PERMANENT_CODES = {
    "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "BAD_REQUEST",
    "RESOURCE_ALREADY_EXISTS", "ENDPOINT_NOT_FOUND", "NOT_IMPLEMENTED", "INVALID_REQUEST",
    "MALFORMED_REQUEST", "FEATURE_DISABLED",
}


class TargetStatus:
    """What the journal knows of one target store: pending rows, last sync, last error."""

    def __init__(self, key: str, role: str):
        self.key = key
        self.role = role
        self.pending = 0
        self.failed = 0
        self.last_sync: float | None = None
        self.last_error: str | None = None
        self.attempts = 0
        self.next_try = 0.0  # backoff: a forced flush may try sooner
        self.not_before = 0.0  # the store's own Retry-After: nothing tries sooner

    def as_dict(self) -> dict:
        return {
            "target": self.key,
            "role": self.role,
            "pending": self.pending,
            "failed": self.failed,
            "last_sync": self.last_sync,
            "last_error": self.last_error,
        }


def is_transient(exc: BaseException) -> bool:
    """Waiting can fix it: network errors, timeouts, throttling (429), server errors (5xx),
    credentials being renewed. A refusal of the request itself (4xx validation, and
    INVALID_STATE, which MLflow sends as HTTP 500) is permanent, as is a bug in a handler."""
    if isinstance(exc, (Transient, OSError, TimeoutError)):
        return True
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code not in _PERMANENT_CODES
    # SQLAlchemy's "database is locked" on a shared embedded store passes with time.
    return type(exc).__name__ in ("OperationalError", "TimeoutError")


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}"[:300]


def plan(rows: list, limits: tuple[int, int, int]) -> list[list]:
    """Rows of one pass as groups in the order to send them: per run, in row order, each
    group one request. Batch rows of one run merge even when other runs' rows sit between
    them; a row that would change a param already in its group starts a new group, so the
    store sees (and refuses) the change instead of the merge hiding it."""
    max_metrics, max_params_tags, _ = limits
    per_run: dict[str, list[list]] = {}
    sizes: dict[int, list] = {}
    for row in rows:
        groups = per_run.setdefault(row[1], [])
        if row[2] == "batch":
            payload = json.loads(row[3])
            params = dict(payload["params"])
            size = [len(payload["metrics"]), len(params), len(payload["tags"])]
            last = groups[-1] if groups else None
            if last is not None and last[0][2] == "batch":
                merged = sizes[id(last)]
                seen = merged[3]
                fits = (
                    merged[0] + size[0] <= max_metrics
                    and merged[1] + size[1] <= max_params_tags
                    and merged[2] + size[2] <= max_params_tags
                )
                if fits and not any(k in seen and seen[k] != v for k, v in params.items()):
                    last.append(row)
                    merged[0] += size[0]
                    merged[1] += size[1]
                    merged[2] += size[2]
                    seen.update(params)
                    continue
            group = [row]
            sizes[id(group)] = [*size, params]
            groups.append(group)
        else:
            groups.append([row])
    return [group for groups in per_run.values() for group in groups]


class _Backoff(Exception):
    """A transient error: end the pass, keep the rows."""


class Shipper:
    """The thread that empties one target's rows, and how to wake and stop it."""

    def __init__(self, journal, key: str):
        self.journal = journal
        self.key = key
        self.wake = threading.Event()
        self.force = threading.Event()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.in_flight: set[int] = set()
        self._refused = False  # a row of this pass was refused for good: keep its error shown
        self.thread = threading.Thread(target=self._run, name="dbxml-journal-flusher", daemon=True)

    def start(self) -> "Shipper":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def _run(self) -> None:
        shipping_thread()
        try:
            while not self.stopping.is_set():
                self.wake.wait(self.journal.settings.flush_interval)
                self.wake.clear()
                if self.stopping.is_set():
                    break
                force = self.force.is_set()
                self.force.clear()
                self.ship(force=force)
        finally:
            self.journal.outbox.close_thread_connection()

    # ------------------------------------------------------------------ one pass
    def ship(self, force: bool = False) -> None:
        """One pass over the target; a target in backoff waits unless `force`."""
        journal = self.journal
        with self.lock:
            status = journal.status_of(self.key)
            changed = False
            now = time.time()
            if (force or now >= status.next_try) and now >= status.not_before:
                try:
                    changed = self._pass(status)
                    if changed:
                        journal.outbox.checkpoint()
                except Exception as exc:  # noqa: BLE001 - the shipper must survive anything
                    status.last_error = one_line(exc)
                    changed = True
            journal.notify_progress()
        if changed:
            journal.changed()

    def _pass(self, status: TargetStatus) -> bool:
        outbox = self.journal.outbox
        rows = outbox.claim(self.key)
        if not rows:
            return False
        self._refused = False
        take_retry_after()  # an answer to an earlier pass says nothing about this one
        try:
            target = self.journal.targets.get(self.key)
            for group in plan(rows, batch_limits(target.kind if target is not None else None)):
                if self.stopping.is_set():
                    break
                failure = outbox.run_failure(self.key, group[0][1])
                if failure is not None:
                    outbox.fail(group, failure)
                    continue
                self._send(group)
        except _Backoff as backoff:
            status.last_error = one_line(backoff.__cause__)
            status.attempts += 1
            delay = min(self.journal.settings.retry_max_delay, 0.5 * 2 ** min(status.attempts, 10))
            told = take_retry_after()
            if told is not None:
                # The store said when to come back (429/503 Retry-After): no sooner, even forced.
                status.not_before = time.time() + told
                delay = max(delay, told)
            status.next_try = time.time() + delay
            return True
        status.attempts = 0
        status.next_try = 0.0
        status.last_sync = time.time()
        if not self._refused:
            status.last_error = None
        return True

    def _send(self, group: list) -> None:
        """Deliver a group; on a permanent refusal, halve it until the row at fault fails alone."""
        outbox = self.journal.outbox
        ids = [row[0] for row in group]
        if not outbox.still_mine(ids):
            raise _Backoff() from Transient("another kernel took these rows over (lease expired)")
        self.in_flight = set(ids)
        try:
            deliver(self.journal, self.key, group)
        except Exception as exc:  # noqa: BLE001 - sorted right here
            if is_transient(exc):
                raise _Backoff() from exc
            if len(group) > 1:
                half = len(group) // 2
                self._send(group[:half])
                self._send(group[half:])
                return
            message = one_line(exc)
            self._refused = True
            self.journal.status_of(self.key).last_error = message
            outbox.fail(group, message)
            if group[0][2] == "create_run":
                outbox.fail_run(self.key, group[0][1], f"the mirror run could not be created ({message})")
            return
        finally:
            self.in_flight = set()
        outbox.ack(group)

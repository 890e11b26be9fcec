"""The outbox: one SQLite file of rows waiting for their stores, shared by every kernel
started in the same folder.

A row is one write of one run for one target store. Rows are written already claimed by
the kernel that wrote them, with a lease its heartbeat keeps renewing; a shipper only takes
rows that are unclaimed, its own, or whose lease ran out (the writer died or went silent),
and never a run another live kernel is shipping, so a run's rows keep their order and
cross the wire from one kernel at a time. Rows are deleted once the store accepted them
(ack), marked failed when the store refused them for good (fail), and released when a
journal closes with rows it did not send.

WAL mode: a killed process loses nothing it committed; `synchronous=NORMAL` skips an fsync
per commit, so only a crash of the machine can lose the last commits the OS had not yet
written (at most one WAL checkpoint interval, typically under a second of writes).
"""

import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from ..errors import JournalError

__all__ = ["Outbox", "Row", "new_owner", "to_json"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    target TEXT NOT NULL,
    run_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created REAL NOT NULL,
    owner TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    error TEXT,
    claimed_by TEXT,
    lease_until REAL
);
CREATE TABLE IF NOT EXISTS runs (
    target TEXT NOT NULL,
    run_key TEXT NOT NULL,
    remote_id TEXT,
    experiment TEXT,
    failed TEXT,
    PRIMARY KEY (target, run_key)
);
CREATE TABLE IF NOT EXISTS models (
    target TEXT NOT NULL,
    model_id TEXT NOT NULL,
    remote_id TEXT NOT NULL,
    PRIMARY KEY (target, model_id)
);
CREATE TABLE IF NOT EXISTS targets (
    target TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    role TEXT NOT NULL,
    artifact_root TEXT
);
"""
# Columns added after the first release; an older outbox gains them on open.
_ADDED_COLUMNS = {"entries": ("claimed_by TEXT", "lease_until REAL"), "runs": ("failed TEXT",)}
# No secondary index on entries: each one is one more page written by every commit, and the
# hot path is one commit per metric point. The table holds only rows not yet shipped, so the
# shippers' scans in id order stay short. An older outbox loses its index on open.
_DROPPED = "DROP INDEX IF EXISTS entries_by_target"


_APPEND_SQL: dict[int, str] = {}


def to_json(payload) -> str:
    """A row's payload as JSON; numpy numbers (valid metric values and steps for MLflow,
    unknown to json) become plain ones."""
    return json.dumps(payload, default=_plain_number)


def _plain_number(value):
    item = getattr(value, "item", None)
    if item is None:
        raise TypeError(f"{type(value).__name__} cannot be written to the journal")
    return item()


def new_owner() -> str:
    """A claim owner: unique per journal, so a reused PID never passes for a live kernel."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:12]}"


class Row(tuple):
    """(id, run_key, kind, payload, created) of one claimed row; payload is decoded on demand.

    Ids are SQLite rowids (no AUTOINCREMENT: that is one more page per commit), so once the
    newest rows are deleted an id can come back for a new row; `created` tells them apart
    wherever a row is acknowledged or failed."""

    __slots__ = ()

    id = property(lambda self: self[0])
    run_key = property(lambda self: self[1])
    kind = property(lambda self: self[2])

    @property
    def payload(self) -> dict:
        return json.loads(self[3])


class Outbox:
    """The SQLite file and every statement that touches it."""

    def __init__(self, path: Path, owner: str, lease: float):
        self.path = Path(path)
        self.blob_dir = self.path.parent / "blobs"
        self.owner = owner
        self.lease = lease
        self.claiming = True  # a closed journal writes unclaimed rows: the next one adopts them at once
        self._local = threading.local()
        self._conns: dict[threading.Thread, sqlite3.Connection] = {}
        self._conns_lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.blob_dir.mkdir(exist_ok=True)
            db = self.db()
            db.executescript(_SCHEMA)
            for table, columns in _ADDED_COLUMNS.items():
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                for column in columns:
                    if column.split()[0] not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
            db.execute(_DROPPED)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(
                f"The journal at {self.path} cannot be opened ({exc}). "
                "Set %config DbxmlMagics.state_dir to a writable folder."
            ) from None

    # ------------------------------------------------------------------ connections
    def db(self) -> sqlite3.Connection:
        """One connection per thread; WAL so several kernels can share a working directory."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=60000")
            # A writing cell never copies the WAL back into the file (an fsync every 1000
            # commits, paid by whoever commits the 1000th): shippers do it, see `checkpoint`.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._local.conn = conn
            with self._conns_lock:
                self._conns[threading.current_thread()] = conn
        return conn

    def checkpoint(self) -> None:
        """Fold the WAL back into the file without waiting for anyone (after a shipper pass)."""
        self.db().execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close_thread_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            with self._conns_lock:
                self._conns.pop(threading.current_thread(), None)
            conn.close()

    def close(self) -> None:
        """Close this thread's connection and those of finished threads; a shipper still
        finishing its last group closes its own when it exits."""
        with self._conns_lock:
            closing = [t for t in self._conns if t is threading.current_thread() or not t.is_alive()]
            conns = [self._conns.pop(t) for t in closing]
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    def transaction(self):
        return _Transaction(self.db())

    # ------------------------------------------------------------------ writes
    def insert(self, db, target: str, run_key: str, kind: str, payload: dict) -> None:
        """Queue one row, claimed by this journal (call inside `transaction()`)."""
        now = time.time()
        claim = (self.owner, now + self.lease) if self.claiming else (None, None)
        db.execute(
            "INSERT INTO entries(target, run_key, kind, payload, created, owner, claimed_by, lease_until) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (target, run_key, kind, to_json(payload), now, self.owner, *claim),
        )

    def append(self, targets: list[str], run_key: str, kind: str, text: str) -> None:
        """Queue one write (its payload already JSON) for several targets in one statement:
        one commit, atomic without BEGIN/COMMIT round trips. This is the hot path (one
        log_metric, one call): the statement text is cached per number of targets, so SQLite
        reuses its prepared statement."""
        now = time.time()
        owner, lease_until = (self.owner, now + self.lease) if self.claiming else (None, None)
        sql = _APPEND_SQL.get(len(targets))
        if sql is None:
            values = ",".join("(?, ?, ?, ?, ?, ?, ?, ?)" for _ in targets)
            sql = _APPEND_SQL[len(targets)] = (
                f"INSERT INTO entries(target, run_key, kind, payload, created, owner, claimed_by, lease_until) VALUES {values}"
            )
        if len(targets) == 1:
            args = (targets[0], run_key, kind, text, now, self.owner, owner, lease_until)
        else:
            args = [v for target in targets for v in (target, run_key, kind, text, now, self.owner, owner, lease_until)]
        self.db().execute(sql, args)

    def set_run(self, db, target: str, run_key: str, remote_id: str | None, experiment: str | None, replace: bool) -> None:
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        db.execute(
            f"{verb} INTO runs(target, run_key, remote_id, experiment) VALUES (?, ?, ?, ?)",
            (target, run_key, remote_id, experiment),
        )

    def remember_target(self, key: str, kind: str, role: str, artifact_root: str | None) -> None:
        self.db().execute(
            "INSERT INTO targets(target, kind, role, artifact_root) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(target) DO UPDATE SET kind=excluded.kind, role=excluded.role, "
            "artifact_root=COALESCE(excluded.artifact_root, targets.artifact_root)",
            (key, kind, role, artifact_root),
        )

    def known_targets(self) -> list[tuple[str, str, str, str | None]]:
        return self.db().execute("SELECT target, kind, role, artifact_root FROM targets").fetchall()

    # ------------------------------------------------------------------ claims
    def claim(self, target: str, limit: int = 5000) -> list[Row]:
        """Take the rows of `target` this journal may ship now, oldest first.

        Free rows are those unclaimed, claimed by us, or whose lease expired; a run with a
        live claim by another kernel is left to that kernel entirely (its order is its own)."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE entries SET claimed_by=?, lease_until=? WHERE id IN ("
                " SELECT id FROM entries WHERE target=? AND state='pending'"
                " AND (claimed_by IS NULL OR claimed_by=? OR lease_until < ?)"
                " AND run_key NOT IN (SELECT run_key FROM entries WHERE target=? AND state='pending'"
                "   AND claimed_by IS NOT NULL AND claimed_by != ? AND lease_until >= ?)"
                " ORDER BY id LIMIT ?)",
                (self.owner, now + self.lease, target, self.owner, now, target, self.owner, now, limit),
            )
            rows = db.execute(
                "SELECT id, run_key, kind, payload, created FROM entries WHERE target=? AND state='pending' AND claimed_by=? "
                "ORDER BY id LIMIT ?",
                (target, self.owner, limit),
            ).fetchall()
        return [Row(r) for r in rows]

    def still_mine(self, ids: list[int]) -> bool:
        """Renew the lease of rows about to be sent; False when another kernel took them."""
        marks = ",".join("?" * len(ids))
        changed = self.db().execute(
            f"UPDATE entries SET lease_until=? WHERE claimed_by=? AND state='pending' AND id IN ({marks})",
            (time.time() + self.lease, self.owner, *ids),
        ).rowcount
        return changed == len(ids)

    def heartbeat(self) -> None:
        """This kernel is alive: keep every row it holds."""
        self.db().execute(
            "UPDATE entries SET lease_until=? WHERE claimed_by=? AND state='pending'",
            (time.time() + self.lease, self.owner),
        )

    def release(self, keep: set[int]) -> None:
        """Give up our claims (closing), except rows a shipper is sending right now."""
        with self.transaction() as db:
            ids = [i for (i,) in db.execute("SELECT id FROM entries WHERE claimed_by=?", (self.owner,)) if i not in keep]
            db.executemany("UPDATE entries SET claimed_by=NULL, lease_until=NULL WHERE id=?", [(i,) for i in ids])

    # One transaction per group: in autocommit each statement would be a commit of its own,
    # holding the write lock the writing cell waits for once per row.
    def ack(self, rows: list) -> None:
        """The store accepted these rows: delete them (exactly these, see `Row`)."""
        with self.transaction() as db:
            db.executemany("DELETE FROM entries WHERE id=? AND created=?", [(r[0], r[4]) for r in rows])

    def fail(self, rows: list, error: str) -> None:
        with self.transaction() as db:
            db.executemany(
                "UPDATE entries SET state='failed', error=?, claimed_by=NULL, lease_until=NULL WHERE id=? AND created=?",
                [(error, r[0], r[4]) for r in rows],
            )

    # ------------------------------------------------------------------ runs on targets
    def remote_id(self, target: str, run_key: str) -> str | None:
        row = self.db().execute("SELECT remote_id FROM runs WHERE target=? AND run_key=?", (target, run_key)).fetchone()
        return row[0] if row else run_key

    def set_remote_id(self, target: str, run_key: str, remote_id: str) -> None:
        self.db().execute(
            "UPDATE runs SET remote_id=?, failed=NULL WHERE target=? AND run_key=?", (remote_id, target, run_key)
        )

    def set_remote_model(self, target: str, model_id: str, remote_id: str) -> None:
        """The MLflow 3 logged model `model_id` of the primary is `remote_id` on `target`."""
        self.db().execute(
            "INSERT OR REPLACE INTO models(target, model_id, remote_id) VALUES (?, ?, ?)", (target, model_id, remote_id)
        )

    def remote_model(self, target: str, model_id: str) -> str | None:
        row = self.db().execute(
            "SELECT remote_id FROM models WHERE target=? AND model_id=?", (target, model_id)
        ).fetchone()
        return row[0] if row else None

    def run_failure(self, target: str, run_key: str) -> str | None:
        row = self.db().execute("SELECT failed FROM runs WHERE target=? AND run_key=?", (target, run_key)).fetchone()
        return row[0] if row else None

    def fail_run(self, target: str, run_key: str, error: str) -> None:
        self.db().execute("UPDATE runs SET failed=? WHERE target=? AND run_key=?", (error, target, run_key))

    def primary_of(self, run_key: str) -> str | None:
        row = self.db().execute("SELECT target FROM runs WHERE run_key=? AND remote_id=?", (run_key, run_key)).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------------ counts
    def counts(self) -> dict[tuple[str, str], int]:
        return {
            (target, state): n
            for target, state, n in self.db().execute("SELECT target, state, COUNT(*) FROM entries GROUP BY target, state")
        }

    def pending(self, run_key: str | None = None, target: str | None = None) -> int:
        query, args = "SELECT COUNT(*) FROM entries WHERE state='pending'", []
        if run_key is not None:
            query += " AND run_key=?"
            args.append(run_key)
        if target is not None:
            query += " AND target=?"
            args.append(target)
        return self.db().execute(query, args).fetchone()[0]

    def oldest_pending(self, target: str) -> float | None:
        return self.db().execute(
            "SELECT MIN(created) FROM entries WHERE target=? AND state='pending'", (target,)
        ).fetchone()[0]

    def oldest_waiting(self) -> float | None:
        """When the oldest row still waiting (pending or failed) was written, or None."""
        return self.db().execute("SELECT MIN(created) FROM entries WHERE state IN ('pending', 'failed')").fetchone()[0]

    def shippable(self, run_key: str | None, targets: list[str], mine_only: bool = True) -> int:
        """Pending rows of `targets`; with `mine_only`, those this journal may ship now (not
        held by a live claim elsewhere)."""
        if not targets:
            return 0
        marks = ",".join("?" * len(targets))
        query = f"SELECT COUNT(*) FROM entries WHERE state='pending' AND target IN ({marks})"
        args = [*targets]
        if mine_only:
            query += " AND (claimed_by IS NULL OR claimed_by=? OR lease_until < ?)"
            args += [self.owner, time.time()]
        if run_key is not None:
            query += " AND run_key=?"
            args.append(run_key)
        return self.db().execute(query, args).fetchone()[0]

    def failures(self, limit: int = 20) -> list[tuple[str, str, str]]:
        return self.db().execute(
            "SELECT target, kind, error FROM entries WHERE state='failed' ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()

    def failed_summary(self, target: str | None = None) -> list[tuple[str, str, str, int]]:
        """(target, run, kind, count) of failed rows, for --retry/--discard to say what they touch."""
        query, args = "SELECT target, run_key, kind, COUNT(*) FROM entries WHERE state='failed'", []
        if target is not None:
            query += " AND target=?"
            args.append(target)
        return self.db().execute(query + " GROUP BY target, run_key, kind ORDER BY MIN(id)", args).fetchall()

    def retry_failed(self, target: str | None = None) -> int:
        """Failed rows become pending again (ours to ship), their runs' failures forgotten."""
        now = time.time()
        clause, args = ("AND target=?", [target]) if target is not None else ("", [])
        with self.transaction() as db:
            n = db.execute(
                f"UPDATE entries SET state='pending', error=NULL, claimed_by=?, lease_until=? WHERE state='failed' {clause}",
                (self.owner, now + self.lease, *args),
            ).rowcount
            db.execute(f"UPDATE runs SET failed=NULL WHERE failed IS NOT NULL {clause}", args)
        return n

    def discard_failed(self, target: str | None = None) -> list[str]:
        """Delete failed rows; returns the blobs (artifact copies) they referred to."""
        clause, args = ("AND target=?", [target]) if target is not None else ("", [])
        with self.transaction() as db:
            blobs = [
                json.loads(payload).get("blob")
                for (payload,) in db.execute(f"SELECT payload FROM entries WHERE state='failed' AND kind='artifact' {clause}", args)
            ]
            db.execute(f"DELETE FROM entries WHERE state='failed' {clause}", args)
        return [b for b in blobs if b]

    def blob_in_use(self, blob_name: str, except_id: int | None = None) -> bool:
        return bool(
            self.db().execute(
                "SELECT COUNT(*) FROM entries WHERE id != ? AND kind='artifact' AND payload LIKE ?",
                (except_id if except_id is not None else -1, f"%{blob_name}%"),
            ).fetchone()[0]
        )


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")

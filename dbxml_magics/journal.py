"""The journal: a durable local outbox between the notebook and its tracking stores.

Every tracking write of a run this session owns lands here first (one SQLite row per
target store), and one flusher thread ships the rows to each target in `log_batch`-sized
batches. That single mechanism gives speed (no round trip per metric point), `both`-mode
mirroring (a second target), and no lost data when a store is down (rows wait and are
replayed with backoff, also by the next kernel if this one dies).

Interception: `install()` wraps every store builder in MLflow's tracking-store registry, so
`mlflow.log_metric` & co. reach a `JournaledStore`. It queues writes for runs it created
and passes everything else through to the real store. Reads of an owned run first wait
(bounded) for that run's queue, so user code reads its own writes.

Idempotency: rows are deleted only after the target accepted them; a replay after a crash
resends at most one batch. MLflow stores ignore an identical metric point, accept an
identical param, and overwrite a tag, so a resent batch changes nothing. Mirror runs carry
the tag `dbxml.source_run_id`, looked up before creating, so a mirror run is created once.
"""

import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from .errors import JournalError
from .experiments import resolve_experiment
from .stores import prepare_sqlite_store, raw_store_builder
from .targets import Link, Target
from .masking import first_line, mask_uri

__all__ = ["Journal", "JournaledStore", "TargetStatus", "SOURCE_RUN_TAG", "register_kind"]

SOURCE_RUN_TAG = "dbxml.source_run_id"
_OWNER = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
# MLflow codes that mean "this request will never succeed"; everything else is retried.
_PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "BAD_REQUEST"}
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    run_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created REAL NOT NULL,
    owner TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    error TEXT
);
CREATE INDEX IF NOT EXISTS entries_by_target ON entries(target, state, id);
CREATE TABLE IF NOT EXISTS runs (
    target TEXT NOT NULL,
    run_key TEXT NOT NULL,
    remote_id TEXT,
    experiment TEXT,
    PRIMARY KEY (target, run_key)
);
CREATE TABLE IF NOT EXISTS targets (
    target TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    role TEXT NOT NULL,
    artifact_root TEXT
);
"""


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
        self.next_try = 0.0

    def as_dict(self) -> dict:
        return {
            "target": self.key,
            "role": self.role,
            "pending": self.pending,
            "failed": self.failed,
            "last_sync": self.last_sync,
            "last_error": self.last_error,
        }


class Journal:
    """Durable outbox (SQLite) plus the one flusher thread that empties it."""

    def __init__(self, path: Path, settings, on_change: Callable[[list[dict]], None] | None = None):
        self.path = Path(path)
        self.blob_dir = self.path.parent / "blobs"
        self.settings = settings
        self._on_change = on_change
        self._local = threading.local()
        self._targets: dict[str, Target] = {}  # key -> live target (with credentials)
        self._status: dict[str, TargetStatus] = {}
        self._owned: dict[str, list[str]] = {}  # primary run id -> target keys
        self._params: dict[str, dict[str, str]] = {}  # params queued per owned run
        self._latest_metrics: dict[str, dict[str, float]] = {}  # last value per key per owned run
        self._live_points: dict[str, dict[str, list]] = {}  # (step, value) per key of running owned runs
        self._inner_stores: dict[str, object] = {}
        self._flushers: dict[str, _TargetFlusher] = {}
        self._progress = threading.Condition()
        self._stopped = False
        self._original_builders: dict | None = None
        self._conns: list[sqlite3.Connection] = []
        self._link: Link | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.blob_dir.mkdir(exist_ok=True)
            self._db().executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(
                f"The journal at {self.path} cannot be opened ({exc}). "
                "Set %config DbxmlMagics.state_dir to a writable folder."
            ) from None
        self._adopt_known_targets()

    # ------------------------------------------------------------------ storage
    def _db(self) -> sqlite3.Connection:
        """One connection per thread; WAL so several kernels can share a working directory."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=60000")
            self._local.conn = conn
            self._conns.append(conn)
        return conn

    def _adopt_known_targets(self) -> None:
        """Targets left with pending rows by an earlier kernel are replayed when reachable."""
        rows = self._db().execute("SELECT target, kind, role, artifact_root FROM targets").fetchall()
        for key, kind, role, artifact_root in rows:
            self._status.setdefault(key, TargetStatus(key, role))
            # Keys are masked URIs; one that masking left unchanged is usable as it is. An AML
            # target also needs a credential (without one the plugin would start an interactive
            # sign-in on the flusher thread): its rows wait until that workspace is linked again.
            if key not in self._targets and mask_uri(key) == key and kind != "aml":
                self._targets[key] = Target(uri=key, kind=kind, artifact_root=artifact_root)

    # ------------------------------------------------------------------ targets
    def set_targets(self, link: Link) -> None:
        """Runs created from now on go to link.primary, mirrored to link.mirror."""
        self.install()
        self._link = link
        db = self._db()
        for target, role in ((link.primary, "primary"), (link.mirror, "mirror")):
            if target is None:
                continue
            key = target.display
            self._targets[key] = target
            self._inner_stores.pop(key, None)
            self._status.setdefault(key, TargetStatus(key, role)).role = role
            db.execute(
                "INSERT INTO targets(target, kind, role, artifact_root) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(target) DO UPDATE SET kind=excluded.kind, role=excluded.role, "
                "artifact_root=excluded.artifact_root",
                (key, target.kind, role, target.artifact_root),
            )
        self._start_flusher()

    @property
    def link(self) -> Link | None:
        return self._link

    def target_key_for(self, store_uri: str) -> str:
        return mask_uri(store_uri)

    # ------------------------------------------------------------------ interception
    @property
    def installed(self) -> bool:
        return self._original_builders is not None

    def install(self) -> None:
        """Wrap MLflow's store builders so that writes of owned runs reach the journal."""
        if self._original_builders is not None:
            return
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry as registry

        self._original_builders = dict(registry._registry)
        for scheme, builder in self._original_builders.items():
            registry._registry[scheme] = _JournaledBuilder(builder, self)
        registry._get_store_with_resolved_uri.cache_clear()
        # MLflow's default HTTP retries wait minutes on a dead server; the journal retries
        # by itself, so a down store costs seconds. A user's own setting wins.
        self._env_defaults = {k: v for k, v in _HTTP_DEFAULTS.items() if k not in os.environ}
        os.environ.update(self._env_defaults)

    def uninstall(self) -> None:
        if self._original_builders is None:
            return
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry as registry

        for scheme, builder in list(registry._registry.items()):
            if isinstance(builder, _JournaledBuilder) and builder.journal is self:
                registry._registry[scheme] = builder.inner
        registry._get_store_with_resolved_uri.cache_clear()
        self._original_builders = None
        for key, value in getattr(self, "_env_defaults", {}).items():
            if os.environ.get(key) == value:
                del os.environ[key]

    def artifact_root_for(self, store_uri: str) -> str | None:
        """The embedded store's artifact folder, so experiments created there land in it."""
        link = self.link
        for target in (link.primary, link.mirror) if link else ():
            if target is not None and target.uri == store_uri and target.artifact_root:
                return target.artifact_root
        return None

    def inner_store(self, key: str):
        """The real (unwrapped) store of a target, built once per target."""
        store = self._inner_stores.get(key)
        if store is None:
            target = self._targets[key]
            prepare_sqlite_store(target.uri)
            store = raw_store_builder(target.uri)(store_uri=target.uri, artifact_uri=target.artifact_root)
            self._inner_stores[key] = store
        return store

    # ------------------------------------------------------------------ ownership
    def own(self, run_id: str, store_uri: str, experiment_name: Callable[[], str | None], run) -> None:
        """Adopt a run just created on `store_uri`: its writes now go through the journal.

        `experiment_name` is called only when the run is mirrored (it costs a request)."""
        primary = self.target_key_for(store_uri)
        keys = [primary]
        link = self.link
        mirrored = link is not None and link.mirror is not None and link.primary.display == primary
        experiment_name = experiment_name() if mirrored else None
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT OR REPLACE INTO runs(target, run_key, remote_id, experiment) VALUES (?, ?, ?, ?)",
                (primary, run_id, run_id, experiment_name),
            )
            if mirrored:
                mirror = link.mirror.display
                keys.append(mirror)
                db.execute(
                    "INSERT OR IGNORE INTO runs(target, run_key, remote_id, experiment) VALUES (?, ?, NULL, ?)",
                    (mirror, run_id, experiment_name),
                )
                payload = {
                    "experiment": experiment_name,
                    "run_name": run.info.run_name,
                    "start_time": run.info.start_time,
                    "user_id": run.info.user_id,
                    "tags": _tag_dict(run),
                }
                self._insert(db, mirror, run_id, "create_run", payload)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._owned[run_id] = keys

    def latest_metrics(self, run_id: str) -> dict[str, float]:
        """The last value logged in this process for each metric of an owned run."""
        return dict(self._latest_metrics.get(run_id, {}))

    def live_history(self, run_id: str) -> dict[str, list[tuple[int, float]]]:
        """(step, value) points logged in this process for each metric of a run still running,
        in logging order: what the panel plots live without asking the store."""
        return {key: list(points) for key, points in self._live_points.get(run_id, {}).items()}

    def owns(self, run_id: str) -> bool:
        return run_id in self._owned

    def mirror_run_id(self, run_id: str) -> str | None:
        keys = self._owned.get(run_id, [])
        if len(keys) < 2:
            return None
        row = self._db().execute(
            "SELECT remote_id FROM runs WHERE target=? AND run_key=?", (keys[1], run_id)
        ).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------------ writes
    def append(self, run_id: str, kind: str, payload: dict, primary_only: bool = False, mirror_only: bool = False) -> None:
        """Queue one write of an owned run for each of its targets (one transaction)."""
        keys = self._owned[run_id]
        if primary_only:
            keys = keys[:1]
        elif mirror_only:
            keys = keys[1:]
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            for key in keys:
                self._insert(db, key, run_id, kind, payload)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if kind != "batch":
            self._wake_flushers()

    def _check_params(self, run_id, params) -> None:
        """MLflow refuses to change a param; say so at once, as the store would have."""
        if not params:
            return
        logged = self._params.setdefault(run_id, {})
        for param in params:
            old = logged.get(param.key)
            if old is not None and old != str(param.value):
                from mlflow.exceptions import MlflowException
                from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

                raise MlflowException(
                    f"Changing param values is not allowed. Param with key='{param.key}' was already logged "
                    f"with value='{old}' for run ID='{run_id}'. Attempted logging new value '{param.value}'.",
                    INVALID_PARAMETER_VALUE,
                )
        for param in params:
            logged[param.key] = str(param.value)

    @staticmethod
    def _insert(db, key, run_key, kind, payload) -> None:
        db.execute(
            "INSERT INTO entries(target, run_key, kind, payload, created, owner) VALUES (?, ?, ?, ?, ?, ?)",
            (key, run_key, kind, json.dumps(payload), time.time(), _OWNER),
        )

    def log_batch(self, run_id, metrics=(), params=(), tags=()) -> None:
        self._check_params(run_id, params)
        if metrics:
            latest = self._latest_metrics.setdefault(run_id, {})
            live = self._live_points.setdefault(run_id, {})
            for metric in metrics:
                latest[metric.key] = metric.value
                live.setdefault(metric.key, []).append((metric.step, metric.value))
        payload = {
            "metrics": [_metric_to_list(m) for m in metrics],
            "params": [[p.key, p.value] for p in params],
            "tags": [[t.key, t.value] for t in tags],
        }
        self.append(run_id, "batch", payload)

    def update_run(self, run_id, status=None, end_time=None, run_name=None) -> None:
        self.append(run_id, "update", {"status": status, "end_time": end_time, "run_name": run_name})
        if status is not None and status not in ("RUNNING", "SCHEDULED"):
            self._live_points.pop(run_id, None)  # an ended run is read from its store
            if len(self._owned.get(run_id, [])) > 1:
                # Artifacts user code logged directly to the primary follow the run to the mirror.
                self._insert(self._db(), self._owned[run_id][1], run_id, "copy_artifacts", {})
            self._wake_flushers()

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        """Copy a file into the journal now; it is uploaded to every target by the flusher."""
        source = Path(local_path)
        blob = self.blob_dir / f"{uuid.uuid4().hex}-{source.name}"
        shutil.copyfile(source, blob)
        self.append(run_id, "artifact", {"blob": str(blob), "artifact_path": artifact_path})

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        name = Path(artifact_file)
        blob = self.blob_dir / f"{uuid.uuid4().hex}-{name.name}"
        blob.write_text(text, encoding="utf-8")
        parent = str(name.parent) if str(name.parent) not in ("", ".") else None
        self.append(run_id, "artifact", {"blob": str(blob), "artifact_path": parent})

    # ------------------------------------------------------------------ status
    def status(self) -> list[dict]:
        counts = {
            (target, state): n
            for target, state, n in self._db().execute(
                "SELECT target, state, COUNT(*) FROM entries GROUP BY target, state"
            )
        }
        out = []
        for key, st in self._status.items():
            st.pending = counts.get((key, "pending"), 0)
            st.failed = counts.get((key, "failed"), 0)
            out.append(st.as_dict())
        return out

    def pending(self, run_id: str | None = None, key: str | None = None) -> int:
        query, args = "SELECT COUNT(*) FROM entries WHERE state='pending'", []
        if run_id is not None:
            query += " AND run_key=?"
            args.append(run_id)
        if key is not None:
            query += " AND target=?"
            args.append(key)
        return self._db().execute(query, args).fetchone()[0]

    def failures(self, limit: int = 20) -> list[tuple[str, str, str]]:
        return self._db().execute(
            "SELECT target, kind, error FROM entries WHERE state='failed' ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()

    # ------------------------------------------------------------------ flushing
    def flush(self, run_id: str | None = None, timeout: float | None = None, primary_only: bool = False) -> bool:
        """Ask the flusher to ship now (ignoring backoff once) and wait until it did or `timeout`.

        Returns True when nothing is left pending for `run_id` (or at all). Never raises
        for an unreachable store: its rows simply stay queued.
        """
        timeout = self.settings.flush_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        keys = None
        if run_id is not None and primary_only and run_id in self._owned:
            keys = self._owned[run_id][:1]

        def remaining() -> int:
            if keys:
                return sum(self.pending(run_id, k) for k in keys)
            return self.pending(run_id)

        if any(f.thread is threading.current_thread() for f in self._flushers.values()):
            return remaining() == 0
        self._start_flusher()
        while True:
            left = remaining()
            if left == 0:
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            with self._progress:
                self._wake_flushers(force=True)
                self._progress.wait(min(0.5, deadline - now))

    def _start_flusher(self) -> None:
        """One flusher thread per target, so a slow or down mirror never delays the primary."""
        self._stopped = False
        for key in list(self._targets):
            flusher = self._flushers.get(key)
            if flusher is None or not flusher.thread.is_alive():
                self._flushers[key] = flusher = _TargetFlusher(self, key)
                flusher.thread.start()

    def _wake_flushers(self, force: bool = False) -> None:
        for flusher in list(self._flushers.values()):
            if force:
                flusher.force.set()
            flusher.wake.set()

    def _run_flusher(self, flusher: "_TargetFlusher") -> None:
        while not self._stopped:
            flusher.wake.wait(self.settings.flush_interval)
            flusher.wake.clear()
            if self._stopped:
                break
            force = flusher.force.is_set()
            flusher.force.clear()
            self.ship(flusher, force=force)

    def ship(self, flusher: "_TargetFlusher", force: bool = False) -> None:
        """One pass over one target; a target in backoff waits unless `force`."""
        key = flusher.key
        with flusher.lock:
            status = self._status.setdefault(key, TargetStatus(key, "primary"))
            changed = False
            if force or time.time() >= status.next_try:
                try:
                    changed = self._ship_target(key, status)
                except Exception as exc:  # noqa: BLE001 - the flusher must survive anything
                    status.last_error = _one_line(exc)
                    changed = True
            with self._progress:
                self._progress.notify_all()
        if changed and self._on_change is not None:
            self._on_change(self.status())

    def _ship_target(self, key: str, status: TargetStatus) -> bool:
        db = self._db()
        owners = [
            owner
            for (owner,) in db.execute("SELECT DISTINCT owner FROM entries WHERE target=? AND state='pending'", (key,))
            if owner == _OWNER or not _process_alive(owner)
        ]
        if not owners:
            return False
        # Rows of another live kernel sharing this folder are that kernel's to send.
        marks = ",".join("?" * len(owners))
        rows = db.execute(
            f"SELECT id, run_key, kind, payload FROM entries WHERE target=? AND state='pending' "
            f"AND owner IN ({marks}) ORDER BY id LIMIT 5000",
            (key, *owners),
        ).fetchall()
        if not rows:
            return False
        for group in _group_rows(rows):
            ids = [row[0] for row in group]
            try:
                self._send_group(key, group)
            except Exception as exc:  # noqa: BLE001 - classified below
                message = _one_line(exc)
                status.last_error = message
                if _is_permanent(exc):
                    self._fail_or_split(key, group, exc)
                    continue
                status.attempts += 1
                delay = min(self.settings.retry_max_delay, 0.5 * 2 ** min(status.attempts, 10))
                status.next_try = time.time() + delay
                return True
            self._delete(ids)
            status.attempts = 0
            status.next_try = 0.0
            status.last_sync = time.time()
            status.last_error = None
        return True

    def _fail_or_split(self, key, group, exc) -> None:
        """A rejected batch is retried row by row so one bad value fails alone."""
        if len(group) > 1:
            for row in group:
                try:
                    self._send_group(key, [row])
                    self._delete([row[0]])
                except Exception as row_exc:  # noqa: BLE001
                    self._mark_failed([row[0]], _one_line(row_exc))
        else:
            self._mark_failed([group[0][0]], _one_line(exc))

    def _delete(self, ids) -> None:
        self._db().executemany("DELETE FROM entries WHERE id=?", [(i,) for i in ids])

    def _mark_failed(self, ids, error) -> None:
        self._db().executemany("UPDATE entries SET state='failed', error=? WHERE id=?", [(error, i) for i in ids])

    def _remote_run_id(self, key: str, run_key: str) -> str | None:
        row = self._db().execute("SELECT remote_id FROM runs WHERE target=? AND run_key=?", (key, run_key)).fetchone()
        return row[0] if row else run_key

    def _send_group(self, key: str, group: list) -> None:
        store = self.inner_store(key)
        run_key, kind = group[0][1], group[0][2]
        if kind == "create_run":
            self._create_mirror_run(key, store, run_key, json.loads(group[0][3]))
            return
        remote_id = self._remote_run_id(key, run_key)
        if remote_id is None:
            raise _Transient("the mirror run is not created yet")
        if kind == "batch":
            from mlflow.entities import Metric, Param, RunTag
            from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH, MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

            metrics, params, tags = [], {}, {}
            for row in group:
                payload = json.loads(row[3])
                metrics.extend(payload["metrics"])
                params.update(dict(payload["params"]))
                tags.update(dict(payload["tags"]))
            metric_objs = [_list_to_metric(m, Metric) for m in metrics]
            param_objs = [Param(k, v) for k, v in params.items()]
            tag_objs = [RunTag(k, v) for k, v in tags.items()]
            while metric_objs or param_objs or tag_objs:
                p, param_objs = param_objs[:MAX_PARAMS_TAGS_PER_BATCH], param_objs[MAX_PARAMS_TAGS_PER_BATCH:]
                t, tag_objs = tag_objs[:MAX_PARAMS_TAGS_PER_BATCH], tag_objs[MAX_PARAMS_TAGS_PER_BATCH:]
                room = min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - len(p) - len(t))
                m, metric_objs = metric_objs[:room], metric_objs[room:]
                store.log_batch(remote_id, m, p, t)
        elif kind == "update":
            from mlflow.entities import RunStatus

            payload = json.loads(group[0][3])
            status = RunStatus.from_string(payload["status"]) if payload["status"] else None
            if status is None:
                status = store.get_run(remote_id).info.status
                status = RunStatus.from_string(status) if isinstance(status, str) else status
            store.update_run_info(remote_id, status, payload["end_time"], payload["run_name"])
        elif kind == "artifact":
            payload = json.loads(group[0][3])
            blob = Path(payload["blob"])
            if blob.exists():
                repo = self._artifact_repo(key, store, remote_id)
                staged = blob.parent / "staging" / uuid.uuid4().hex / blob.name.split("-", 1)[1]
                staged.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(blob, staged)
                try:
                    repo.log_artifact(str(staged), payload["artifact_path"])
                finally:
                    shutil.rmtree(staged.parent, ignore_errors=True)
                self._release_blob(blob, group[0][0])
        elif kind == "copy_artifacts":
            self._copy_artifacts(key, store, run_key, remote_id)
        elif kind in _handlers:
            _handlers[kind](self._targets[key], remote_id, json.loads(group[0][3]))
        else:
            raise JournalError(f"unknown journal entry kind {kind!r}")

    def _release_blob(self, blob: Path, entry_id: int) -> None:
        """Delete a blob once no other pending row refers to it."""
        others = self._db().execute(
            "SELECT COUNT(*) FROM entries WHERE id != ? AND kind='artifact' AND payload LIKE ?",
            (entry_id, f"%{blob.name}%"),
        ).fetchone()[0]
        if not others:
            blob.unlink(missing_ok=True)

    def _artifact_repo(self, key, store, remote_id):
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        target = self._targets[key]
        artifact_uri = store.get_run(remote_id).info.artifact_uri
        return get_artifact_repository(artifact_uri, tracking_uri=target.uri)

    def _create_mirror_run(self, key, store, run_key, payload) -> None:
        if self._db().execute(
            "SELECT remote_id FROM runs WHERE target=? AND run_key=? AND remote_id IS NOT NULL", (key, run_key)
        ).fetchone():
            return
        from mlflow.entities import RunTag, ViewType

        target = self._targets[key]
        name = resolve_experiment(target, payload["experiment"] or "Default", self.settings)
        experiment = store.get_experiment_by_name(name)
        if experiment is None:
            experiment_id = store.create_experiment(name)
        else:
            experiment_id = experiment.experiment_id
        existing = store.search_runs(
            [experiment_id], f"tags.`{SOURCE_RUN_TAG}` = '{run_key}'", ViewType.ALL, max_results=1
        )
        if existing:
            remote_id = existing[0].info.run_id
        else:
            tags = [RunTag(k, v) for k, v in payload["tags"].items() if not k.startswith("mlflow.log-model")]
            tags.append(RunTag(SOURCE_RUN_TAG, run_key))
            run = store.create_run(
                experiment_id, payload["user_id"], payload["start_time"], tags, payload["run_name"]
            )
            remote_id = run.info.run_id
        self._db().execute("UPDATE runs SET remote_id=? WHERE target=? AND run_key=?", (remote_id, key, run_key))

    def _copy_artifacts(self, key, store, run_key, remote_id) -> None:
        """Bring artifacts logged straight to the primary (models, user files) to the mirror."""
        import tempfile

        primary_key = self._owned.get(run_key, [None])[0] or self._db().execute(
            "SELECT target FROM runs WHERE run_key=? AND remote_id=?", (run_key, run_key)
        ).fetchone()[0]
        primary_store = self.inner_store(primary_key)
        source = self._artifact_repo(primary_key, primary_store, run_key)
        destination = self._artifact_repo(key, store, remote_id)
        with tempfile.TemporaryDirectory(prefix="dbxml-copy-") as tmp:
            local = source.download_artifacts("", tmp)
            if any(Path(local).iterdir()):
                destination.log_artifacts(local)

    # ------------------------------------------------------------------ lifecycle
    def close(self, timeout: float | None = None) -> None:
        """Flush briefly, stop the flusher, unwrap MLflow. Pending rows stay on disk for replay."""
        if self.flusher_alive:
            self.flush(timeout=min(self.settings.flush_timeout, 5.0) if timeout is None else timeout)
        self._stopped = True
        self._wake_flushers()
        for flusher in self._flushers.values():
            flusher.thread.join(timeout=5)
        self._flushers.clear()
        self.uninstall()
        for conn in self._conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._conns = []
        self._local = threading.local()

    @property
    def flusher_alive(self) -> bool:
        return any(f.thread.is_alive() for f in self._flushers.values())


class _TargetFlusher:
    """The thread that empties one target's rows, and how to wake it."""

    def __init__(self, journal: Journal, key: str):
        self.key = key
        self.wake = threading.Event()
        self.force = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(
            target=journal._run_flusher, args=(self,), name="dbxml-journal-flusher", daemon=True
        )


_handlers: dict[str, Callable[[Target, str, dict], None]] = {}


def register_kind(kind: str, handler: Callable[[Target, str, dict], None]) -> None:
    """Let another module queue its own writes: `handler(target, remote_run_id, payload)`
    is called by the flusher, after every earlier row of the same run reached `target`.
    It raises to be retried later (MlflowException with a 4xx code: failed for good)."""
    _handlers[kind] = handler


class _Transient(Exception):
    """A condition that resolves itself by waiting (e.g. a mirror run not created yet)."""


class _JournaledBuilder:
    """Stands in for an MLflow store builder; returns the real store wrapped."""

    def __init__(self, inner, journal: Journal):
        self.inner = inner
        self.journal = journal
        self.__module__ = getattr(inner, "__module__", __name__)

    def __call__(self, store_uri=None, artifact_uri=None, **kwargs):
        artifact_uri = artifact_uri or self.journal.artifact_root_for(store_uri)
        prepare_sqlite_store(store_uri)
        store = self.inner(store_uri=store_uri, artifact_uri=artifact_uri, **kwargs)
        return JournaledStore(store, self.journal, store_uri)


class JournaledStore:
    """A tracking store whose writes for owned runs go to the journal; the rest passes through."""

    def __init__(self, inner, journal: Journal, store_uri: str):
        self._inner = inner
        self._journal = journal
        self._store_uri = store_uri

    def __getattr__(self, name):
        return getattr(self._inner, name)

    # -- creation: adopt the run
    def create_run(self, experiment_id, user_id, start_time, tags, run_name):
        run = self._inner.create_run(experiment_id, user_id, start_time, tags, run_name)
        self._journal.own(run.info.run_id, self._store_uri, lambda: self._experiment_name(experiment_id), run)
        return run

    def _experiment_name(self, experiment_id) -> str | None:
        try:
            return self._inner.get_experiment(experiment_id).name
        except Exception:  # noqa: BLE001 - the name only names the mirror's experiment
            return None

    # -- writes
    def log_metric(self, run_id, metric):
        if not self._journal.owns(run_id):
            return self._inner.log_metric(run_id, metric)
        self._journal.log_batch(run_id, metrics=[metric])

    def log_param(self, run_id, param):
        if not self._journal.owns(run_id):
            return self._inner.log_param(run_id, param)
        self._journal.log_batch(run_id, params=[param])

    def set_tag(self, run_id, tag):
        if not self._journal.owns(run_id):
            return self._inner.set_tag(run_id, tag)
        self._journal.log_batch(run_id, tags=[tag])

    def log_batch(self, run_id, metrics, params, tags):
        if not self._journal.owns(run_id):
            return self._inner.log_batch(run_id, metrics, params, tags)
        self._journal.log_batch(run_id, metrics, params, tags)

    def update_run_info(self, run_id, run_status, end_time, run_name):
        if not self._journal.owns(run_id):
            return self._inner.update_run_info(run_id, run_status, end_time, run_name)
        from mlflow.entities import RunStatus

        status = RunStatus.to_string(run_status) if isinstance(run_status, int) else run_status
        self._journal.update_run(run_id, status, end_time, run_name)

    # Async variants: the journal already returns at once, so they complete immediately.
    def log_metric_async(self, run_id, metric):
        return self._done(self.log_metric, run_id, metric)

    def log_param_async(self, run_id, param):
        return self._done(self.log_param, run_id, param)

    def set_tag_async(self, run_id, tag):
        return self._done(self.set_tag, run_id, tag)

    def log_batch_async(self, run_id, metrics, params, tags):
        return self._done(self.log_batch, run_id, metrics, params, tags)

    def _done(self, method, run_id, *args):
        if not self._journal.owns(run_id):
            return getattr(self._inner, method.__name__ + "_async")(run_id, *args)
        from concurrent.futures import Future

        from mlflow.utils.async_logging.run_operations import RunOperations

        method(run_id, *args)
        future = Future()
        future.set_result(None)
        return RunOperations([future])

    # -- reads of an owned run see its queued writes first
    def get_run(self, run_id):
        self._settle(run_id)
        return self._inner.get_run(run_id)

    def get_metric_history(self, run_id, metric_key, *args, **kwargs):
        self._settle(run_id)
        return self._inner.get_metric_history(run_id, metric_key, *args, **kwargs)

    def search_runs(self, *args, **kwargs):
        if self._journal.pending(key=self._journal.target_key_for(self._store_uri)):
            self._journal.flush(timeout=self._journal.settings.flush_timeout)
        return self._inner.search_runs(*args, **kwargs)

    def _settle(self, run_id) -> None:
        if self._journal.owns(run_id):
            self._journal.flush(run_id, timeout=self._journal.settings.flush_timeout, primary_only=True)


def _metric_to_list(metric) -> list:
    return [
        metric.key,
        metric.value,
        metric.timestamp,
        metric.step,
        getattr(metric, "model_id", None),
        getattr(metric, "dataset_name", None),
        getattr(metric, "dataset_digest", None),
    ]


def _list_to_metric(item: list, metric_cls):
    key, value, timestamp, step, model_id, dataset_name, dataset_digest = (item + [None] * 7)[:7]
    kwargs = {}
    if model_id is not None:
        kwargs.update(model_id=model_id, dataset_name=dataset_name, dataset_digest=dataset_digest)
    return metric_cls(key, value, timestamp, step, **kwargs)


def _tag_dict(run) -> dict:
    tags = run.data.tags
    return dict(tags) if isinstance(tags, dict) else {t.key: t.value for t in tags}


def _group_rows(rows):
    """Consecutive batch rows of the same run travel together; other kinds go one by one.

    A row that would change a param already in the group starts a new group, so the
    store sees (and rejects) the change instead of the merge hiding it."""
    group: list = []
    params: dict = {}
    for row in rows:
        row_params = dict(json.loads(row[3])["params"]) if row[2] == "batch" else {}
        conflict = any(k in params and params[k] != v for k, v in row_params.items())
        if group and (row[2] != "batch" or group[-1][2] != "batch" or row[1] != group[-1][1] or conflict):
            yield group
            group, params = [], {}
        group.append(row)
        params.update(row_params)
    if group:
        yield group


def _process_alive(owner: str) -> bool:
    try:
        os.kill(int(owner.split("-", 1)[0]), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _is_permanent(exc: Exception) -> bool:
    code = getattr(exc, "error_code", None)
    if code in _PERMANENT_ERRORS:
        status = getattr(exc, "get_http_status_code", lambda: 400)()
        return status not in (401, 403, 429) and status < 500
    return False


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}"[:300]

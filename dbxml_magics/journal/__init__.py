"""The journal: a durable local outbox between the notebook and its tracking stores.

Every tracking write of a run created while the journal is installed lands in the outbox
first (one SQLite row per target store), and one shipper thread per store ships the rows in
`log_batch`-sized groups. That gives speed (no round trip per metric point), `both`-mode
mirroring (a second target), and no lost data when a store is down (rows wait and are
replayed, also by the next kernel if this one dies).

- `outbox.py`: the SQLite file (schema, claim/ack/fail with owner + lease, counts);
- `intercept.py`: MLflow's store registry wrapped, so writes of adopted runs become rows;
- `shippers.py`: one thread per store, the error policy, rows grouped per run;
- `delivery.py`: one function per kind of row.

This facade owns the lifecycle (install, targets, flush, close) and the write side.

Guarantee: once a write returns, it is in the outbox on local disk; every write reaches each
of its stores in order, at least once; a crash resends at most the one group that was in
flight. MLflow stores ignore an identical metric point, accept an identical param and
overwrite a tag, so such a resend changes nothing there. Mirror runs carry the tag
`dbxml.source_run_id`, looked up before creating, so a mirror run is created once.
"""

import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from ..masking import mask_uri
from ..stores import prepare_sqlite_store, raw_store_builder
from ..targets import Link, Target
from . import fastpath, intercept
from .delivery import SOURCE_RUN_TAG, entities_to_text, metric_to_list, register_kind
from .intercept import JournaledStore, _JournaledBuilder  # noqa: F401 - _JournaledBuilder: tests look for wrappers
from .outbox import Outbox, new_owner, to_json
from .shippers import Shipper, TargetStatus

__all__ = ["Journal", "JournaledStore", "TargetStatus", "SOURCE_RUN_TAG", "register_kind"]


class Journal:
    """The outbox, the shippers that empty it, and the interception that fills it."""

    def __init__(self, path: Path, settings, on_change: Callable[[list[dict]], None] | None = None):
        self.settings = settings
        self.outbox = Outbox(path, new_owner(), lease=settings.journal_lease)
        self._on_change = on_change
        self.targets: dict[str, Target] = {}  # key (masked URI) -> live target (with credentials)
        self._status: dict[str, TargetStatus] = {}
        self._owned: dict[str, list[str]] = {}  # run id -> target keys, primary first
        self.deleted_runs: set[str] = set()  # owned runs deleted through the journal: writes refused
        self._models: dict[str, str] = {}  # mirrored logged model id -> its source run (owned)
        self._params: dict[str, dict[str, str]] = {}  # params queued per owned run
        self._latest_metrics: dict[str, dict[str, float]] = {}
        self._live_points: dict[str, dict[str, list]] = {}  # (step, value) per key of running owned runs
        self._inner_stores: dict[str, object] = {}
        self._shippers: dict[str, Shipper] = {}
        self._progress = threading.Condition()
        self._closed = False
        self._env: dict | None = None  # set while installed
        self._link: Link | None = None
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()
        self._adopt_known_targets()

    @property
    def blob_dir(self) -> Path:
        return self.outbox.blob_dir

    def _adopt_known_targets(self) -> None:
        """Targets left with rows by an earlier kernel are shipped to when reachable."""
        for key, kind, role, artifact_root in self.outbox.known_targets():
            self._status.setdefault(key, TargetStatus(key, role))
            # Keys are masked URIs; one that masking left unchanged is usable as it is. An AML
            # target also needs a credential (without one the plugin would start an interactive
            # sign-in on the shipper thread): its rows wait until that workspace is linked again.
            if key not in self.targets and mask_uri(key) == key and kind != "aml":
                self.targets[key] = Target(uri=key, kind=kind, artifact_root=artifact_root)

    # ------------------------------------------------------------------ targets
    def set_targets(self, link: Link) -> None:
        """Runs created from now on go to link.primary, mirrored to link.mirror."""
        self.install()
        self._link = link
        for target, role in ((link.primary, "primary"), (link.mirror, "mirror")):
            if target is not None:
                self._add_target(target, role)
                self._inner_stores.pop(target.display, None)
        self._start_shippers()

    def _add_target(self, target: Target, role: str) -> str:
        key = target.display
        self.targets[key] = target
        self._status.setdefault(key, TargetStatus(key, role)).role = role
        self.outbox.remember_target(key, target.kind, role, target.artifact_root)
        return key

    def _target_for_new_store(self, store_uri: str, artifact_uri: str | None, inner) -> str:
        """A run was created on a store that is not a target yet (a URI set by hand, a second
        MlflowClient): it becomes one, with its own shipper, listed by %aml_sync."""
        key = mask_uri(store_uri)
        if key not in self.targets:
            kind = "databricks" if store_uri.startswith("databricks") else "aml" if store_uri.startswith("azureml") else "uri"
            self._add_target(Target(uri=store_uri, kind=kind, artifact_root=artifact_uri), "other")
            # The store MLflow just built for the user works (credentials included); ship with it.
            self._inner_stores.setdefault(key, inner)
            self._start_shippers()
        return key

    @property
    def link(self) -> Link | None:
        return self._link

    def target_key_for(self, store_uri: str) -> str:
        return mask_uri(store_uri)

    def artifact_root_for(self, store_uri: str) -> str | None:
        """The embedded store's artifact folder, so experiments created there land in it."""
        link = self.link
        for target in link.targets if link else ():
            if target.uri == store_uri and target.artifact_root:
                return target.artifact_root
        return None

    def inner_store(self, key: str):
        """The real (unwrapped) store of a target, built once per target."""
        store = self._inner_stores.get(key)
        if store is None:
            target = self.targets[key]
            prepare_sqlite_store(target.uri)
            store = raw_store_builder(target.uri)(store_uri=target.uri, artifact_uri=target.artifact_root)
            self._inner_stores[key] = store
        return store

    def primary_key(self, run_key: str) -> str:
        owned = self._owned.get(run_key)
        return owned[0] if owned else self.outbox.primary_of(run_key)

    # ------------------------------------------------------------------ interception
    @property
    def installed(self) -> bool:
        return self._env is not None

    def install(self) -> None:
        """Wrap MLflow's store builders so that writes of adopted runs reach the journal."""
        if self._env is None and not self._closed:
            self._env = intercept.install(self)
            fastpath.install(self)

    def uninstall(self) -> None:
        if self._env is not None:
            fastpath.uninstall(self)
            intercept.uninstall(self, self._env)
            self._env = None

    # ------------------------------------------------------------------ ownership
    def own(self, run_id: str, store_uri: str, experiment_name: Callable[[], str | None], run,
            artifact_uri: str | None = None, inner=None) -> None:
        """Adopt a run just created on `store_uri`: its writes now go through the journal.

        `experiment_name` is called only when the run is mirrored (it costs a request)."""
        primary = self._target_for_new_store(store_uri, artifact_uri, inner)
        keys = [primary]
        link = self.link
        mirrored = link is not None and link.mirror is not None and link.primary.display == primary
        name = experiment_name() if mirrored else None
        outbox = self.outbox
        with outbox.transaction() as db:
            outbox.set_run(db, primary, run_id, run_id, name, replace=True)
            if mirrored:
                mirror = link.mirror.display
                keys.append(mirror)
                outbox.set_run(db, mirror, run_id, None, name, replace=False)
                tags = run.data.tags
                payload = {
                    "experiment": name,
                    "run_name": run.info.run_name,
                    "start_time": run.info.start_time,
                    "user_id": run.info.user_id,
                    "tags": dict(tags) if isinstance(tags, dict) else {t.key: t.value for t in tags},
                }
                outbox.insert(db, mirror, run_id, "create_run", payload)
        self._owned[run_id] = keys
        if mirrored:
            self._wake()

    def owns(self, run_id: str) -> bool:
        return run_id in self._owned

    def latest_metrics(self, run_id: str) -> dict[str, float]:
        """The last value logged in this process for each metric of an owned run."""
        return dict(self._latest_metrics.get(run_id, {}))

    def live_history(self, run_id: str) -> dict[str, list[tuple[int, float]]]:
        """(step, value) points logged in this process for each metric of a run still running,
        in logging order: what the panel plots live without asking the store."""
        return {key: list(points) for key, points in self._live_points.get(run_id, {}).items()}

    def mirror_run_id(self, run_id: str) -> str | None:
        keys = self._owned.get(run_id, [])
        return self.outbox.remote_id(keys[1], run_id) if len(keys) > 1 else None

    # ------------------------------------------------------------------ writes
    def append(self, run_id: str, kind: str, payload: dict, mirror_only: bool = False) -> None:
        """Queue one write of an owned run for each of its targets (one transaction)."""
        keys = self._owned[run_id]
        keys = keys[1:] if mirror_only else keys
        if keys:
            self.outbox.append(keys, run_id, kind, to_json(payload))
        if kind != "batch":
            self._wake()

    def log_metric(self, run_id: str, key: str, value, timestamp: int, step: int, model_id=None,
                   dataset_name=None, dataset_digest=None) -> None:
        """One point of an owned run (already validated): the hot path, one INSERT and two dict
        updates. Shippers are not woken: points wait for the next pass and ship as one batch."""
        latest = self._latest_metrics.get(run_id)
        if latest is None:
            latest = self._latest_metrics[run_id] = {}
        latest[key] = value
        live = self._live_points.get(run_id)
        if live is None:
            live = self._live_points[run_id] = {}
        points = live.get(key)
        if points is None:
            points = live[key] = []
        points.append((step, value))
        text = to_json([key, value, timestamp, step, model_id, dataset_name, dataset_digest])
        self.outbox.append(self._owned[run_id], run_id, "batch", f'{{"metrics": [{text}], "params": [], "tags": []}}')

    def log_batch(self, run_id, metrics=(), params=(), tags=()) -> None:
        if params:
            self._check_params(run_id, params)
        if metrics:
            latest = self._latest_metrics.setdefault(run_id, {})
            live = self._live_points.setdefault(run_id, {})
            for metric in metrics:
                latest[metric.key] = metric.value
                live.setdefault(metric.key, []).append((metric.step, metric.value))
        payload = {
            "metrics": [metric_to_list(m) for m in metrics],
            "params": [[p.key, p.value] for p in params],
            "tags": [[t.key, t.value] for t in tags],
        }
        self.append(run_id, "batch", payload)

    def _check_params(self, run_id, params) -> None:
        """MLflow refuses to change a param; say so at once, as the store would have."""
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

    def log_inputs(self, run_id, datasets, models) -> None:
        """Datasets go to every store; a logged model reaches a mirror only if it was mirrored."""
        payload = {"datasets": entities_to_text(datasets)}
        if models:
            payload["models"] = entities_to_text(models)
        self.append(run_id, "inputs", payload)

    def log_outputs(self, run_id, models) -> None:
        self.append(run_id, "outputs", {"models": entities_to_text(models)})

    # ------------------------------------------------------------------ deleted runs
    def delete_run(self, run_id: str) -> None:
        """Queued after the run's earlier writes (which the store would refuse once deleted);
        from now on its writes are refused at the call, as MLflow's stores refuse them."""
        self.deleted_runs.add(run_id)
        self._live_points.pop(run_id, None)
        self.append(run_id, "delete_run", {})

    def restore_run(self, run_id: str) -> None:
        self.deleted_runs.discard(run_id)
        self.append(run_id, "restore_run", {})

    # ------------------------------------------------------------------ MLflow 3 logged models
    def own_model(self, model) -> None:
        """A logged model the primary just created for an owned, mirrored run: the mirror
        gets it too, as rows of that run (after the rows already queued for it)."""
        run_id = model.source_run_id
        if len(self._owned.get(run_id, ())) < 2:
            return
        self._models[model.model_id] = run_id
        payload = {
            "model_id": model.model_id,
            "name": model.name,
            "model_type": model.model_type,
            "tags": sorted(model.tags.items()),
            "params": sorted(model.params.items()),
        }
        self.append(run_id, "create_model", payload, mirror_only=True)

    def model_write(self, model_id: str, kind: str, payload: dict) -> None:
        """A write the primary accepted for a mirrored logged model, queued for the mirror."""
        run_id = self._models.get(model_id)
        if run_id is None:
            return
        payload["model_id"] = model_id
        if kind != "finalize_model":
            self.append(run_id, kind, payload, mirror_only=True)
            return
        # Its files were uploaded to the primary before it was finalized: copied first.
        with self.outbox.transaction() as db:
            for key in self._owned[run_id][1:]:
                self.outbox.insert(db, key, run_id, "model_artifacts", {"model_id": model_id})
                self.outbox.insert(db, key, run_id, kind, payload)
        self._wake()

    def update_run(self, run_id, status=None, end_time=None, run_name=None) -> None:
        """Queue a run's status; a mirror run ends only after the primary's artifacts reached it."""
        payload = {"status": status, "end_time": end_time, "run_name": run_name}
        ending = status is not None and status not in ("RUNNING", "SCHEDULED")
        if ending:
            self._live_points.pop(run_id, None)  # an ended run is read from its store
        outbox = self.outbox
        with outbox.transaction() as db:
            for i, key in enumerate(self._owned[run_id]):
                if ending and i > 0:
                    outbox.insert(db, key, run_id, "copy_artifacts", {})
                outbox.insert(db, key, run_id, "update", payload)
        self._wake()

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        """Copy a file into the journal now; it is uploaded to every target by the shippers."""
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
    def status_of(self, key: str) -> TargetStatus:
        return self._status.setdefault(key, TargetStatus(key, "other"))

    def status(self) -> list[dict]:
        counts = self.outbox.counts()
        for key, _ in counts:
            self.status_of(key)
        out = []
        for key, st in self._status.items():
            st.pending = counts.get((key, "pending"), 0)
            st.failed = counts.get((key, "failed"), 0)
            out.append(st.as_dict())
        return out

    def pending(self, run_id: str | None = None, key: str | None = None) -> int:
        return self.outbox.pending(run_id, key)

    def waiting_since(self, key: str) -> float | None:
        """When the oldest row still pending for store `key` was written (None: none is)."""
        return self.outbox.oldest_pending(key)

    def oldest_waiting(self) -> float | None:
        """The time the oldest row not yet accepted by its store was written (None: none waits)."""
        return self.outbox.oldest_waiting()

    def failures(self, limit: int = 20) -> list[tuple[str, str, str]]:
        return self.outbox.failures(limit)

    def retry_failed(self) -> int:
        """Failed rows go back in the queue (in their original order) and are shipped again."""
        count = self.outbox.retry_failed()
        for status in self._status.values():
            status.next_try = 0.0
        self._wake()
        return count

    def discard_failed(self) -> list[tuple[str, str, str, int]]:
        """Delete failed rows; returns (target, run, kind, count) of what was dropped."""
        dropped = self.outbox.failed_summary()
        for blob in self.outbox.discard_failed():
            if not self.outbox.blob_in_use(Path(blob).name):
                Path(blob).unlink(missing_ok=True)
        return dropped

    def changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.status())

    # ------------------------------------------------------------------ flushing
    def flush(self, run_id: str | None = None, timeout: float | None = None, primary_only: bool = False,
              key: str | None = None, everyone: bool = False) -> bool:
        """Ask the shippers to ship now (ignoring backoff once) and wait until they did or `timeout`.

        Returns True when nothing this journal can ship is left pending for `run_id` (or at
        all; with `everyone`, also rows another kernel holds, which are adopted when its lease
        runs out). Never raises for an unreachable store: its rows simply stay queued.
        """
        timeout = self.settings.flush_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        keys = [key] if key is not None else list(self.targets)
        if run_id is not None and primary_only and run_id in self._owned:
            keys = self._owned[run_id][:1]

        def remaining() -> int:
            return self.outbox.shippable(run_id, keys, mine_only=not everyone)

        if self._closed or any(s.thread is threading.current_thread() for s in self._shippers.values()):
            return remaining() == 0
        self._start_shippers()
        while True:
            if remaining() == 0:
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            with self._progress:
                # Only the shippers asked for: MLflow 3.0's log_metric reads the run back each
                # time (a primary-only settle); waking the mirror too sent it one batch a point.
                self._wake(force=True, keys=keys)
                self._progress.wait(min(0.5, deadline - now))

    def settle_store(self, store_uri: str) -> None:
        """Before a search on a store, its own rows reach it (bounded)."""
        key = self.target_key_for(store_uri)
        if key in self.targets and self.outbox.shippable(None, [key]):
            self.flush(timeout=self.settings.flush_timeout, key=key)

    def notify_progress(self) -> None:
        with self._progress:
            self._progress.notify_all()

    def _start_shippers(self) -> None:
        """One shipper per target, so a slow or down mirror never delays the primary."""
        if self._closed:
            return
        for key in list(self.targets):
            shipper = self._shippers.get(key)
            if shipper is None or not shipper.alive:
                self._shippers[key] = Shipper(self, key).start()
        if self._heartbeat is None:
            self._heartbeat = threading.Thread(target=self._beat, name="dbxml-journal-lease", daemon=True)
            self._heartbeat.start()

    def _beat(self) -> None:
        """Keep the leases of this kernel's rows while it lives; a dead kernel's run out."""
        try:
            while not self._heartbeat_stop.wait(self.outbox.lease / 3):
                self.outbox.heartbeat()
        finally:
            self.outbox.close_thread_connection()

    def _wake(self, force: bool = False, keys: list[str] | None = None) -> None:
        for key, shipper in list(self._shippers.items()):
            if keys is not None and key not in keys:
                continue
            if force:
                shipper.force.set()
            shipper.wake.set()

    # ------------------------------------------------------------------ lifecycle
    def close(self, timeout: float | None = None) -> None:
        """Flush briefly, stop the shippers, unwrap MLflow, give up claims on unsent rows.

        A shipper blocked in a request past the join keeps only the rows it is sending
        (their lease stops a new journal from sending them too) and exits after it."""
        if self._closed:
            return
        if self.flusher_alive:
            self.flush(timeout=self.settings.flush_timeout if timeout is None else timeout)
        self._closed = True
        self.outbox.claiming = False
        for shipper in self._shippers.values():
            shipper.stop()
        for shipper in self._shippers.values():
            shipper.thread.join(timeout=5)
        in_flight = set().union(*(s.in_flight for s in self._shippers.values() if s.alive))
        self._heartbeat_stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        self.outbox.release(keep=in_flight)
        self._shippers.clear()
        self.uninstall()
        self.outbox.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def flusher_alive(self) -> bool:
        return any(s.alive for s in self._shippers.values())


"""One Session per IPython shell: the link, the runs, models and scorings of this session.

The Session knows nothing of IPython or widgets. Magics change it; the panel observes it
through `subscribe`.
"""

import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import DbxmlError
from .targets import Link, Target

__all__ = ["Session", "RunRecord", "ModelRecord", "ScoreRecord", "EndpointRecord", "get_session"]

# MLflow run ids are 32 hex digits; other stores (AML) use longer word-like ids. Anything
# shorter that is not a run name of this session is a typo, not an id worth a round trip.
_LOOKS_LIKE_RUN_ID = re.compile(r"[\w.-]{16,}")

_sessions: dict[int, "Session"] = {}


def get_session(shell=None) -> "Session":
    """The Session of this shell; says how to create it when the extension is not loaded."""
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
    session = _sessions.get(id(shell)) if shell is not None else None
    if session is None:
        raise DbxmlError("dbxml_magics is not loaded in this shell. Run %load_ext dbxml_magics first.")
    return session


@dataclass
class RunRecord:
    """A run started in this session, as the panel and `last` references see it."""

    run_id: str
    name: str
    experiment_id: str
    experiment: str
    target: str  # masked primary URI
    status: str = "RUNNING"
    start_time: float = field(default_factory=time.time)
    end_time: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    mirror_run_id: str | None = None
    model_versions: list[str] = field(default_factory=list)
    error: str | None = None
    parent_run_id: str | None = None  # a child's parent (%%track --nested, a sweep's combinations)
    best_by: tuple[str, str] | None = None  # a sweep's parent: (metric, goal) choosing its best child

    @property
    def duration(self) -> float | None:
        end = self.end_time if self.end_time is not None else time.time()
        return max(0.0, end - self.start_time)


@dataclass
class ModelRecord:
    """A model version registered in this session."""

    name: str
    version: str
    source_run_id: str | None
    model_uri: str
    mirror_version: str | None = None
    alias: str | None = None
    registered_at: float = field(default_factory=time.time)


@dataclass
class ScoreRecord:
    """One batch scoring done in this session."""

    model_uri: str
    model_version: str | None
    input: str
    rows: int
    seconds: float
    output: str
    run_id: str | None = None
    finished_at: float = field(default_factory=time.time)


@dataclass
class EndpointRecord:
    """A real-time endpoint deployed in this session (%aml_deploy), and the version it serves.

    `handle` serves requests for it (`invoke(df, timeout)`, `close()`); the session closes
    handles when it closes: a local server stops with the kernel or %unload_ext, an Azure
    endpoint stays.
    """

    name: str
    target: str  # "local" or "aml"
    model: str  # "name vN" or the model URI
    model_uri: str
    url: str
    state: str = "Creating"
    deployment: str | None = None
    traffic: dict[str, int] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    handle: Any = field(default=None, repr=False, compare=False)


class Session:
    """State of one shell: current link, journal, and what this session produced."""

    def __init__(self, settings, shell_key: int | None = None, namespace: dict | None = None):
        self.settings = settings
        self.namespace = namespace if namespace is not None else {}
        self.runs: list[RunRecord] = []
        self.models: list[ModelRecord] = []
        self.scorings: list[ScoreRecord] = []
        self.endpoints: dict[str, EndpointRecord] = {}
        self._listeners: list[Callable[[str, Any], None]] = []
        self._lock = threading.RLock()
        self._link: Link | None = None
        self._link_before_first: tuple[Link, str | None] | None = None
        self._journal = None
        self.experiment_names: dict[tuple[str, str], str] = {}  # (tracking URI, experiment id) -> name
        self._shell_key = shell_key
        if shell_key is not None:
            _sessions[shell_key] = self

    # ----------------------------------------------------------------- locations
    @property
    def store_dir(self) -> Path:
        return Path(self.settings.store_dir or os.getcwd()).expanduser().resolve()

    @property
    def state_dir(self) -> Path:
        state = Path(self.settings.state_dir).expanduser()
        return state if state.is_absolute() else self.store_dir / state

    def embedded_target(self, path: str | None = None) -> Target:
        """The local SQLite store + artifact folder (in `path`, else the configured folder)."""
        folder = Path(path).expanduser().resolve() if path else self.store_dir
        db = folder / self.settings.store_file
        artifacts = folder / self.settings.artifact_dir
        return Target(uri=f"sqlite:///{db}", kind="embedded", artifact_root=artifacts.as_uri())

    def default_link(self) -> Link:
        """What runs use with nothing linked: MLFLOW_TRACKING_URI, Databricks, or the embedded store."""
        env_uri = os.environ.get("MLFLOW_TRACKING_URI")
        if env_uri:
            kind = "databricks" if env_uri.startswith("databricks") else "uri"
            return Link(mode="default", primary=Target(uri=env_uri, kind=kind))
        if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
            return Link(mode="default", primary=Target(uri="databricks", kind="databricks"))
        return Link(mode="default", primary=self.embedded_target())

    # ----------------------------------------------------------------- link
    @property
    def link(self) -> Link:
        if self._link is None:
            self._link = self.default_link()
        return self._link

    @property
    def experiment(self) -> str | None:
        return self.link.experiment or self.settings.experiment or None

    def apply_link(self, link: Link) -> Link:
        """Make `link` current. Callers have validated it; this only switches state."""
        with self._lock:
            self._follow_manual_uri()
            if self._link_before_first is None:
                self._link_before_first = self.link
            self._link = link
            self._point_mlflow_at(link)
        self.emit("link", link)
        return link

    def unlink(self) -> Link:
        """Return to what was active before the first link."""
        with self._lock:
            if self._link_before_first is not None:
                self._link, self._link_before_first = self._link_before_first, None
                self._point_mlflow_at(self._link)
            link = self.link
        self.emit("link", link)
        return link

    @property
    def linked(self) -> bool:
        return self._link_before_first is not None

    def _follow_manual_uri(self) -> None:
        """With nothing linked, follow a tracking URI the user set with mlflow.set_tracking_uri."""
        from mlflow.tracking._tracking_service import utils

        raw = utils._tracking_uri
        if self._link_before_first is None and self.link.mode == "default" and raw and raw != self.link.primary.uri:
            self._link = Link(mode="default", primary=Target(uri=raw, kind="uri"))

    def _point_mlflow_at(self, link: Link) -> None:
        import mlflow
        from mlflow.tracking import fluent

        if mlflow.get_tracking_uri() != link.primary.uri:
            # Experiment ids belong to one store; mlflow.set_experiment also exported the
            # old id to MLFLOW_EXPERIMENT_ID, which the next store would reject.
            if fluent._active_experiment_id is not None:
                os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
            fluent._active_experiment_id = None
        if any(t.kind == "embedded" for t in link.targets):
            # Creating the embedded SQLite schema logs INFO lines that say nothing to a user.
            import logging

            for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
                logging.getLogger(name).setLevel(logging.WARNING)
        mlflow.set_tracking_uri(link.primary.uri)
        mlflow.set_registry_uri(link.primary.registry_uri or link.primary.uri)
        self.journal.set_targets(link)

    def current_link(self) -> Link:
        """The current link (following a URI set by hand), without pointing MLflow at it:
        a link that then fails must leave MLflow's own default in place (MLflow 2.x: ./mlruns)."""
        with self._lock:
            self._follow_manual_uri()
            return self.link

    def activate(self) -> Link:
        """Point MLflow (and the journal) at the current link before a magic writes anything."""
        import mlflow

        with self._lock:
            link = self.current_link()
            if mlflow.get_tracking_uri() != link.primary.uri or not self.journal.installed:
                self._point_mlflow_at(link)
        return link

    # ----------------------------------------------------------------- journal
    @property
    def journal(self):
        if self._journal is None:
            from .journal import Journal

            self._journal = Journal(self.state_dir / "journal.sqlite", self.settings, on_change=self._journal_changed)
        return self._journal

    @property
    def journal_started(self) -> bool:
        return self._journal is not None

    def _journal_changed(self, status) -> None:
        self.emit("journal", status)

    # ----------------------------------------------------------------- records
    def add_run(self, record: RunRecord) -> RunRecord:
        with self._lock:
            self.runs.append(record)
        self.emit("run_started", record)
        return record

    def update_run(self, record: RunRecord, **changes) -> RunRecord:
        with self._lock:
            for key, value in changes.items():
                setattr(record, key, value)
        self.emit("run_updated" if record.status == "RUNNING" else "run_ended", record)
        return record

    def mirror_run_id(self, record: RunRecord) -> str | None:
        """The run's id in `both` mode's mirror store, once the journal has created it there."""
        if record.mirror_run_id is None and self._journal is not None:
            record.mirror_run_id = self._journal.mirror_run_id(record.run_id)
        return record.mirror_run_id

    def find_run(self, run_id: str) -> RunRecord | None:
        return next((r for r in reversed(self.runs) if r.run_id == run_id), None)

    def resolve_run(self, text: str) -> str:
        """The run id behind what a user typed: `last`, a run name of this session (its newest
        run of that name), or a run id (checked when it is read)."""
        text = text.strip()
        if text == "last":
            if self.last_run is None:
                raise DbxmlError("No run in this session yet: run a %%track cell first, or give a run id.")
            return self.last_run.run_id
        named = next((r for r in reversed(self.runs) if r.name == text), None)
        if named is not None:
            return named.run_id
        if self.find_run(text) is not None or _LOOKS_LIKE_RUN_ID.fullmatch(text):
            return text
        names = list(dict.fromkeys(r.name for r in reversed(self.runs)))[:10]
        known = f"runs of this session: {', '.join(names)}" if names else "no runs in this session yet"
        raise DbxmlError(f"No run named {text!r} ({known}); give `last`, a run name, or a run id.")

    def run_details(self, run_id: str):
        """Params, tags, metric histories, artifacts, models and scorings of a run (a RunDetails).

        The panel's one way to read MLflow: it never talks to a store itself.
        """
        from .inspect_run import read_run_details

        return read_run_details(self, run_id)

    @property
    def last_run(self) -> RunRecord | None:
        return self.runs[-1] if self.runs else None

    def add_model(self, record: ModelRecord) -> ModelRecord:
        with self._lock:
            self.models.append(record)
            run = self.find_run(record.source_run_id) if record.source_run_id else None
            if run is not None:
                run.model_versions.append(f"{record.name} v{record.version}")
        self.emit("model_registered", record)
        return record

    @property
    def last_model(self) -> ModelRecord | None:
        return self.models[-1] if self.models else None

    def add_scoring(self, record: ScoreRecord) -> ScoreRecord:
        with self._lock:
            self.scorings.append(record)
        self.emit("scored", record)
        return record

    def set_endpoint(self, record: EndpointRecord) -> EndpointRecord:
        with self._lock:
            self.endpoints[record.name] = record
        self.emit("endpoint", record)
        return record

    def drop_endpoint(self, name: str) -> EndpointRecord | None:
        with self._lock:
            record = self.endpoints.pop(name, None)
        if record is not None:
            record.state = "Deleted"
            self.emit("endpoint", record)
        return record

    # ----------------------------------------------------------------- observers
    def subscribe(self, listener: Callable[[str, Any], None]) -> None:
        if listener not in self._listeners:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[str, Any], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    @property
    def listener_count(self) -> int:
        return len(self._listeners)

    def emit(self, event: str, payload: Any = None) -> None:
        # A broken observer (a closed panel) must never break tracking.
        for listener in list(self._listeners):
            try:
                listener(event, payload)
            except Exception:  # noqa: BLE001 - observers are best effort by contract
                pass

    # ----------------------------------------------------------------- lifecycle
    def close(self, timeout: float | None = None) -> None:
        """Flush what can be flushed (up to `timeout` s), stop threads, forget listeners
        (for %unload_ext and kernel exit). Local endpoints stop; Azure endpoints stay."""
        for record in list(self.endpoints.values()):
            try:
                if record.handle is not None:
                    record.handle.close()
            except Exception:  # noqa: BLE001 - closing must go on to the journal
                pass
        self.endpoints.clear()
        if self._journal is not None:
            self._journal.close(timeout=timeout)
            self._journal = None
        self._listeners.clear()
        if self._shell_key is not None and _sessions.get(self._shell_key) is self:
            del _sessions[self._shell_key]

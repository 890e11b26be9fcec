"""`%aml_ui`: MLflow's own web UI for the embedded store, or the link to another store's UI.

The embedded store is a SQLite file with no server, so `%aml_ui` starts `mlflow server` on
127.0.0.1 and a free port, in its own process group (MLflow starts worker processes: the
whole group is stopped), and reuses it while it lives. It is stopped by `%aml_ui --stop`,
`%unload_ext`, a normal kernel exit (the extension's exit hook calls `stop_all`) and a killed
kernel (the group's guard, `process_group`).
"""

import atexit
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .errors import DbxmlError
from .process_group import start_group, stop_group
from .targets import Target

__all__ = ["UiServer", "StoreUi", "UiLinks", "store_uis", "serves", "start_ui", "stop_ui", "stop_all", "ui_url_for", "UiError"]

# `mlflow server` imports MLflow, FastAPI and the SQL schema code: 5-20 s on a quiet machine,
# over two minutes measured on a 2-core machine with a load of 30.
START_TIMEOUT = 300.0


class UiError(DbxmlError):
    """The UI server could not be started."""


@dataclass
class UiServer:
    """One running `mlflow server` over an embedded store."""

    store_uri: str
    artifact_root: str | None
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        stop_group(self.process)


@dataclass(frozen=True)
class StoreUi:
    """Where one store of the link is seen in a browser."""

    role: str  # primary / mirror
    store: str  # masked URI
    url: str | None
    started_here: bool  # a local `mlflow server` this session runs
    note: str = ""
    page: str | None = None  # what the inline UI opens: the experiment of the session's latest run there


_servers: dict[str, UiServer] = {}  # embedded store URI -> its server
_lock = threading.Lock()


def ui_url_for(store_uri: str) -> str | None:
    """The URL of this session's UI server over `store_uri`, if one runs."""
    server = _servers.get(store_uri)
    return server.url if server is not None and server.alive else None


def serves(target: Target) -> bool:
    """Stores with no server of their own, which `%aml_ui` serves: the embedded store, other
    SQLite files and file: folders."""
    return target.kind == "embedded" or urlsplit(target.uri).scheme in ("sqlite", "file")


def start_ui(target: Target, log_dir: Path, timeout: float = START_TIMEOUT) -> UiServer:
    """The UI server over an embedded store: the running one, else a new one (waits until it answers)."""
    with _lock:
        server = _servers.get(target.uri)
        if server is not None and not server.alive:
            server.stop()
            server = None
        if server is None:
            server = _servers[target.uri] = _launch(target, log_dir)
            atexit.unregister(stop_all)  # one hook, however many servers were started
            atexit.register(stop_all)
    try:  # also when reused: a second caller may come while the first still waits for it
        _wait_until_up(server, timeout)
    except UiError:
        stop_ui(target.uri)
        raise
    return server


def stop_ui(store_uri: str | None = None) -> list[str]:
    """Stop the UI server of `store_uri` (all of them when None); returns the URLs stopped."""
    with _lock:
        keys = list(_servers) if store_uri is None else [k for k in _servers if k == store_uri]
        stopped = [_servers.pop(key) for key in keys]
    for server in stopped:
        server.stop()
    return [server.url for server in stopped]


def stop_all() -> None:
    try:
        stop_ui()
    except Exception:  # noqa: BLE001 - exiting must never fail because of a UI server
        pass


def store_uis(session, start: bool = True) -> list[StoreUi]:
    """Each store of the current link and where to see it; embedded stores get a local server."""
    found = []
    link = session.link
    for role, target in (("primary", link.primary), ("mirror", link.mirror)):
        if target is None:
            continue
        if serves(target):
            url = start_ui(target, session.state_dir).url if start else ui_url_for(target.uri)
            experiment = next((r.experiment_id for r in reversed(session.runs) if r.target == target.display), None)
            # MLflow 3.x opens an experiment on its GenAI (traces) overview unless told the
            # workflow; 2.x ignores the parameter and shows the runs either way.
            page = f"{url}/#/experiments/{experiment}?workflowType=machine_learning" if url and experiment else url
            found.append(StoreUi(role, target.display, url, True, page=page))
        else:
            url = store_ui_url(target)
            note = "" if url else _no_url_reason(target)
            found.append(StoreUi(role, target.display, url, False, note))
    return found


def _no_url_reason(target: Target) -> str:
    if target.kind == "databricks":
        return "set DATABRICKS_HOST (or run in a Databricks notebook) to get a link"
    if target.kind == "aml":
        return "the workspace's studio address is unknown; link with --config or -s/-g/-w"
    return "no web UI address is known for this store"


# What `mlflow server` imports beyond mlflow-skinny, the distribution Databricks runtimes ship.
_SERVER_MODULES = ("flask", "graphene")


def _check_server_installed() -> None:
    import importlib.util

    missing = [name for name in _SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise UiError(
            f"`%aml_ui` starts MLflow's tracking server, which needs the full `mlflow` distribution "
            f"(missing here: {', '.join(missing)}): `%pip install 'dbxml-magics[server]'`, then restart Python."
        )


def _launch(target: Target, log_dir: Path) -> UiServer:
    _check_server_installed()
    port = _free_port()
    log_path = log_dir / f"mlflow-ui-{port}.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", target.uri,
        "--workers", "1",
    ]
    if target.artifact_root:
        # Runs keep their own artifact URIs; this only serves runs' files through the UI.
        command += ["--default-artifact-root", target.artifact_root]
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")
    except OSError:
        log_path = Path(os.devnull)
        log = open(os.devnull, "ab")
    with log:
        try:
            # The UI is shown inside the notebook's page, another origin (port): MLflow's
            # clickjacking header would blank the IFrame. The server listens on 127.0.0.1 only.
            # An environment variable, not --x-frame-options, which MLflow 2.x lacks.
            # No job runners (MLflow 3 starts seven, slowing start-up for minutes on a busy
            # machine): the UI of an embedded store runs no server-side jobs.
            env = {
                **os.environ, "MLFLOW_TRACKING_URI": "", "MLFLOW_SERVER_X_FRAME_OPTIONS": "NONE",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            }
            process = start_group(command, log, env)
        except OSError as exc:
            raise UiError(f"Cannot start `mlflow server` ({exc}); check that MLflow is installed in this kernel.") from None
    return UiServer(target.uri, target.artifact_root, port, process, log_path)


def _wait_until_up(server: UiServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive:
            raise UiError(
                f"`mlflow server` for {server.store_uri} exited with code {server.process.returncode}"
                f"{_last_line(server.log_path)}; see {server.log_path}."
            )
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise UiError(
        f"`mlflow server` for {server.store_uri} did not answer within {timeout:.0f}s; see {server.log_path}. "
        "Run %aml_ui again once the machine is less busy."
    )


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f" ({lines[-1].strip()[:200]})" if lines else ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class UiLinks:
    """What `%aml_ui` shows: each store's UI address, and the UI itself inline where this session serves it."""

    def __init__(self, uis: list[StoreUi], height: int = 560):
        self.uis = uis
        self.height = height

    def text(self) -> str:
        lines = []
        for ui in self.uis:
            where = ui.url or ui.note
            served = " (mlflow server started by %aml_ui; %aml_ui --stop stops it)" if ui.started_here and ui.url else ""
            lines.append(f"{ui.role} {ui.store}: {where}{served}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        parts = []
        for ui in self.uis:
            label = f"{ui.role} <code>{html.escape(ui.store)}</code>: "
            if not ui.url:
                parts.append(f"<div>{label}<i>{html.escape(ui.note)}</i></div>")
                continue
            url = html.escape(ui.url, quote=True)
            parts.append(f'<div>{label}<a href="{url}" target="_blank" rel="noopener">{url}</a></div>')
            if ui.started_here:
                page = html.escape(ui.page or ui.url, quote=True)
                parts.append(
                    f'<iframe class="dbxml-mlflow-ui" src="{page}" width="100%" height="{self.height}" '
                    'style="border:1px solid #d0d7de"></iframe>'
                )
        return "".join(parts)

    def __repr__(self) -> str:
        return self.text()


def store_ui_url(target: Target) -> str | None:
    """The store's own UI: MLflow's experiments page, AML studio, the Databricks experiments page."""
    if target.kind == "aml":
        return target.studio_url or None
    if target.kind == "databricks":
        host = databricks_host()
        return f"{host}/#mlflow/experiments" if host else None
    if serves(target):
        url = ui_url_for(target.uri)
        return f"{url}/#/experiments" if url else None
    parts = urlsplit(target.uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return f"{base}/#/experiments"


def databricks_host() -> str | None:
    """The workspace URL: DATABRICKS_HOST, else what the Databricks notebook context knows
    (a Databricks notebook does not set DATABRICKS_HOST)."""
    host = os.environ.get("DATABRICKS_HOST", "")
    if not host:
        try:
            from mlflow.utils import databricks_utils

            host = databricks_utils.get_workspace_info_from_dbutils()[0] or databricks_utils.get_workspace_url() or ""
        except Exception:  # noqa: BLE001 - outside Databricks there is simply no context
            host = ""
    if host and "://" not in host:
        host = f"https://{host}"
    return host.rstrip("/") or None

"""Real servers for the tests: MLflow tracking server subprocesses on loopback.

Each server runs in its own process group (MLflow 3 starts helper workers): stopping it
kills the whole group.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

__all__ = ["free_port", "MlflowServer", "wait_http", "SERVER_PYTHON"]

# The runtime matrix (compat/run_matrix.py) runs the tests in a runtime's environment, which
# holds mlflow-skinny only, as a Databricks runtime does; `mlflow server` needs the full
# distribution, so there the server runs from a separate environment with the full `mlflow`
# of the same version, named by this variable.
SERVER_PYTHON = os.environ.get("DBXML_TEST_SERVER_PYTHON") or sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite backend and a local artifact folder."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MlflowServer":
        log = open(self.root / "server.log", "ab")
        self.process = subprocess.Popen(
            [
                SERVER_PYTHON, "-m", "mlflow", "server",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--backend-store-uri", f"sqlite:///{self.root / 'srv.db'}",
                "--artifacts-destination", str(self.root / "art"),
                "--workers", "1",
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # No job runner: its worker processes cost seconds of start-up and CPU the tests never use.
            env={**os.environ, "MLFLOW_TRACKING_URI": "", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        log.close()
        try:
            # MLflow 3 starts uvicorn and job consumers: 154 s measured with load 24 on 2 cores.
            wait_http(self.uri + "/health", timeout=300, process=self.process)
        except BaseException:
            self.stop()  # a server that never answered must not outlive the failed fixture
            raise
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)
        # Workers may outlive the leader briefly; make sure the group is gone.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process = None

    def client(self):
        import mlflow

        from dbxml_magics.stores import list_artifacts

        class ServerClient(mlflow.MlflowClient):
            """Lists this server's artifacts also under MLflow 2.x, which resolves them against
            the global tracking URI (a test's azureml:// link, or another store)."""

            def list_artifacts(self, run_id, path=None):
                return list_artifacts(self, run_id, path)

        # The registry too: an earlier test's mlflow.set_registry_uri also exported
        # MLFLOW_REGISTRY_URI, which MlflowClient would otherwise read (seen in CI: test_secrets
        # searched another test's store and found no model version).
        return ServerClient(tracking_uri=self.uri, registry_uri=self.uri)


def model_name(name: str = "model") -> dict[str, str]:
    """The keyword that names a logged model: `name` since MLflow 3, `artifact_path` on 2.x."""
    import mlflow

    return {"name" if int(mlflow.__version__.split(".")[0]) >= 3 else "artifact_path": name}

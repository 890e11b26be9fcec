"""A local endpoint: a real `mlflow models serve` process on 127.0.0.1, in its own process group.

Facts that shape it: `mlflow models serve --env-manager local` runs `bash -c "exec uvicorn
..."`, so the kernel's `bin` folder must be on PATH (else exit 127); start-up takes 8-17 s on
a busy 2-core machine; uvicorn needs about a second to exit after SIGTERM. The server runs
under `process_group`'s guard, so a kernel that is killed outright takes the whole group with
it, whichever thread started it.
"""

import os
import socket
import sys
import time
from pathlib import Path

from ..errors import DeployError
from ..process_group import start_group, stop_group

__all__ = ["LocalServer", "free_port", "port_in_use"]

_LOG_TAIL_LINES = 6
_JSON = {"Content-Type": "application/json"}
_STOP_WAIT = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class LocalServer:
    """One `mlflow models serve` process group serving the model files in `model_dir`."""

    def __init__(self, name: str, model_dir: Path, port: int, log_path: Path):
        self.name = name
        self.model_dir = Path(model_dir)
        self.port = port
        self.log_path = Path(log_path)
        self.process = None  # the group's guard (subprocess.Popen)
        self._http = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        bin_dir = str(Path(sys.executable).parent)
        env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        # The served files are already local; the server must not reach for a tracking store.
        env.pop("MLFLOW_TRACKING_URI", None)
        command = [
            sys.executable, "-m", "mlflow", "models", "serve",
            "--model-uri", str(self.model_dir), "--env-manager", "local",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = start_group(command, log, env)

    def wait_ready(self, timeout: float, on_tick=None) -> float:
        """Seconds until `/ping` answers 200; a DeployError (with the log's tail) if the
        process exits or `timeout` passes first, and then nothing is left running."""
        import requests

        started = time.monotonic()
        with requests.Session() as http:
            while True:
                elapsed = time.monotonic() - started
                if self.process.poll() is not None:
                    code = self.process.returncode
                    self.stop()
                    raise DeployError(
                        f"The local server for {self.name!r} exited with code {code} before answering: "
                        f"{self.log_tail()} (log: {self.log_path})"
                    )
                try:
                    if http.get(self.url + "/ping", timeout=2).status_code == 200:
                        return elapsed
                except requests.RequestException:
                    pass
                if elapsed > timeout:
                    self.stop()
                    raise DeployError(
                        f"The local server for {self.name!r} did not answer /ping within {timeout:g} s and was "
                        f"stopped: {self.log_tail()} (log: {self.log_path}); raise --timeout on a busy machine."
                    )
                if on_tick is not None:
                    on_tick(elapsed)
                time.sleep(0.25)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def invoke(self, df, timeout: float, deployment: str | None = None):
        """Predictions for `df` over one kept-alive HTTP connection (pandas in, pandas out)."""
        import requests

        from .payload import error_text, read_predictions, split_body

        if deployment:
            raise DeployError(f"Local endpoint {self.name!r} has no deployments: drop --deployment.")
        if self._http is None:
            self._http = requests.Session()
        try:
            response = self._http.post(
                self.url + "/invocations", data=split_body(df), headers=_JSON, timeout=timeout
            )
        except requests.Timeout:
            raise DeployError(f"Local endpoint {self.name!r} gave no answer within {timeout:g} s; raise --timeout.") from None
        except requests.ConnectionError:
            if not self.alive():
                raise DeployError(
                    f"Local endpoint {self.name!r} is not running any more ({self.log_tail()}); "
                    f"deploy it again with %aml_deploy {self.name} MODEL."
                ) from None
            raise DeployError(f"Local endpoint {self.name!r} refused the connection at {self.url}.") from None
        if response.status_code != 200:
            raise DeployError(f"Local endpoint {self.name!r} refused the input: {error_text(response)}")
        return read_predictions(response.json(), df.index)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        self.stop()

    def stop(self) -> None:
        """The whole group: SIGTERM, a bounded wait, then SIGKILL for whatever is left."""
        if self.process is None:
            return
        stop_group(self.process, timeout=_STOP_WAIT)
        self.process = None

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        useful = [line.strip() for line in lines if line.strip() and not line.startswith("  ")]
        return " | ".join(useful[-_LOG_TAIL_LINES:]) or "the log is empty"



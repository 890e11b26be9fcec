"""Real Spark for the tests: one classic local session and one Spark Connect server per test session.

Both come from the installed pyspark (its JARs, its scripts); nothing is downloaded. Both
listen on 127.0.0.1 only, and their Python workers run this interpreter, which has pandas
and MLflow. The Connect server is a subprocess in its own process group, stopped by group.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servers import free_port

__all__ = ["SparkConnectServer", "spark", "spark_connect"]


def _pyspark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def _wait_port(port: int, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Spark Connect server exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"Spark Connect server did not listen on {port} within {timeout}s: {log.read_text()[-2000:]}")


class SparkConnectServer:
    """`SparkConnectServer` from the installed pyspark, via spark-submit, on a loopback port.

    spark-submit is used rather than sbin/start-connect-server.sh because that script
    daemonizes through spark-daemon.sh, leaving a process this fixture would have to find
    by name; spark-submit execs the JVM, so the process id we hold is the server's.
    """

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self.clients: list = []

    @property
    def url(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    def client(self):
        """A new Spark Connect client session on this server, closed when the server stops."""
        from pyspark.sql.connect.session import SparkSession as ConnectSession

        session = ConnectSession.builder.remote(self.url).create()
        self.clients.append(session)
        return session

    def start(self, timeout: float = 180.0) -> "SparkConnectServer":
        home = _pyspark_home()
        log = self.root / "connect-server.log"
        conf = {
            "spark.master": "local[2]",
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.connect.grpc.binding.port": str(self.port),
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.ui.enabled": "false",
            "spark.sql.shuffle.partitions": "2",
            "spark.sql.warehouse.dir": str(self.root / "warehouse"),
        }
        command = [str(home / "bin" / "spark-submit"), "--class", "org.apache.spark.sql.connect.service.SparkConnectServer"]
        for key, value in conf.items():
            command += ["--conf", f"{key}={value}"]
        env = {
            **os.environ,
            "SPARK_HOME": str(home),
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
        }
        # The server outlives single tests: nothing a test set for Spark or MLflow may leak into it.
        for variable in list(env):
            if variable in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE") or (
                variable.startswith("MLFLOW_") and variable.endswith("_URI")
            ):
                env.pop(variable)
        started = time.monotonic()
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                command, cwd=self.root, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            _wait_port(self.port, self.process, log, timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        # An open client talks to its server at interpreter exit (atexit), retrying for minutes
        # once the server is gone: close every client of this server first.
        from dbxml_magics.spark_session import close_remote_sessions

        close_remote_sessions(self.url)
        for client in self.clients:
            try:
                client.stop()
            except Exception:  # noqa: BLE001 - a client that cannot say goodbye is still closed
                pass
        if self.process is None:
            return
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Python workers forked by the JVM share its group; make sure none outlives it.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process = None


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """The one classic local Spark session of the test session (other test modules reuse it)."""
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    session = (
        SparkSession.builder.master("local[2]")
        .appName("dbxml-magics-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.warehouse.dir", str(warehouse))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def spark_connect(tmp_path_factory):
    """A Spark Connect server started from the installed pyspark; yields the server (`.url`)."""
    server = SparkConnectServer(tmp_path_factory.mktemp("spark-connect")).start()
    print(f"Spark Connect server ready in {server.startup_seconds:.1f} s", file=sys.stderr)
    yield server
    server.stop()

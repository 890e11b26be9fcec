"""Which Spark session a magic runs on, and how classic and Spark Connect sessions coexist.

Resolution order (SPEC, `%aml_score`): an explicit `sc://` URL wins; else the notebook's
`spark` variable (Databricks puts it there); else the active session; else a new local
session whose Python workers run the kernel's interpreter.

pyspark and MLflow choose between their classic and Spark Connect code paths from one
process-wide environment variable (`SPARK_CONNECT_MODE_ENABLED`, read by
`pyspark.sql.utils.is_remote`), not from the session at hand. Once a Connect client has
been created with the generic builder, `pyspark.sql.functions`, `pandas_udf` and
`mlflow.pyfunc.spark_udf` would build Connect objects for a classic session too (and the
reverse). `api_mode(spark)` sets the variable to match `spark` for the duration of a
block, so both kinds work side by side in one kernel.
"""

import os
import socket
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import ScoreError
from .masking import first_line

__all__ = [
    "SparkChoice",
    "resolve_spark",
    "describe_spark",
    "is_connect",
    "is_spark_dataframe",
    "api_mode",
    "connect_url_display",
    "close_remote_sessions",
]

_CONNECT_MODE_VAR = "SPARK_CONNECT_MODE_ENABLED"
# Spark Connect clients this process opened, by URL: the Connect builder's getOrCreate()
# hands back whichever client is active, whatever URL it was asked for.
_connect_clients: dict[str, Any] = {}


@dataclass(frozen=True)
class SparkChoice:
    """The session a magic uses, and where it came from (shown to the user)."""

    spark: Any
    origin: str  # "remote", "namespace", "dataframe", "active", "local"
    description: str

    @property
    def connect(self) -> bool:
        return is_connect(self.spark)


def is_connect(obj) -> bool:
    """True for Spark Connect sessions and DataFrames (checked without importing grpc)."""
    return type(obj).__module__.startswith("pyspark.sql.connect")


def is_spark_session(obj) -> bool:
    module, name = type(obj).__module__, type(obj).__name__
    return name == "SparkSession" and module.startswith("pyspark.sql")


def is_spark_dataframe(obj) -> bool:
    return any(
        cls.__name__ == "DataFrame" and cls.__module__.startswith("pyspark.sql") for cls in type(obj).__mro__
    )


@contextmanager
def api_mode(spark):
    """Make pyspark and MLflow take the code path (classic or Connect) of `spark` in this block."""
    wanted = is_connect(spark)
    previous = os.environ.get(_CONNECT_MODE_VAR)
    if wanted == (previous is not None):
        yield
        return
    if wanted:
        os.environ[_CONNECT_MODE_VAR] = "1"
    else:
        del os.environ[_CONNECT_MODE_VAR]
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_CONNECT_MODE_VAR, None)
        else:
            os.environ[_CONNECT_MODE_VAR] = previous


def close_remote_sessions(url_prefix: str = "") -> None:
    """Stop the Spark Connect clients opened by --remote (for URLs starting with `url_prefix`).

    An open client talks to its server once more at interpreter exit, and retries for
    minutes when the server is already gone.
    """
    for url in [u for u in _connect_clients if u.startswith(url_prefix)]:
        client = _connect_clients.pop(url)
        try:
            client.stop()
        except Exception:  # noqa: BLE001 - a client that cannot say goodbye is closed all the same
            pass


def connect_url_display(url: str) -> str:
    """The URL without its `;token=...` style parameters, which may carry secrets."""
    return url.split(";", 1)[0].rstrip("/")


def resolve_spark(namespace: dict, remote: str | None = None, dataframe=None) -> SparkChoice:
    """The session to use, in the SPEC's order; `dataframe` (a Spark DataFrame input) pins its own."""
    if dataframe is not None:
        return _dataframe_session(dataframe, remote)
    if remote:
        return _remote_session(remote)
    spark = namespace.get("spark")
    if spark is not None and is_spark_session(spark) and not _stopped(spark):
        return SparkChoice(spark, "namespace", f"the notebook's `spark` ({_describe(spark)})")
    active = _active_session()
    if active is not None:
        return SparkChoice(active, "active", f"the active Spark session ({_describe(active)})")
    # Spark's own convention for "use this Connect server": honoured before starting a JVM.
    if os.environ.get("SPARK_REMOTE", "").startswith("sc://"):
        return _remote_session(os.environ["SPARK_REMOTE"])
    return _local_session()


def describe_spark(namespace: dict, remote: str | None = None) -> str:
    """Which session resolve_spark would use, in its words, without starting or contacting one."""
    if remote:
        return f"Spark Connect {connect_url_display(remote)} (not contacted by --dry-run)"
    spark = namespace.get("spark")
    if spark is not None and is_spark_session(spark) and not _stopped(spark):
        return f"the notebook's `spark` ({_describe(spark)})"
    if "pyspark" in sys.modules:
        active = _active_session()
        if active is not None:
            return f"the active Spark session ({_describe(active)})"
    if os.environ.get("SPARK_REMOTE", "").startswith("sc://"):
        return f"Spark Connect {connect_url_display(os.environ['SPARK_REMOTE'])} (not contacted by --dry-run)"
    return "a new local Spark session (not started by --dry-run)"


def _dataframe_session(dataframe, remote: str | None) -> SparkChoice:
    spark = dataframe.sparkSession
    if remote:
        wanted = _connect_clients.get(remote)
        if wanted is None or wanted is not spark:
            raise ScoreError(
                f"The DataFrame given with --df belongs to {_describe(spark)}, not to {connect_url_display(remote)}; "
                "drop --remote, or create the DataFrame on that server."
            )
        return SparkChoice(spark, "remote", f"Spark Connect {connect_url_display(remote)}")
    return SparkChoice(spark, "dataframe", f"the DataFrame's session ({_describe(spark)})")


def _remote_session(url: str) -> SparkChoice:
    shown = connect_url_display(url)
    parts = urlsplit(url)
    if parts.scheme != "sc" or not parts.hostname:
        raise ScoreError(f"--remote expects a Spark Connect URL like sc://host:15002; got {shown!r}.")
    try:
        from pyspark.sql.connect.utils import check_dependencies

        check_dependencies()
    except ImportError as exc:
        raise ScoreError(
            f"Spark Connect needs packages that are not installed ({exc}); run: pip install 'dbxml-magics[spark]'"
        ) from None
    client = _connect_clients.get(url)
    if client is not None and not _stopped(client):
        return SparkChoice(client, "remote", f"Spark Connect {shown}")
    # gRPC retries an unreachable server for minutes; a plain TCP probe answers in seconds.
    port = parts.port or 15002
    try:
        with socket.create_connection((parts.hostname, port), timeout=5):
            pass
    except OSError as exc:
        raise ScoreError(
            f"Cannot reach the Spark Connect server {shown} ({exc.strerror or exc}); start it "
            "(sbin/start-connect-server.sh) or check host and port."
        ) from None
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    try:
        client = ConnectSession.builder.remote(url).create()
        client.version  # noqa: B018 - one round trip proves the server speaks Spark Connect
    except Exception as exc:  # noqa: BLE001 - any client failure becomes one line
        raise ScoreError(f"Spark Connect server {shown} did not answer: {first_line(exc)}") from None
    _connect_clients[url] = client
    return SparkChoice(client, "remote", f"Spark Connect {shown}")


def _active_session():
    """A classic active session first, else an active Spark Connect client."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ScoreError(
            "No Spark here: pyspark is not installed. On Databricks, attach the notebook to a cluster; "
            "elsewhere run: pip install 'dbxml-magics[spark]'"
        ) from None
    from pyspark import SparkContext

    with _classic_mode():
        session = SparkSession.getActiveSession()
        if session is None and SparkContext._active_spark_context is not None:
            # A running context whose session is active on another thread: reuse it, never start a second JVM.
            session = SparkSession.builder.getOrCreate()
    if session is not None and not _stopped(session):
        return session
    if "pyspark.sql.connect.session" in sys.modules:
        connect = sys.modules["pyspark.sql.connect.session"].SparkSession.getActiveSession()
        if connect is not None and not _stopped(connect):
            return connect
    return None


@contextmanager
def _classic_mode():
    previous = os.environ.pop(_CONNECT_MODE_VAR, None)
    try:
        yield
    finally:
        if previous is not None:
            os.environ[_CONNECT_MODE_VAR] = previous


def _local_session() -> SparkChoice:
    """A new local session bound to 127.0.0.1, its JVM's console output kept out of the cell.

    pyspark reads PYSPARK_PYTHON once, when the SparkContext starts; without it the
    workers run whatever `python3` is on PATH, which usually lacks pandas and MLflow.
    The JVM inherits the kernel's stderr, which ipykernel forwards into the cell: every
    log4j line (the loopback-hostname WARN, NativeCodeLoader, log level banners) and the
    JVM's own warnings would land under the magic. The JVM is therefore launched here with
    its stdout and stderr in a log file; Spark's errors still reach Python as exceptions.
    SPARK_LOCAL_IP keeps spark-submit from picking a non-loopback interface before the
    driver settings are even read.
    """
    import logging

    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway
    from pyspark.sql import SparkSession

    # py4j logs each connection it closes at INFO; a notebook with INFO logging would show them.
    py4j = logging.getLogger("py4j")
    if py4j.level == logging.NOTSET:
        py4j.setLevel(logging.WARNING)
    conf = (
        SparkConf()
        .setMaster("local[*]")
        .setAppName("dbxml-magics")
        .set("spark.driver.host", "127.0.0.1")
        .set("spark.driver.bindAddress", "127.0.0.1")
        # Progress is shown in the notebook; the console bar would only reach the log.
        .set("spark.ui.showConsoleProgress", "false")
    )
    log_path = os.path.join(tempfile.gettempdir(), f"dbxml-magics-spark-{os.getpid()}.log")
    saved = {name: os.environ.get(name) for name in ("PYSPARK_PYTHON", "SPARK_LOCAL_IP")}
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    try:
        with _classic_mode():
            if SparkContext._gateway is None:  # no JVM yet in this process: start it quietly
                with open(log_path, "ab") as log:
                    gateway = launch_gateway(conf, popen_kwargs={"stdout": log, "stderr": log})
                spark = SparkSession(SparkContext(conf=conf, gateway=gateway))
            else:
                spark = SparkSession.builder.config(conf=conf).getOrCreate()
    except Exception as exc:  # noqa: BLE001 - a JVM that does not start is one line
        raise ScoreError(
            f"Could not start a local Spark session: {first_line(exc)}. Is Java 17+ installed? (JVM log: {log_path})"
        ) from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    spark.sparkContext.setLogLevel("ERROR")
    return SparkChoice(spark, "local", f"a new local Spark session ({_describe(spark)}; JVM log {log_path})")


def _stopped(spark) -> bool:
    if is_connect(spark):
        return bool(getattr(spark, "is_stopped", False))
    context = getattr(spark, "_sc", None)
    return context is None or getattr(context, "_jsc", None) is None


def _describe(spark) -> str:
    if is_connect(spark):
        return "Spark Connect client"
    try:
        return f"master {spark.sparkContext.master}"
    except Exception:  # noqa: BLE001 - a description must never fail a magic
        return "classic Spark"



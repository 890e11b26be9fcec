"""Layered fixtures: a real IPython shell -> the extension loaded -> linked to a real server.

Slow parts are shared per test session: one MLflow server (tests that stop a server start
their own). Every test runs in its own working directory, so the embedded store is fresh.
"""

import atexit
import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

# One temporary folder for the whole session, removed when it ends, whatever wrote into it:
# MLflow leaves a `db_init_lock-*` file per new SQLite store, IPython a history file per
# killed kernel, servers and kernels inherit TMPDIR. Set before anything asks for the folder.
SESSION_TMP = tempfile.mkdtemp(prefix="dbxml-tests-")
os.environ["TMPDIR"] = SESSION_TMP
tempfile.tempdir = SESSION_TMP
# At exit, and registered first so it runs last: the shared IPython shell writes its history
# file there in its own exit handler.
atexit.register(shutil.rmtree, SESSION_TMP, ignore_errors=True)


from servers import MlflowServer, free_port  # noqa: E402

# Shared Spark fixtures (`spark`, `spark_connect`): one Spark per test session.
pytest_plugins = ["spark_fixtures"]

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture(autouse=True)
def _arm_emulator_folders_removed():
    """The ARM emulator's certificates folder goes when the test that made it ends
    (`ArmEmulator.close`): a test that leaves one fails here, naming it."""
    import glob
    import tempfile

    from arm_emulator import FOLDER_PREFIX

    pattern = os.path.join(tempfile.gettempdir(), f"{FOLDER_PREFIX}{os.getpid()}-*")
    yield
    left = glob.glob(pattern)
    assert not left, f"the test left ARM emulator folders behind (call ArmEmulator.close()): {left}"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


@pytest.fixture
def own_server(tmp_path):
    """A server this test may stop and restart (same port, same database)."""
    server = MlflowServer(tmp_path / "own-server", port=free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ipython_shell():
    from IPython.testing.globalipapp import start_ipython

    return start_ipython()


def _reset_mlflow():
    import mlflow
    from mlflow.tracking._tracking_service import utils

    while mlflow.active_run() is not None:
        mlflow.end_run()
    utils._tracking_uri = None
    try:
        from mlflow.tracking._model_registry import utils as registry_utils

        registry_utils._registry_uri = None
    except (ImportError, AttributeError):
        pass
    mlflow.tracking.fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    utils._tracking_store_registry._get_store_with_resolved_uri.cache_clear()


@pytest.fixture(autouse=True)
def _no_mlflow_globals_leak():
    """Whatever a test pointed MLflow at (globals and the MLFLOW_* variables that
    set_registry_uri exports) is gone before the next test, which may start a kernel that
    inherits the environment."""
    before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    if "mlflow" in sys.modules:
        _reset_mlflow()
    for name in [k for k in os.environ if k.startswith("MLFLOW_")]:
        os.environ.pop(name)
    os.environ.update(before)


@pytest.fixture
def shell(ipython_shell, tmp_path, monkeypatch):
    """A real InteractiveShell in a fresh working directory, with nothing loaded."""
    monkeypatch.chdir(tmp_path)
    for name in (
        "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DATABRICKS_RUNTIME_VERSION",
        "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID",
    ):
        monkeypatch.delenv(name, raising=False)
    _reset_mlflow()
    ipython_shell.run_line_magic("unload_ext", "dbxml_magics") if "dbxml_magics" in ipython_shell.extension_manager.loaded else None
    # `%config DbxmlMagics.x = ...` lives in the shell's config, which outlives a test: start clean.
    ipython_shell.config.pop("DbxmlMagics", None)
    yield ipython_shell
    if "dbxml_magics" in ipython_shell.extension_manager.loaded:
        ipython_shell.run_line_magic("unload_ext", "dbxml_magics")
    _reset_mlflow()


@pytest.fixture
def ext(shell):
    """The shell with dbxml_magics loaded; yields the Session."""
    from dbxml_magics.session import get_session

    shell.run_line_magic("load_ext", "dbxml_magics")
    yield get_session(shell)


@pytest.fixture
def linked(ext, shell, mlflow_server):
    """The extension linked to the shared real MLflow server."""
    shell.run_line_magic("aml_link", f"--uri {mlflow_server.uri}")
    yield ext

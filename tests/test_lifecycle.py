"""%load_ext / %unload_ext / %reload_ext, again and again, leave exactly one of everything
(magics, configurables, listeners, flusher threads, panels, store wrappers), and a kernel
that exits normally ships its journal (or keeps it for the next session)."""

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading

import mlflow
import pytest

from dbxml_magics import panel as panel_module
from dbxml_magics.journal import _JournaledBuilder
from dbxml_magics.session import get_session

MAGIC_NAMES = {"line": {"aml_link", "aml_unlink", "aml_register", "aml_score", "aml_sync", "aml_panel", "aml_ui"}, "cell": {"track"}}


def _flushers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dbxml-journal-flusher" and t.is_alive()]


def _dbxml_configurables(shell) -> list:
    return [c for c in shell.configurables if type(c).__name__ == "DbxmlMagics"]


def _wrapped_builders() -> list:
    from mlflow.tracking._tracking_service.utils import (
        _tracking_store_registry as registry,
    )

    return [b for b in registry._registry.values() if isinstance(b, _JournaledBuilder)]


def _assert_one_of_everything(shell) -> None:
    session = get_session(shell)
    for kind, names in MAGIC_NAMES.items():
        for name in names:
            bound = shell.magics_manager.magics[kind][name]
            assert bound.__self__ is _dbxml_configurables(shell)[0], name  # the current instance's
    assert len(_dbxml_configurables(shell)) == 1
    assert len(_flushers()) == 1
    assert session.listener_count == 1  # the one panel
    assert list(panel_module._panels) == [id(session)]
    # One wrapper per scheme, never a wrapper around a wrapper.
    assert _wrapped_builders() and all(not isinstance(b.inner, _JournaledBuilder) for b in _wrapped_builders())
    assert len({b.journal for b in _wrapped_builders()}) == 1


def _assert_nothing_left(shell) -> None:
    for kind, names in MAGIC_NAMES.items():
        assert not names & set(shell.magics_manager.magics[kind])
    assert _dbxml_configurables(shell) == []
    assert _flushers() == []
    assert panel_module._panels == {}
    assert _wrapped_builders() == []
    with pytest.raises(Exception, match="load_ext dbxml_magics"):
        get_session(shell)


def _use_everything(shell, name: str) -> None:
    shell.run_line_magic("aml_panel", "")
    shell.run_line_magic("aml_panel", "")  # showing again reuses the one panel
    shell.run_cell_magic("track", f"{name} --metrics m", "m = 1.0")


def test_load_unload_reload_leave_one_of_everything(shell, tmp_path):
    threads_before = {t.ident for t in threading.enumerate()}
    shell.run_line_magic("load_ext", "dbxml_magics")
    shell.run_line_magic("load_ext", "dbxml_magics")  # loading twice is a no-op
    _use_everything(shell, "first")
    _assert_one_of_everything(shell)

    for round_ in range(3):
        shell.run_line_magic("reload_ext", "dbxml_magics")
        _use_everything(shell, f"reloaded-{round_}")
        _assert_one_of_everything(shell)
        assert len(get_session(shell).runs) == 1  # a fresh Session after every reload

    shell.run_line_magic("unload_ext", "dbxml_magics")
    _assert_nothing_left(shell)
    shell.run_line_magic("unload_ext", "dbxml_magics")  # unloading twice is harmless
    _assert_nothing_left(shell)
    assert mlflow.active_run() is None
    # Every run of every incarnation reached the store.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(["0"])
    assert sorted(r.info.run_name for r in runs) == ["first", "reloaded-0", "reloaded-1", "reloaded-2"]
    assert all(r.info.status == "FINISHED" and r.data.metrics == {"m": 1.0} for r in runs)
    assert {t.ident for t in threading.enumerate() if t.name == "dbxml-journal-flusher"} - threads_before == set()


_EXITING_KERNEL = textwrap.dedent(
    """
    import sys
    from IPython.testing.globalipapp import start_ipython

    ip = start_ipython()
    ip.run_line_magic("load_ext", "dbxml_magics")
    # The flusher would not wake on its own before the exit, and cells do not wait.
    ip.run_line_magic("config", "DbxmlMagics.flush_interval = 3600")
    ip.run_line_magic("config", "DbxmlMagics.flush_timeout = 0")
    ip.run_line_magic("config", "DbxmlMagics.show_panel_on_link = False")
    ip.run_line_magic("config", f"DbxmlMagics.shutdown_flush_timeout = {float(sys.argv[2])}")
    ip.run_line_magic("aml_link", f"--uri {sys.argv[1]}")
    ip.run_cell_magic(
        "track",
        "leaving --params k",
        "import mlflow\\nk = 'v'\\nfor i in range(3000):\\n    mlflow.log_metric('x', i, step=i)\\n"
        "for i in range(15):\\n    mlflow.log_text(str(i), f'notes/{i}.txt')",
    )
    import time
    import mlflow
    from mlflow.entities import Metric
    from dbxml_magics.session import get_session

    session = get_session(ip)
    run_id = session.last_run.run_id
    assert session.journal.flush(timeout=120)
    time.sleep(3)  # any pass the flush asked for is over: the flusher now sleeps for an hour
    # Logging to the finished run afterwards queues rows that nothing ships before the exit.
    mlflow.MlflowClient().log_batch(run_id, metrics=[Metric("late", float(i), 0, i) for i in range(2000)])
    print("RUN", run_id, "PENDING", session.journal.pending(run_id), flush=True)
    """  # the script ends: a normal interpreter exit, as when a kernel is shut down
)


def _exit_normally(folder, server_uri: str, shutdown_flush_timeout: float) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [sys.executable, "-c", _EXITING_KERNEL, server_uri, str(shutdown_flush_timeout)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    _, run_id, _, pending = next(line.split() for line in done.stdout.splitlines() if line.startswith("RUN "))
    assert int(pending) > 0  # journal rows queued, not sent, when the kernel began to exit
    return run_id


def _pending_rows(folder) -> int:
    with sqlite3.connect(folder / ".dbxml" / "journal.sqlite") as journal:
        return journal.execute("SELECT COUNT(*) FROM entries WHERE state='pending'").fetchone()[0]


def test_normal_exit_ships_the_journal(tmp_path, mlflow_server):
    run_id = _exit_normally(tmp_path, mlflow_server.uri, shutdown_flush_timeout=60)
    client = mlflow_server.client()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"k": "v"}
    assert len(client.get_metric_history(run_id, "x")) == 3000
    assert len(client.list_artifacts(run_id, "notes")) == 15
    assert len(client.get_metric_history(run_id, "late")) == 2000
    assert _pending_rows(tmp_path) == 0


def test_exit_without_time_to_flush_keeps_the_rest_for_the_next_session(tmp_path, mlflow_server, shell):
    run_id = _exit_normally(tmp_path, mlflow_server.uri, shutdown_flush_timeout=0)
    assert _pending_rows(tmp_path) > 0  # what the exit could not ship is still on disk
    client = mlflow_server.client()
    assert client.get_metric_history(run_id, "late") == []
    shell.run_line_magic("load_ext", "dbxml_magics")  # the next session in this folder ships it
    shell.run_line_magic("aml_sync", "--flush --timeout 120")
    assert _pending_rows(tmp_path) == 0
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run_id, "x")) == 3000
    assert len(client.get_metric_history(run_id, "late")) == 2000

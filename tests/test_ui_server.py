"""`%aml_ui`: a real `mlflow server` over the embedded store, reused, stopped; links elsewhere."""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from aml_emulator import aml_emulator, aml_workspace, azure_env, link_line  # noqa: F401 - fixtures
from dbxml_magics import ui_server
from dbxml_magics.panel import live_panel
from test_panel import shown_panel, wait_for


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_aml_ui_serves_the_embedded_store_reuses_it_links_runs_and_stops(ext, shell, capsys):
    shell.run_cell_magic("track", "shown-in-ui --metrics m", "m = 1.5")
    record = ext.runs[0]
    links = shell.run_line_magic("aml_ui", "")
    (ui,) = links.uis
    assert ui.role == "primary" and ui.started_here and ui.url.startswith("http://127.0.0.1:")
    # the inline UI opens the runs of the run's experiment (MLflow 3 would show its GenAI overview)
    assert ui.page == f"{ui.url}/#/experiments/{record.experiment_id}?workflowType=machine_learning"
    assert f'<iframe class="dbxml-mlflow-ui" src="{ui.page}"' in links._repr_html_()
    run = _get(f"{ui.url}/api/2.0/mlflow/runs/get?run_id={record.run_id}")["run"]
    assert run["info"]["run_name"] == "shown-in-ui"  # the session's runs, through MLflow's own server

    server = ui_server._servers[ext.link.primary.uri]
    again = shell.run_line_magic("aml_ui", "")
    assert again.uis[0].url == ui.url and ui_server._servers[ext.link.primary.uri] is server  # reused

    # The inspector now links the run to its page in that UI.
    panel = shown_panel(shell)
    panel.runs.rows[record.run_id].name.click()
    panel.inspector.pending.result(timeout=60)
    assert f'href="{ui.url}/#/experiments/{record.experiment_id}/runs/{record.run_id}"' in panel.inspector.link.value

    # The panel's button shows the same server inline.
    panel.ui_button.click()
    assert panel._ui_pending.result(timeout=60) is not None, panel.message.value
    shown = panel.ui.outputs[0]["data"]  # a terminal shell formats text only; a kernel adds the IFrame's HTML
    assert ui.url in shown["text/plain"] and f'src="{ui.page}"' in shown.get("text/html", f'src="{ui.page}"')
    assert ui_server._servers[ext.link.primary.uri] is server

    capsys.readouterr()
    shell.run_line_magic("aml_ui", "--stop")
    assert capsys.readouterr().out.strip() == f"Stopped the MLflow UI at {ui.url}."
    assert server.process.poll() is not None
    wait_for(lambda: not _group_alive(server.process.pid), what="the server's process group gone")
    shell.run_line_magic("aml_ui", "--stop")
    assert "No MLflow UI server was running." in capsys.readouterr().out


def test_tracking_server_link_gets_its_own_ui_and_nothing_starts(linked, shell, mlflow_server):
    links = shell.run_line_magic("aml_ui", "")
    (ui,) = links.uis
    assert ui.url == f"{mlflow_server.uri}/#/experiments" and not ui.started_here
    assert "iframe" not in links._repr_html_() and not ui_server._servers


def test_without_the_full_mlflow_distribution_one_line_names_the_extra(ext, shell, monkeypatch):
    """mlflow-skinny alone (a Databricks runtime's) cannot run `mlflow server`: say which extra
    to install instead of a server that dies with an ImportError in its log."""
    from IPython.core.error import UsageError

    monkeypatch.setattr(ui_server, "_SERVER_MODULES", ("flask", "dbxml_no_such_module"))
    with pytest.raises(UsageError, match=r"missing here: dbxml_no_such_module\): `%pip install 'dbxml-magics\[server\]'`") as error:
        shell.run_line_magic("aml_ui", "")
    assert "\n" not in str(error.value)
    assert ui_server._servers == {}


def test_databricks_link_uses_databricks_host_else_says_what_is_missing(ext, shell, monkeypatch):
    from dbxml_magics.targets import Link, Target

    ext.apply_link(Link(mode="aml-only", primary=Target(uri="databricks", kind="databricks")))
    monkeypatch.delenv("DATABRICKS_HOST", raising=False)
    (ui,) = shell.run_line_magic("aml_ui", "").uis
    assert ui.url is None and "DATABRICKS_HOST" in ui.note
    monkeypatch.setenv("DATABRICKS_HOST", "https://adb-123.4.azuredatabricks.net/")
    (ui,) = shell.run_line_magic("aml_ui", "").uis
    assert ui.url == "https://adb-123.4.azuredatabricks.net/#mlflow/experiments"


def test_both_mode_inspector_links_the_primary_and_the_mirror_run(linked, shell, mlflow_server, tmp_path):
    """Primary: the tracking server; mirror: the embedded store served by %aml_ui."""
    shell.run_line_magic("aml_link", "--local --mode both")
    assert linked.link.mirror.kind == "embedded"
    shell.run_cell_magic("track", "twice --metrics m", "m = 3.0")
    record = linked.runs[0]
    assert linked.journal.flush(timeout=60)
    mirror_id = wait_for(lambda: linked.mirror_run_id(record), what="the mirror run created")
    assert record.mirror_run_id == mirror_id != record.run_id
    uis = shell.run_line_magic("aml_ui", "").uis
    assert [ui.role for ui in uis] == ["primary", "mirror"] and uis[1].started_here
    panel = shown_panel(shell)
    panel.runs.rows[record.run_id].name.click()
    details = panel.inspector.pending.result(timeout=60)
    link = panel.inspector.link.value
    assert f'href="{mlflow_server.uri}/#/experiments/{record.experiment_id}/runs/{record.run_id}"' in link
    mirror_run = _get(f"{uis[1].url}/api/2.0/mlflow/runs/get?run_id={mirror_id}")["run"]
    expected = f"{uis[1].url}/#/experiments/{mirror_run['info']['experiment_id']}/runs/{mirror_id}"
    assert f'href="{expected}"' in link and f"mirror copy <code>{mirror_id}</code>" in link
    assert details.mirror_ui_url == expected
    server = ui_server._servers[linked.link.mirror.uri]
    shell.run_line_magic("unload_ext", "dbxml_magics")
    assert server.process.poll() is not None and not ui_server._servers


KERNEL = """
import sys
from IPython.testing.globalipapp import start_ipython
ip = start_ipython()
ip.run_line_magic("load_ext", "dbxml_magics")
ip.run_cell_magic("track", "t --no-source", "a = 1")
from dbxml_magics import ui_server
from dbxml_magics.panel import live_panel
from dbxml_magics.session import get_session
panel = live_panel(get_session(ip))
panel.open_ui().result(timeout=600)  # from the panel's worker thread, which ends before the kernel
(server,) = ui_server._servers.values()
print("READY", server.process.pid, server.port, panel.message.value, flush=True)
sys.stdin.read()
"""


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("ending", ["exit", "SIGKILL"])
def test_the_kernels_end_takes_the_whole_ui_server_group_along(tmp_path, ending):
    """A normal exit runs the extension's exit hook, which stops the group before the kernel is
    gone. SIGKILL leaves no exit hook: the group's guard sees its kernel gone and stops every
    process of the group (the guard, the mlflow CLI, uvicorn), and the port closes."""
    from test_deploy import group_members

    script = tmp_path / "kernel.py"
    script.write_text(KERNEL)
    kernel = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )
    pgid = None
    try:
        line = next((line for line in kernel.stdout if line.startswith("READY")), None)
        assert line is not None, "the UI server never answered"
        pgid, port = map(int, line.split()[1:3])
        assert _port_open(port)
        assert len(group_members(pgid)) >= 3, group_members(pgid)  # guard, mlflow CLI, uvicorn
        if ending == "exit":
            kernel.stdin.close()  # the kernel's script ends: Python exits normally
            assert kernel.wait(timeout=120) == 0
            assert not group_members(pgid)  # already gone: the exit hook waited for it, not the guard
        else:
            kernel.send_signal(signal.SIGKILL)
            kernel.wait(timeout=30)
        wait_for(lambda: not group_members(pgid) and not _port_open(port), timeout=60, what="the group gone, the port closed")
    finally:
        if kernel.poll() is None:
            kernel.kill()
            kernel.wait(timeout=30)
        if pgid is not None and group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)  # leave nothing behind when the test fails


def test_databricks_notebook_without_databricks_host_links_the_workspace_from_its_context(ext, shell, monkeypatch, spark):
    """A Databricks notebook does not set DATABRICKS_HOST; its cluster's Spark conf names the
    workspace (`spark.databricks.workspaceUrl`, read through MLflow's notebook-context helpers)."""
    from dbxml_magics.inspect_run import run_ui_url
    from dbxml_magics.targets import Link, Target

    databricks = Target(uri="databricks", kind="databricks")
    ext.apply_link(Link(mode="aml-only", primary=databricks))
    monkeypatch.delenv("DATABRICKS_HOST", raising=False)
    spark.conf.set("spark.databricks.workspaceUrl", "adb-987.6.azuredatabricks.net")
    try:
        (ui,) = shell.run_line_magic("aml_ui", "").uis
        assert ui.url == "https://adb-987.6.azuredatabricks.net/#mlflow/experiments" and not ui.started_here
        assert run_ui_url(databricks, "7", "abc") == "https://adb-987.6.azuredatabricks.net/#mlflow/experiments/7/runs/abc"
    finally:
        spark.conf.unset("spark.databricks.workspaceUrl")
    assert run_ui_url(databricks, "7", "abc") is None and not ui_server._servers


def test_aml_links_studio_for_the_mirror_copy_and_in_aml_ui(ext, shell, aml_workspace, mlflow_server):
    """`both` mode with an AML mirror: the inspector links the mirror's copy to its page in
    studio; linked to AML alone, `%aml_ui` shows the workspace's studio and starts nothing."""
    emulator = aml_workspace
    link = shell.run_line_magic("aml_link", link_line(emulator, "--mode both --auth managed-identity"))
    assert link.primary.kind == "embedded" and link.mirror.kind == "aml"
    shell.run_cell_magic("track", "mirrored-to-aml --metrics m", "m = 1.0")
    record = ext.runs[0]
    assert ext.journal.flush(timeout=60)
    mirror_id = wait_for(lambda: ext.mirror_run_id(record), what="the mirror run created")
    details = ext.run_details(record.run_id)
    workspace_id = emulator.prefix.split("/mlflow/v2.0")[1]
    studio = f"https://ml.azure.com/runs/{mirror_id}?wsid={workspace_id}&tid={emulator.arm.tenant_id}"
    assert details.mirror_run_id == mirror_id != record.run_id and details.mirror_ui_url == studio
    assert details.ui_url is None  # the embedded store has no UI until %aml_ui serves it

    link = shell.run_line_magic("aml_link", link_line(emulator, "--auth managed-identity"))
    (ui,) = shell.run_line_magic("aml_ui", "").uis
    assert ui.url == link.primary.studio_url and ui.url.startswith("https://ml.azure.com/") and not ui.started_here
    assert not ui_server._servers

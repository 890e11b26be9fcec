"""The live panel without a browser: widget trait values after real tracked cells, clicks
simulated on the widget objects, links made through the picker against a real server."""

import json
import re
import subprocess
import sys
import time
import uuid

import pytest
from IPython.lib.pretty import pretty

from dbxml_magics.panel import PAGE_SIZE, PanelView, WorkspacePicker, live_panel, panel_text
from dbxml_magics.panel.compat import description_tip, titles_of
from dbxml_magics.session import ModelRecord, RunRecord, ScoreRecord, get_session
from servers import MlflowServer, free_port


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    """For state the journal's flusher thread updates: poll until true or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout}s")


def shown_panel(shell):
    shell.run_line_magic("aml_panel", "")
    return live_panel(get_session(shell))


def row_names(panel):
    by_widget = {id(row.widget): row for row in panel.runs.rows.values()}
    return [by_widget[id(child)].name.description for child in panel.runs.box.children]


def test_load_ext_imports_neither_widgets_nor_mlflow(tmp_path):
    code = (
        "import sys\n"
        "from IPython.testing.globalipapp import start_ipython\n"
        "ip = start_ipython()\n"
        "before = set(sys.modules)\n"
        "ip.run_line_magic('load_ext', 'dbxml_magics')\n"
        "new = set(sys.modules) - before\n"
        "print(sorted(m for m in new if m.split('.')[0] in ('ipywidgets', 'mlflow', 'matplotlib')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_runs_table_newest_first_with_status_duration_key_metrics(ext, shell):
    shell.run_line_magic("config", "DbxmlMagics.key_metrics = ['loss']")
    shell.run_line_magic("config", "DbxmlMagics.panel_max_metrics = 2")
    panel = shown_panel(shell)
    shell.run_cell_magic("track", "first --metrics acc loss zeta", "acc = 0.91\nloss = [0.5, 0.25]\nzeta = 3")
    with pytest.raises(ZeroDivisionError):
        shell.run_cell_magic("track", "second --metrics loss", "loss = 0.7\n1 / 0")

    assert row_names(panel) == ["second", "first"]
    first, second = (panel.runs.rows[run.run_id] for run in ext.runs)
    assert "FINISHED" in first.status.value and "#1a7f37" in first.status.value
    assert "FAILED" in second.status.value and "#cf222e" in second.status.value
    # key metric first, then the others by name, at most panel_max_metrics of them
    assert first.metrics.value == "loss=0.25  acc=0.91"
    assert first.duration.value.endswith("s")
    assert first.start.value == time.strftime("%H:%M:%S", time.localtime(ext.runs[0].start_time))
    assert panel.runs.count.value == "2 runs"
    assert panel.runs.older.layout.display == "none"


def test_new_run_prepends_a_row_and_keeps_existing_rows(ext, shell):
    panel = shown_panel(shell)
    shell.run_cell_magic("track", "a", "x = 1")
    row_a = panel.runs.rows[ext.runs[0].run_id]
    widget_a = panel.runs.box.children[0]
    shell.run_cell_magic("track", "b", "x = 2")
    assert panel.runs.box.children[1] is widget_a
    assert panel.runs.rows[ext.runs[0].run_id] is row_a
    assert panel.runs.box.children[0] is panel.runs.rows[ext.runs[1].run_id].widget


def test_row_shows_running_while_the_cell_runs(ext, shell):
    shown_panel(shell)
    shell.run_cell_magic(
        "track",
        "long",
        "import mlflow\n"
        "from dbxml_magics.panel import live_panel\n"
        "from dbxml_magics.session import get_session\n"
        "row = live_panel(get_session()).runs.rows[mlflow.active_run().info.run_id]\n"
        "status_inside = row.status.value\n",
    )
    assert "RUNNING" in shell.user_ns["status_inside"]
    assert "FINISHED" in shell.user_ns["row"].status.value


def test_registered_versions_reach_the_row_and_the_open_inspector(ext, shell):
    panel = shown_panel(shell)
    shell.run_cell_magic("track", "model-run", "x = 1")
    run_id = ext.runs[0].run_id
    row = panel.runs.rows[run_id]
    row.name.click()
    panel.inspector.pending.result(timeout=60)
    assert "No model registered" in panel.inspector.models.value

    ext.add_model(ModelRecord(name="iris-clf", version="1", source_run_id=run_id, model_uri=f"runs:/{run_id}/model"))
    assert row.versions.value == "iris-clf v1"
    panel.inspector.pending.result(timeout=60)  # the open inspector re-reads the run
    assert "iris-clf" in panel.inspector.models.value

    ext.add_scoring(
        ScoreRecord(model_uri="models:/iris-clf/1", model_version="1", input="table iris_new", rows=150, seconds=2.5,
                    output="scored")
    )
    row.name.click()
    panel.inspector.pending.result(timeout=60)
    assert "table iris_new" in panel.inspector.models.value
    assert "150" in panel.inspector.models.value


def test_click_shows_params_tags_metric_plots_and_artifacts(ext, shell, tmp_path):
    panel = shown_panel(shell)
    (tmp_path / "notes.txt").write_text("hello")
    shell.run_cell_magic(
        "track",
        "inspected --params alpha --metrics acc --tags team=vision --artifacts notes.txt",
        "import mlflow\nalpha = 0.3\nacc = 0.8\n"
        "for step in range(5):\n    mlflow.log_metric('loss', 1 / (step + 1), step=step)\n",
    )
    run_id = ext.runs[0].run_id
    panel.runs.rows[run_id].name.click()
    details = panel.inspector.pending.result(timeout=60)

    inspector = panel.inspector
    assert details.run_id == run_id
    assert "inspected" in inspector.title.value and "FINISHED" in inspector.title.value
    assert "loss" in inspector.metrics.value and "acc" in inspector.metrics.value
    assert details.histories["loss"] == [(s, 1 / (s + 1)) for s in range(5)]
    plots = inspector.plots.children
    assert len(plots) == 1  # only loss has a history; acc is a single value
    assert plots[0].format == "png" and plots[0].value[:8] == b"\x89PNG\r\n\x1a\n"
    assert "alpha" in inspector.params.value and "0.3" in inspector.params.value
    assert "team" in inspector.tags.value and "vision" in inspector.tags.value
    assert "notes.txt" in inspector.artifacts.value and "cell.py" in inspector.artifacts.value
    assert "%aml_ui" in inspector.link.value  # the embedded store has no web UI until %aml_ui serves it
    assert inspector.tabs.layout.display is None
    assert panel.message.value == "" and panel.log.outputs == ()
    # Spelt for the installed ipywidgets: 7 (Databricks runtimes; CI_TESTS run this there) or 8.
    assert titles_of(inspector.tabs) == tuple(inspector.TABS)
    row = panel.runs.rows[run_id]
    assert f"inspected ({run_id})" in row.name.tooltip
    assert getattr(row.check, description_tip()) == "Select to compare"


def test_inspector_links_to_the_run_in_the_mlflow_ui(linked, shell, mlflow_server):
    panel = shown_panel(shell)
    shell.run_cell_magic("track", "remote --metrics m", "m = 2.0")
    record = linked.runs[0]
    panel.runs.rows[record.run_id].name.click()
    panel.inspector.pending.result(timeout=60)
    expected = f"{mlflow_server.uri}/#/experiments/{record.experiment_id}/runs/{record.run_id}"
    assert f'href="{expected}"' in panel.inspector.link.value
    assert "MLflow UI" in panel.inspector.link.value


def test_run_of_a_store_no_longer_linked_says_why_inline(ext, shell, mlflow_server):
    panel = shown_panel(shell)
    shell.run_cell_magic("track", "local-run", "x = 1")
    shell.run_line_magic("aml_link", f"--uri {mlflow_server.uri}")
    panel.runs.rows[ext.runs[0].run_id].name.click()
    assert panel.inspector.pending.result(timeout=60) is None
    assert "no longer linked" in panel.inspector.title.value
    assert panel.inspector.tabs.layout.display == "none"


def test_header_masks_credentials_and_follows_the_journal(ext, shell, mlflow_server):
    panel = shown_panel(shell)
    secret = f"pw-{uuid.uuid4().hex[:10]}"
    authed = mlflow_server.uri.replace("http://", f"http://alice:{secret}@")
    shell.run_line_magic("aml_link", f"--uri {authed} --experiment panel-header")
    header = panel.header.value
    assert "alice:***@127.0.0.1" in header and "panel-header" in header and "uri" in header
    assert secret not in header and secret not in panel_text(ext)

    shell.run_cell_magic("track", "synced --metrics m", "m = 1.0")
    wait_for(
        lambda: ">0 pending, last sync" in panel.header.value and "never" not in panel.header.value,
        what="synced header",
    )


def test_header_shows_pending_writes_and_error_of_a_down_mirror(ext, shell, tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("down-mirror")).start()
    try:
        panel = shown_panel(shell)
        shell.run_line_magic("aml_link", f"--uri {server.uri} --mode both")
    finally:
        server.stop()
    shell.run_line_magic("config", "DbxmlMagics.flush_timeout = 2")
    shell.run_cell_magic("track", "mirrored --metrics m", "m = 1.0")
    assert "mirror: <code>" + server.uri in panel.header.value

    def mirror_line():
        line = next(line for line in panel.header.value.split("<br>") if line.startswith("mirror:"))
        pending = re.search(r">(\d+) pending", line)
        return "last error" in line and pending is not None and int(pending.group(1)) > 0

    wait_for(mirror_line, what="mirror error in header")
    assert "#cf222e" in panel.header.value


def test_picker_links_a_typed_uri_like_aml_link(ext, shell, mlflow_server):
    panel = shown_panel(shell)
    picker = panel.picker
    assert panel.workspace.selected_index == 0  # open: nothing linked yet
    picker.uri.value = mlflow_server.uri
    assert picker.store.value == WorkspacePicker.TYPED
    picker.experiment.value = "picked-in-panel"
    picker.link_button.click()

    assert "Linked" in picker.message.value
    assert ext.link.primary.uri == mlflow_server.uri and ext.experiment == "picked-in-panel"
    assert mlflow_server.uri in panel.header.value
    shell.run_cell_magic("track", "from-picker", "x = 1")
    client = mlflow_server.client()
    experiment = client.get_experiment_by_name("picked-in-panel")
    assert client.get_run(ext.runs[0].run_id).info.experiment_id == experiment.experiment_id


def test_picker_both_mode_mirrors_to_the_embedded_store(linked, shell, mlflow_server, tmp_path):
    panel = shown_panel(shell)
    picker = panel.picker
    assert picker.store.value == picker.embedded
    picker.mode.value = "both"
    picker.link_button.click()
    assert "Linked" in picker.message.value, picker.message.value
    assert linked.link.mode == "both"
    assert linked.link.primary.uri == mlflow_server.uri
    assert linked.link.mirror.kind == "embedded" and str(tmp_path) in linked.link.mirror.uri
    assert "mirror: <code>" in panel.header.value


@pytest.mark.parametrize(
    "typed, message",
    [
        ("ftp://example.org/x", "Unsupported tracking URI"),
        ("http://127.0.0.1:{port}", "Cannot reach"),
        ("   ", "Type a tracking URI first"),
    ],
)
def test_picker_errors_show_inline_and_keep_the_link(ext, shell, typed, message):
    panel = shown_panel(shell)
    before = ext.link
    panel.picker.store.value = WorkspacePicker.TYPED
    panel.picker.uri.value = typed.format(port=free_port())
    panel.picker.link_button.click()
    assert message in panel.picker.message.value
    assert ext.link == before
    assert panel.message.value == ""


def test_picker_lists_config_file_workspaces_and_links_through_aml_link(ext, shell, tmp_path, monkeypatch):
    for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH"):
        monkeypatch.delenv(name, raising=False)
    config = {
        "subscription_id": "11111111-2222-3333-4444-555555555555",
        "resource_group": "rg-panel",
        "workspace_name": "ws-panel",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    panel = shown_panel(shell)
    labels = [label for label, _ in panel.picker.store.options]
    assert labels[0].startswith("Embedded store") and labels[-1].startswith("Typed URI")
    choice = next(value for label, value in panel.picker.store.options if "ws-panel" in label)
    assert choice.config == str(tmp_path / "config.json")

    panel.picker.store.value = choice
    panel.picker.auth.value = "service-principal"
    panel.picker.link_button.click()
    # resolved through workspace.py like `%aml_link --config`: the credential is missing
    assert "service-principal needs AZURE_TENANT_ID" in panel.picker.message.value
    assert ext.link.mode == "default"


def test_account_workspaces_without_credentials_say_so_inline(ext, shell, monkeypatch):
    for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH"):
        monkeypatch.delenv(name, raising=False)
    panel = shown_panel(shell)
    picker = panel.picker
    picker.auth.value = "service-principal"
    picker.find_button.click()
    wait_for(lambda: "needs AZURE_TENANT_ID" in picker.account_message.value, what="inline credential message")
    assert [label for label, _ in picker.store.options if label.startswith("AML")] == []


def test_one_panel_per_shell_displayed_again_with_the_same_state(ext, shell, capsys):
    before = ext.listener_count
    panel = shown_panel(shell)
    shell.run_cell_magic("track", "shown-twice --metrics acc", "acc = 0.75")
    capsys.readouterr()
    assert shell.run_line_magic("aml_link", "") is None  # no options: the panel with the picker
    assert shown_panel(shell) is panel
    assert ext.listener_count == before + 1
    printed = capsys.readouterr().out  # a terminal shell displays the text form, twice
    assert printed.count("shown-twice") == 2 and "FINISHED" in printed and "acc=0.75" in printed

    view = PanelView(ext, panel)
    bundle = view._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == panel.widget.model_id
    assert bundle["text/plain"] == pretty(view) == panel.text()


def test_text_form_without_widgets_lists_header_and_runs(ext, shell):
    shell.run_cell_magic("track", "older --metrics acc", "acc = 0.5")
    shell.run_cell_magic("track", "newer --metrics acc", "acc = 0.6")
    text = panel_text(ext)
    lines = text.splitlines()
    assert lines[0] == "dbxml panel: mode default, experiment Default"
    assert lines[1].startswith("  primary ") and "mlflow.db" in lines[1]
    assert text.index("newer") < text.index("older")
    assert "acc=0.6" in text and "FINISHED" in text
    assert pretty(PanelView(ext, None)) == panel_text(ext)


def test_aml_panel_run_opens_the_inspector_and_prints_the_run_in_a_terminal(ext, shell, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    shell.run_cell_magic("track", "first --params alpha --metrics acc", "alpha = 0.1\nacc = 0.5")
    shell.run_cell_magic(
        "track",
        "second --params alpha --tags team=vision --artifacts notes.txt",
        "import mlflow\nalpha = 0.2\nfor step in range(4):\n    mlflow.log_metric('loss', 4 - step, step=step)\n",
    )
    first, second = ext.runs
    ext.add_model(ModelRecord(name="clf", version="3", source_run_id=second.run_id, model_uri="models:/clf/3"))
    capsys.readouterr()

    shell.run_line_magic("aml_panel", "last")
    text = capsys.readouterr().out  # a terminal shell displays the run's text
    assert text.startswith(f"Run second: FINISHED, {second.run_id}, started ")
    assert "run %aml_ui to see it" in text  # the embedded store has no web UI until %aml_ui serves it
    assert re.search(r"loss\s+1\s+4\s+1\s+4", text)  # last, steps, min, max
    assert re.search(r"alpha\s+0.2", text) and re.search(r"team\s+vision", text)
    assert "notes.txt" in text and "cell.py" in text
    assert re.search(r"clf\s+3", text)
    assert "mlflow.source" not in text  # MLflow's own tags stay in the widget's full list
    # The widget form: the inspector is open on that run, read once, with nothing pending.
    panel = live_panel(ext)
    assert panel.inspector.run_id == second.run_id and panel.inspector.pending is None
    assert "second" in panel.inspector.title.value and panel.inspector.tabs.layout.display is None

    shell.run_line_magic("aml_panel", "first")  # by name
    assert capsys.readouterr().out.startswith(f"Run first: FINISHED, {first.run_id}")
    shell.run_line_magic("aml_panel", first.run_id)  # by id
    assert re.search(r"acc\s+0.5\s+1", capsys.readouterr().out)
    assert panel.inspector.run_id == first.run_id


@pytest.mark.parametrize(
    "run, message",
    [
        ("nope", r"^No run named 'nope' \(runs of this session: only\); give `last`, a run name, or a run id\.$"),
        ("0123456789abcdef0123456789abcdef", r"^Cannot read run 0123456789abcdef0123456789abcdef from .*mlflow\.db"),
        ("a b", r"unrecognized arguments: b"),
    ],
)
def test_aml_panel_unknown_run_is_one_line(ext, shell, run, message):
    from IPython.core.error import UsageError

    shell.run_cell_magic("track", "only", "x = 1")
    with pytest.raises(UsageError, match=message) as info:
        shell.run_line_magic("aml_panel", run)
    assert "\n" not in str(info.value)


def test_aml_panel_last_without_runs_says_what_to_do(ext, shell):
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match=r"^No run in this session yet: run a %%track cell first"):
        shell.run_line_magic("aml_panel", "last")


def test_reload_ext_leaves_one_listener_and_closes_the_old_panel(ext, shell):
    old_panel = shown_panel(shell)
    listeners = ext.listener_count
    shell.run_line_magic("reload_ext", "dbxml_magics")
    session = get_session(shell)
    assert session is not ext
    assert ext.listener_count == 0
    assert old_panel.widget.comm is None and old_panel.runs.box.comm is None
    new_panel = shown_panel(shell)
    assert new_panel is not old_panel
    assert session.listener_count == listeners
    shell.run_line_magic("unload_ext", "dbxml_magics")
    assert new_panel.widget.comm is None and session.listener_count == 0


def _add_finished_runs(session, count, start=0):
    for index in range(start, start + count):
        record = session.add_run(
            RunRecord(run_id=uuid.uuid4().hex, name=f"run-{index}", experiment_id="0", experiment="Default",
                      target=session.link.primary.display)
        )
        record.metrics["acc"] = index / 1000
        session.update_run(record, status="FINISHED", end_time=time.time())


def test_a_thousand_runs_keep_a_bounded_window_with_older_pages(ext):
    panel = live_panel(ext)
    _add_finished_runs(ext, 1000)
    assert len(panel.runs.box.children) == PAGE_SIZE == len(panel.runs.rows)
    assert row_names(panel)[:2] == ["run-999", "run-998"]
    assert panel.runs.count.value == f"showing the newest {PAGE_SIZE} of 1000 runs"
    assert panel.runs.older.layout.display is None

    panel.runs.older.click()
    names = row_names(panel)
    assert len(names) == 2 * PAGE_SIZE and names[PAGE_SIZE] == f"run-{999 - PAGE_SIZE}"
    _add_finished_runs(ext, 1, start=1000)
    names = row_names(panel)
    assert len(names) == 2 * PAGE_SIZE and names[0] == "run-1000" and names[-1] == f"run-{1000 - 2 * PAGE_SIZE + 1}"
    assert "acc=1" in panel.runs.rows[ext.runs[-1].run_id].metrics.value


_IDENTITY_VARIABLES = ("AZURE_CLIENT_ID", "IDENTITY_ENDPOINT", "MSI_ENDPOINT")


def test_no_azure_lookup_starts_without_a_sign_in(ext, shell, monkeypatch, tmp_path):
    for name in _IDENTITY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "no-azure-profile"))
    panel = shown_panel(shell)
    assert panel.picker.account_lookup is None
    assert panel.picker.account_message.value == ""


def test_azure_lookup_after_az_login_runs_off_the_kernel_thread(ext, shell, monkeypatch, tmp_path):
    for name in _IDENTITY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    profile = tmp_path / "azure-profile"
    profile.mkdir()
    (profile / "msal_token_cache.json").write_text("{}")  # what `az login` leaves behind
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(profile))
    shell.run_line_magic("config", "DbxmlMagics.credential_timeout = 2")
    panel = shown_panel(shell)
    lookup = panel.picker.account_lookup
    assert lookup is not None
    # No real account here: the lookup ends in a one-line sign-in error shown in the picker.
    with pytest.raises(Exception, match="Azure"):
        lookup.result(timeout=60)
    wait_for(lambda: "Azure" in panel.picker.account_message.value, what="inline lookup result")
    assert panel.message.value == ""


def test_rerun_button_runs_the_recorded_cell_again_as_a_new_run(ext, shell):
    panel = shown_panel(shell)
    shell.user_ns["alpha"] = 0.5
    shell.run_cell_magic("track", "first --params alpha", "result = alpha * 2")
    first = ext.runs[0].run_id
    shell.user_ns["alpha"] = 99  # the button restores the run's own params, not the notebook's
    assert panel.inspector.rerun_button.disabled  # nothing inspected yet
    panel.runs.rows[first].name.click()
    panel.inspector.pending.result(timeout=60)
    panel.inspector.rerun_button.click()
    assert len(ext.runs) == 2
    again = ext.last_run
    assert again.run_id != first and again.status == "FINISHED"
    assert shell.user_ns["result"] == 1.0
    import mlflow

    assert mlflow.MlflowClient().get_run(again.run_id).data.tags["dbxml.rerun_of"] == first


def test_check_button_shows_the_doctor_lines(ext, shell):
    panel = shown_panel(shell)
    report = panel.check().result(timeout=60)
    assert report and all(line.split()[0] in ("OK", "WARN", "FAIL") for line in report.splitlines())
    shown = "".join(output.get("text", "") for output in panel.checks.outputs)
    assert shown.strip() == report.strip()
    assert not panel.check_button.disabled

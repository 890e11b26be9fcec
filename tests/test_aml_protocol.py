"""%aml_link to Azure ML through the real azureml-mlflow plugin, against an emulated endpoint.

Nothing on the Azure path is a Python double: workspace lookups go over TLS to the ARM
emulator on loopback (`arm_emulator.py`). Tokens come from azure-identity's
real ManagedIdentityCredential talking to the emulator's token endpoint; MLflow calls go
through the plugin's AzureMLRestStore to the emulator, which checks the bearer token and the
workspace path and forwards to a real `mlflow server`.
"""

import time

import mlflow
import pytest
from IPython.core.error import UsageError

from aml_emulator import aml_emulator, aml_workspace, azure_env, link_line  # noqa: F401 - fixtures

CELL_300 = "import mlflow\nfor i in range(300):\n    mlflow.log_metric('loss', 1.0 / (i + 1), step=i)\nacc = 0.93"


def _metric_requests(emulator):
    batches = emulator.mlflow_requests("/runs/log-batch")
    singles = emulator.mlflow_requests("/runs/log-metric")
    return batches, singles


def test_aml_only_track_goes_through_the_plugin_in_batches(ext, shell, aml_workspace, mlflow_server):
    emulator = aml_workspace
    link = shell.run_line_magic("aml_link", link_line(emulator, "--auth managed-identity"))
    assert link.mode == "aml-only"
    assert link.primary.kind == "aml"
    assert link.primary.uri == emulator.tracking_uri
    assert mlflow.get_tracking_uri() == emulator.tracking_uri
    arm_id = emulator.prefix.split('/mlflow/v2.0')[1]
    assert link.primary.studio_url == f"https://ml.azure.com/?wsid={arm_id}&tid={emulator.arm.tenant_id}"  # tenant from ARM
    emulator.clear()

    started = time.perf_counter()
    shell.run_cell_magic("track", "aml-run --metrics acc", CELL_300)
    seconds = time.perf_counter() - started

    run_id = ext.last_run.run_id
    client = mlflow_server.client()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["acc"] == 0.93
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == list(range(300))
    assert history[-1].value == pytest.approx(1 / 300)
    assert "cell.py" in [a.path for a in client.list_artifacts(run_id)]

    batches, singles = _metric_requests(emulator)
    assert not singles, "no per-point round trip may reach AML"
    assert sum(r.metric_points for r in batches) >= 301
    assert len(batches) <= 3, [r.metric_points for r in batches]
    assert all(r.authorized for r in emulator.requests)
    print(
        f"\n300 points in a %%track cell on aml-only: {len(batches)} log-batch requests, "
        f"{len(emulator.requests)} requests in all, {seconds:.2f} s"
    )
    assert ext.journal.flush(timeout=60) and ext.journal.pending() == 0
    # The inspector reads the run back through the plugin and links to the run's page in studio.
    details = ext.run_details(run_id)
    assert details.histories["loss"][-1] == (299, pytest.approx(1 / 300))
    workspace_id = emulator.prefix.split("/mlflow/v2.0")[1]
    assert details.ui_url == f"https://ml.azure.com/runs/{run_id}?wsid={workspace_id}&tid={emulator.arm.tenant_id}"


def test_both_mode_mirrors_to_aml_with_mapped_experiment(ext, shell, aml_workspace, mlflow_server, tmp_path):
    emulator = aml_workspace
    link = shell.run_line_magic("aml_link", link_line(emulator, "--mode both --auth default"))
    assert link.mode == "both"
    assert link.primary.kind == "embedded"
    assert link.mirror.uri == emulator.tracking_uri
    assert mlflow.get_tracking_uri() == link.primary.uri
    emulator.clear()

    shell.run_cell_magic("track", "mirrored --experiment /Users/ana@contoso.com/churn/baseline --metrics acc", CELL_300)
    run_id = ext.last_run.run_id
    assert ext.journal.flush(timeout=30)

    local = mlflow.MlflowClient(tracking_uri=link.primary.uri)
    assert local.get_experiment_by_name("/Users/ana@contoso.com/churn/baseline") is not None
    assert len(local.get_metric_history(run_id, "loss")) == 300

    remote = mlflow_server.client()
    experiment = remote.get_experiment_by_name("baseline")
    assert experiment is not None, "the AML side uses the basename rule"
    [mirror] = remote.search_runs([experiment.experiment_id], f"tags.`dbxml.source_run_id` = '{run_id}'")
    assert mirror.info.status == "FINISHED"
    assert mirror.data.metrics["acc"] == 0.93
    assert [m.value for m in remote.get_metric_history(mirror.info.run_id, "loss")] == [
        m.value for m in local.get_metric_history(run_id, "loss")
    ]
    assert ext.journal.mirror_run_id(run_id) == mirror.info.run_id

    batches, singles = _metric_requests(emulator)
    assert not singles
    assert len(batches) <= 3
    print(f"\n300 points mirrored to AML in both mode: {len(batches)} log-batch requests, {len(emulator.requests)} in all")


def test_flatten_rule_for_aml_experiment_names(ext, shell, aml_workspace, mlflow_server):
    shell.run_line_magic("config", "DbxmlMagics.aml_experiment_rule = 'flatten'")
    shell.run_line_magic("aml_link", link_line(aml_workspace, "--auth managed-identity"))
    shell.run_cell_magic("track", "flat --experiment /Users/ana@contoso.com/churn/v2 --no-source", "x = 1")
    assert ext.last_run.experiment == "churn-v2"
    assert mlflow_server.client().get_experiment_by_name("churn-v2") is not None


def test_rejected_token_keeps_data_for_replay(ext, shell, aml_workspace, mlflow_server, capsys):
    emulator = aml_workspace
    shell.run_line_magic("config", "DbxmlMagics.flush_timeout = 2.0")
    shell.run_line_magic("config", "DbxmlMagics.wait_at_cell_end = True")  # the cell end reports the refusal
    shell.run_line_magic("aml_link", link_line(emulator, "--auth managed-identity"))
    shell.user_ns["emulator"] = emulator
    capsys.readouterr()
    # The token stops being accepted after the run started (expired or revoked mid-cell).
    shell.run_cell_magic("track", "revoked --no-source", "emulator.rejecting = True\n" + CELL_300)
    err = capsys.readouterr().err
    run_id = ext.last_run.run_id
    lines = [line for line in err.splitlines() if line.startswith("dbxml:")]
    assert len(lines) == 1, err
    assert "UNAUTHENTICATED" in lines[0] and "kept in the journal" in lines[0] and run_id in lines[0]
    assert ext.journal.pending(run_id) > 0
    [status] = [s for s in ext.journal.status() if s["target"] == emulator.tracking_uri]
    assert "UNAUTHENTICATED" in status["last_error"]
    assert any(r.status == 401 for r in emulator.requests)

    emulator.rejecting = False
    assert ext.journal.flush(timeout=30)
    assert ext.journal.pending() == 0
    client = mlflow_server.client()
    assert len(client.get_metric_history(run_id, "loss")) == 300
    assert client.get_run(run_id).info.status == "FINISHED"


def test_rejected_token_at_link_time_changes_nothing(ext, shell, aml_workspace):
    before_link, before_uri = ext.link, mlflow.get_tracking_uri()
    aml_workspace.rejecting = True
    with pytest.raises(UsageError, match=r"rejected the credential of --auth managed-identity.*--auth cli") as info:
        shell.run_line_magic("aml_link", link_line(aml_workspace, "--auth managed-identity"))
    assert "\n" not in str(info.value)
    assert ext.link == before_link and mlflow.get_tracking_uri() == before_uri


def test_identity_without_mlflow_permissions_is_told_the_role(ext, shell, aml_workspace):
    """The identity reads the workspace (ARM) but its MLflow endpoint answers 403: signing in
    again changes nothing, a role does."""
    before_link, before_uri = ext.link, mlflow.get_tracking_uri()
    aml_workspace.forbidding = True
    with pytest.raises(UsageError, match=r"refused the identity of --auth managed-identity \(403\): ask for the "
                       r"AzureML Data Scientist role \(or Contributor\) on the workspace") as info:
        shell.run_line_magic("aml_link", link_line(aml_workspace, "--auth managed-identity"))
    assert "\n" not in str(info.value) and "sign in again" not in str(info.value)
    assert ext.link == before_link and mlflow.get_tracking_uri() == before_uri


def test_without_the_sdk_v1_extra_a_workspace_variable_says_how_to_get_it(ext, shell, azure_env):
    """Run where azureml-core is really absent (the runtime profiles of compat/ install no extra):
    the seed's `ws = Workspace.from_config()` failed in the user's own cell, so `-w ws` names
    no variable; the line says which extra brings azureml-core."""
    import importlib.util

    if importlib.util.find_spec("azureml.core") is not None:
        pytest.skip("azureml-core (the sdk-v1 extra) is installed here")
    with pytest.raises(UsageError, match=r"or -w VAR alone .*pip install dbxml-magics\[sdk-v1\]") as info:
        shell.run_line_magic("aml_link", "-w ws")
    assert "\n" not in str(info.value)


def test_no_usable_credential_fails_within_bound(ext, shell, aml_workspace, monkeypatch):
    for name in aml_workspace.identity_env:
        monkeypatch.delenv(name)
    before_link, before_uri = ext.link, mlflow.get_tracking_uri()
    started = time.monotonic()
    with pytest.raises(UsageError, match=r"--auth default failed.*--auth cli.*service-principal.*managed-identity.*interactive") as info:
        shell.run_line_magic("aml_link", link_line(aml_workspace))
    elapsed = time.monotonic() - started
    print(f"\nno credential: failed in {elapsed:.2f} s")
    assert elapsed < 10
    assert "\n" not in str(info.value)
    assert ext.link == before_link and mlflow.get_tracking_uri() == before_uri
    assert not aml_workspace.requests


def test_hanging_sign_in_is_cut_at_credential_timeout(ext, shell, aml_workspace, azure_env):
    az = azure_env / "az"
    az.write_text("#!/bin/sh\nsleep 60\n")
    az.chmod(0o755)
    shell.run_line_magic("config", "DbxmlMagics.credential_timeout = 2.0")
    before_link, before_uri = ext.link, mlflow.get_tracking_uri()
    started = time.monotonic()
    with pytest.raises(UsageError, match=r"--auth cli gave no token within 2 s; .*--auth service-principal.*credential_timeout"):
        shell.run_line_magic("aml_link", link_line(aml_workspace, "--auth cli"))
    elapsed = time.monotonic() - started
    print(f"\nhanging az: failed in {elapsed:.2f} s")
    assert elapsed < 10
    assert ext.link == before_link and mlflow.get_tracking_uri() == before_uri


def test_azure_cli_token_is_used_by_the_plugin(ext, shell, aml_workspace, azure_env, mlflow_server):
    """`--auth cli` runs the real AzureCliCredential; only the `az` executable is a stand-in."""
    token = "cli-token-" + "x" * 24
    aml_workspace.tokens_issued.append(token)
    az = azure_env / "az"
    az.write_text(
        "#!/bin/sh\n"
        f'echo \'{{"accessToken": "{token}", "expiresOn": "2099-01-01 00:00:00.000000", '
        '"expires_on": 4070908800, "subscription": "s", "tenant": "t", "tokenType": "Bearer"}\'\n'
    )
    az.chmod(0o755)
    # The panel would list the account's workspaces with --auth default (managed identity here).
    shell.run_line_magic("config", "DbxmlMagics.show_panel_on_link = False")
    shell.run_line_magic("aml_link", link_line(aml_workspace, "--auth cli"))
    shell.run_cell_magic("track", "via-cli --no-source", "import mlflow\nmlflow.log_metric('m', 2.0)")
    assert mlflow_server.client().get_run(ext.last_run.run_id).data.metrics["m"] == 2.0
    assert aml_workspace.token_requests == 0, "no managed-identity token was needed"


def test_link_by_azureml_uri(ext, shell, aml_workspace, mlflow_server):
    link = shell.run_line_magic("aml_link", f"--uri {aml_workspace.tracking_uri} --auth managed-identity")
    assert link.primary.kind == "aml" and link.primary.workspace == aml_workspace.workspace
    shell.run_cell_magic("track", "by-uri --no-source", "import mlflow\nmlflow.log_param('p', 'v')")
    assert mlflow_server.client().get_run(ext.last_run.run_id).data.params == {"p": "v"}


def test_other_workspace_path_is_refused_by_the_endpoint(ext, shell, aml_workspace):
    other = aml_workspace.tracking_uri.replace(aml_workspace.workspace, "ws-other")
    before_link = ext.link
    with pytest.raises(UsageError, match=r"'ws-other'.*has no MLflow endpoint there"):
        shell.run_line_magic("aml_link", f"--uri {other} --auth managed-identity")
    assert ext.link == before_link


def test_secrets_never_show(ext, shell, aml_workspace, mlflow_server, monkeypatch, capsys, tmp_path):
    secret = "sp-secret-" + "Q" * 20
    monkeypatch.setenv("AZURE_CLIENT_SECRET", secret)
    link = shell.run_line_magic("aml_link", link_line(aml_workspace, "--mode both --auth managed-identity"))
    shell.run_cell_magic(
        "track",
        "secretive --params who --metrics acc --tags stage=dev",
        "who = 'me'\nacc = 0.5\nimport mlflow\nmlflow.log_metric('loss', 0.1)\nprint('done')",
    )
    assert ext.journal.flush(timeout=30)
    shell.run_line_magic("aml_sync", "")
    tokens = list(aml_workspace.tokens_issued)
    assert tokens
    out = capsys.readouterr()
    run_id = ext.last_run.run_id
    mirror_id = ext.journal.mirror_run_id(run_id)
    remote = mlflow_server.client().get_run(mirror_id)
    local = mlflow.MlflowClient(tracking_uri=link.primary.uri).get_run(run_id)
    surfaces = [
        out.out, out.err, repr(link), repr(link.mirror), repr(link.mirror.credential), repr(ext.runs),
        str(remote.data.tags), str(remote.data.params), str(local.data.tags), str(local.data.params),
        str(ext.journal.status()), *[r.body for r in aml_workspace.requests],
    ]
    journal_bytes = (tmp_path / ".dbxml" / "journal.sqlite").read_bytes()
    for value in (secret, *tokens):
        assert not [blob for blob in surfaces if value in blob]
        assert value.encode() not in journal_bytes

    # A failing service-principal sign-in does not echo the secret either.
    monkeypatch.setenv("AZURE_TENANT_ID", "11111111-2222-3333-4444-555555555555")
    monkeypatch.setenv("AZURE_CLIENT_ID", "22222222-3333-4444-5555-666666666666")
    shell.run_line_magic("config", "DbxmlMagics.credential_timeout = 3.0")
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("aml_link", link_line(aml_workspace, "--auth service-principal"))
    assert "--auth service-principal" in str(info.value) and secret not in str(info.value)
    assert ext.link == link


def test_unlink_from_aml_returns_to_embedded(ext, shell, aml_workspace, tmp_path):
    before = ext.link
    shell.run_line_magic("aml_link", link_line(aml_workspace, "--auth managed-identity"))
    shell.run_line_magic("aml_unlink", "")
    assert ext.link == before
    assert mlflow.get_tracking_uri() == before.primary.uri
    shell.run_cell_magic("track", "home --no-source", "y = 2")
    local = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert local.get_run(ext.last_run.run_id).info.run_name == "home"


def test_throttled_mirror_catches_up_without_duplicates(ext, shell, aml_workspace, mlflow_server):
    """AML answers 429 under heavy logging: the batches wait and arrive once, in order."""
    emulator = aml_workspace
    shell.run_line_magic("aml_link", link_line(emulator, "--mode both --auth managed-identity"))
    emulator.throttled_batches = 4
    shell.run_cell_magic("track", "throttled --no-source", CELL_300)
    run_id = ext.last_run.run_id
    assert ext.journal.flush(timeout=60)
    assert len(emulator.mlflow_requests("/runs/log-batch")) >= 5
    assert sum(r.status == 429 for r in emulator.requests) == 4
    mirror_id = ext.journal.mirror_run_id(run_id)
    history = mlflow_server.client().get_metric_history(mirror_id, "loss")
    assert [m.step for m in history] == list(range(300))

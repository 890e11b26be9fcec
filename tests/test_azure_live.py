"""Optional smoke test against a real Azure ML workspace (nothing here can reach Azure).

Run it yourself with:

    export AZURE_SUBSCRIPTION_ID=... AZURE_RESOURCE_GROUP=... AZUREML_WORKSPACE_NAME=...
    # credentials: a service principal ...
    export AZURE_TENANT_ID=... AZURE_CLIENT_ID=... AZURE_CLIENT_SECRET=...
    # ... or any other --auth choice that works non-interactively on your machine:
    export DBXML_LIVE_AUTH=cli          # after `az login`; or managed-identity on Azure compute
    .venv/bin/python -m pytest -m azure_live tests/test_azure_live.py

It links with -s/-g/-w, tracks one cell, and reads the run back from the workspace.
"""

import os
import uuid

import mlflow
import pytest

WORKSPACE_VARIABLES = ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME")
SERVICE_PRINCIPAL_VARIABLES = ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")


def _live_auth() -> str | None:
    if all(os.environ.get(name) for name in SERVICE_PRINCIPAL_VARIABLES):
        return "service-principal"
    return os.environ.get("DBXML_LIVE_AUTH") or None


pytestmark = [
    pytest.mark.azure_live,
    pytest.mark.skipif(
        not all(os.environ.get(name) for name in WORKSPACE_VARIABLES) or _live_auth() is None,
        reason="needs AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP, AZUREML_WORKSPACE_NAME and credentials "
        "(a service principal in AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET, or DBXML_LIVE_AUTH)",
    ),
]


def test_link_workspace_by_name_and_track_one_cell(ext, shell):
    experiment = f"dbxml-live-smoke-{uuid.uuid4().hex[:6]}"
    shell.run_line_magic("config", "DbxmlMagics.show_panel_on_link = False")
    shell.run_line_magic(
        "aml_link",
        f"-s {os.environ['AZURE_SUBSCRIPTION_ID']} -g {os.environ['AZURE_RESOURCE_GROUP']} "
        f"-w {os.environ['AZUREML_WORKSPACE_NAME']} --auth {_live_auth()} --experiment {experiment}",
    )
    assert ext.link.primary.kind == "aml"
    assert mlflow.get_tracking_uri().startswith("azureml://")

    shell.run_cell_magic("track", "live-smoke --params alpha --metrics accuracy", "alpha = 0.5\naccuracy = 0.75")
    shell.run_line_magic("aml_sync", "--flush --timeout 120")
    run_id = ext.last_run.run_id
    assert ext.journal.pending(run_id) == 0

    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"alpha": "0.5"}
    assert run.data.metrics["accuracy"] == 0.75
    assert mlflow.active_run() is None

"""%aml_link --doctor: one line per check, each made to WARN or FAIL by a real cause.

Stores are real (the embedded SQLite store, a real `mlflow server`, the AML emulator in front
of it); Azure Resource Manager is the TLS emulator; versions come from real dist-info metadata.
"""

import re
import time

import mlflow
import pytest
from IPython.core.error import UsageError

from aml_emulator import MANAGED_IDENTITY_CLIENT_ID, aml_emulator, aml_workspace, azure_env, link_line  # noqa: F401
from dbxml_magics.doctor import run_checks


def _doctor(shell, capsys) -> dict[str, list[str]]:
    """The printed report, by check name (several lines may share one: stores, environment)."""
    capsys.readouterr()  # what linking printed before
    started = time.monotonic()
    shell.run_line_magic("aml_link", "--doctor")
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert elapsed < 10, f"--doctor took {elapsed:.1f} s"
    assert all(line.split()[0] in ("OK", "WARN", "FAIL") for line in lines), out
    found: dict[str, list[str]] = {}
    for line in lines:
        found.setdefault(line.split()[1], []).append(line)
    return found


def test_embedded_default_is_all_ok_offline(ext, shell, azure_env, capsys):
    shell.run_cell_magic("track", "first --no-source", "x = 1")  # the store exists, the journal runs
    found = _doctor(shell, capsys)
    assert set(found) == {"link", "store", "credential", "registry", "environment", "experiment", "versions", "journal"}
    assert found["link"][0].startswith("OK") and "not linked: the embedded store" in found["link"][0]
    assert found["store"][0].startswith("OK    store       primary sqlite:///")
    assert "none needed" in found["credential"][0]
    assert all(line.startswith("OK") for lines in found.values() for line in lines)


def test_doctor_takes_no_other_option(ext, shell):
    with pytest.raises(UsageError, match=r"--doctor checks the current link and takes no other option \(got --uri\)"):
        shell.run_line_magic("aml_link", "--doctor --uri http://127.0.0.1:1")


def test_environment_and_registry_traps_warn_with_values_masked(ext, shell, azure_env, monkeypatch, capsys, tmp_path):
    shell.run_line_magic("aml_link", f"--local {tmp_path / 'store'} --experiment mine")
    # Set after linking (linking sets MLFLOW_TRACKING_URI itself, for subprocesses), e.g. by %env.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:hunter2-secret@tracking.example:5000")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "someone-else")
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", elsewhere)  # restored at teardown; set_registry_uri writes it too
    previous = mlflow.get_registry_uri()
    mlflow.set_registry_uri(elsewhere)
    try:
        found = _doctor(shell, capsys)
    finally:
        mlflow.set_registry_uri(previous)
    environment = "\n".join(found["environment"])
    assert "WARN  environment MLFLOW_TRACKING_URI=http://" in environment and "hunter2-secret" not in environment
    assert "mlflow#8877" in environment
    assert "MLFLOW_EXPERIMENT_NAME='someone-else' contradicts the link's experiment 'mine'" in environment
    [registry] = found["registry"]
    assert registry.startswith("WARN") and "elsewhere.db (MLFLOW_REGISTRY_URI)" in registry


def test_mixed_mlflow_distributions_fail(ext, shell, azure_env, monkeypatch, capsys, tmp_path):
    """A second distribution writing the mlflow package (mlflow 2.x + azureml-mlflow's skinny)."""
    import importlib.metadata as metadata
    import sys

    real = metadata.version("mlflow")
    dist = tmp_path / "site" / "mlflow_skinny-9.9.9.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlflow-skinny\nVersion: 9.9.9\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site"), *sys.path])
    [line] = _doctor(shell, capsys)["versions"]
    assert line.startswith("FAIL") and f"mlflow {real} and mlflow-skinny 9.9.9" in line
    assert "overwrite each other's files" in line and f"%pip install mlflow-skinny=={real}" in line


def test_failed_journal_rows_fail(linked, shell, mlflow_server, capsys):
    shell.run_cell_magic("track", "clash", "import mlflow\nrun_id = mlflow.active_run().info.run_id")
    run_id = shell.user_ns["run_id"]
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.utils.rest_utils import MlflowHostCreds

    RestStore(lambda: MlflowHostCreds(mlflow_server.uri)).log_param(run_id, mlflow.entities.Param("q", "server"))
    mlflow.MlflowClient().log_batch(run_id, params=[mlflow.entities.Param("q", "client")])
    shell.run_line_magic("aml_sync", "--flush --timeout 10")
    capsys.readouterr()
    [line] = _doctor(shell, capsys)["journal"]
    assert line.startswith("FAIL  journal     0 pending, 1 failed") and "--retry" in line
    assert "oldest row written" in line and "ago" in line


def test_aml_link_checks_credential_store_experiment_and_azure_env(ext, shell, aml_workspace, monkeypatch, capsys):
    e = aml_workspace
    e.token_lifetime = 240  # shorter than the credential's refresh margin: every token is nearly spent
    shell.run_line_magic("aml_link", link_line(e, "--auth managed-identity --experiment /Users/a@b.c/proj/exp"))
    monkeypatch.setenv("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "sp-secret-value")
    found = _doctor(shell, capsys)
    report = "\n".join(line for lines in found.values() for line in lines)
    assert found["store"][0].startswith("OK    store       primary azureml://127.0.0.1:")
    [credential] = found["credential"]
    assert credential.startswith("WARN") and f"--auth managed-identity, identity appid={MANAGED_IDENTITY_CLIENT_ID}" in credential
    # 240 s tokens: 4 minutes left when fresh, fewer on a machine slow enough to take a minute here
    assert re.search(r"token valid [0-4] more min", credential), credential
    assert any("AZURE_CLIENT_ID=*** AZURE_CLIENT_SECRET=*** set: --auth managed-identity signs in with them first" in line
               for line in found["environment"])
    [experiment] = found["experiment"]
    assert experiment.startswith("WARN") and "'/Users/a@b.c/proj/exp' becomes 'exp'" in experiment and "mlflow#8269" in experiment
    for secret in ["sp-secret-value", *e.tokens_issued]:
        assert secret not in report

    e.rejecting = True  # a revoked token: the endpoint answers 401
    checks = run_checks(ext)
    [store] = [c for c in checks if c.name == "store"]
    assert store.status == "FAIL" and "rejected the credential" in store.detail and store.fix

"""%aml_link --doctor: one line per check, each made to WARN or FAIL by a real cause.

Stores are real (the embedded SQLite store, a real `mlflow server`, the AML emulator in front
of it); Azure Resource Manager is the TLS emulator; versions come from real dist-info metadata.
"""

import importlib.util
import platform
import re
import sys
import time
from pathlib import Path

import mlflow
import pytest
from IPython.core.error import UsageError

from aml_emulator import MANAGED_IDENTITY_CLIENT_ID, aml_emulator, aml_workspace, azure_env, link_line  # noqa: F401
from dbxml_magics.doctor import run_checks

ROOT = Path(__file__).resolve().parent.parent


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
    # versions depend on this environment matching a compat/ profile: their own test below
    assert all(line.startswith("OK") for name, lines in found.items() if name != "versions" for line in lines)


def test_doctor_takes_no_other_option(ext, shell):
    with pytest.raises(UsageError, match=r"--doctor checks the current link and takes no other option \(got --uri\)"):
        shell.run_line_magic("aml_link", "--doctor --uri http://127.0.0.1:1")


def test_tracking_uri_moved_after_linking_warns(ext, shell, azure_env, capsys, tmp_path):
    shell.run_line_magic("aml_link", f"--local {tmp_path / 'store'}")
    assert _doctor(shell, capsys)["link"][0].startswith("OK    link        mode local: sqlite:///")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")  # the user's own code, after linking
    [link] = _doctor(shell, capsys)["link"]
    assert link.startswith("WARN") and "but MLflow now points at sqlite:///" in link and "elsewhere.db" in link
    assert "drop the mlflow.set_tracking_uri call, or %aml_link that store" in link


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


def _installed(monkeypatch, folder, versions: dict[str, str]) -> None:
    """Real dist-info metadata for these versions, first on sys.path: what importlib.metadata finds."""
    for name, version in versions.items():
        dist = folder / f"{name.replace('-', '_')}-{version}.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    monkeypatch.setattr(sys, "path", [str(folder), *sys.path])


def test_mixed_mlflow_distributions_fail(ext, shell, azure_env, monkeypatch, capsys, tmp_path):
    """A second distribution writing the mlflow package (mlflow 2.x + azureml-mlflow's skinny)."""
    import importlib.metadata as metadata

    real = metadata.version("mlflow")
    _installed(monkeypatch, tmp_path / "site", {"mlflow-skinny": "9.9.9"})
    [line] = _doctor(shell, capsys)["versions"]
    assert line.startswith("FAIL") and f"mlflow {real} and mlflow-skinny 9.9.9" in line
    assert "overwrite each other's files" in line and f"%pip install mlflow-skinny=={real}" in line


def test_tested_profiles_module_is_generated_from_compat():
    spec = importlib.util.spec_from_file_location("profiles_module", ROOT / "compat" / "profiles_module.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.MODULE.read_text() == generator.render(), (
        "dbxml_magics/tested_profiles.py differs from compat/: run `python compat/profiles_module.py`"
    )


def test_versions_match_a_tested_profile_or_warn_naming_the_nearest(ext, shell, azure_env, monkeypatch, capsys,
                                                                   tmp_path):
    """One rule: OK when mlflow, pyspark and python match a compat/ profile's major.minor (other
    patch releases too), else WARN naming the nearest profile and what it has instead."""
    from dbxml_magics.tested_profiles import PROFILES

    python = ".".join(platform.python_version_tuple()[:2])
    same_python = [(runtime, pins) for _, runtime, pins in PROFILES if pins["python"] == python]
    assert same_python, f"no profile in compat/ runs Python {python}, the suite's"
    runtime, pins = same_python[0]
    major, minor, *_ = pins["mlflow"].split(".")
    patched = f"{major}.{minor}.99"
    _installed(monkeypatch, tmp_path / "ok", {"mlflow": patched, "mlflow-skinny": patched, "pyspark": pins["pyspark"]})
    [line] = _doctor(shell, capsys)["versions"]
    assert line.startswith("OK") and f"mlflow {patched}" in line and line.endswith(f"as in the tested profile {runtime}")

    untested = f"{major}.{int(minor) + 50}.0"  # a minor release no profile has
    _installed(monkeypatch, tmp_path / "warn", {"mlflow": untested, "mlflow-skinny": untested})
    [line] = _doctor(shell, capsys)["versions"]
    assert line.startswith("WARN") and f"mlflow {untested}" in line
    assert f"no tested profile has these; the nearest, {runtime}, has mlflow {pins['mlflow']} ->" in line
    assert "support table" in line


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


def test_no_network_and_no_credential_is_bounded(ext, shell, aml_workspace, capsys):
    """Linked to AML, then the network hangs (the endpoint's port accepts connections and never
    answers, the worst case: no refusal to act on) and no valid token is left: every line
    still comes within the bound, the store and the credential FAIL."""
    import socket

    e = aml_workspace
    e.token_lifetime = 1  # the credential has to ask the (hanging) token endpoint again
    shell.run_line_magic("aml_link", link_line(e, "--auth managed-identity"))
    port = int(e.netloc.rsplit(":", 1)[1])
    e.stop()
    hole = socket.socket()
    hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hole.bind(("127.0.0.1", port))
    hole.listen(64)  # connections complete in the kernel's backlog; nothing ever reads them
    try:
        time.sleep(1.5)  # the last token expires (a bound on the token's age, not a wait for a condition)
        found = _doctor(shell, capsys)  # asserts the 10 s bound
    finally:
        hole.close()
    [store] = found["store"]
    [credential] = found["credential"]
    assert store.startswith("FAIL") and credential.startswith("FAIL"), (store, credential)

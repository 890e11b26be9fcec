"""The mlflow / mlflow-skinny mixture check, against this environment's real metadata and
against a second distribution record put first on sys.path (what a mixed install leaves)."""

import sys

import pytest

from dbxml_magics.versions import installed_versions, mlflow_mixture


def test_this_environment_has_one_mlflow():
    # Every compat/ profile runs this: the install line the README gives leaves no mixture.
    assert mlflow_mixture() is None
    versions = installed_versions()
    # A Databricks runtime's environment (and a profile's) holds mlflow-skinny alone.
    assert versions["mlflow-skinny"] and versions["python"] == "%d.%d.%d" % sys.version_info[:3]
    assert versions["mlflow"] in (None, versions["mlflow-skinny"])


@pytest.fixture
def other_version(tmp_path, monkeypatch):
    """A distribution record of MLflow 9.9.9 put first on sys.path: mlflow-skinny beside a full
    mlflow, or a full mlflow beside the mlflow-skinny of a runtime. Returns its name."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("mlflow")
        name = "mlflow-skinny"
    except PackageNotFoundError:
        name = "mlflow"
    record = tmp_path / f"{name.replace('-', '_')}-9.9.9.dist-info"
    record.mkdir()
    (record / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 9.9.9\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_mixture_is_named_with_its_fix(other_version):
    from importlib.metadata import version

    full, skinny = version("mlflow"), version("mlflow-skinny")
    assert "9.9.9" in (full, skinny) and full != skinny
    assert mlflow_mixture() == (
        f"mlflow {full} and mlflow-skinny {skinny} are both installed and overwrite each other's files; "
        f"run `%pip install mlflow-skinny=={full}` (keeps mlflow {full}), then restart Python."
    )


def test_load_ext_warns_in_one_line_and_still_loads(other_version, shell, capsys):
    shell.run_line_magic("load_ext", "dbxml_magics")

    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dbxml-magics: WARN mlflow ") and "9.9.9" in err[0]
    assert "aml_link" in shell.magics_manager.magics["line"]

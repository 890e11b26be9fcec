"""The mlflow / mlflow-skinny mixture check, against this environment's real metadata and
against a second distribution record put first on sys.path (what a mixed install leaves)."""

import sys

import pytest

from dbxml_magics.versions import installed_versions, mlflow_mixture


def test_this_environment_has_one_mlflow():
    # Every compat/ profile runs this: the install line the README gives leaves no mixture.
    assert mlflow_mixture() is None
    versions = installed_versions()
    assert versions["mlflow"] and versions["python"] == "%d.%d.%d" % sys.version_info[:3]


@pytest.fixture
def skinny_of_another_version(tmp_path, monkeypatch):
    record = tmp_path / "mlflow_skinny-9.9.9.dist-info"
    record.mkdir()
    (record / "METADATA").write_text("Metadata-Version: 2.1\nName: mlflow-skinny\nVersion: 9.9.9\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_mixture_is_named_with_its_fix(skinny_of_another_version):
    from importlib.metadata import version

    line = mlflow_mixture()
    mlflow_version = version("mlflow")
    assert line == (
        f"mlflow {mlflow_version} and mlflow-skinny 9.9.9 are both installed and overwrite each other's files; "
        f"run `%pip install mlflow-skinny=={mlflow_version}` (keeps mlflow {mlflow_version}), then restart Python."
    )


def test_load_ext_warns_in_one_line_and_still_loads(skinny_of_another_version, shell, capsys):
    shell.run_line_magic("load_ext", "dbxml_magics")

    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dbxml-magics: WARN mlflow ") and "mlflow-skinny 9.9.9" in err[0]
    assert "aml_link" in shell.magics_manager.magics["line"]

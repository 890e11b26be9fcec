"""Databricks behaviour without Databricks.

What a Databricks notebook gives a kernel is recreated: DATABRICKS_RUNTIME_VERSION in the
environment, a `spark` session in the namespace (a real local one), and `dbutils` with the
notebook context (a plain object answering the same call chain - no workspace can be
reached from here). Default link resolution and tagging are checked as they are; the
magics then run against a real store by pointing MLFLOW_TRACKING_URI at the test server,
which the Session honours before the Databricks default.
"""

from types import SimpleNamespace

import mlflow
import pytest
from IPython.core.error import UsageError

from dbxml_magics.experiments import aml_experiment_name
from dbxml_magics.userns import notebook_path

NOTEBOOK_PATH = "/Users/me@example.com/project/nb"
EXPERIMENT = "/Users/me@example.com/project/churn"


class _Value:
    """Scala Option as py4j hands it over: `.get()` returns the value."""

    def __init__(self, value):
        self._value = value

    def get(self):
        return self._value


def databricks_dbutils(path: str = NOTEBOOK_PATH):
    """The `dbutils.notebook.entry_point.getDbutils().notebook().getContext()` chain."""
    context = SimpleNamespace(notebookPath=lambda: _Value(path))
    notebook = SimpleNamespace(getContext=lambda: context)
    entry_point = SimpleNamespace(getDbutils=lambda: SimpleNamespace(notebook=lambda: notebook))
    return SimpleNamespace(notebook=SimpleNamespace(entry_point=entry_point))


@pytest.fixture
def on_databricks(shell, monkeypatch):
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    shell.user_ns["dbutils"] = databricks_dbutils()
    yield shell
    shell.user_ns.pop("dbutils", None)
    shell.user_ns.pop("spark", None)


def test_default_link_is_the_databricks_workspace(on_databricks, monkeypatch):
    shell = on_databricks
    from dbxml_magics.session import get_session

    shell.run_line_magic("load_ext", "dbxml_magics")
    session = get_session(shell)
    assert session.link.mode == "default"
    assert session.link.primary.uri == "databricks"
    assert session.link.primary.kind == "databricks"
    assert notebook_path(shell.user_ns) == NOTEBOOK_PATH
    # A tracking URI set for the kernel wins over the Databricks default.
    shell.run_line_magic("unload_ext", "dbxml_magics")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    shell.run_line_magic("load_ext", "dbxml_magics")
    assert get_session(shell).link.primary.uri == "http://127.0.0.1:1"


def test_databricks_experiment_paths_map_to_aml_names():
    assert aml_experiment_name(EXPERIMENT, "basename") == "churn"
    assert aml_experiment_name(EXPERIMENT, "flatten") == "project-churn"
    assert aml_experiment_name("/Shared/team/churn", "flatten") == "team-churn"
    assert aml_experiment_name("churn") == "churn"


def test_mirroring_from_an_unreachable_databricks_primary_fails_in_one_line(on_databricks, mlflow_server):
    """`both` keeps the Databricks workspace as primary; here it cannot be reached (no host,
    no token), so the link fails before anything changes."""
    shell = on_databricks
    from dbxml_magics.session import get_session

    shell.run_line_magic("load_ext", "dbxml_magics")
    session = get_session(shell)
    before = session.link
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("aml_link", f"--uri {mlflow_server.uri} --mode both")
    assert "\n" not in str(info.value) and "databricks" in str(info.value)
    assert session.link == before and not session.linked


def test_every_magic_works_with_databricks_defaults_against_a_real_store(
    on_databricks, monkeypatch, mlflow_server, spark, capsys
):
    shell = on_databricks
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    shell.user_ns["spark"] = spark
    from dbxml_magics.session import get_session

    shell.run_line_magic("load_ext", "dbxml_magics")
    shell.run_line_magic("config", "DbxmlMagics.show_panel_on_link = False")
    session = get_session(shell)
    assert session.link.primary.uri == mlflow_server.uri

    shell.run_cell_magic(
        "track",
        f"dbx-train --experiment {EXPERIMENT} --params C --metrics accuracy",
        "import pandas as pd\nfrom sklearn.linear_model import LogisticRegression\n"
        "frame = pd.DataFrame({'a': [0.0, 1.0, 2.0, 3.0], 'b': [1.0, 0.0, 1.0, 0.0]})\n"
        "C = 1.0\nclf = LogisticRegression(C=C).fit(frame, [0, 1, 0, 1])\n"
        "accuracy = float(clf.score(frame, [0, 1, 0, 1]))",
    )
    client = mlflow_server.client()
    run = client.get_run(session.last_run.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.source.name"] == NOTEBOOK_PATH
    assert run.data.tags["mlflow.source.type"] == "NOTEBOOK"
    assert run.data.params == {"C": "1.0"}
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT  # kept as a /Users path

    model_name = f"dbx-model-{run.info.run_id[:8]}"
    shell.run_line_magic("aml_register", f"{model_name} --model clf --input-example frame")
    assert client.get_model_version(model_name, "1").run_id == run.info.run_id

    # A pandas frame is scored in the kernel by default; --engine spark sends it to Spark.
    shell.run_line_magic("aml_score", f"{model_name} --df frame --engine spark --into scored --limit 0")
    scored = shell.user_ns["scored"]
    assert scored.sparkSession is spark  # the notebook's `spark`, as on Databricks
    expected = [int(p) for p in shell.user_ns["clf"].predict(shell.user_ns["frame"])]
    assert sorted(int(r["prediction"]) for r in scored.collect()) == sorted(expected)
    assert session.scorings[-1].model_version == "1"

    shell.run_line_magic("aml_sync", "--flush --timeout 60")
    shell.run_line_magic("aml_panel", "")
    out = capsys.readouterr().out
    assert "0 pending" in out

    shell.run_line_magic("aml_link", "--local")
    assert session.link.mode == "local" and mlflow.get_tracking_uri().startswith("sqlite:///")
    shell.run_line_magic("aml_unlink", "")
    assert session.link.primary.uri == mlflow_server.uri
    assert mlflow.get_tracking_uri() == mlflow_server.uri
    assert mlflow.active_run() is None


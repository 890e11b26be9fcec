"""Reading a run back for the inspector: Session.run_details and the run's web address."""

import pytest

from dbxml_magics.errors import DbxmlError
from dbxml_magics.inspect_run import run_ui_url
from dbxml_magics.targets import Target
from dbxml_magics.session import ModelRecord, ScoreRecord


@pytest.mark.parametrize(
    "target, expected",
    [
        (Target(uri="http://127.0.0.1:5000", kind="uri"), "http://127.0.0.1:5000/#/experiments/7/runs/abc"),
        # credentials are dropped from the address, and a base path is kept
        (Target(uri="https://bob:pw@mlflow.example.org/tracking/", kind="uri"),
         "https://mlflow.example.org/tracking/#/experiments/7/runs/abc"),
        (Target(uri="azureml://westeurope.api.azureml.ms/mlflow/v2.0/subscriptions/s/resourceGroups/g/providers/"
                    "Microsoft.MachineLearningServices/workspaces/w", kind="aml",
                studio_url="https://ml.azure.com/?wsid=/subscriptions/s/resourceGroups/g/workspaces/w&tid=t"),
         "https://ml.azure.com/runs/abc?wsid=/subscriptions/s/resourceGroups/g/workspaces/w&tid=t"),
        (Target(uri="sqlite:////tmp/mlflow.db", kind="embedded"), None),
    ],
)
def test_run_ui_url(target, expected):
    assert run_ui_url(target, "7", "abc") == expected


def test_databricks_runs_link_to_the_workspace_host(monkeypatch):
    monkeypatch.setenv("DATABRICKS_HOST", "https://adb-1.2.azuredatabricks.net/")
    assert run_ui_url(Target(uri="databricks", kind="databricks"), "7", "abc") == (
        "https://adb-1.2.azuredatabricks.net/#mlflow/experiments/7/runs/abc"
    )
    monkeypatch.delenv("DATABRICKS_HOST")
    assert run_ui_url(Target(uri="databricks", kind="databricks"), "7", "abc") is None


def test_run_details_reads_the_run_and_this_sessions_models(linked, shell, mlflow_server):
    shell.run_cell_magic(
        "track",
        "detailed --params depth --tags owner=panel",
        "import mlflow\ndepth = 4\nfor step in range(3):\n    mlflow.log_metric('loss', 3 - step, step=step)\n",
    )
    run = linked.runs[0]
    linked.add_model(
        ModelRecord(name="clf", version="2", source_run_id=run.run_id, model_uri=f"runs:/{run.run_id}/model")
    )
    for model_uri in ("models:/clf/2", "models:/other/1"):
        linked.add_scoring(
            ScoreRecord(model_uri=model_uri, model_version=model_uri[-1], input="df", rows=3, seconds=0.1, output="out")
        )

    details = linked.run_details(run.run_id)
    assert details.name == "detailed" and details.status == "FINISHED"
    assert details.params == {"depth": "4"}
    assert details.tags["owner"] == "panel"
    assert details.histories["loss"] == [(0, 3.0), (1, 2.0), (2, 1.0)]
    assert details.metrics["loss"] == 1.0
    assert "cell.py" in details.artifacts and not details.artifacts_truncated
    assert [(m.name, m.version) for m in details.models] == [("clf", "2")]
    assert [s.model_uri for s in details.scorings] == ["models:/clf/2"]
    assert details.store == mlflow_server.uri
    assert details.ui_url == f"{mlflow_server.uri}/#/experiments/{run.experiment_id}/runs/{run.run_id}"


def test_unknown_run_is_one_line_naming_the_store(linked):
    with pytest.raises(DbxmlError, match="Cannot read run 0123abc from http://127.0.0.1") as info:
        linked.run_details("0123abc")
    assert "\n" not in str(info.value)

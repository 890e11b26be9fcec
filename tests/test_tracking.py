"""%%track through a real IPython shell, on the embedded store and on a real server."""

import mlflow
import pytest
from IPython.core.error import UsageError


def _runs(uri, experiment="Default"):
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_track_logs_params_metrics_source_on_embedded_store(ext, shell, tmp_path):
    result = shell.run_cell_magic(
        "track",
        "baseline --params alpha --metrics acc losses --tags team=ml",
        "alpha = 0.5\nacc = 0.9\nlosses = [3.0, 2.0, 1.0]\nimport mlflow\nmlflow.log_metric('user', 7)\nalpha * 2",
    )
    assert result == 1.0
    assert shell.user_ns["alpha"] == 0.5
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, runs = _runs(uri)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "baseline"
    assert run.info.status == "FINISHED"
    assert run.data.params == {"alpha": "0.5"}
    assert run.data.metrics["acc"] == 0.9
    assert run.data.metrics["user"] == 7
    assert run.data.tags["team"] == "ml"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "losses")] == [3.0, 2.0, 1.0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "losses")] == [0, 1, 2]
    assert "cell.py" in [a.path for a in client.list_artifacts(run.info.run_id)]
    assert (tmp_path / "mlruns").is_dir()
    assert mlflow.active_run() is None


def test_failing_cell_ends_failed_with_traceback(ext, shell, tmp_path):
    with pytest.raises(ZeroDivisionError):
        shell.run_cell_magic("track", "broken", "x = 1\n1 / 0")
    assert shell.user_ns["x"] == 1
    client, runs = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert runs[0].info.status == "FAILED"
    assert "traceback.txt" in [a.path for a in client.list_artifacts(runs[0].info.run_id)]
    assert mlflow.active_run() is None


def test_interrupt_ends_killed(ext, shell, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        shell.run_cell_magic("track", "stopped", "raise KeyboardInterrupt")
    _, runs = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert runs[0].info.status == "KILLED"
    assert mlflow.active_run() is None


def test_track_on_real_server(linked, shell, mlflow_server):
    shell.run_cell_magic("track", "remote --metrics m", "import mlflow\nfor i in range(50):\n    mlflow.log_metric('loss', 1/(i+1), step=i)\nm = 1.5")
    run_id = linked.last_run.run_id
    client = mlflow_server.client()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run_id, "loss")) == 50
    assert run.data.metrics["m"] == 1.5


@pytest.mark.parametrize(
    "line, message",
    [
        ("--tags novalue", "key=value"),
        ("--params 1abc", "variable names"),
        ("--bogus", "unrecognized arguments"),
        ("'unbalanced", "quotes"),
    ],
)
def test_bad_arguments_are_one_line(ext, shell, line, message):
    with pytest.raises(UsageError, match=message) as info:
        shell.run_cell_magic("track", line, "never_assigned_by_bad_track = 1")
    assert "\n" not in str(info.value)
    assert "never_assigned_by_bad_track" not in shell.user_ns
    assert mlflow.active_run() is None

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


def test_line_expansion_experiment_nested_artifacts_autolog(ext, shell, tmp_path):
    shell.user_ns["run_label"] = "expanded"
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "a.txt").write_text("a")
    (tmp_path / "outputs" / "sub").mkdir()
    (tmp_path / "outputs" / "sub" / "b.txt").write_text("b")
    (tmp_path / "report.csv").write_text("x\n1\n")
    shell.run_cell_magic("track", "outer --experiment exp-one", "outer_ran = True")
    outer_id = ext.last_run.run_id
    import mlflow as _mlflow

    with _mlflow.start_run(run_id=outer_id):
        shell.run_cell_magic(
            "track",
            "{run_label} --nested --experiment exp-one --artifacts outputs *.csv --autolog",
            "from sklearn.linear_model import LinearRegression\nmodel = LinearRegression().fit([[0], [1], [2]], [0, 1, 2])",
        )
    child = ext.last_run
    client = _mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(child.run_id)
    assert run.info.run_name == "expanded"
    assert run.data.tags["mlflow.parentRunId"] == outer_id
    assert client.get_experiment(run.info.experiment_id).name == "exp-one"
    top = {a.path for a in client.list_artifacts(child.run_id)}
    assert {"outputs", "report.csv", "cell.py"} <= top
    assert {a.path for a in client.list_artifacts(child.run_id, "outputs/sub")} == {"outputs/sub/b.txt"}
    assert "training_score" in run.data.metrics  # logged by sklearn autolog inside the cell
    assert _mlflow.active_run() is None


def test_output_and_last_expression_as_without_magic(ext, shell, capsys):
    value = shell.run_cell_magic("track", "--no-source", "print('visible output')\n40 + 2")
    assert value == 42
    assert "visible output" in capsys.readouterr().out


def test_missing_metric_variable_is_reported_not_fatal(ext, shell, capsys, tmp_path):
    shell.run_cell_magic("track", "partial --metrics nothere label --params nothere", "label = 'text'")
    err = capsys.readouterr().err
    assert "no variable 'nothere'" in err and "'label' is not a number" in err
    assert ext.last_run.status == "FINISHED"


def test_syntax_error_starts_no_run(ext, shell, tmp_path):
    with pytest.raises(UsageError, match="syntax error"):
        shell.run_cell_magic("track", "bad", "def broken(:\n    pass")
    assert ext.runs == []


def test_active_run_is_refused_without_nested(ext, shell):
    import mlflow as _mlflow

    ext.activate()
    with _mlflow.start_run():
        with pytest.raises(UsageError, match="--nested"):
            shell.run_cell_magic("track", "clash", "unreached_by_clash = 1")
    assert "unreached_by_clash" not in shell.user_ns


def test_load_ext_imports_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys\nfrom IPython.testing.globalipapp import start_ipython\nip = start_ipython()\n"
        "ip.run_line_magic('load_ext', 'dbxml_magics')\n"
        "print(sorted(m for m in ('mlflow', 'pyspark', 'azureml', 'ipywidgets', 'azure.identity') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_magic_help_is_available(ext, shell):
    doc = shell.find_cell_magic("track").__doc__
    assert "--params" in doc and "--no-source" in doc


def test_environment_tracking_uri_is_respected(shell, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    from dbxml_magics.session import get_session

    shell.run_line_magic("load_ext", "dbxml_magics")
    session = get_session(shell)
    shell.run_cell_magic("track", "via-env", "pass")
    assert mlflow_server.client().get_run(session.last_run.run_id).info.status == "FINISHED"


def test_outcome_that_cannot_be_logged_ends_failed_with_one_line(ext, shell, tmp_path):
    # The cell logs alpha=2 itself; --params alpha then logs alpha=1: MLflow refuses the change.
    with pytest.raises(UsageError, match="Changing param values is not allowed.*ended FAILED") as info:
        shell.run_cell_magic("track", "changed --params alpha", "import mlflow\nalpha = 1\nmlflow.log_param('alpha', 2)")
    assert "\n" not in str(info.value)
    assert shell.user_ns["alpha"] == 1
    assert mlflow.active_run() is None
    _, runs = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.parametrize("enabled_before", [False, True], ids=["off-before", "on-before"])
def test_autolog_puts_back_the_state_it_found(ext, shell, enabled_before):
    """As on Databricks, where autologging is on by default through mlflow.autolog() (a flavor's
    own autolog() call is one that mlflow.autolog(disable=True) leaves alone, so it would not
    show the difference): after the cell every integration's configuration is as before."""
    import copy

    import sklearn  # noqa: F401 - mlflow.autolog() configures only integrations already imported
    from mlflow.utils.autologging_utils import AUTOLOGGING_INTEGRATIONS, autologging_is_disabled

    if enabled_before:
        mlflow.autolog(log_models=False, silent=True)  # the cell's mlflow.autolog() sets log_models=True
    before = copy.deepcopy(AUTOLOGGING_INTEGRATIONS)
    try:
        shell.run_cell_magic("track", "auto --autolog", "x = 1")
        assert autologging_is_disabled("sklearn") is not enabled_before
        assert AUTOLOGGING_INTEGRATIONS == before
    finally:
        mlflow.autolog(disable=True, silent=True)

"""%%track --sweep: one parent, one child per combination, the best child on the parent."""

import json

import mlflow
import pytest
from IPython.core.error import UsageError

CELL = (
    "import mlflow\n"
    "if alpha == 1 and max_iter == 300:\n"
    "    raise ValueError('diverged')\n"
    "r2 = 1 - alpha / max_iter\n"
    "mlflow.log_metric('loss', alpha * 2)\n"
)


def _client(tmp_path):
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def _children(client, parent_id):
    parent = client.get_run(parent_id)
    return client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'", order_by=["attributes.start_time ASC"]
    )


def test_grid_with_one_failing_combination(ext, shell, tmp_path, capsys):
    table = shell.run_cell_magic(
        "track", "tune --sweep alpha=0.01,1 max_iter=100,300 --metrics r2 --metric r2 --goal max", CELL
    )
    out = capsys.readouterr()
    assert "alpha=1 max_iter=300 failed (ValueError: diverged); going on" in out.err
    parent = next(r for r in ext.runs if r.name == "tune")
    assert parent.status == "FINISHED"
    client = _client(tmp_path)
    children = _children(client, parent.run_id)
    assert [(c.data.params["alpha"], c.data.params["max_iter"], c.info.status) for c in children] == [
        ("0.01", "100", "FINISHED"), ("0.01", "300", "FINISHED"), ("1", "100", "FINISHED"), ("1", "300", "FAILED"),
    ]
    assert children[0].info.run_name == "tune[alpha=0.01,max_iter=100]"
    assert "traceback.txt" in {a.path for a in client.list_artifacts(children[3].info.run_id)}
    best = children[1]  # r2 = 1 - 0.01/300
    run = client.get_run(parent.run_id)
    assert run.data.tags["dbxml.sweep.best_run_id"] == best.info.run_id
    assert run.data.tags["dbxml.sweep.best"] == "alpha=0.01 max_iter=300"
    assert run.data.metrics["r2"] == pytest.approx(1 - 0.01 / 300)
    assert run.data.tags["dbxml.sweep.failed"] == "1" and run.data.tags["dbxml.sweep.finished"] == "3"
    assert f"best r2 = {1 - 0.01 / 300:g}" in out.out
    assert list(table["status"]) == ["FINISHED", "FINISHED", "FINISHED", "FAILED"]
    assert table.loc[1, "r2"] == pytest.approx(1 - 0.01 / 300)
    assert [r.parent_run_id for r in ext.runs[-4:]] == [parent.run_id] * 4
    recorded = {a.path for a in client.list_artifacts(parent.run_id)}
    assert {"cell.py", "sweep.json"} <= recorded
    assert mlflow.active_run() is None
    assert shell.user_ns["alpha"] == 1 and shell.user_ns["max_iter"] == 300  # the last combination, as a loop


def test_random_samples_distinct_combinations(ext, shell, tmp_path):
    table = shell.run_cell_magic("track", "rand --sweep a=1,2,3,4 b=x,y,z --random 3", "c = f'{a}{b}'")
    assert len(table) == 3
    assert len({(a, b) for a, b in zip(table["a"], table["b"])}) == 3
    assert set(table["a"]) <= {1, 2, 3, 4} and set(table["b"]) <= {"x", "y", "z"}
    parent = next(r for r in ext.runs if r.name == "rand")
    assert len(_children(_client(tmp_path), parent.run_id)) == 3


def test_values_are_python_literals(ext, shell, tmp_path):
    table = shell.run_cell_magic(
        "track", "kinds --sweep layers=(10,),(20,10) solver=lbfgs,'sag' flag=True,None", "kinds = (layers, solver, flag)"
    )
    assert len(table) == 8
    assert shell.user_ns["kinds"] == ((20, 10), "sag", None)


def test_interrupt_stops_the_sweep_and_marks_what_was_not_run(ext, shell, tmp_path, capsys):
    cell = "if n == 2:\n    raise KeyboardInterrupt\nran = n\n"
    with pytest.raises(KeyboardInterrupt):
        shell.run_cell_magic("track", "halt --sweep n=1,2,3,4", cell)
    assert shell.user_ns["ran"] == 1
    parent = next(r for r in ext.runs if r.name == "halt")
    client = _client(tmp_path)
    run = client.get_run(parent.run_id)
    assert run.info.status == "KILLED"
    assert [c.info.status for c in _children(client, parent.run_id)] == ["FINISHED", "KILLED"]
    assert run.data.tags["dbxml.sweep.not_run"] == "2"
    assert "not run: n=3; n=4" in capsys.readouterr().err
    path = mlflow.artifacts.download_artifacts(run_id=parent.run_id, artifact_path="sweep.json", dst_path=str(tmp_path / "dl"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    statuses = [row["status"] for row in json.loads(open(path).read())]
    assert statuses == ["FINISHED", "KILLED", "NOT_RUN", "NOT_RUN"]
    assert mlflow.active_run() is None


def test_every_combination_failing_fails_the_parent(ext, shell, tmp_path):
    shell.run_cell_magic("track", "allbad --sweep k=1,2", "1 / 0")
    parent = next(r for r in ext.runs if r.name == "allbad")
    assert parent.status == "FAILED"
    assert mlflow.active_run() is None


@pytest.mark.parametrize(
    "line, message",
    [
        ("--sweep alpha", "NAME=VALUE"),
        ("--sweep 1x=2", "NAME=VALUE"),
        ("--sweep alpha=1,,2", "comma-separated"),
        ("--sweep a=1 a=2", "twice"),
        ("--sweep a=1 --metric r2", "--goal"),
        ("--sweep a=1 --goal max", "--metric"),
        ("--sweep a=1 --random 0", "--random"),
        ("--metric r2 --goal max", "go with --sweep"),
        ("--sweep a=1 --goal best", "invalid choice"),
    ],
)
def test_bad_sweeps_are_one_line_and_run_nothing(ext, shell, line, message):
    with pytest.raises(UsageError, match=message) as info:
        shell.run_cell_magic("track", line, "never_set_by_sweep = 1")
    assert "\n" not in str(info.value)
    assert "never_set_by_sweep" not in shell.user_ns
    assert ext.runs == []


def test_sweep_on_real_server(linked, shell, mlflow_server):
    shell.run_cell_magic("track", "remote-sweep --sweep alpha=0.1,0.2 --metric loss --goal min", "import mlflow\nmlflow.log_metric('loss', alpha)")
    parent = next(r for r in linked.runs if r.name == "remote-sweep")
    client = mlflow_server.client()
    run = client.get_run(parent.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["loss"] == 0.1
    children = _children(client, parent.run_id)
    assert sorted(c.data.params["alpha"] for c in children) == ["0.1", "0.2"]
    assert run.data.tags["dbxml.sweep.best_run_id"] in {c.info.run_id for c in children}

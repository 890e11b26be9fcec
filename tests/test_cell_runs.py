"""MLflow's own run calls inside %%track: the code people already have runs unchanged."""

import inspect

import mlflow
import pytest
from IPython.core.error import UsageError
from mlflow.tracking import fluent


def _client(tmp_path):
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def _all_runs(client):
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, order_by=["attributes.start_time ASC"])


def _untouched():
    """Nothing of ours is left in MLflow after a cell."""
    assert mlflow.start_run is fluent.start_run and fluent.start_run.__module__ == "mlflow.tracking.fluent"
    assert mlflow.end_run is fluent.end_run and fluent.end_run.__module__ == "mlflow.tracking.fluent"
    assert mlflow.set_experiment.__module__ == "mlflow.tracking.fluent"
    assert mlflow.active_run() is None


def test_start_run_continues_the_cells_run_with_name_tags_description(ext, shell, tmp_path):
    cell = (
        "import mlflow\n"
        "alpha = 0.5  # set here: the shell outlives tests, and an earlier one may have left another alpha\n"
        "with mlflow.start_run(run_name='wine', tags={'team': 'ml'}, description='first try') as run:\n"
        "    mlflow.log_param('alpha', alpha)\n"
        "    mlflow.log_metric('rmse', 0.7)\n"
        "    inside = run.info.run_id\n"
        "after = mlflow.active_run().info.run_id\n"
        "mlflow.log_metric('after_block', 1)\n"
    )
    shell.run_cell_magic("track", "cell-name --params alpha", cell)
    client = _client(tmp_path)
    runs = _all_runs(client)
    assert len(runs) == 1
    run = runs[0]
    assert shell.user_ns["inside"] == shell.user_ns["after"] == run.info.run_id == ext.last_run.run_id
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "wine" and ext.last_run.name == "wine"
    assert run.data.tags["team"] == "ml" and run.data.tags["mlflow.note.content"] == "first try"
    assert run.data.params == {"alpha": "0.5"}
    assert run.data.metrics == {"rmse": 0.7, "after_block": 1.0}
    assert "cell.py" in {a.path for a in client.list_artifacts(run.info.run_id)}
    _untouched()


def test_start_run_with_the_cells_run_id_and_explicit_end_run(ext, shell, tmp_path):
    cell = (
        "import mlflow\n"
        "mlflow.end_run()  # the defensive first line of many notebooks\n"
        "current = mlflow.active_run().info.run_id\n"
        "mlflow.start_run(run_id=current)\n"
        "mlflow.log_metric('m', 1)\n"
        "mlflow.end_run()\n"
        "still = mlflow.active_run().info.run_id\n"
        "m2 = 2\n"
    )
    shell.run_cell_magic("track", "explicit --metrics m2", cell)
    client = _client(tmp_path)
    (run,) = _all_runs(client)
    assert shell.user_ns["current"] == shell.user_ns["still"] == run.info.run_id
    assert run.info.status == "FINISHED"
    # The outcome (m2, cell.py) was logged after the cell's own end_run().
    assert run.data.metrics == {"m": 1.0, "m2": 2.0}
    _untouched()


def test_nested_runs_are_children_of_the_cells_run(ext, shell, tmp_path):
    cell = (
        "import mlflow\n"
        "with mlflow.start_run(run_name='parent'):\n"
        "    for fold in range(3):\n"
        "        with mlflow.start_run(run_name=f'fold-{fold}', nested=True):\n"
        "            mlflow.log_metric('score', fold / 10)\n"
        "    mlflow.log_metric('mean', 0.1)\n"
        "left_open = mlflow.start_run(run_name='left-open', nested=True).info.run_id\n"
    )
    shell.run_cell_magic("track", "cv", cell)
    client = _client(tmp_path)
    runs = {r.info.run_name: r for r in _all_runs(client)}
    parent = runs["parent"]
    assert parent.info.run_id == ext.last_run.run_id
    children = [runs[f"fold-{i}"] for i in range(3)] + [runs["left-open"]]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert [c.data.metrics["score"] for c in children[:3]] == [0.0, 0.1, 0.2]
    # A child the cell left open is ended with the cell, so nothing stays active.
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert parent.data.metrics == {"mean": 0.1}
    _untouched()


def test_a_loop_of_top_level_runs_becomes_children_after_the_first(ext, shell, tmp_path, capsys):
    cell = (
        "import mlflow\n"
        "for alpha in (0.1, 0.2, 0.3):\n"
        "    with mlflow.start_run():\n"
        "        mlflow.log_param('alpha', alpha)\n"
    )
    shell.run_cell_magic("track", "loop", cell)
    assert "second mlflow.start_run()" in capsys.readouterr().err
    runs = _all_runs(_client(tmp_path))
    cell_run = ext.last_run.run_id
    assert [r.data.params["alpha"] for r in runs] == ["0.1", "0.2", "0.3"]
    assert runs[0].info.run_id == cell_run
    assert [r.data.tags.get("mlflow.parentRunId") for r in runs[1:]] == [cell_run, cell_run]
    assert {r.info.status for r in runs} == {"FINISHED"}
    _untouched()


def test_other_experiment_is_one_line_and_no_split(ext, shell, tmp_path, capsys):
    cell = (
        "import mlflow\n"
        "experiment = mlflow.set_experiment('elsewhere')\n"
        "with mlflow.start_run(experiment_id=experiment.experiment_id):\n"
        "    with mlflow.start_run(nested=True):\n"
        "        mlflow.log_metric('child', 1)\n"
    )
    shell.run_cell_magic("track", "split --experiment here", cell)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("dbxml: ")]
    assert len(lines) == 2
    assert "set_experiment('elsewhere')" in lines[0] and "stay in experiment 'here'" in lines[0]
    assert "experiment_id=" in lines[1]
    client = _client(tmp_path)
    here = client.get_experiment_by_name("here").experiment_id
    assert {r.info.experiment_id for r in _all_runs(client)} == {here}
    assert len(_all_runs(client)) == 2
    # set_experiment still did what it does without the magic: 'elsewhere' is MLflow's active experiment.
    assert fluent._get_experiment_id() == client.get_experiment_by_name("elsewhere").experiment_id
    _untouched()


def test_the_cells_own_experiment_is_no_note(ext, shell, tmp_path, capsys):
    cell = (
        "import mlflow\n"
        "same = mlflow.set_experiment('here').experiment_id\n"
        "with mlflow.start_run(experiment_id=same):\n"
        "    mlflow.log_metric('m', 1)\n"
    )
    shell.run_cell_magic("track", "same --experiment here", cell)
    assert "dbxml:" not in capsys.readouterr().err
    (run,) = _all_runs(_client(tmp_path))
    assert run.info.run_id == ext.last_run.run_id and run.info.experiment_id == shell.user_ns["same"]
    _untouched()


def test_parent_run_id_of_the_cells_run_makes_a_child(ext, shell, tmp_path):
    if "parent_run_id" not in inspect.signature(fluent.start_run).parameters:
        pytest.skip("start_run(parent_run_id=) came with MLflow 2.14")
    cell = (
        "import mlflow\n"
        "cell_run = mlflow.active_run().info.run_id\n"
        "with mlflow.start_run(run_name='child', parent_run_id=cell_run) as child:\n"
        "    mlflow.log_metric('c', 1)\n"
        "    child_id = child.info.run_id\n"
        "back = mlflow.active_run().info.run_id\n"
    )
    shell.run_cell_magic("track", "with-child", cell)
    runs = {r.info.run_name: r for r in _all_runs(_client(tmp_path))}
    assert runs["child"].info.run_id == shell.user_ns["child_id"] != ext.last_run.run_id
    assert runs["child"].data.tags["mlflow.parentRunId"] == ext.last_run.run_id == shell.user_ns["back"]
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    _untouched()


def test_end_run_failed_ends_the_cells_run_failed_after_its_outcome(ext, shell, tmp_path):
    cell = "import mlflow\nmlflow.log_metric('m', 1)\nmlflow.end_run('FAILED')\nafter = 2\n"
    shell.run_cell_magic("track", "gave-up --metrics after", cell)
    (run,) = _all_runs(_client(tmp_path))
    assert run.info.status == "FAILED" and ext.last_run.status == "FAILED"
    assert run.data.metrics == {"m": 1.0, "after": 2.0}  # the cell still ran to its end and logged its outcome
    _untouched()


def test_an_exception_inside_the_with_block_fails_the_run_and_restores(ext, shell, tmp_path):
    cell = "import mlflow\nwith mlflow.start_run():\n    with mlflow.start_run(nested=True):\n        1 / 0\n"
    with pytest.raises(ZeroDivisionError):
        shell.run_cell_magic("track", "boom", cell)
    runs = _all_runs(_client(tmp_path))
    assert [r.info.status for r in runs] == ["FAILED", "FAILED"]
    _untouched()


def test_a_caught_failure_of_the_with_block_still_ends_the_run_failed(ext, shell, tmp_path):
    cell = (
        "import mlflow\n"
        "try:\n"
        "    with mlflow.start_run():\n"
        "        raise ValueError('bad fold')\n"
        "except ValueError:\n"
        "    handled = True\n"
    )
    shell.run_cell_magic("track", "caught", cell)
    assert shell.user_ns["handled"] is True
    (run,) = _all_runs(_client(tmp_path))
    assert run.info.status == "FAILED"  # as plain MLflow ends it
    assert ext.last_run.status == "FAILED"
    _untouched()


def test_interrupt_restores_and_ends_killed(ext, shell, tmp_path):
    cell = "import mlflow\nwith mlflow.start_run():\n    mlflow.start_run(nested=True)\n    raise KeyboardInterrupt\n"
    with pytest.raises(KeyboardInterrupt):
        shell.run_cell_magic("track", "stop", cell)
    runs = _all_runs(_client(tmp_path))
    assert [r.info.status for r in runs] == ["KILLED", "KILLED"]
    _untouched()


def test_resuming_another_run_is_one_line(ext, shell, tmp_path):
    shell.run_cell_magic("track", "first", "x = 1")
    first = ext.last_run.run_id
    with pytest.raises(UsageError, match="run_id=.*Remove run_id") as info:
        shell.run_cell_magic("track", "second", f"import mlflow\nmlflow.start_run(run_id={first!r})")
    assert "\n" not in str(info.value)
    assert ext.last_run.status == "FAILED"
    _untouched()


def test_plain_mlflow_outside_a_tracked_cell_is_untouched(ext, shell, tmp_path):
    shell.run_cell_magic("track", "tracked", "x = 1")
    ext.activate()
    with mlflow.start_run() as run:
        mlflow.log_param("p", 1)
    assert _client(tmp_path).get_run(run.info.run_id).info.status == "FINISHED"
    with pytest.raises(Exception, match="already active"):
        with mlflow.start_run():
            mlflow.start_run()
    mlflow.end_run()
    _untouched()


def test_another_thread_gets_plain_mlflow(ext, shell, tmp_path):
    cell = (
        "import threading, mlflow\n"
        "seen = {}\n"
        "def other():\n"
        "    with mlflow.start_run(run_name='thread-run') as run:\n"
        "        seen['id'] = run.info.run_id\n"
        "worker = threading.Thread(target=other)\n"
        "worker.start(); worker.join()\n"
    )
    shell.run_cell_magic("track", "threaded", cell)
    runs = {r.info.run_name: r for r in _all_runs(_client(tmp_path))}
    assert runs["thread-run"].info.run_id == shell.user_ns["seen"]["id"] != ext.last_run.run_id
    assert "mlflow.parentRunId" not in runs["thread-run"].data.tags
    _untouched()

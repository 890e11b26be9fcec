"""The journal against real servers: batching, a store that goes down, a kernel that dies,
and `both`-mode mirroring. Every figure asserted is read back from the real stores."""

import json
import os
import subprocess
import sys
import textwrap

import mlflow
import pytest



def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_metrics_reach_server_in_few_requests(linked, shell, mlflow_server):
    shell.run_cell_magic(
        "track", "batched", "import mlflow\nfor i in range(300):\n    mlflow.log_metric('loss', 1.0 / (i + 1), step=i)"
    )
    run_id = linked.last_run.run_id
    client = mlflow_server.client()
    assert _history(client, run_id, "loss") == [(i, 1.0 / (i + 1)) for i in range(300)]
    assert linked.journal.pending(run_id) == 0


def test_server_down_mid_cell_then_replayed_exactly_once(ext, shell, own_server, tmp_path):
    shell.run_line_magic("config", "DbxmlMagics.flush_timeout = 2")
    shell.run_line_magic("config", "DbxmlMagics.flush_interval = 0.2")
    shell.run_line_magic("aml_link", f"--uri {own_server.uri}")
    (tmp_path / "notes.txt").write_text("kept")
    shell.user_ns["stop_server"] = own_server.stop
    shell.run_cell_magic(
        "track",
        "outage --params lr --artifacts notes.txt --tags phase=outage",
        textwrap.dedent(
            """
            import mlflow, time
            lr = 0.01
            for i in range(1000):
                mlflow.log_metric('loss', float(i), step=i)
                if i == 300:
                    time.sleep(0.5)   # let the flusher ship a first part
                    stop_server()
            """
        ),
    )
    run_id = ext.last_run.run_id
    assert ext.last_run.status == "FINISHED"
    assert mlflow.active_run() is None
    assert ext.journal.pending(run_id) > 0
    own_server.start()
    assert ext.journal.flush(timeout=60)
    client = own_server.client()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert _history(client, run_id, "loss") == [(i, float(i)) for i in range(1000)]
    assert run.data.params == {"lr": "0.01"}
    assert run.data.tags["phase"] == "outage"
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["cell.py", "notes.txt"]


def test_both_mode_mirrors_runs_and_survives_mirror_outage(ext, shell, mlflow_server, own_server, tmp_path):
    shell.run_line_magic("config", "DbxmlMagics.flush_timeout = 2")
    shell.run_line_magic("aml_link", f"--uri {mlflow_server.uri}")
    shell.run_line_magic("aml_link", f"--uri {own_server.uri} --mode both --experiment /Users/me@x.org/proj/mirrored")
    assert ext.link.mode == "both" and ext.link.mirror.uri == own_server.uri
    own_server.stop()
    shell.run_cell_magic(
        "track",
        "twin --params depth --metrics score",
        "import mlflow\ndepth = 4\nscore = [0.1, 0.2, 0.3]\nmlflow.log_text('hello', 'notes/hello.txt')\n"
        "for i in range(20):\n    mlflow.log_metric('m', i, step=i)",
    )
    run_id = ext.last_run.run_id
    primary = mlflow_server.client().get_run(run_id)
    assert primary.info.status == "FINISHED"
    assert ext.journal.pending(run_id) > 0  # the mirror is down: its rows wait
    own_server.start()
    assert ext.journal.flush(timeout=60)
    mirror_client = own_server.client()
    mirror_id = ext.journal.mirror_run_id(run_id)
    assert mirror_id is not None
    mirror = mirror_client.get_run(mirror_id)
    assert mirror.info.status == "FINISHED"
    assert mirror.info.run_name == primary.info.run_name
    assert mirror.data.params == {"depth": "4"}
    assert mirror.data.tags["dbxml.source_run_id"] == run_id
    assert _history(mirror_client, mirror_id, "m") == [(i, float(i)) for i in range(20)]
    assert _history(mirror_client, mirror_id, "score") == [(0, 0.1), (1, 0.2), (2, 0.3)]
    assert mirror_client.get_experiment(mirror.info.experiment_id).name == "/Users/me@x.org/proj/mirrored"
    paths = {a.path for a in mirror_client.list_artifacts(mirror_id)}
    assert {"cell.py", "notes"} <= paths
    # Replaying again changes nothing: exactly once as seen by the mirror.
    assert len(mirror_client.search_runs([mirror.info.experiment_id])) == 1


def test_both_mode_logged_model_left_pending_blocks_nothing(ext, shell, mlflow_server, own_server):
    """An MLflow 3 logged model the cell never finalizes reaches the mirror as it is (PENDING),
    with the point linked to it; a point linked to a model the mirror has no copy of (made
    outside the journal's runs) arrives as a plain run metric, and nothing is refused."""
    if int(mlflow.__version__.split(".")[0]) < 3:
        pytest.skip("logged models are MLflow 3's")
    shell.run_line_magic("aml_link", f"--uri {mlflow_server.uri}")
    shell.run_line_magic("aml_link", f"--uri {own_server.uri} --mode both")
    shell.run_cell_magic(
        "track", "models",
        f"import mlflow\nmodel = mlflow.initialize_logged_model(name='m')\n"
        f"elsewhere = mlflow.MlflowClient({mlflow_server.uri!r}).create_logged_model('0', name='other')\n"
        "mlflow.log_metric('acc', 0.9, model_id=model.model_id)\nmlflow.log_metric('loss', 0.1)\n"
        "mlflow.log_metric('other', 0.5, model_id=elsewhere.model_id)\n",
    )
    run_id, model_id = ext.last_run.run_id, shell.user_ns["model"].model_id
    assert ext.journal.flush(timeout=60)
    assert ext.journal.failures() == []
    mirror_client = own_server.client()
    mirror = mirror_client.get_run(ext.journal.mirror_run_id(run_id))
    assert mirror.data.metrics == {"acc": 0.9, "loss": 0.1, "other": 0.5}
    assert [m.key for m in mlflow_server.client().get_logged_model(model_id).metrics] == ["acc"]
    (copy,) = mirror_client.search_logged_models([mirror.info.experiment_id])
    assert (copy.name, str(copy.status), [m.key for m in copy.metrics]) == ("m", "PENDING", ["acc"])


def test_both_mode_mirrors_mlflow2_model_history(ext, shell, mlflow_server, own_server):
    """MLflow 2.x's log_model records the model in the run's `mlflow.log-model.history` tag
    (record_logged_model): a journaled write, so the mirror run has it too."""
    if int(mlflow.__version__.split(".")[0]) >= 3:
        pytest.skip("MLflow 3's log_model makes a logged model instead (test_journal_wire)")
    shell.run_line_magic("aml_link", f"--uri {mlflow_server.uri}")
    shell.run_line_magic("aml_link", f"--uri {own_server.uri} --mode both")
    shell.run_cell_magic(
        "track", "history",
        "import mlflow, numpy as np\nfrom sklearn.linear_model import LogisticRegression\n"
        "clf = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1]))\n"
        "mlflow.sklearn.log_model(clf, artifact_path='model')\n",
    )
    run_id = ext.last_run.run_id
    assert ext.journal.flush(timeout=60) and ext.journal.failures() == []
    primary = json.loads(mlflow_server.client().get_run(run_id).data.tags["mlflow.log-model.history"])
    mirror_run = own_server.client().get_run(ext.journal.mirror_run_id(run_id))
    mirrored = json.loads(mirror_run.data.tags["mlflow.log-model.history"])
    assert [(m["artifact_path"], sorted(m["flavors"])) for m in mirrored] == [
        (m["artifact_path"], sorted(m["flavors"])) for m in primary
    ] == [("model", ["python_function", "sklearn"])]


def test_killed_kernel_is_replayed_by_next_session(shell, own_server, tmp_path):
    """A kernel dies after its cell queued everything but before any flush."""
    script = textwrap.dedent(
        f"""
        import os
        from IPython.testing.globalipapp import start_ipython
        ip = start_ipython()
        ip.run_line_magic("load_ext", "dbxml_magics")
        ip.run_line_magic("config", "DbxmlMagics.flush_interval = 3600")
        ip.run_line_magic("config", "DbxmlMagics.flush_timeout = 0")
        ip.run_line_magic("config", "DbxmlMagics.journal_lease = 2")
        ip.run_line_magic("config", "DbxmlMagics.show_panel_on_link = False")
        ip.run_line_magic("aml_link", "--uri {own_server.uri}")
        ip.run_cell_magic("track", "doomed --params k", "import mlflow\\nk = 'v'\\nfor i in range(500):\\n    mlflow.log_metric('x', i, step=i)")
        from dbxml_magics.session import get_session
        print("RUN", get_session(ip).last_run.run_id, flush=True)
        os._exit(9)
        """
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    env.pop("MLFLOW_TRACKING_URI")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 9, done.stderr[-2000:]
    run_id = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("RUN "))
    client = own_server.client()
    assert client.get_metric_history(run_id, "x") == []  # nothing shipped before the kill
    shell.run_line_magic("load_ext", "dbxml_magics")
    try:
        shell.run_line_magic("aml_sync", "--flush --timeout 60")
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params == {"k": "v"}
        assert _history(client, run_id, "x") == [(i, float(i)) for i in range(500)]
    finally:
        shell.run_line_magic("unload_ext", "dbxml_magics")


def test_sync_report_lists_targets(linked, shell, capsys, mlflow_server):
    shell.run_cell_magic("track", "", "x = 1")
    shell.run_line_magic("aml_sync", "--flush")
    out = capsys.readouterr().out
    assert mlflow_server.uri in out and "0 pending" in out


def test_changing_a_param_fails_at_once_like_mlflow(linked, shell, mlflow_server):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        shell.run_cell_magic(
            "track", "clash", "import mlflow\nmlflow.log_param('p', 1)\nmlflow.log_metric('ok', 1.0)\nmlflow.log_param('p', 2)"
        )
    run = mlflow_server.client().get_run(linked.last_run.run_id)
    assert run.info.status == "FAILED"
    assert run.data.params == {"p": "1"}
    assert run.data.metrics == {"ok": 1.0}


def test_log_metric_fast_path_keeps_mlflow_semantics(linked, shell, mlflow_server):
    """mlflow.log_metric on a journaled run skips MLflow's per-call overhead, not its rules:
    the same conversions (numpy values, step and timestamp defaults), the same validation
    error at the call, the same return value; MLflow's own function comes back on unload."""
    # The fast path is installed with the journal, on MLflow 3 (2.x keeps MLflow's function).
    installed = hasattr(mlflow.tracking.fluent.log_metric, "_dbxml_journal")
    assert installed == (int(mlflow.__version__.split(".")[0]) >= 3)
    original = mlflow.tracking.fluent.log_metric.__wrapped__ if installed else mlflow.tracking.fluent.log_metric
    shell.run_cell_magic(
        "track", "fast",
        "import mlflow, numpy as np\n"
        "mlflow.log_metric('np', np.float32(0.5), step=np.int64(3))\n"
        "mlflow.log_metric('arr', np.array([2.0]))\n"
        "mlflow.log_metric('when', 1.0, timestamp=1234)\n"
        "ops = mlflow.log_metric('async', 4.0, synchronous=False)\n"
        "ops.wait()\n"
        "try:\n    mlflow.log_metric('bad$name', 1.0)\nexcept mlflow.exceptions.MlflowException as e:\n    refused = e\n"
        "try:\n    mlflow.log_metric('word', 'high')\nexcept mlflow.exceptions.MlflowException as e:\n    refused_bool = e\n",
    )
    for name in ("refused", "refused_bool"):
        assert shell.user_ns[name].error_code == "INVALID_PARAMETER_VALUE"
    run_id = linked.last_run.run_id
    assert linked.journal.flush(timeout=60)
    client = mlflow_server.client()
    assert _history(client, run_id, "np") == [(3, 0.5)]
    assert _history(client, run_id, "arr") == [(0, 2.0)]
    assert [m.timestamp for m in client.get_metric_history(run_id, "when")] == [1234]
    assert set(client.get_run(run_id).data.metrics) == {"np", "arr", "when", "async"}  # nothing refused was queued
    assert linked.journal.failures() == []
    shell.run_line_magic("unload_ext", "dbxml_magics")
    assert mlflow.log_metric is original and mlflow.tracking.fluent.log_metric is original


def test_rejected_rows_fail_alone_and_are_reported(linked, shell, capsys, mlflow_server):
    """Rows the store refuses (here: a param changed behind the journal's back by another
    client) are marked failed and shown by %aml_sync; the other rows still arrive."""
    shell.run_cell_magic("track", "clash", "import mlflow\nrun_id = mlflow.active_run().info.run_id")
    run_id = shell.user_ns["run_id"]
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.utils.rest_utils import MlflowHostCreds

    other_client = RestStore(lambda: MlflowHostCreds(mlflow_server.uri))
    other_client.log_param(run_id, mlflow.entities.Param("q", "server-side"))
    mlflow.MlflowClient().log_batch(
        run_id, params=[mlflow.entities.Param("q", "client-side")], metrics=[mlflow.entities.Metric("ok", 1.0, 0, 0)]
    )
    shell.run_line_magic("aml_sync", "--flush --timeout 10")
    out = capsys.readouterr().out
    assert "1 failed" in out and "Changing param values" in out
    run = mlflow_server.client().get_run(run_id)
    assert run.data.params == {"q": "server-side"}


def test_retry_and_discard_act_on_failed_rows_only(linked, shell, capsys, mlflow_server):
    shell.run_cell_magic("track", "clash", "import mlflow\nrun_id = mlflow.active_run().info.run_id")
    run_id = shell.user_ns["run_id"]
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.utils.rest_utils import MlflowHostCreds

    RestStore(lambda: MlflowHostCreds(mlflow_server.uri)).log_param(run_id, mlflow.entities.Param("r", "server-side"))
    mlflow.MlflowClient().log_param(run_id, "r", "client-side")
    shell.run_line_magic("aml_sync", "--flush --timeout 10")
    assert "1 failed" in capsys.readouterr().out
    shell.run_line_magic("aml_sync", "--retry --timeout 10")
    out = capsys.readouterr().out
    assert "1 failed writes queued again" in out and "1 failed" in out  # refused again, still kept
    shell.run_line_magic("aml_sync", "--discard")
    out = capsys.readouterr().out
    assert "Discarded 1 failed writes" in out and f"run {run_id}: 1 metric/param/tag batches" in out
    assert "0 failed" in out
    shell.run_line_magic("aml_sync", "--discard")
    assert "No failed writes to discard." in capsys.readouterr().out


def test_a_run_on_a_store_that_is_not_a_target_gets_a_shipper(linked, shell, capsys, own_server):
    shell.run_cell_magic(
        "track", "elsewhere",
        f"import mlflow\nother = mlflow.MlflowClient({own_server.uri!r})\n"
        "run = other.create_run(other.get_experiment_by_name('Default').experiment_id)\n"
        "for i in range(50):\n    other.log_metric(run.info.run_id, 'm', i, step=i)\n"
        "other.set_terminated(run.info.run_id)\n",
    )
    run_id = shell.user_ns["run"].info.run_id
    assert linked.journal.owns(run_id)
    shell.run_line_magic("aml_sync", "--flush --timeout 60")
    out = capsys.readouterr().out
    assert f"other   {own_server.uri}: 0 pending" in out
    run = own_server.client().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert _history(own_server.client(), run_id, "m") == [(i, float(i)) for i in range(50)]


def test_batches_follow_each_kind_of_stores_limits():
    """Azure ML refuses log-batch requests above 200 metrics: its rows are grouped smaller
    than an MLflow server's (1000), and one row never splits across groups."""
    import json

    from dbxml_magics.journal.delivery import batch_limits
    from dbxml_magics.journal.shippers import plan

    point = json.dumps({"metrics": [["x", 1.0, 0, 0]], "params": [], "tags": []})
    rows = [(i, "run", "batch", point, 0.0) for i in range(1000)]
    assert batch_limits("uri") == (1000, 100, 1000)
    assert [len(g) for g in plan(rows, batch_limits("uri"))] == [1000]
    assert [len(g) for g in plan(rows, batch_limits("aml"))] == [200] * 5


def test_writes_to_a_deleted_run_fail_at_the_call_like_mlflow(linked, shell, mlflow_server):
    """MLflow's stores take writes to a FINISHED run and refuse them for a deleted one. Through
    the journal: the same; the refusal comes at the call, with MLflow's own exception, and
    nothing of it is queued. The deletion itself is queued after the run's earlier writes."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.utils.rest_utils import MlflowHostCreds

    shell.run_cell_magic("track", "ended", "import mlflow\nmlflow.log_metric('m', 1.0)")
    run_id = linked.last_run.run_id
    client = mlflow.MlflowClient()
    client.log_metric(run_id, "late", 2.0)  # a FINISHED run still takes writes, as in MLflow
    mlflow.delete_run(run_id)
    journal = linked.journal
    calls = {
        "mlflow.log_metric": lambda: mlflow.log_metric("x", 1.0, run_id=run_id),
        "log_param": lambda: client.log_param(run_id, "p", "1"),
        "set_tag": lambda: client.set_tag(run_id, "t", "v"),
        "log_batch": lambda: client.log_batch(run_id, metrics=[Metric("y", 1.0, 0, 0)]),
    }
    for name, call in calls.items():
        with pytest.raises(MlflowException, match=f"The run {run_id} must be in the 'active' state") as refused:
            call()
        assert refused.value.error_code == "INVALID_PARAMETER_VALUE", name
    # Nothing refused was queued: everything queued arrives or fails, and none of it does.
    assert journal.flush(timeout=60) and journal.failures() == []
    # The store says the same for a write sent to it directly.
    store = RestStore(lambda: MlflowHostCreds(mlflow_server.uri))
    with pytest.raises(MlflowException) as direct:
        store.log_param(run_id, Param("p", "1"))
    assert (type(direct.value), direct.value.error_code, direct.value.message) == (
        type(refused.value), refused.value.error_code, refused.value.message
    )
    run = mlflow_server.client().get_run(run_id)
    assert run.info.lifecycle_stage == "deleted" and run.info.status == "FINISHED"
    assert run.data.metrics == {"m": 1.0, "late": 2.0} and run.data.params == {}
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        store.set_tag(run_id, RunTag("t", "v"))
    mlflow.MlflowClient().restore_run(run_id)
    client.set_tag(run_id, "t", "v")  # restored: writable again
    assert journal.flush(timeout=60)
    assert mlflow_server.client().get_run(run_id).data.tags["t"] == "v"
    # Inside a cell: the fast path of mlflow.log_metric refuses it as well; ending a deleted run
    # (a `with` block, the cell's own run) sends nothing and raises nothing.
    shell.run_cell_magic(
        "track", "child",
        "import mlflow\nwith mlflow.start_run(nested=True) as child:\n    mlflow.delete_run(child.info.run_id)\n"
        "    try:\n        mlflow.log_metric('x', 1.0)\n    except mlflow.exceptions.MlflowException as e:\n"
        "        fast = e\n",
    )
    child_id = shell.user_ns["child"].info.run_id
    refusal = f"INVALID_PARAMETER_VALUE: The run {child_id} must be in the 'active' state. Current state is deleted."
    assert shell.user_ns["fast"].message == refusal
    assert linked.last_run.status == "FINISHED"
    shell.run_cell_magic("track", "gone", "import mlflow\nmlflow.delete_run(mlflow.active_run().info.run_id)\n")
    gone_id = linked.last_run.run_id
    assert mlflow.active_run() is None
    assert journal.flush(timeout=60) and journal.failures() == []
    for deleted in (child_id, gone_id):
        assert mlflow_server.client().get_run(deleted).info.lifecycle_stage == "deleted"

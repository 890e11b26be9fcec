"""What crosses the wire: every metric point, param and tag counted by a proxy in front of a
real `mlflow server` (its SQL store drops duplicate points, so reading runs back cannot
show a resend). Each point must cross once per store: in a normal cell, through a storm of
429s and 503s, across %reload_ext during a slow flush, with two live kernels sharing a
folder that holds a dead kernel's rows; and after SIGKILLs during shipping, every point is
present and resends are confined to the batch in flight at each kill."""

import email.utils
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import mlflow
import pytest
from counting_proxy import CountingProxy

CELL = "import mlflow\nfor i in range(300):\n    mlflow.log_metric('loss', 1.0 / (i + 1), step=i)\n"


@pytest.fixture
def proxy(mlflow_server):
    proxy = CountingProxy(mlflow_server.port)
    yield proxy
    proxy.stop()


def _once_each(proxy, run_id, expected_points):
    counts = proxy.metric_count(run_id)
    assert len(counts) == expected_points, (len(counts), expected_points)
    assert set(counts.values()) == {1}, Counter(counts.values())


def test_each_point_once_per_store_in_a_normal_cell(ext, shell, proxy, own_server):
    mirror = CountingProxy(own_server.port)
    try:
        shell.run_line_magic("aml_link", f"--uri {proxy.uri}")
        shell.run_line_magic("aml_link", f"--uri {mirror.uri} --mode both")
        shell.run_cell_magic(
            "track", "normal --params lr",
            "lr = 0.1\n" + CELL
            + "mlflow.set_tag('temp', 'x')\nmlflow.MlflowClient().delete_tag(mlflow.active_run().info.run_id, 'temp')\n",
        )
        run_id = ext.last_run.run_id
        assert ext.journal.flush(timeout=120)
        mirror_id = ext.journal.mirror_run_id(run_id)
        for wire, rid, server in ((proxy, run_id, None), (mirror, mirror_id, own_server)):
            _once_each(wire, rid, 300)
            assert [n for (r, k, v), n in wire.params.items() if r == rid] == [1]
        # set_tag then delete_tag reach both stores in that order.
        assert "temp" not in own_server.client().get_run(mirror_id).data.tags
        assert "temp" not in shell.user_ns["mlflow"].MlflowClient().get_run(run_id).data.tags
    finally:
        mirror.stop()


def test_each_point_once_through_a_storm_of_429_and_503(ext, shell, proxy):
    shell.run_line_magic("config", "DbxmlMagics.retry_max_delay = 1")
    shell.run_line_magic("config", "DbxmlMagics.flush_interval = 0.2")
    shell.run_line_magic("aml_link", f"--uri {proxy.uri}")
    calls = itertools.count()

    def storm(endpoint):
        n = next(calls)
        if n < 8 or n % 2:  # a burst of refusals, then every other request
            return (429, {"Retry-After": "1"}) if n % 3 else (503, {})
        return None

    proxy.fault = storm
    shell.run_cell_magic("track", "storm", CELL.replace("300", "2000") + "with mlflow.start_run(nested=True):\n    mlflow.log_param('p', 1)\n")
    run_id = ext.last_run.run_id
    assert ext.journal.flush(timeout=180)
    assert proxy.refused[429] > 0 and proxy.refused[503] > 0
    _once_each(proxy, run_id, 2000)
    assert ext.journal.failures() == []


MODEL_CELL = """
import mlflow, numpy as np
from sklearn.linear_model import LogisticRegression
C = 0.5
X = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
y = np.array([0, 0, 0, 1, 1, 1])
clf = LogisticRegression(C=C).fit(X, y)
mlflow.log_param('C', C)
mlflow.log_metric('acc', clf.score(X, y))
info = mlflow.sklearn.log_model(clf, name='model', tags={'team': 'blue'})
mlflow.log_metric('val_acc', 0.75, model_id=info.model_id)
mlflow.log_model_params({'extra': '1'}, model_id=info.model_id)
mlflow.set_logged_model_tags(info.model_id, {'stage': 'test', 'temp': 'x'})
mlflow.delete_logged_model_tag(info.model_id, 'temp')
"""


def test_both_mode_mirrors_mlflow3_logged_models_once(ext, shell, mlflow_server, own_server):
    """`log_model` (MLflow 3) creates a logged model on the primary, uploads its files there and
    finalizes it; the mirror gets the same model (name, params, tags, linked metrics, files,
    status) through the journal, each write crossing the mirror's wire once."""
    if int(mlflow.__version__.split(".")[0]) < 3:
        pytest.skip("logged models are MLflow 3's")
    mirror = CountingProxy(own_server.port)
    try:
        shell.run_line_magic("aml_link", f"--uri {mlflow_server.uri}")
        shell.run_line_magic("aml_link", f"--uri {mirror.uri} --mode both")
        shell.run_cell_magic("track", "logged", MODEL_CELL)
        run_id, model_id = ext.last_run.run_id, shell.user_ns["info"].model_id
        assert ext.journal.flush(timeout=120)
        assert ext.journal.failures() == []
        primary = mlflow_server.client().get_logged_model(model_id)
        mirror_client = own_server.client()
        mirror_run = mirror_client.get_run(ext.journal.mirror_run_id(run_id))
        copies = mirror_client.search_logged_models([mirror_run.info.experiment_id])
        assert len(copies) == 1
        copy = copies[0]
        assert copy.name == primary.name == "model"
        assert str(copy.status) == str(primary.status) == "READY"
        assert copy.source_run_id == mirror_run.info.run_id
        assert copy.params == primary.params and copy.params["C"] == "0.5" and copy.params["extra"] == "1"
        assert copy.tags == {**primary.tags, "dbxml.source_model_id": model_id}
        assert copy.tags["team"] == "blue" and copy.tags["stage"] == "test" and "temp" not in copy.tags
        assert sorted((m.key, m.value) for m in copy.metrics) == sorted((m.key, m.value) for m in primary.metrics)
        assert {m.key for m in copy.metrics} == {"acc", "val_acc"}
        assert [o.model_id for o in mirror_run.outputs.model_outputs] == [copy.model_id]
        # The files: loadable from the mirror alone, predicting as the model in the kernel.
        mlflow.set_tracking_uri(own_server.uri)
        loaded = mlflow.pyfunc.load_model(f"models:/{copy.model_id}")
        X = shell.user_ns["X"]
        assert list(loaded.predict(X)) == list(shell.user_ns["clf"].predict(X))
        # Each write crossed the mirror's wire once.
        writes = Counter((method, path) for _, method, path in mirror.seen if method != "GET")
        base = "/api/2.0/mlflow/logged-models"
        assert writes[("POST", base)] == 1  # created once
        assert writes[("PATCH", f"{base}/{copy.model_id}")] == 1  # finalized once
        assert writes[("POST", f"{base}/{copy.model_id}/params")] == 1
        assert writes[("PATCH", f"{base}/{copy.model_id}/tags")] == 1
        assert writes[("DELETE", f"{base}/{copy.model_id}/tags/temp")] == 1
        uploads = {path: n for (method, path), n in writes.items() if method == "PUT" and copy.model_id in path}
        assert any(path.endswith("/MLmodel") for path in uploads) and set(uploads.values()) == {1}, uploads
        linked = Counter(
            (m["key"], m.get("step", 0)) for body in mirror.batches for m in body.get("metrics", [])
            if m.get("model_id") == copy.model_id
        )
        assert linked == {("acc", 0): 1, ("val_acc", 0): 1}, linked
        # A replay after a crash, by a kernel that lost the id pair: the copy is found by its tag.
        from dbxml_magics.journal.delivery import deliver

        outbox, key = ext.journal.outbox, ext.link.mirror.display
        outbox.db().execute("DELETE FROM models")
        payload = {"model_id": model_id, "name": "model", "model_type": None, "tags": [], "params": []}
        deliver(ext.journal, key, [(0, run_id, "create_model", json.dumps(payload), 0.0)])
        assert outbox.remote_model(key, model_id) == copy.model_id
        assert len(mirror_client.search_logged_models([mirror_run.info.experiment_id])) == 1
        assert sum(1 for _, method, path in mirror.seen if (method, path) == ("POST", base)) == 1
    finally:
        mirror.stop()


@pytest.mark.parametrize("status, when", [(429, "seconds"), (503, "date")])
def test_retry_after_is_honoured(ext, shell, proxy, monkeypatch, status, when):
    # No retries inside MLflow's HTTP layer (it sleeps on Retry-After by itself): what is
    # measured is the journal's own backoff, which alone would retry after at most 1 s.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    shell.run_line_magic("config", "DbxmlMagics.retry_max_delay = 1")
    shell.run_line_magic("config", "DbxmlMagics.flush_interval = 0.2")
    shell.run_line_magic("aml_link", f"--uri {proxy.uri}")
    refusals = iter([1])

    def throttle(endpoint):
        if endpoint != "runs/log-batch" or next(refusals, None) is None:
            return None
        value = "2" if when == "seconds" else email.utils.formatdate(time.time() + 3, usegmt=True)
        return status, {"Retry-After": value}

    proxy.fault = throttle
    shell.run_cell_magic("track", "throttled", CELL)
    run_id = ext.last_run.run_id
    assert ext.journal.flush(timeout=60)  # forced retries every 0.5 s: Retry-After still wins
    attempts = [t for t, method, path in proxy.seen if path.endswith("runs/log-batch")]
    assert proxy.refused[status] == 1 and len(attempts) >= 2, attempts
    # An HTTP date has one-second resolution: 3 s ahead is at least 2 s ahead.
    assert attempts[1] - attempts[0] >= 1.9, attempts
    _once_each(proxy, run_id, 300)


def test_each_point_once_across_reload_during_a_slow_flush(ext, shell, proxy):
    shell.run_line_magic("aml_link", f"--uri {proxy.uri}")
    proxy.delay = 1.0  # every write answered a second late: the flush is slow
    cell = "import mlflow\nfor r in range(6):\n    with mlflow.start_run(nested=True):\n" \
           "        for i in range(300):\n            mlflow.log_metric('x', i, step=i)\n"
    shell.run_cell_magic("track", "slow", cell)
    shell.run_line_magic("reload_ext", "dbxml_magics")
    from dbxml_magics.session import get_session

    session = get_session(shell)
    shell.run_line_magic("aml_link", f"--uri {proxy.uri}")
    proxy.delay = 0.0
    assert session.journal.flush(timeout=180, everyone=True)
    runs = {key[0] for key in proxy.points}
    assert len(runs) == 6
    for run_id in runs:
        _once_each(proxy, run_id, 300)


def _kernel_script(uri: str, body: str, lease: float = 1.0) -> str:
    return textwrap.dedent(
        f"""
        import os, sys
        from IPython.testing.globalipapp import start_ipython
        ip = start_ipython()
        ip.run_line_magic("load_ext", "dbxml_magics")
        for setting in ("flush_interval = 0.2", "journal_lease = {lease}", "retry_max_delay = 1",
                        "show_panel_on_link = False"):
            ip.run_line_magic("config", "DbxmlMagics." + setting)
        ip.run_line_magic("aml_link", "--uri {uri}")
        from dbxml_magics.session import get_session
        session = get_session(ip)
        """
    ) + textwrap.dedent(body)


def _env():
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return env


def _start(tmp_path, script):
    return subprocess.Popen(
        [sys.executable, "-c", script], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )


def _dead_kernel(tmp_path, proxy, cell) -> str:
    """A kernel that queued a run and died before shipping any of it."""
    proxy.fault = lambda endpoint: (503, {})
    script = _kernel_script(proxy.uri, f"""
        ip.run_cell_magic("track", "dead", {cell!r})
        print("RUN", session.last_run.run_id, flush=True)
        os._exit(9)
        """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=300)
    proxy.fault = None
    assert done.returncode == 9, done.stderr[-3000:]
    return next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("RUN "))


def test_two_live_kernels_and_a_dead_kernels_rows(tmp_path, proxy):
    dead = _dead_kernel(tmp_path, proxy, CELL)
    live = _kernel_script(proxy.uri, f"""
        ip.run_cell_magic("track", "live", {CELL!r})
        ip.run_line_magic("aml_sync", "--flush --timeout 120")
        print("RUN", session.last_run.run_id, flush=True)
        """)
    kernels = [_start(tmp_path, live) for _ in range(2)]
    runs = [dead]
    for kernel in kernels:
        out, err = kernel.communicate(timeout=400)
        assert kernel.returncode == 0, err[-3000:]
        runs.append(next(line.split()[1] for line in out.splitlines() if line.startswith("RUN ")))
    deadline = time.monotonic() + 120
    while len(proxy.metric_count(dead)) < 300 and time.monotonic() < deadline:
        time.sleep(0.5)  # the dead kernel's rows may still be going out with a live kernel's exit flush
    for run_id in runs:
        _once_each(proxy, run_id, 300)


def test_sigkill_during_shipping_resends_only_the_batch_in_flight(tmp_path, proxy):
    kills = int(os.environ.get("DBXML_TEST_KILLS", "20"))
    runs, points = kills + 5, 40
    cell = (
        f"import mlflow\nfor r in range({runs}):\n    with mlflow.start_run(nested=True):\n"
        f"        for i in range({points}):\n            mlflow.log_metric('x', r * 1000 + i, step=i)\n"
    )
    _dead_kernel(tmp_path, proxy, cell)
    replay = _kernel_script(proxy.uri, """
        print("READY", flush=True)
        ip.run_line_magic("aml_sync", "--flush --timeout 240")
        print("DONE", flush=True)
        """)
    held = []
    for _ in range(kills):
        proxy.hold_batch(after=1)  # the first batch (a resend of the last one held) passes
        kernel = _start(tmp_path, replay)
        try:
            assert proxy.held.wait(240), "no batch was held: the kernel shipped nothing"
            held.append(proxy.held_body)
        finally:
            os.killpg(kernel.pid, signal.SIGKILL)
            kernel.wait(timeout=60)
            proxy.release()
    last = _start(tmp_path, replay)
    out, err = last.communicate(timeout=400)
    assert last.returncode == 0 and "DONE" in out, err[-3000:]

    logged = {(r * 1000 + i, i) for r in range(runs) for i in range(points)}
    seen = Counter()
    for (run_id, key, step, timestamp, value), n in proxy.points.items():
        if key == "x":
            seen[(int(value), step)] += n
    assert set(seen) == logged  # every point present
    in_flight = Counter((int(m["value"]), int(m.get("step", 0))) for body in held for m in body.get("metrics", []))
    resent = {point: n - 1 for point, n in seen.items() if n > 1}
    # Only points of a batch that was in flight at a kill were sent again, once per kill.
    assert all(point in in_flight and extra <= in_flight[point] for point, extra in resent.items()), resent
    assert len(held) == kills

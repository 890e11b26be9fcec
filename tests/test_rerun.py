"""%aml_rerun: a tracked run's cell again, its params put back as variables."""

import subprocess
import sys

import mlflow
import pytest
from IPython.core.error import UsageError

from dbxml_magics.rerun import cell_inputs, rerun

CELL = (
    "import mlflow\n"
    "from sklearn.linear_model import ElasticNet\n"
    "model = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, random_state=0).fit(X, y)\n"
    "mlflow.log_param('alpha', alpha)\n"
    "r2 = model.score(X, y)\n"
)


def _client(tmp_path):
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_rerun_restores_params_and_overrides_with_set(ext, shell, tmp_path, capsys):
    shell.user_ns.update(X=[[0.0], [1.0], [2.0], [3.0]], y=[0.0, 1.1, 1.9, 3.2], alpha=0.5, l1_ratio=0.2)
    shell.run_cell_magic("track", "enet --params l1_ratio --metrics r2 --tags team=ml", CELL)
    first = ext.last_run
    shell.user_ns.update(alpha=99.0, l1_ratio=0.9)  # changed since: the re-run must not use these

    shell.run_line_magic("aml_rerun", "enet --set alpha=0.05")
    err = capsys.readouterr().err
    second = ext.last_run
    assert second.name == "enet-rerun" and second.status == "FINISHED"
    client = _client(tmp_path)
    run = client.get_run(second.run_id)
    assert run.data.params == {"alpha": "0.05", "l1_ratio": "0.2"}
    assert run.data.tags["dbxml.rerun_of"] == first.run_id
    assert "r2" in run.data.metrics  # --metrics r2 of the first run, recorded in dbxml.track
    assert shell.user_ns["alpha"] == 0.05 and shell.user_ns["l1_ratio"] == 0.2
    assert "alpha=0.05 (--set), l1_ratio=0.2" in err
    assert "not restored, not params of run" in err and "X, y (their current values are used)" in err
    assert "ElasticNet" not in err.split("not restored")[1]  # imported by the cell itself

    shell.run_line_magic("aml_rerun", f"{first.run_id} --name again")
    assert ext.last_run.name == "again"
    assert _client(tmp_path).get_run(ext.last_run.run_id).data.params["alpha"] == "0.5"


def test_rerun_of_a_past_sessions_run_id(ext, shell, tmp_path):
    past = (
        "from IPython.testing.globalipapp import start_ipython\n"
        "ip = start_ipython()\n"
        "ip.run_line_magic('load_ext', 'dbxml_magics')\n"
        "ip.user_ns['epochs'] = 3\n"
        "ip.run_cell_magic('track', 'past --params epochs', 'history = [1 / (e + 1) for e in range(epochs)]\\nlast = history[-1]')\n"
        "from dbxml_magics.session import get_session\n"
        "print('RUN', get_session(ip).last_run.run_id)\n"
    )
    out = subprocess.run([sys.executable, "-c", past], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=True)
    run_id = next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("RUN "))
    shell.user_ns.pop("epochs", None)  # the shell outlives tests: only the re-run may set it now

    shell.run_line_magic("aml_rerun", f"{run_id} --set epochs=5")
    assert shell.user_ns["last"] == pytest.approx(1 / 5)
    run = _client(tmp_path).get_run(ext.last_run.run_id)
    assert run.data.params == {"epochs": "5"}
    assert run.data.tags["dbxml.rerun_of"] == run_id
    assert run.info.run_name == "past-rerun"


def test_panel_entry_point_takes_values(ext, shell, tmp_path):
    shell.user_ns["n"] = 2
    shell.run_cell_magic("track", "square --params n", "sq = n * n")
    assert rerun(ext, shell, "last", {"n": "7"}) is None
    assert shell.user_ns["sq"] == 49
    rerun(ext, shell, "square", {"n": 3}, name="by-value")
    assert shell.user_ns["sq"] == 9 and ext.last_run.name == "by-value"


@pytest.mark.parametrize(
    "line, message",
    [
        ("nosuchrun", "No run named"),
        ("last --set 1x=2", "NAME=VALUE"),
        ("last --set total=3", "assigns it before reading it"),
        ("last --set unrelated=3", "does not read it"),
    ],
)
def test_bad_reruns_are_one_line_and_run_nothing(ext, shell, line, message):
    shell.user_ns["k"] = 1
    shell.run_cell_magic("track", "base --params k", "total = k + 1")
    before = len(ext.runs)
    with pytest.raises(UsageError, match=message) as info:
        shell.run_line_magic("aml_rerun", line)
    assert "\n" not in str(info.value)
    assert len(ext.runs) == before


def test_run_without_cell_is_one_line(ext, shell, tmp_path):
    shell.run_cell_magic("track", "hidden --no-source", "x = 1")
    with pytest.raises(UsageError, match="no recorded cell"):
        shell.run_line_magic("aml_rerun", "last")
    ext.activate()
    with mlflow.start_run() as plain:
        pass
    with pytest.raises(UsageError, match="no recorded cell"):
        shell.run_line_magic("aml_rerun", plain.info.run_id)


def test_unknown_run_id_is_one_line(ext, shell):
    with pytest.raises(UsageError, match="Cannot read run 0123456789abcdef0123456789abcdef"):
        shell.run_line_magic("aml_rerun", "0123456789abcdef0123456789abcdef")


@pytest.mark.parametrize(
    "cell, inputs",
    [
        ("a = b + 1\nc = a * d", ["b", "d"]),
        ("x += 1", ["x"]),
        ("for i in range(n):\n    total = total + i", ["n", "total"]),
        ("import numpy as np\nfrom math import sqrt\nv = np.ones(k) * sqrt(m)", ["k", "m"]),
        ("ys = [f(v) for v in xs if v > cut]", ["f", "xs", "cut"]),
        ("def g(p):\n    return p * scale\nout = g(3)", ["scale"]),
        ("with open(path) as fh:\n    text = fh.read()\nprint(text)", ["path"]),
        ("try:\n    r = 1 / z\nexcept ZeroDivisionError as e:\n    r = e", ["z"]),
        ("if (n := len(items)) > 2:\n    big = n", ["items"]),
        ("obj.attr = value\nlst[i] = 0", ["value", "obj", "lst", "i"]),
        ("%time y = slow(x)", ["slow", "x"]),
        ("def broken(:", []),
    ],
)
def test_cell_inputs(shell, cell, inputs):
    assert cell_inputs(shell, cell)[0] == inputs


def test_rerun_of_a_sweep_child_by_name(ext, shell, tmp_path):
    """The README's example: one combination of a sweep again, one value changed, as a run of its own."""
    shell.run_cell_magic("track", "tune --sweep alpha=0.1,1 max_iter=100,300 --metrics r2", "r2 = 1 - alpha / max_iter")
    child = next(r for r in ext.runs if r.name == "tune[alpha=0.1,max_iter=300]")
    shell.run_line_magic("aml_rerun", "tune[alpha=0.1,max_iter=300] --set max_iter=1000")
    again = ext.last_run
    assert again.name == "tune[alpha=0.1,max_iter=300]-rerun" and again.parent_run_id is None
    run = _client(tmp_path).get_run(again.run_id)
    assert run.data.params == {"alpha": "0.1", "max_iter": "1000"}
    assert run.data.metrics["r2"] == pytest.approx(1 - 0.1 / 1000)
    assert run.data.tags["dbxml.rerun_of"] == child.run_id and "mlflow.parentRunId" not in run.data.tags

"""%aml_deploy / %aml_invoke on the local target: real `mlflow models serve` processes.

Server start-up costs 8-60 s here, so the tests that need one run several checks on it; the
bad-input tests run without any server. After every test no serving process may be left:
they are found by the endpoint folder on their command line.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.parse
from pathlib import Path

import mlflow
import numpy as np
import pytest
from IPython.core.error import UsageError

TRAIN = """
import pandas as pd
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
X, y = load_iris(return_X_y=True, as_frame=True)
clf = LogisticRegression(max_iter=300).fit(X, y)
"""


def serving_processes(folder: Path) -> list[int]:
    """Live processes whose command line names `folder` (our servers run from its endpoints/)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(folder) in cmdline and "models" in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_gone(folder: Path, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := serving_processes(folder)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def group_members(pgid: int) -> list[int]:
    """Live members of a process group (the mlflow CLI and its uvicorn)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(pgid) and fields[0] != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture
def trained(ext, shell):
    shell.run_cell(TRAIN)
    shell.run_cell_magic("track", "train --no-source", "acc = 0.97")
    return ext


def test_request_body_keeps_each_column_type_and_falls_back_to_pandas():
    """Numeric frames are written with json (pandas' writer costs ~0.5 ms a call): an int column
    stays ints beside floats and bools, for MLflow's schema check; NaN, dates, strings and
    extension types go through pandas' writer (null, ISO dates)."""
    import json

    import pandas as pd

    from dbxml_magics.deploy.payload import split_body

    mixed = pd.DataFrame({"n": np.array([1, 2], dtype="int32"), "x": [0.1, 2.5], "ok": [True, False]})
    split = json.loads(split_body(mixed))["dataframe_split"]
    assert split == {"columns": ["n", "x", "ok"], "data": [[1, 0.1, True], [2, 2.5, False]]}
    assert [type(v) for v in split["data"][0]] == [int, float, bool]
    floats = pd.DataFrame(np.random.default_rng(0).normal(size=(3, 4)), columns=list("abcd"))
    split = json.loads(split_body(floats, "input_data"))["input_data"]
    pd.testing.assert_frame_equal(pd.DataFrame(split["data"], columns=split["columns"]), floats)  # exact floats
    for other in (pd.DataFrame({"x": [1.0, np.nan]}), pd.DataFrame({"d": pd.to_datetime(["2024-01-01"]), "s": ["a"]}),
                  pd.DataFrame({"i": pd.array([1, None], dtype="Int64")}), pd.DataFrame({0: [1], 1: [2]})):
        assert json.loads(split_body(other))["dataframe_split"] == json.loads(
            other.to_json(orient="split", index=False, date_format="iso"))


@pytest.mark.parametrize("shape", ["1-D array", "Series", "named Series", "one-column frame", "(n, 1) array",
                                   "2-D array", "frame", "dict of columns"])
def test_predictions_come_back_as_a_series_or_a_dataframe(shape):
    """What MLflow's scoring server writes for each kind of `predict` output (its own
    `predictions_to_json`), read back: one value per row is a Series, several a DataFrame,
    both indexed like the input frame."""
    import io
    import json

    import pandas as pd
    from mlflow.pyfunc.scoring_server import predictions_to_json

    from dbxml_magics.deploy.payload import read_predictions

    index = pd.Index([10, 11, 12])
    raw = {
        "1-D array": np.array([0, 2, 1]),
        "Series": pd.Series([0, 2, 1]),
        "named Series": pd.Series([0, 2, 1], name="species"),
        "one-column frame": pd.DataFrame({"species": [0, 2, 1]}),
        "(n, 1) array": np.array([[0], [2], [1]]),
        "2-D array": np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]]),
        "frame": pd.DataFrame({"label": [0, 2, 1], "score": [0.9, 0.8, 0.7]}),
        "dict of columns": {"label": [0, 2, 1], "score": [0.9, 0.8, 0.7]},
    }[shape]
    wire = io.StringIO()
    predictions_to_json(raw, wire)
    for answer in (json.loads(wire.getvalue()), json.loads(wire.getvalue())["predictions"]):  # MLflow's, Azure's bare list
        got = read_predictions(answer, index)
        assert list(got.index) == [10, 11, 12]
        if shape in ("1-D array", "Series", "named Series", "one-column frame", "(n, 1) array"):
            assert isinstance(got, pd.Series) and got.tolist() == [0, 2, 1]
            assert got.name == ("species" if shape in ("named Series", "one-column frame") else "prediction")
        elif shape == "2-D array":
            assert isinstance(got, pd.DataFrame) and got.to_numpy().tolist() == raw.tolist()
        else:
            assert isinstance(got, pd.DataFrame) and list(got.columns) == ["label", "score"]
            assert got["label"].tolist() == [0, 2, 1] and got["score"].tolist() == [0.9, 0.8, 0.7]


def test_bad_input_is_one_line_and_starts_nothing(trained, shell, tmp_path, capsys):
    with pytest.raises(UsageError, match=r"so `last` means nothing yet; .* or name it: models:/NAME/VERSION") as nothing:
        shell.run_line_magic("aml_deploy", "iris-clf last")
    assert "%aml_score" not in str(nothing.value), "the hint names the magic the user did not call"
    shell.run_line_magic("aml_register", "iris --model clf --input-example X")
    shell.user_ns["not_a_frame"] = [1, 2, 3]
    cases = [
        ("aml_deploy", "1iris last", "not valid: 3-32 characters, a letter first"),
        ("aml_deploy", "ab last", "not valid"),
        ("aml_deploy", "iris_clf last", "not valid"),
        ("aml_deploy", "iris-clf- last", "not ending with '-'"),
        ("aml_deploy", "iris-clf", "Name the model to serve"),
        ("aml_deploy", "iris-clf nosuchmodel", "No registered model named 'nosuchmodel'"),
        ("aml_deploy", "iris-clf iris@nosuchalias", "has no alias 'nosuchalias'"),
        ("aml_deploy", "iris-clf models:/iris/7", "has no version 7"),
        ("aml_deploy", "iris-clf last --instance-count 2", "--instance-count apply to --target aml only"),
        ("aml_deploy", "iris-clf last --port 70000", "not a port number"),
        ("aml_deploy", "--delete nosuch", "No endpoint named 'nosuch'"),
        ("aml_deploy", "--list iris", "--list takes no endpoint"),
        ("aml_deploy", "", "Name the endpoint and the model"),
        ("aml_invoke", "nosuch --df X", "No endpoint named 'nosuch'"),
        ("aml_invoke", "nosuch --df missing", "No variable 'missing'"),
        ("aml_invoke", "nosuch --df not_a_frame", "is a list, not a pandas DataFrame"),
    ]
    for magic, line, expected in cases:
        with pytest.raises(UsageError, match=expected):
            shell.run_line_magic(magic, line)
    # A port held by another process: refused before anything is copied or started.
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(UsageError, match=f"Port {port} on 127.0.0.1 is in use"):
            shell.run_line_magic("aml_deploy", f"iris-clf last --port {port}")
    # A version that resolves (its MLmodel is read) but whose other files cannot be copied: one
    # line, and no endpoint folder left behind.
    shell.run_line_magic("aml_register", "iris-gone --model clf --input-example X")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    files = Path(urllib.parse.urlparse(mlflow.MlflowClient(store, store).get_model_version_download_uri("iris-gone", "1")).path)
    (files / "requirements.txt").unlink()
    (files / "requirements.txt").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match=r"^Cannot copy the files of iris-gone v1: "):
        shell.run_line_magic("aml_deploy", "iris-gone models:/iris-gone/1")
    assert trained.endpoints == {}
    assert not (tmp_path / ".dbxml" / "endpoints").exists() or not any((tmp_path / ".dbxml" / "endpoints").iterdir())
    assert serving_processes(tmp_path) == []
    assert "No endpoints yet" in _list(shell, capsys)


def _list(shell, capsys) -> str:
    capsys.readouterr()
    shell.run_line_magic("aml_deploy", "--list")
    return capsys.readouterr().out


def test_local_endpoints_serve_invoke_delete_and_stop_on_unload(trained, shell, tmp_path, capsys, monkeypatch):
    """Two endpoints (a version by `last` and one by alias): predictions equal the in-memory
    model's; --delete stops one, %unload_ext the other; nothing is left running."""
    shell.run_line_magic("aml_register", "iris --model clf --input-example X")
    shell.run_cell("clf2 = LogisticRegression(max_iter=300, C=0.05).fit(X, y)")
    shell.run_line_magic("aml_register", "iris --model clf2 --alias champion")
    capsys.readouterr()
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")  # MLflow's default (conftest turns it off)

    shell.run_line_magic("aml_deploy", "iris-v1 models:/iris/1")
    out, err = capsys.readouterr()
    assert "Endpoint iris-v1 (local) serves iris v1 at http://127.0.0.1:" in out
    # Progress while it starts (a terminal: a line every few seconds on stderr).
    assert "dbxml: local endpoint iris-v1: copying iris v1 (0 s)" in err
    assert re.search(r"dbxml: local endpoint iris-v1: starting mlflow models serve \(pid \d+\) \(\d+ s\)", err), err
    assert "Downloading artifacts" not in err and " INFO " not in err, "MLflow's bar and log lines stay out of the cell"
    v1 = trained.endpoints["iris-v1"]
    assert v1.state == "Ready" and v1.model == "iris v1" and v1.target == "local"

    X = shell.user_ns["X"]
    predictions = shell.run_line_magic("aml_invoke", "iris-v1 --df X")
    assert predictions.name == "prediction"
    assert list(predictions.index) == list(X.index)
    np.testing.assert_array_equal(predictions.to_numpy(), shell.user_ns["clf"].predict(X))
    shell.user_ns["one"] = X.iloc[[7]]
    assert shell.run_line_magic("aml_invoke", "iris-v1 --df one --into one_pred") is None
    assert shell.user_ns["one_pred"].tolist() == shell.user_ns["clf"].predict(X.iloc[[7]]).tolist()
    assert "1 predictions from iris-v1 (iris v1) in one_pred." in capsys.readouterr().out

    # The server's own reason for refusing an input, on one line.
    shell.run_cell("wrong = X.rename(columns={'petal width (cm)': 'petal_width'})")
    with pytest.raises(UsageError, match=r"refused the input: HTTP 400: .*missing inputs.*petal width") as refused:
        shell.run_line_magic("aml_invoke", "iris-v1 --df wrong")
    assert "\n" not in str(refused.value)
    with pytest.raises(UsageError, match="already serves iris v1"):
        shell.run_line_magic("aml_deploy", "iris-v1 last")

    shell.run_line_magic("aml_deploy", "champ iris@champion")
    champ = trained.endpoints["champ"]
    assert champ.model == "iris v2" and champ.url != v1.url
    np.testing.assert_array_equal(
        shell.run_line_magic("aml_invoke", "champ --df X").to_numpy(), shell.user_ns["clf2"].predict(X)
    )
    listing = _list(shell, capsys)
    assert "iris-v1" in listing and "champ" in listing and "iris v2" in listing and "Ready" in listing
    from dbxml_magics.panel import live_panel, panel_text

    assert f"endpoint champ (local): iris v2, Ready, {champ.url}" in panel_text(trained)
    shell.run_line_magic("aml_panel", "")
    panel = live_panel(trained)  # the widget panel: its header follows the endpoints
    assert f"endpoint champ (local): iris v2, Ready, {champ.url}" in panel.header.value
    assert f"endpoint iris-v1 (local): iris v1, Ready, {v1.url}" in panel.header.value

    v1_pid = v1.handle.pid
    capsys.readouterr()
    shell.run_line_magic("aml_deploy", "--delete iris-v1")
    assert "Deleted local endpoint iris-v1 (served iris v1); its server is stopped." in capsys.readouterr().out
    assert group_members(v1_pid) == []
    assert "iris-v1" not in trained.endpoints and v1.state == "Deleted"
    assert "endpoint iris-v1" not in panel.header.value and "endpoint champ" in panel.header.value
    with pytest.raises(UsageError, match="No endpoint named 'iris-v1' in this session \\(endpoints: champ\\)"):
        shell.run_line_magic("aml_invoke", "iris-v1 --df X")
    assert len(serving_processes(tmp_path)) >= 1, "champ still serves"

    shell.run_line_magic("unload_ext", "dbxml_magics")
    assert wait_gone(tmp_path) == []


BROKEN = """
import mlflow.pyfunc

class Broken(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        raise RuntimeError("this model refuses to load on purpose")

    def predict(self, context, model_input):
        return model_input

broken = Broken()
"""


def test_server_that_fails_to_start_is_one_line_with_its_log(ext, shell, tmp_path):
    shell.run_cell(BROKEN)
    shell.run_cell_magic("track", "broken --no-source", "x = 1")
    shell.run_line_magic("aml_register", "broken --model broken")
    with pytest.raises(UsageError, match="exited with code .* before answering: .*refuses to load on purpose") as failed:
        shell.run_line_magic("aml_deploy", "broken-ep last")
    assert "\n" not in str(failed.value)
    assert ext.endpoints == {}
    assert serving_processes(tmp_path) == []
    assert not (tmp_path / ".dbxml" / "endpoints" / "broken-ep").exists()


KERNEL = """
import os, sys
from IPython.testing.globalipapp import start_ipython
ip = start_ipython()
ip.run_line_magic("load_ext", "dbxml_magics")
ip.run_cell('''{train}''')
ip.run_cell_magic("track", "t --no-source", "a = 1")
ip.run_line_magic("aml_register", "iris --model clf")
ip.run_line_magic("aml_deploy", "iris-ep last")
from dbxml_magics.session import get_session
print("READY", get_session(ip).endpoints["iris-ep"].handle.pid, flush=True)
sys.stdin.read()
"""


def test_a_killed_kernel_takes_its_server_along(tmp_path):
    """SIGKILL leaves no atexit: the group's guard (process_group) sees the kernel gone and stops the group."""
    script = tmp_path / "kernel.py"
    script.write_text(KERNEL.format(train=textwrap.indent(TRAIN, "")))
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    kernel = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, env=env,
    )
    try:
        pid = None
        for line in kernel.stdout:
            if line.startswith("READY"):
                pid = int(line.split()[1])
                break
        assert pid is not None, "the endpoint never became ready"
        assert len(group_members(pid)) == 3  # the guard, the mlflow CLI and uvicorn
        kernel.send_signal(signal.SIGKILL)
        kernel.wait(timeout=30)
        assert wait_gone(tmp_path) == []
    finally:
        if kernel.poll() is None:
            kernel.kill()
            kernel.wait(timeout=30)


# ---------------------------------------------------------------------- Azure ML (emulated)
from aml_emulator import aml_emulator, aml_workspace, azure_env, link_line  # noqa: E402,F401 - fixtures
from online_endpoints import OnlineEndpoints  # noqa: E402


@pytest.fixture
def online_endpoints(aml_workspace, mlflow_server, tmp_path):
    emulated = OnlineEndpoints(aml_workspace.arm, mlflow_server.uri, tmp_path / "azure")
    yield emulated
    emulated.close()


def test_aml_endpoint_through_the_plugin(ext, shell, aml_workspace, online_endpoints, tmp_path, capsys):
    """create -> invoke -> second deployment -> traffic -> update -> delete, all through the
    azureml-mlflow plugin's own client against the TLS ARM emulator; each deployment a real server."""
    azure = online_endpoints
    shell.run_line_magic("aml_link", link_line(aml_workspace, "--auth managed-identity"))
    shell.run_cell(TRAIN)
    shell.run_cell("clf2 = LogisticRegression(max_iter=300, C=0.05).fit(X, y)")
    shell.run_cell_magic("track", "train --no-source", "acc = 0.97")
    shell.run_line_magic("aml_register", "iris --model clf --alias prod")
    shell.run_line_magic("aml_register", "iris --model clf2")
    X = shell.user_ns["X"]

    # A deployment Azure refuses (quota): the service's reason, and the new endpoint is gone.
    azure.fail_next = ("QuotaExceeded", "Not enough quota available for Standard_DS3_v2 in this subscription.")
    with pytest.raises(UsageError, match="failed and was removed: .*QuotaExceeded.*Not enough quota") as refused:
        shell.run_line_magic("aml_deploy", "iris-aml iris@prod")
    assert "\n" not in str(refused.value)
    assert azure.endpoints == {} and azure.deployments == {} and ext.endpoints == {}

    capsys.readouterr()
    shell.run_line_magic("aml_deploy", "iris-aml iris@prod --instance-count 2")
    out = capsys.readouterr().out
    assert not re.search(r"^\.+", out, re.M) and "...." not in out, "the plugin's polling dots stay out of the cell"
    assert "Endpoint iris-aml (Azure ML, workspace ws-test) serves iris v1 in deployment default" in out
    record = ext.endpoints["iris-aml"]
    assert record.target == "aml" and record.state == "Ready" and record.traffic == {"default": 100}
    put = azure.deployment_bodies[-1]
    assert put["sku"]["capacity"] == 2
    assert put["properties"]["model"].endswith("/models/iris/versions/1"), "the alias is pinned before the plugin"
    assert put["properties"]["requestSettings"]["requestTimeout"] == "PT1M30S"  # sent as PT90S, an ISO duration
    assert put["properties"]["endpointComputeType"] == "Managed"
    np.testing.assert_array_equal(
        shell.run_line_magic("aml_invoke", "iris-aml --df X").to_numpy(), shell.user_ns["clf"].predict(X)
    )

    # Blue/green: a second deployment with 20% of traffic, then all of it.
    shell.run_line_magic("aml_deploy", "iris-aml models:/iris/2 --deployment green --traffic 20")
    assert azure.endpoints["iris-aml"]["properties"]["traffic"] == {"default": 80, "green": 20}
    np.testing.assert_array_equal(
        shell.run_line_magic("aml_invoke", "iris-aml --df X --deployment green").to_numpy(),
        shell.user_ns["clf2"].predict(X),
    )
    shell.run_line_magic("aml_deploy", "iris-aml --deployment green --traffic 100")
    assert azure.endpoints["iris-aml"]["properties"]["traffic"] == {"default": 0, "green": 100}
    np.testing.assert_array_equal(
        shell.run_line_magic("aml_invoke", "iris-aml --df X").to_numpy(), shell.user_ns["clf2"].predict(X)
    )

    # Updating a deployment in place keeps its instance count (the plugin would reset it to 1).
    shell.run_line_magic("aml_deploy", "iris-aml models:/iris/2")
    patch = azure.deployment_bodies[-1]
    assert patch["sku"]["capacity"] == 2 and patch["properties"]["model"].endswith("/models/iris/versions/2")

    # A container that never answers: the plugin's own scoring call would wait for ever; ours is bounded.
    azure.stalling.set()
    try:
        started = time.monotonic()
        with pytest.raises(UsageError, match=r"^Endpoint 'iris-aml' gave no answer within 2 s; raise --timeout\.$"):
            shell.run_line_magic("aml_invoke", "iris-aml --df X --timeout 2")
        assert time.monotonic() - started < 30
    finally:
        azure.stalling.clear()

    listing = _list(shell, capsys)
    assert "iris-aml" in listing and "aml" in listing

    shell.run_line_magic("aml_deploy", "--delete iris-aml --deployment default")
    assert set(d for _, d in azure.deployments) == {"green"}
    shell.run_line_magic("aml_deploy", "--delete iris-aml")
    assert azure.endpoints == {} and azure.servers == {}
    assert "iris-aml" not in ext.endpoints
    with pytest.raises(UsageError, match="No endpoint named 'iris-aml' in workspace 'ws-test'"):
        shell.run_line_magic("aml_invoke", "iris-aml --df X")
    assert wait_gone(tmp_path) == []


def test_aml_failures_are_one_line_and_leave_nothing(ext, shell, aml_workspace, online_endpoints, tmp_path):
    """Azure's failures as its operation status reports them (ARM's error format): an image build
    that fails, a readiness probe that fails with the container running, and --timeout passing
    while the deployment still provisions."""
    azure = online_endpoints
    shell.run_line_magic("aml_link", link_line(aml_workspace, "--auth managed-identity"))
    shell.run_cell(TRAIN)
    shell.run_cell_magic("track", "train --no-source", "acc = 0.97")
    shell.run_line_magic("aml_register", "iris --model clf --alias prod")

    # The image build: ARM's generic error, the specific cause nested in its details.
    azure.fail_next = {
        "code": "DeploymentFailed",
        "message": "At least one resource deployment operation failed. Please list deployment operations for details.",
        "details": [{"code": "ImageBuildFailure", "message": "The image build failed: pip could not install "
                     "'scikit-learn==0.0'. Build log: https://ws.example/build/42.log"}],
    }
    with pytest.raises(UsageError, match=r"failed and was removed: ImageBuildFailure: The image build failed: pip could "
                       r"not install 'scikit-learn==0.0'\. Build log") as failed:
        shell.run_line_magic("aml_deploy", "iris-aml iris@prod")
    assert "\n" not in str(failed.value)
    assert azure.endpoints == {} and azure.deployments == {} and ext.endpoints == {}

    # The readiness probe: the container runs but never answers /ping in time; it goes with the endpoint.
    azure.probe_window = 0.5
    with pytest.raises(UsageError, match=r"failed and was removed: ResourceNotReady: Readiness probe failed: GET /ping") \
            as failed:
        shell.run_line_magic("aml_deploy", "iris-aml iris@prod")
    assert "\n" not in str(failed.value)
    assert azure.endpoints == {} and azure.servers == {} and ext.endpoints == {}
    assert wait_gone(tmp_path) == [], "the crash-looping container was stopped with its endpoint"
    azure.probe_window = None

    # --timeout while Azure keeps the operation InProgress: the states, on record as such, and how to delete.
    azure.hold = True
    with pytest.raises(UsageError, match=r"did not finish within --timeout 20 s: Azure reports the deployment Creating, "
                       r"the endpoint Succeeded with traffic none, and goes on provisioning\. Follow it with "
                       r"%aml_deploy --list; remove it with %aml_deploy --delete iris-slow\.$") as late:
        shell.run_line_magic("aml_deploy", "iris-slow iris@prod --timeout 20")
    assert "\n" not in str(late.value)
    assert ext.endpoints["iris-slow"].state == "Creating", "on record as provisioning, not as ready"
    assert [op["status"] for op in azure.operations.values()][-1] == "InProgress"
    shell.run_line_magic("aml_deploy", "--delete iris-slow")
    assert azure.endpoints == {} and "iris-slow" not in ext.endpoints
    assert [op["status"] for op in azure.operations.values()][-1] == "Canceled"
    assert wait_gone(tmp_path) == []


def test_aml_in_both_mode_is_the_default_and_serves_the_mirrors_copy(ext, shell, aml_workspace, online_endpoints,
                                                                     tmp_path, capsys):
    """Linked in `both` mode the default target is the mirror's workspace, and what it deploys is
    the mirror's copy of the version the primary resolved (found by its source tag), not the
    primary's version number. A run's model is no registered version: one line, nothing created."""
    import uuid

    azure = online_endpoints
    shell.run_line_magic("config", "DbxmlMagics.flush_timeout = 60")
    shell.run_cell(TRAIN)
    name = f"iris-both-{uuid.uuid4().hex[:8]}"
    # A first version in the workspace only, so that the mirror's numbers differ from the primary's.
    shell.run_line_magic("aml_link", link_line(aml_workspace, "--auth managed-identity"))
    shell.run_cell_magic("track", "in-aml --no-source", "acc = 0.9")
    shell.run_line_magic("aml_register", f"{name} --model clf")
    shell.run_line_magic("aml_unlink", "")
    shell.run_line_magic("aml_link", link_line(aml_workspace, "--mode both --auth managed-identity"))
    shell.run_cell_magic("track", "train --no-source", "acc = 0.97")
    shell.run_line_magic("aml_register", f"{name} --model clf --alias prod")
    mirror_version = ext.last_model.mirror_version
    assert (ext.last_model.version, mirror_version) == ("1", "2")
    run_id = ext.last_run.run_id

    with pytest.raises(UsageError, match=rf"runs:/{run_id}/model is not a registered model version; Azure ML deploys "
                       r"registered models: %aml_register NAME --uri runs:/") as refused:
        shell.run_line_magic("aml_deploy", f"iris-both runs:/{run_id}/model")
    assert "\n" not in str(refused.value)
    assert azure.endpoints == {} and ext.endpoints == {}

    capsys.readouterr()
    shell.run_line_magic("aml_deploy", f"iris-both {name}@prod")
    out = capsys.readouterr().out
    assert f"serves {name} v{mirror_version} (mirror of {name} v1) in deployment default" in out
    assert ext.endpoints["iris-both"].target == "aml"
    assert azure.deployment_bodies[-1]["properties"]["model"].endswith(f"/models/{name}/versions/{mirror_version}")
    X = shell.user_ns["X"]
    np.testing.assert_array_equal(
        shell.run_line_magic("aml_invoke", "iris-both --df X").to_numpy(), shell.user_ns["clf"].predict(X)
    )
    shell.run_line_magic("aml_deploy", "--delete iris-both")
    assert azure.endpoints == {} and azure.servers == {} and ext.endpoints == {}
    assert wait_gone(tmp_path) == []

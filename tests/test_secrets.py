"""Secrets stay secret. A real kernel (nbclient) runs every magic with a service-principal
secret and an MLflow token in its environment and a password inside the tracking URI
(MLflow sends it as basic auth; the test server ignores it), shows the panel, and fails two
links. Then every place a secret could surface is searched: cell outputs (streams, display
data, errors), the widgets' state, log records, the run's tags/params/metrics/artifacts and
the model versions in the store, and every file the session wrote in the working folder.
"""

import json
import socket
from pathlib import Path

import nbformat
import pytest
from mlflow.entities import ViewType
from nbclient import NotebookClient
from servers import free_port

SP_SECRET = "fake-sp-secret-Qx81zL"
TOKEN = "fake-mlflow-token-Wr27pV"
PASSWORD = "s3cr3t-pw"
SECRETS = (SP_SECRET, TOKEN, PASSWORD)


def _cells(uri_with_password: str, closed_port: int) -> list[tuple[str, bool]]:
    """(source, expected to fail) for each cell."""
    return [
        (
            (
                "import logging, os, mlflow\n"
                "# Every log record of the session, as a handler a user or a platform would add.\n"
                "handler = logging.FileHandler('records.log')\n"
                "handler.setFormatter(logging.Formatter('%(name)s %(levelname)s %(message)s'))\n"
                "logging.getLogger().addHandler(handler)\n"
                "logging.getLogger().setLevel(logging.INFO)\n"
                "%load_ext dbxml_magics\n"
                "%config DbxmlMagics.credential_timeout = 5\n"
                "def dump_widgets(path):\n"
                "    import json\n"
                "    from ipywidgets.widgets.widget import _instances\n"
                "    with open(path, 'w') as out:\n"
                "        json.dump([w.get_state() for w in list(_instances.values())], out, default=str)"
            ),
            False,
        ),
        (f"%aml_link --uri {uri_with_password} --experiment secrets-check", False),
        # The secret really is in play: MLflow talks to the server with it.
        (f"assert {PASSWORD!r} in mlflow.get_tracking_uri()", False),
        (
            (
                "%%track with-secrets --params alpha --metrics accuracy --tags stage=dev\n"
                "from sklearn.linear_model import LogisticRegression\n"
                "import pandas as pd\n"
                "frame = pd.DataFrame({'a': [0.0, 1.0, 2.0, 3.0], 'b': [1.0, 0.0, 1.0, 0.0]})\n"
                "alpha = 0.5\n"
                "clf = LogisticRegression().fit(frame, [0, 1, 0, 1])\n"
                "accuracy = float(clf.score(frame, [0, 1, 0, 1]))\n"
                "mlflow.log_metric('inside', 1.0)\n"
                "print('trained')"
            ),
            False,
        ),
        ("%%track failing\nraise ValueError('boom')", True),
        ("%aml_register secret-model --model clf --input-example frame --tags owner=me", False),
        ("%aml_score secret-model --df frame --into scored --limit 3", False),
        ("%aml_sync --flush --timeout 60", False),
        ("%aml_panel", False),
        ("dump_widgets('widget-state-linked.json')", False),
        (f"%aml_link --uri http://user:{PASSWORD}@127.0.0.1:{closed_port}", True),
        ("%aml_link -s 00000000-0000-0000-0000-000000000000 -g rg -w ws --auth service-principal", True),
        ("%aml_unlink", False),
        (
            (
                "dump_widgets('widget-state-end.json')\n"
                "from dbxml_magics.panel import live_panel\n"
                "from dbxml_magics.session import get_session\n"
                "assert live_panel(get_session()) is not None  # the panel was built and is in that state"
            ),
            False,
        ),
    ]


def _closed_port() -> int:
    port = free_port()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


def _found(text: str, where: str, found: list) -> None:
    for secret in SECRETS:
        if secret in text:
            at = text.index(secret)
            found.append((where, secret, text[max(0, at - 80): at + 40]))


def _scan_tree(folder: Path, found: list) -> int:
    scanned = 0
    for path in folder.rglob("*"):
        if path.is_file():
            _found(path.read_bytes().decode("utf-8", "replace"), str(path), found)
            scanned += 1
    return scanned


@pytest.fixture
def secrets_in_environment(monkeypatch):
    monkeypatch.setenv("AZURE_CLIENT_SECRET", SP_SECRET)
    monkeypatch.setenv("AZURE_CLIENT_ID", "11111111-1111-1111-1111-111111111111")
    monkeypatch.setenv("AZURE_TENANT_ID", "22222222-2222-2222-2222-222222222222")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DATABRICKS_RUNTIME_VERSION"):
        monkeypatch.delenv(name, raising=False)


def test_no_secret_anywhere_after_every_magic(secrets_in_environment, tmp_path, mlflow_server, monkeypatch):
    # Under pytest (PYTEST_CURRENT_TEST, set again for each phase, so removed here and not in a
    # fixture) ipykernel does not forward what child processes write to file descriptors 1 and 2:
    # without it the cells show that output too, as a user's do, and it is searched like the rest.
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    uri = f"http://user:{PASSWORD}@127.0.0.1:{mlflow_server.port}"
    cells = _cells(uri, _closed_port())
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source, _ in cells]
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=600, allow_errors=True, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    found: list = []
    unexpected = []
    for index, ((source, should_fail), cell) in enumerate(zip(cells, notebook.cells)):
        _found(json.dumps(cell.outputs), f"outputs of cell {index}", found)
        # ipykernel shows a UsageError as one stderr line, other exceptions as an error output.
        usage_errors = [o.text for o in cell.outputs if o.output_type == "stream" and "UsageError:" in o.text]
        failed = usage_errors or [o for o in cell.outputs if o.output_type == "error"]
        if bool(failed) != should_fail:
            unexpected.append((index, source.splitlines()[0], [o.get("text", o.get("evalue")) for o in cell.outputs]))
    assert not unexpected, unexpected
    failed_links = [c for c in notebook.cells if c.source.startswith("%aml_link") and "secrets-check" not in c.source]
    assert len(failed_links) == 2
    for cell in failed_links:  # one line each, no traceback
        (text,) = [o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stderr"]
        assert text.startswith("UsageError: ") and "\n" not in text.strip() and "Traceback" not in text, text
    assert "http://user:***@127.0.0.1" in failed_links[0].outputs[0].text
    _found(json.dumps(notebook.metadata), "notebook metadata (stored widget state)", found)

    for name in ("widget-state-linked.json", "widget-state-end.json"):
        widget_state = json.loads((tmp_path / name).read_text())
        _found(json.dumps(widget_state), name, found)
    linked_state = (tmp_path / "widget-state-linked.json").read_text()
    assert "user:***@127.0.0.1" in linked_state  # the header showed the linked URI, masked
    records = (tmp_path / "records.log").read_text()
    _found(records, "log records", found)

    # The store: runs, experiments, model versions, and every artifact byte.
    store = mlflow_server.client()
    experiment = store.get_experiment_by_name("secrets-check")
    runs = store.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
    assert {"with-secrets", "failing"} <= {r.info.run_name for r in runs}
    for run in runs:
        _found(json.dumps([run.data.tags, run.data.params, run.data.metrics, run.info.run_name]), f"run {run.info.run_name}", found)
        downloaded = tmp_path / "downloaded" / run.info.run_id
        downloaded.mkdir(parents=True)
        store.download_artifacts(run.info.run_id, "", str(downloaded))
        assert any(downloaded.rglob("*")), run.info.run_name
    versions = store.search_model_versions("name='secret-model'")
    assert versions
    for version in versions:
        _found(json.dumps([version.source, version.tags, version.description, version.run_link]), "model version", found)
    # Everything the session wrote in the working folder: journal, blobs, records, downloads.
    scanned = _scan_tree(tmp_path, found)
    assert scanned > 10

    assert found == [], found

"""Real-world MLflow cells (tests/corpus/) run unchanged inside %%track give the data they give without it.

Each cell runs three times in one real IPython shell: in a plain kernel state (no extension,
MLflow pointed at its own SQLite store), inside `%%track` on the embedded store, and inside
`%%track` linked to the shared real MLflow server. The three stores must then hold the same
runs: the same tree (a run, or a parent and its children), params, metric histories, user tags,
artifacts, logged models, registered versions and dataset inputs. What %%track adds on purpose
(`cell.py`, `dbxml.*` and `mlflow.source.*` tags) is left out of the comparison.
"""

import math
import time
from pathlib import Path

import mlflow
import pytest
from conftest import _reset_mlflow

CORPUS = sorted((Path(__file__).parent / "corpus").glob("*.py"))
OURS = {"cell.py", "traceback.txt"}


def _header(source: str, key: str) -> str | None:
    prefix = f"# {key}:"
    return next((line[len(prefix):].strip() for line in source.splitlines() if line.startswith(prefix)), None)


@pytest.fixture(autouse=True)
def fresh_autologging():
    """Each cell starts as in a new kernel: an earlier cell's `mlflow.sklearn.autolog(disable=True)`
    would otherwise keep sklearn out of a later `mlflow.autolog()` (MLflow respects explicit calls)."""
    from mlflow.utils.autologging_utils import AUTOLOGGING_INTEGRATIONS

    AUTOLOGGING_INTEGRATIONS.clear()
    yield
    mlflow.autolog(disable=True, silent=True)
    AUTOLOGGING_INTEGRATIONS.clear()


def test_corpus_has_at_least_twelve_cells():
    assert len(CORPUS) >= 12


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_cell_gives_the_same_data_with_and_without_track(path, shell, tmp_path, mlflow_server, monkeypatch):
    # MLflow infers a model's pip requirements in a subprocess that takes minutes on a loaded
    # machine; past this bound it writes its default requirements (the same files either way).
    monkeypatch.setenv("MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT", "1")
    source = path.read_text()
    names = _header(source, "names") == "compare"
    track_line = f"%%track corpus {_header(source, 'track') or ''}".rstrip()

    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    monkeypatch.chdir(plain_dir)
    plain_uri = f"sqlite:///{plain_dir / 'plain.db'}"
    mlflow.set_tracking_uri(plain_uri)
    mlflow.set_registry_uri(plain_uri)
    shell.run_cell(source).raise_error()
    while mlflow.active_run() is not None:  # the seed's style leaves its implicit run open
        mlflow.end_run()
    expected = _snapshot(plain_uri, 0, names)
    assert expected, "the plain run logged nothing"
    _reset_mlflow()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # set_tracking_uri exports it for subprocesses

    monkeypatch.chdir(tmp_path)
    shell.run_line_magic("load_ext", "dbxml_magics")
    shell.run_cell(f"{track_line}\n{source}").raise_error()
    assert mlflow.active_run() is None
    assert _snapshot(f"sqlite:///{tmp_path / 'mlflow.db'}", 0, names) == expected

    since = int(time.time() * 1000)
    shell.run_line_magic("aml_link", f"--uri {mlflow_server.uri}")
    shell.run_cell(f"{track_line}\n{source}").raise_error()
    assert mlflow.active_run() is None
    assert _snapshot(mlflow_server.uri, since, names) == expected


def _snapshot(uri: str, since_ms: int, names: bool) -> list[dict]:
    """The runs of a store started since `since_ms`, as trees of plain data."""
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    runs = client.search_runs(
        list(experiments), f"attributes.start_time >= {since_ms}", order_by=["attributes.start_time ASC"]
    )
    ids = {r.info.run_id for r in runs}
    nodes = {r.info.run_id: _describe(client, r, experiments, names) for r in runs}
    top = []
    for run in runs:
        parent = run.data.tags.get("mlflow.parentRunId")
        (nodes[parent]["children"] if parent in ids else top).append(nodes[run.info.run_id])
    return top


def _describe(client, run, experiments: dict, names: bool) -> dict:
    run_id = run.info.run_id
    tags = {
        k: v for k, v in run.data.tags.items()
        if not k.startswith(("mlflow.", "dbxml.")) or k == "mlflow.note.content"
    }
    return {
        "name": run.info.run_name if names else None,
        "experiment": experiments[run.info.experiment_id],
        "status": run.info.status,
        "params": run.data.params,
        "metrics": {key: _history(client, run_id, key) for key in sorted(run.data.metrics)},
        "tags": tags,
        "artifacts": sorted(p for p in _artifacts(client, run_id) if p not in OURS),
        "models": _models(client, run),
        "registered": sorted(v.name for v in client.search_model_versions(f"run_id = '{run_id}'")),
        "datasets": sorted(
            (d.dataset.name, d.dataset.digest, tuple(sorted(f"{t.key}={t.value}" for t in d.tags)))
            for d in (run.inputs.dataset_inputs if run.inputs else [])
        ),
        "children": [],
    }


def _history(client, run_id, key):
    return [(m.step, _rounded(m.value)) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _rounded(value: float):
    return value if math.isnan(value) else round(value, 9)


def _artifacts(client, run_id, path=None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found.extend(_artifacts(client, run_id, item.path) if item.is_dir else [item.path])
    return found


def _models(client, run) -> list:
    """Logged models of the run: MLflow 3 keeps them apart from the run's artifacts."""
    models = client.search_logged_models([run.info.experiment_id], f"source_run_id = '{run.info.run_id}'")
    return sorted((m.name, tuple(sorted(a.path for a in client.list_logged_model_artifacts(m.model_id)))) for m in models)

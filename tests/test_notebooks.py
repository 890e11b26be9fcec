"""Every example notebook runs in a real kernel (nbclient) in an empty working directory."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# The quickstart has its own test below, which also reads its runs back.
NOTEBOOKS = sorted(p for p in EXAMPLES.glob("*.ipynb") if p.stem != "quickstart")


def execute(notebook_path: Path, workdir: Path) -> nbformat.NotebookNode:
    shutil.copy(notebook_path, workdir / notebook_path.name)
    notebook = nbformat.read(workdir / notebook_path.name, as_version=4)
    # ipykernel forwards what is written to file descriptors 1 and 2 (a JVM's log lines, a
    # child process's output) into the cells, as a user sees it, except under pytest, which it
    # detects by PYTEST_CURRENT_TEST: the kernel starts without it, so the cells show that too.
    saved = {name: os.environ.pop(name, None) for name in ("MLFLOW_TRACKING_URI", "PYTEST_CURRENT_TEST")}
    try:
        NotebookClient(
            notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
        ).execute()
    finally:
        os.environ.update({name: value for name, value in saved.items() if value is not None})
    return notebook


def outputs_text(notebook) -> str:
    chunks = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            chunks.append(output.get("text", ""))
            chunks.append(str(output.get("data", {}).get("text/plain", "")))
            chunks.append(output.get("evalue", ""))
    return "\n".join(chunks)


@pytest.mark.parametrize("notebook_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_example_runs(notebook_path, tmp_path):
    notebook = execute(notebook_path, tmp_path)
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    assert "Traceback" not in outputs_text(notebook)
    # Spark's and MLflow's start-up chatter stays out of the cells of %aml_score (it went to a log).
    scoring_cells = [c for c in notebook.cells if c.cell_type == "code" and "%aml_score" in c.source]
    text = outputs_text(nbformat.from_dict({"cells": scoring_cells}))
    noisy = [line for line in text.splitlines() if " WARN " in line or " INFO " in line]
    assert noisy == []


READ_RUNS = """
import json, sys, mlflow
client = mlflow.MlflowClient(tracking_uri=sys.argv[1])
exp = client.get_experiment_by_name("Default")
out = {}
for run in client.search_runs([exp.experiment_id]):
    out[run.info.run_name] = {
        "status": run.info.status,
        "params": run.data.params,
        "metrics": run.data.metrics,
        "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        "history": {k: [m.step for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics},
        "artifacts": sorted(a.path for a in client.list_artifacts(run.info.run_id)),
    }
print(json.dumps(out))
"""


def test_quickstart_runs_readable_from_another_process(tmp_path):
    notebook = execute(EXAMPLES / "quickstart.ipynb", tmp_path)
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert [e["evalue"] for e in errors] == ["this cell fails on purpose"]
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = subprocess.run([sys.executable, "-c", READ_RUNS, store], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(runs) == {"baseline", "tuned", "broken"}
    baseline, tuned, broken = runs["baseline"], runs["tuned"], runs["broken"]
    assert baseline["status"] == "FINISHED" and tuned["status"] == "FINISHED"
    assert broken["status"] == "FAILED"
    assert baseline["params"] == {"C": "1.0", "max_iter": "300"}
    assert baseline["tags"]["stage"] == "quickstart"
    assert 0.8 < baseline["metrics"]["accuracy"] <= 1.0
    assert baseline["history"]["learning_curve"] == list(range(len(baseline["history"]["learning_curve"])))
    assert len(baseline["history"]["learning_curve"]) >= 5
    assert tuned["history"]["sweep"] == [0, 1, 2, 3]
    assert tuned["params"] == {"C": "10.0"}
    assert "cell.py" in baseline["artifacts"] and "cell.py" in tuned["artifacts"]
    assert "traceback.txt" in broken["artifacts"]
    assert "INFO mlflow" not in outputs_text(notebook)


def test_make_demo_runs_the_whole_path_on_the_embedded_default(tmp_path):
    """`make demo` (examples/run_demo.py) from a copy of examples/: quickstart then scoring in
    real kernels, on a fresh SQLite store and local Spark, and a summary of what landed."""
    shutil.copytree(EXAMPLES, tmp_path / "examples", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    # Without PYTEST_CURRENT_TEST the demo's kernels forward descriptor-level output (the JVM's) to the cells.
    hidden = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PYTEST_CURRENT_TEST")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    done = subprocess.run(
        [sys.executable, str(tmp_path / "examples" / "run_demo.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    out = done.stdout
    demo = tmp_path / "demo-run"
    assert f"Runs in the embedded store sqlite:///{demo / 'mlflow.db'}" in out
    for name, status in (("baseline", "FINISHED"), ("tuned", "FINISHED"), ("broken", "FAILED"),
                         ("iris-for-scoring", "FINISHED"), ("score iris-clf-v1", "FINISHED")):
        assert re.search(rf"^  {re.escape(name)}\s+{status}\s+[0-9a-f]{{32}}", out, re.MULTILINE), (name, out)
    assert "rows=113" in out  # the --log-run scoring run: 113 rows with petal_length > 1.5
    assert "iris-clf: versions 1; @champion -> v1" in out
    assert (demo / "scored_iris.parquet").is_dir()
    assert (demo / "quickstart.executed.ipynb").exists() and (demo / "scoring.executed.ipynb").exists()
    # What the user reads under the cells: no log line of Spark, py4j or MLflow in any of them.
    for name in ("quickstart", "scoring"):
        text = outputs_text(nbformat.read(demo / f"{name}.executed.ipynb", as_version=4))
        noisy = [line for line in text.splitlines() if re.search(r"\b(WARN|INFO)\b", line)]
        assert noisy == [], (name, noisy)

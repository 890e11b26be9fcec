"""Two kernels on one working directory, tracking at the same time into the same embedded
store (default link, no %aml_link): every run arrives, FINISHED, with its params and
metrics, and no "database is locked" reaches either user.

The kernels are real IPython shells in their own processes (as in test_journal's killed
kernel test); each runs its cells through `run_cell`, so whatever a user would see -
errors, notes, tracebacks - lands on that process's stdout/stderr, which is checked.
"""

import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import mlflow
import numpy as np
from mlflow.entities import ViewType

RUNS_PER_KERNEL = 100

_KERNEL = textwrap.dedent(
    """
    import os, sys, time
    from IPython.testing.globalipapp import start_ipython

    ip = start_ipython()
    ip.run_line_magic("load_ext", "dbxml_magics")
    kernel = sys.argv[1]
    open(f"ready-{kernel}", "w").close()
    while not os.path.exists("go"):  # both kernels start their cells together
        time.sleep(0.01)
    failures = 0
    for index in range(int(sys.argv[2])):
        result = ip.run_cell(
            f"%%track {kernel}-{index} --params kernel index --metrics score steps\\n"
            f"kernel = {kernel!r}\\nindex = {index}\\nscore = {index} / 100\\nsteps = [1.0, 2.0, 3.0]\\n"
            "import mlflow\\nmlflow.log_metric('inside', index)\\n"
        )
        failures += not result.success
    ip.run_line_magic("unload_ext", "dbxml_magics")
    print("DONE", kernel, "failures", failures, flush=True)
    """
)


def _run_kernels_together(script: str, count: int, folder) -> dict[str, str]:
    """Start kernels alpha and beta on `script`, let them go at the same moment, and return
    what each printed, after checking each ended well and reported no failed cell."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DATABRICKS_RUNTIME_VERSION")}
    kernels = {
        name: subprocess.Popen(
            [sys.executable, "-c", script, name, str(count)],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name in ("alpha", "beta")
    }
    try:
        _wait_for_files([folder / f"ready-{name}" for name in kernels], 180, kernels.values())
        (folder / "go").touch()
        outputs = {name: kernel.communicate(timeout=900) for name, kernel in kernels.items()}
    finally:
        for kernel in kernels.values():
            if kernel.poll() is None:
                kernel.kill()
                kernel.wait()
    seen = {}
    for name, (stdout, stderr) in outputs.items():
        seen[name] = stdout + stderr
        assert kernels[name].returncode == 0, seen[name][-3000:]
        assert f"DONE {name} failures 0" in stdout, seen[name][-3000:]
        assert "locked" not in seen[name] and "Traceback" not in seen[name], seen[name][-3000:]
    return seen


def _wait_for_files(paths, timeout: float, kernels) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        for kernel in kernels:
            if kernel.poll() is not None:
                raise AssertionError(f"a kernel exited early: {kernel.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, "kernels did not load the extension in time"
        time.sleep(0.05)


def test_two_kernels_track_into_one_embedded_store_without_losing_runs(tmp_path):
    printed = _run_kernels_together(_KERNEL, RUNS_PER_KERNEL, tmp_path)
    for seen in printed.values():
        assert "Error" not in seen, seen[-3000:]
        assert "dbxml:" not in seen, seen[-3000:]  # no "kept in the journal" or skipped-variable notes

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(experiment_ids, run_view_type=ViewType.ALL, max_results=1000)
    by_name = {run.info.run_name: run for run in runs}
    expected = {f"{kernel}-{index}" for kernel in printed for index in range(RUNS_PER_KERNEL)}
    assert len(runs) == len(expected) == 2 * RUNS_PER_KERNEL
    assert set(by_name) == expected
    for name, run in by_name.items():
        kernel, index = name.rsplit("-", 1)
        assert run.info.status == "FINISHED", name
        assert run.data.params == {"kernel": kernel, "index": index}, name
        assert run.data.metrics == {"score": int(index) / 100, "steps": 3.0, "inside": float(index)}, name
        assert [m.value for m in client.get_metric_history(run.info.run_id, "steps")] == [1.0, 2.0, 3.0], name
    # Nothing is left waiting in the shared journal: each kernel shipped its own rows.
    with sqlite3.connect(tmp_path / ".dbxml" / "journal.sqlite") as journal:
        assert journal.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 0


VERSIONS_PER_KERNEL = 6

_REGISTERING_KERNEL = textwrap.dedent(
    """
    import os, sys, time
    from IPython.testing.globalipapp import start_ipython

    ip = start_ipython()
    ip.run_line_magic("load_ext", "dbxml_magics")
    kernel = sys.argv[1]
    ip.run_cell(
        "from sklearn.linear_model import LogisticRegression\\n"
        "clf = LogisticRegression().fit([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [1.0, 1.0]], [0, 1, 0, 1])"
    )
    open(f"ready-{kernel}", "w").close()
    while not os.path.exists("go"):  # both kernels register at the same moment, the first time too
        time.sleep(0.01)
    failures = 0
    for index in range(int(sys.argv[2])):
        result = ip.run_cell(f"%aml_register shared-clf --model clf --tags kernel={kernel} index={index}")
        failures += not result.success
    ip.run_line_magic("unload_ext", "dbxml_magics")
    print("DONE", kernel, "failures", failures, flush=True)
    """
)


def test_two_kernels_register_versions_of_one_new_model_at_once(tmp_path):
    """Both kernels find no `shared-clf` and create it at the same moment; every version lands, once."""
    printed = _run_kernels_together(_REGISTERING_KERNEL, VERSIONS_PER_KERNEL, tmp_path)

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    versions = client.search_model_versions("name = 'shared-clf'")
    numbers = sorted(int(v.version) for v in versions)
    assert numbers == list(range(1, 2 * VERSIONS_PER_KERNEL + 1))
    registered = sorted((v.tags["kernel"], int(v.tags["index"])) for v in versions)
    assert registered == sorted((k, i) for k in printed for i in range(VERSIONS_PER_KERNEL))
    # Each version points at its own logged model, and each loads.
    assert len({v.source for v in versions}) == len(versions)
    for version in versions[:2]:
        model = mlflow.pyfunc.load_model(client.get_model_version_download_uri("shared-clf", version.version))
        assert list(model.predict(np.array([[0.0, 1.0]]))) == [0]

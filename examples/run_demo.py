"""`make demo`: execute examples/quickstart.ipynb in a real kernel on the embedded default,
then print where the runs are and how to browse them."""

import shutil
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
DEMO_DIR = HERE.parent / "demo-run"


def main() -> None:
    DEMO_DIR.mkdir(exist_ok=True)
    notebook = nbformat.read(HERE / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(DEMO_DIR)}}).execute()
    executed = DEMO_DIR / "quickstart.executed.ipynb"
    nbformat.write(notebook, executed)
    shutil.rmtree(DEMO_DIR / ".ipynb_checkpoints", ignore_errors=True)

    import mlflow

    store = f"sqlite:///{DEMO_DIR / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("Default")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    print(f"\nExecuted notebook: {executed}")
    print(f"Runs are in the embedded store {store} (artifacts in {DEMO_DIR / 'mlruns'}):")
    for run in runs:
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in sorted(run.data.metrics.items()))
        print(f"  {run.info.run_name:<10} {run.info.status:<9} {run.info.run_id}  {metrics}")
    print(f"\nBrowse them: {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {store}")


if __name__ == "__main__":
    main()

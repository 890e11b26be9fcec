"""`make demo`: the whole path on the embedded default (SQLite store + local Spark), in real
kernels: examples/quickstart.ipynb (tracked cells) then examples/scoring.ipynb (track,
register, batch-score on local Spark). Prints what landed in the store and how to browse it.

Each demo starts from an empty `demo-run/` folder, so it can be run again and again.
"""

import shutil
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
DEMO_DIR = HERE.parent / "demo-run"
NOTEBOOKS = ("quickstart", "scoring")


def main() -> None:
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    DEMO_DIR.mkdir()
    for name in NOTEBOOKS:
        notebook = nbformat.read(HERE / f"{name}.ipynb", as_version=4)
        NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(DEMO_DIR)}}
        ).execute()
        executed = DEMO_DIR / f"{name}.executed.ipynb"
        nbformat.write(notebook, executed)
        print(f"Executed {HERE.name}/{name}.ipynb -> {executed}")
    shutil.rmtree(DEMO_DIR / ".ipynb_checkpoints", ignore_errors=True)

    import mlflow

    store = f"sqlite:///{DEMO_DIR / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, order_by=["attributes.start_time DESC"])
    print(f"\nRuns in the embedded store {store} (artifacts in {DEMO_DIR / 'mlruns'}):")
    width = max(len(run.info.run_name or "") for run in runs)
    for run in runs:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(run.data.metrics.items()))
        print(f"  {run.info.run_name:<{width}}  {run.info.status:<9} {run.info.run_id}  {metrics}")
    print("Registered models:")
    for model in client.search_registered_models():
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{model.name}'"))
        aliases = ", ".join(f"@{alias} -> v{version}" for alias, version in sorted(model.aliases.items()))
        print(f"  {model.name}: versions {', '.join(map(str, versions))}; {aliases or 'no aliases'}")
    print(f"Scored rows (parquet): {DEMO_DIR / 'scored_iris.parquet'}")
    print(f"\nBrowse them: {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {store}")


if __name__ == "__main__":
    main()

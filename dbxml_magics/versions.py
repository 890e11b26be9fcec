"""Installed versions of what the magics run on, and the one broken install worth a warning.

MLflow 2.x ships as `mlflow` alone; MLflow 3 as `mlflow` depending on `mlflow-skinny` of the
same version. azureml-mlflow depends on `mlflow-skinny`, so installing it beside MLflow 2.x
can add an `mlflow-skinny` 3.x: two distributions writing one `mlflow` package, whose files
then come from both. Read from package metadata only: nothing heavy is imported.
"""

from importlib import metadata

__all__ = ["installed_versions", "mlflow_mixture", "DISTRIBUTIONS"]

DISTRIBUTIONS = ("mlflow", "mlflow-skinny", "azureml-mlflow", "pyspark", "pandas", "numpy", "scikit-learn", "pyarrow")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def installed_versions() -> dict[str, str | None]:
    """{distribution: version or None} for DISTRIBUTIONS, plus "python"."""
    import platform

    return {"python": platform.python_version(), **{name: _version(name) for name in DISTRIBUTIONS}}


def mlflow_mixture() -> str | None:
    """One line saying how to repair an mlflow / mlflow-skinny pair of different versions, else None."""
    full, skinny = _version("mlflow"), _version("mlflow-skinny")
    if full is None or skinny is None or full == skinny:
        return None
    return (
        f"mlflow {full} and mlflow-skinny {skinny} are both installed and overwrite each other's files; "
        f"run `%pip install mlflow-skinny=={full}` (keeps mlflow {full}), then restart Python."
    )

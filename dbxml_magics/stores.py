"""Helpers for talking to MLflow's tracking stores, shared by linking, the journal and the registry."""

import functools
import os
import threading
from contextlib import contextmanager

__all__ = ["quick_requests", "prepare_sqlite_store", "raw_store_builder", "artifact_repository", "list_artifacts"]


@contextmanager
def quick_requests(timeout: float):
    """No MLflow retry ladder while probing a store: an unreachable one fails in seconds, not minutes."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(1, timeout)))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def raw_store_builder(store_uri: str):
    """MLflow's own builder for `store_uri`, under any wrapper of ours (the journal's).

    Probing a store or shipping to it must talk to the real store, not queue into the journal."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry as registry

    builder = registry.get_store_builder(store_uri)
    while hasattr(builder, "inner"):
        builder = builder.inner
    return builder


# Embedded stores are shared by every kernel started in the same folder. MLflow creates a
# SQLite store's tables after an unguarded "do they exist?" check, so two kernels opening a
# new store at once half-migrate it ("table ... already exists").
_prepared_sqlite: set[str] = set()
_prepare_lock = threading.Lock()


def prepare_sqlite_store(store_uri: str | None) -> None:
    """Create a SQLite store's tables under MLflow's inter-process file lock (once per URI),
    so that MLflow's own check-then-create finds them and several kernels can share it."""
    if not store_uri or not store_uri.startswith("sqlite:///") or store_uri in _prepared_sqlite:
        return
    with _prepare_lock:
        if store_uri in _prepared_sqlite:
            return
        from mlflow.store.db import utils as db_utils
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        get_engine = getattr(SqlAlchemyStore, "_get_or_create_engine", None)
        safe_init = getattr(db_utils, "_safe_initialize_tables", None)
        if get_engine is not None and safe_init is not None:
            safe_init(get_engine(store_uri))  # the engine is MLflow's cached one for this URI
        _prepared_sqlite.add(store_uri)


@functools.cache
def _resolves_per_store() -> bool:
    """MLflow 3 resolves a server's `mlflow-artifacts:` URIs against the tracking URI it is
    given; MLflow 2.x against the global one (an azureml:// link, or another store)."""
    import inspect

    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return "tracking_uri" in inspect.signature(get_artifact_repository).parameters


def artifact_repository(artifact_uri: str, tracking_uri: str):
    """The artifact repository of a run kept by the store at `tracking_uri`, on MLflow 2.x too."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    if _resolves_per_store():
        return get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
    if artifact_uri.startswith("mlflow-artifacts:"):
        from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

        artifact_uri = MlflowArtifactsRepository.resolve_uri(artifact_uri, tracking_uri)
    return get_artifact_repository(artifact_uri)


def list_artifacts(client, run_id: str, path: str | None = None):
    """`client.list_artifacts`, listing the client's own store on MLflow 2.x too."""
    from mlflow import MlflowClient

    if _resolves_per_store():
        return MlflowClient.list_artifacts(client, run_id, path)
    artifact_uri = client.get_run(run_id).info.artifact_uri
    return artifact_repository(artifact_uri, client.tracking_uri).list_artifacts(path)

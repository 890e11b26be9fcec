"""`both` mode: the mirror's copy of a version, as a journal row shipped after the mirror run exists."""

import shutil
import threading
import uuid
from pathlib import Path

from ..masking import first_line
from ..session import ModelRecord, Session
from .request import DEFAULT_ARTIFACT_PATH, RegisterRequest, Source
from .sources import run_artifact_source

MIRROR_KIND = "register_model"


# Marks a mirror version with the primary version it copies, so a replayed row finds it.
SOURCE_VERSION_TAG = "dbxml.source_version"


# ---------------------------------------------------------------------- the mirror (both mode)
_awaiting_mirror: dict[str, tuple[Session, ModelRecord]] = {}


_awaiting_lock = threading.Lock()


def queue_mirror(session: Session, client, request: RegisterRequest, source: Source, record: ModelRecord) -> list[str]:
    """Queue the mirror registration behind the run's mirror rows; wait for it a little."""
    mirror = session.link.mirror
    journal = session.journal
    if source.run_id is None or not journal.owns(source.run_id):
        return [
            f"mirror {mirror.display}: not registered; only models of runs tracked in this session are mirrored "
            "(their run is mirrored with them)."
        ]
    copy = journal.blob_dir / "models" / uuid.uuid4().hex
    try:
        if source.local_dir is not None:
            shutil.copytree(source.local_dir, copy)
        else:
            from mlflow.artifacts import download_artifacts

            copy.mkdir(parents=True)
            download_artifacts(artifact_uri=source.source, dst_path=str(copy), tracking_uri=client.tracking_uri)
            copy = _model_root(copy)
    except Exception as exc:  # noqa: BLE001 - the primary version stands; say what the mirror misses
        shutil.rmtree(copy, ignore_errors=True)
        return [f"mirror {mirror.display}: not registered; the model could not be copied ({first_line(exc)})."]
    key = uuid.uuid4().hex
    with _awaiting_lock:
        _awaiting_mirror[key] = (session, record)
    payload = {
        "name": request.name,
        "model_dir": str(copy),
        "artifact_path": source.artifact_path or DEFAULT_ARTIFACT_PATH,
        "source_version": f"{source.run_id}/{record.version}",
        "tags": request.tags,
        "description": request.description,
        "alias": request.alias,
        "record": key,
    }
    journal.append(source.run_id, MIRROR_KIND, payload, mirror_only=True)
    mirror_known_down = any(
        s["target"] == mirror.display and s["last_error"] for s in journal.status()
    )
    journal.flush(source.run_id, timeout=1.0 if mirror_known_down else session.settings.flush_timeout)
    if record.mirror_version is None:
        return [
            f"mirror {mirror.display}: registration queued; it is sent when the store is reachable (see %aml_sync)."
        ]
    return []


def _model_root(folder: Path) -> Path:
    """download_artifacts puts a folder's files under its own name; find the MLmodel's folder."""
    hits = sorted(folder.rglob("MLmodel"), key=lambda p: len(p.parts))
    return hits[0].parent if hits else folder


def register_on_mirror(target, remote_run_id: str, payload: dict) -> None:
    """Journal handler: upload the model to the mirror run and register it there, once."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=target.uri, registry_uri=target.registry_uri or target.uri)
    name, marker = payload["name"], payload["source_version"]
    version = _mirror_version(client, name, marker)
    if version is None:
        model_dir = Path(payload["model_dir"])
        if not (model_dir / "MLmodel").is_file():
            raise MlflowException(
                f"the local copy of {name} for the mirror is gone ({model_dir})", error_code="INVALID_STATE"
            )
        path = payload["artifact_path"]
        client.log_artifacts(remote_run_id, str(model_dir), path)
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        tags = {**(payload["tags"] or {}), SOURCE_VERSION_TAG: marker}
        version = client.create_model_version(
            name,
            run_artifact_source(client, remote_run_id, path),
            run_id=remote_run_id,
            tags=tags,
            description=payload["description"],
        )
    if payload["alias"]:
        client.set_registered_model_alias(name, payload["alias"], version.version)
    shutil.rmtree(payload["model_dir"], ignore_errors=True)
    with _awaiting_lock:
        waiting = _awaiting_mirror.pop(payload["record"], None)
    if waiting is not None:
        session, record = waiting
        record.mirror_version = str(version.version)
        session.emit("model_mirrored", record)


def _mirror_version(client, name: str, marker: str):
    """The mirror version made from `marker` by an earlier attempt, if any (replays stay single)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return next((v for v in versions if (v.tags or {}).get(SOURCE_VERSION_TAG) == marker), None)


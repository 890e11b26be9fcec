"""Turn what a user types for a model into one pinned model: URI, name, version, signature.

Accepted: `models:/name/version`, `models:/name/latest`, `models:/name@alias` (or `name@alias`),
a registered name (its latest version), `runs:/<run id>/<path>`, `models:/<logged model id>`, any other
model URI MLflow can read, and `last` (the last model registered in this session).
Aliases and "latest" are resolved once, here, so the scoring and its record use the same
version even if the alias moves meanwhile. Only metadata (the MLmodel file) is read.
"""

import difflib
from dataclasses import dataclass
from typing import Any

from .errors import ScoreError
from .masking import first_line

__all__ = ["ModelRef", "resolve_model"]


@dataclass(frozen=True)
class ModelRef:
    """A model pinned to one version (when registered), with what scoring needs to know."""

    requested: str
    uri: str  # pinned: models:/name/version for registered models
    name: str | None
    version: str | None
    source_run_id: str | None
    signature: Any  # mlflow.models.ModelSignature or None
    # Where the files of a registered version are. Spark Connect workers load the model
    # themselves, with the tracking URI but not the registry of this kernel: they get this.
    artifact_uri: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}" if self.name and self.version else self.uri


def resolve_model(session, text: str) -> ModelRef:
    """Resolve `text` against the session's registry; a ScoreError names what is missing."""
    from mlflow import MlflowClient

    link = session.activate()
    store = link.primary.display
    client = MlflowClient()
    text = (text or "").strip()
    if text == "last":
        record = session.last_model
        if record is None:
            raise ScoreError(
                "No model was registered in this session, so `last` means nothing yet; register one "
                "(%aml_register NAME --model VAR) or name it: models:/NAME/VERSION"
            )
        return _registered(client, store, text, record.name, record.version)
    if text.startswith("models:/"):
        rest = text[len("models:/"):].strip("/")
        if not rest:
            raise ScoreError("models:/ needs a model: models:/NAME/VERSION, models:/NAME@ALIAS or models:/NAME")
        if "@" in rest:
            name, alias = rest.rsplit("@", 1)
            return _by_alias(client, store, text, name, alias)
        if "/" in rest:
            name, version = rest.rsplit("/", 1)
            if version.lower() == "latest":
                return _pinned(client, store, text, name, _latest_version(client, store, name))
            return _registered(client, store, text, name, version)
        if rest.startswith("m-"):
            return _unregistered(client, text)
        return _pinned(client, store, text, rest, _latest_version(client, store, rest))
    if text.startswith("runs:/"):
        return _from_run(client, text)
    if "://" in text or text.startswith(("file:", "dbfs:")):
        return _unregistered(client, text)
    if "@" in text:
        name, alias = text.rsplit("@", 1)
        return _by_alias(client, store, text, name, alias)
    return _pinned(client, store, text, text, _latest_version(client, store, text))


def _registered(client, store: str, requested: str, name: str, version) -> ModelRef:
    # The common case (the version exists) costs one registry call; only a miss asks the
    # follow-up questions that make its message useful.
    version = str(version)
    try:
        model_version = client.get_model_version(name, version)
    except Exception as exc:  # noqa: BLE001
        if not _is_missing(exc):
            raise _unreachable(store, exc) from None
        _require_registered_model(client, store, name)
        versions = _versions(client, name)
        known = ", ".join(versions) if versions else "none"
        raise ScoreError(f"Model {name!r} has no version {version} in {store} (versions: {known}).") from None
    return _pinned(client, store, requested, name, model_version)


# (registry URI, name, version) -> (signature, artifact URI): a registered version's files
# never change, so repeated scorings with it skip reading its MLmodel and location again.
_pinned_details: dict[tuple[str, str, str], tuple[Any, str]] = {}


def _pinned(client, store: str, requested: str, name: str, model_version) -> ModelRef:
    import mlflow

    uri = f"models:/{name}/{model_version.version}"
    key = (mlflow.get_registry_uri(), name, str(model_version.version))
    if key not in _pinned_details:
        signature = _signature(uri)
        try:
            artifact_uri = client.get_model_version_download_uri(name, model_version.version)
        except Exception as exc:  # noqa: BLE001
            raise _unreachable(store, exc) from None
        _pinned_details[key] = (signature, artifact_uri)
    signature, artifact_uri = _pinned_details[key]
    return ModelRef(
        requested=requested,
        uri=uri,
        name=name,
        version=str(model_version.version),
        source_run_id=model_version.run_id or None,
        signature=signature,
        artifact_uri=artifact_uri,
    )


def _by_alias(client, store: str, requested: str, name: str, alias: str) -> ModelRef:
    try:
        model_version = client.get_model_version_by_alias(name, alias)
    except Exception as exc:  # noqa: BLE001
        if not _is_missing(exc):
            raise _unreachable(store, exc) from None
        _require_registered_model(client, store, name)
        aliases = sorted(client.get_registered_model(name).aliases or {})
        known = f"aliases: {', '.join(aliases)}" if aliases else "it has no aliases"
        raise ScoreError(
            f"Model {name!r} has no alias {alias!r} in {store} ({known}); set one with %aml_register --alias "
            "or MlflowClient().set_registered_model_alias."
        ) from None
    return _pinned(client, store, requested, name, model_version)


def _latest_version(client, store: str, name: str):
    """The highest version of `name` (a ModelVersion), from one search."""
    try:
        versions = client.search_model_versions(_name_filter(name))
    except Exception as exc:  # noqa: BLE001
        raise _unreachable(store, exc) from None
    if not versions:
        _require_registered_model(client, store, name)
        raise ScoreError(f"Model {name!r} has no versions in {store}; register one with %aml_register {name} --model VAR.")
    return max(versions, key=lambda model_version: int(model_version.version))


def _require_registered_model(client, store: str, name: str) -> None:
    try:
        client.get_registered_model(name)
    except Exception as exc:  # noqa: BLE001
        if not _is_missing(exc):
            raise _unreachable(store, exc) from None
        try:
            names = [m.name for m in client.search_registered_models(max_results=200)]
        except Exception:  # noqa: BLE001 - suggestions are a courtesy
            names = []
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(repr(n) for n in close)}?" if close else (
            f" Registered models: {', '.join(sorted(names)[:10])}." if names else " No model is registered there yet."
        )
        raise ScoreError(f"No registered model named {name!r} in {store}.{hint}") from None


def _versions(client, name: str) -> list[str]:
    versions = client.search_model_versions(_name_filter(name))
    return [str(v) for v in sorted(int(mv.version) for mv in versions)]


def _name_filter(name: str) -> str:
    quoted = name.replace("'", "\\'")
    return f"name = '{quoted}'"


def _from_run(client, uri: str) -> ModelRef:
    run_id = uri[len("runs:/"):].strip("/").split("/", 1)[0]
    if not run_id:
        raise ScoreError(f"{uri!r} names no run; expected runs:/<run id>/<model path>.")
    try:
        client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001
        if _is_missing(exc):
            raise ScoreError(f"Run {run_id} does not exist in the current store; check the run id of {uri}.") from None
        raise _unreachable("the tracking store", exc) from None
    return ModelRef(requested=uri, uri=uri, name=None, version=None, source_run_id=run_id, signature=_signature(uri))


def _unregistered(client, uri: str) -> ModelRef:
    return ModelRef(requested=uri, uri=uri, name=None, version=None, source_run_id=None, signature=_signature(uri))


def _signature(uri: str):
    """The model's signature from its MLmodel file; a ScoreError when there is no model there."""
    from mlflow.models import get_model_info

    try:
        return get_model_info(uri).signature
    except Exception as exc:  # noqa: BLE001 - missing files surface as several exception types
        raise ScoreError(f"No MLflow model at {uri}: {first_line(exc)}") from None


def _is_missing(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE") or "not found" in str(exc).lower()


def _unreachable(store: str, exc: Exception) -> ScoreError:
    return ScoreError(f"Cannot read the model registry of {store}: {first_line(exc)}")



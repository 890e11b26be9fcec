"""Where runs go: a Link is a primary tracking target plus an optional mirror."""

from .errors import LinkError
from .masking import mask_uri
from .stores import prepare_sqlite_store, quick_requests, raw_store_builder
from .targets import Link, Target

__all__ = ["link_from_args", "target_from_uri", "probe_target"]

_URI_SCHEMES = ("http", "https", "databricks", "sqlite", "file", "azureml", "postgresql", "mysql", "mssql")


def link_from_args(session, args) -> Link | None:
    """Validate a %aml_link request, probe its stores, then switch; on any failure nothing changes."""
    sources = [
        name
        for name, given in (
            ("--local", args.local is not None),
            ("--uri", args.uri is not None),
            ("--config", args.config is not None),
            ("-s/-g/-w", any((args.subscription, args.resource_group, args.workspace))),
        )
        if given
    ]
    if len(sources) > 1:
        raise LinkError(f"Choose one of {', '.join(sources)}: they name different stores.")
    if not sources:
        if args.mode or args.experiment:
            raise LinkError("Say where to link: --local, --uri URI, --config, or -s/-g/-w. Without options the panel shows.")
        return None
    # The target first: a failing sign-in or a bad config need not wait for MLflow's import.
    if args.local is not None:
        target = session.embedded_target(args.local or None)
        _prepare_embedded(target)
    elif args.uri is not None:
        target = target_from_uri(args.uri, session, args)
    else:
        from .workspace import resolve_workspace_target

        target = resolve_workspace_target(args, session.settings, session.namespace)
    current = session.current_link()
    mode = args.mode or ("aml-only" if target.kind == "aml" else "local" if target.kind == "embedded" else "uri")
    experiment = args.experiment or current.experiment
    if mode == "both":
        primary = current.primary
        if primary.display == target.display:
            raise LinkError(f"--mode both needs a mirror other than the current store ({primary.display}).")
        new = Link(mode="both", primary=primary, mirror=target, experiment=experiment)
    else:
        new = Link(mode=mode, primary=target, experiment=experiment)
    for store in new.targets:
        probe_target(store)
    for store in new.targets:
        if store.kind == "aml":
            # Only now, with every probe passed: the plugin store MLflow builds for this URI
            # (fluent API, journal flusher) must use the credential checked above.
            from .workspace import register_aml_target

            register_aml_target(store)
    return session.apply_link(new)


def target_from_uri(uri: str, session=None, args=None) -> Target:
    """A Target for any MLflow tracking URI; a malformed or unsupported URI is one clear line."""
    from urllib.parse import urlsplit

    uri = uri.strip()
    scheme = "databricks" if uri.startswith("databricks") else urlsplit(uri).scheme
    if scheme not in _URI_SCHEMES:
        raise LinkError(
            f"Unsupported tracking URI {mask_uri(uri)!r}: use http(s)://host:port, databricks, sqlite:///path.db, "
            "file:///folder or azureml://..."
        )
    if scheme in ("http", "https") and not urlsplit(uri).hostname:
        raise LinkError(f"The URI {mask_uri(uri)!r} has no host. Example: --uri http://127.0.0.1:5000")
    if scheme == "azureml":
        from .workspace import target_from_azureml_uri

        return target_from_azureml_uri(uri, args, session.settings if session else None)
    if scheme == "sqlite":
        path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
        if not path:
            raise LinkError(f"The URI {mask_uri(uri)!r} names no file. Example: --uri sqlite:///runs/mlflow.db")
        from pathlib import Path

        folder = Path(path).expanduser().resolve().parent
        if not folder.is_dir():
            raise LinkError(f"The folder {folder} of {mask_uri(uri)!r} does not exist. Create it first.")
        return Target(uri=uri, kind="uri", artifact_root=(folder / "mlruns").as_uri())
    if scheme == "databricks":
        return Target(uri=uri, kind="databricks")
    return Target(uri=uri, kind="uri")


def _prepare_embedded(target: Target) -> None:
    from pathlib import Path
    from urllib.parse import urlsplit

    folder = Path(target.uri[len("sqlite:///") :]).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        Path(urlsplit(target.artifact_root).path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LinkError(f"Cannot create the embedded store in {folder} ({exc.strerror}). Choose another PATH.") from None


def probe_target(target: Target, timeout: float = 15.0) -> None:
    """Talk to the store once (no retries) so a bad link fails before it is made.

    A refused connection fails at once; the timeout only bounds a busy or black-holed
    server, and 5 s proved too short for a one-worker server on a loaded machine."""
    if target.kind == "aml":
        # The plugin's own store builder would fall back to interactive sign-in.
        from .workspace import probe_aml_target

        return probe_aml_target(target, timeout)

    try:
        with quick_requests(timeout):
            prepare_sqlite_store(target.uri)
            store = raw_store_builder(target.uri)(store_uri=target.uri, artifact_uri=target.artifact_root)
            store.search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one actionable line
        raise LinkError(
            f"Cannot reach {target.display}: {_first_line(exc)}. Check that the server runs and the URI is right; "
            "the previous link is unchanged."
        ) from None


def _first_line(exc: BaseException) -> str:
    from .masking import first_line

    text = first_line(exc, 200)
    # A bare URI as the whole message (some stores raise that) may carry a password.
    return mask_uri(text) if "://" in text and " " not in text else text

"""%aml_deploy / %aml_invoke: real-time endpoints serving one pinned model version.

Targets: `local` (a real `mlflow models serve` on 127.0.0.1, `local.py`) and `aml` (an Azure
ML managed online endpoint through the azureml-mlflow deployment plugin, `aml.py`). Work is
ordered cheapest first, so a mistake costs nothing: parse and check names, resolve the
model to one version, then create. A failure stops what was started and is one line.
"""

import shutil
import time
from pathlib import Path

from ..errors import DeployError
from ..quiet import captured
from ..session import EndpointRecord
from .rules import check_name, default_target

__all__ = ["deploy_from_args", "invoke_from_args", "endpoints_text"]

_LOCAL_TIMEOUT = 300.0  # start-up is 8-17 s on a quiet 2-core machine, a minute when it is busy
_AML_ONLY = ("deployment", "instance_type", "instance_count", "traffic")


def deploy_from_args(session, args) -> None:
    """Run %aml_deploy: --list, --delete, or deploy MODEL to ENDPOINT."""
    if args.list:
        if args.endpoint or args.model or args.delete:
            raise DeployError("--list takes no endpoint or model: %aml_deploy --list")
        print(endpoints_text(session))
        return
    if args.delete:
        if args.endpoint or args.model:
            raise DeployError("--delete takes the endpoint name only: %aml_deploy --delete ENDPOINT [--deployment NAME]")
        return delete_endpoint(session, args.delete, args.deployment)
    if not args.endpoint:
        raise DeployError("Name the endpoint and the model: %aml_deploy ENDPOINT MODEL (or --list, --delete ENDPOINT).")
    check_name(args.endpoint)
    target = args.target or default_target(session)
    # MLflow's download bar, log lines and warnings about the calls made here stay out of the
    # cell unless -v: the status line says what is happening (the user's own warnings still show).
    with captured(args.verbose):
        if target == "aml":
            from .aml import deploy_aml

            return deploy_aml(session, args)
        return _deploy_local(session, args)


# --------------------------------------------------------------------------- local
def _deploy_local(session, args) -> None:
    from ..model_ref import resolve_model
    from .local import LocalServer, free_port, port_in_use
    from .progress import StatusLine

    if not args.model:
        raise DeployError(f"Name the model to serve: %aml_deploy {args.endpoint} MODEL (last, name@alias, models:/...).")
    given = [f"--{o.replace('_', '-')}" for o in _AML_ONLY if getattr(args, o) is not None]
    if given:
        raise DeployError(f"{', '.join(given)} apply to --target aml only; a local endpoint is one server.")
    name = args.endpoint
    existing = session.endpoints.get(name)
    if existing is not None:
        raise DeployError(
            f"Endpoint {name!r} already serves {existing.model} at {existing.url}; delete it first "
            f"(%aml_deploy --delete {name}) or choose another name."
        )
    if args.port is not None and not 0 < args.port < 65536:
        raise DeployError(f"--port {args.port} is not a port number (1-65535); omit it for a free port.")
    if args.port is not None and port_in_use(args.port):
        raise DeployError(f"Port {args.port} on 127.0.0.1 is in use by another process; choose another --port or omit it.")
    model = resolve_model(session, args.model)
    folder = session.state_dir / "endpoints" / name
    progress = StatusLine(f"local endpoint {name}")
    progress.update(f"copying {model.label}", force=True)
    shutil.rmtree(folder, ignore_errors=True)
    server = None
    try:
        model_dir = _download(model, folder / "model")
        server = LocalServer(name, model_dir, args.port or free_port(), folder / "server.log")
        record = EndpointRecord(name=name, target="local", model=model.label, model_uri=model.uri, url=server.url,
                                state="Starting", handle=server)
        server.start()
        session.set_endpoint(record)
        seconds = server.wait_ready(args.timeout or _LOCAL_TIMEOUT, lambda _: progress.update(f"starting mlflow models serve (pid {server.pid})"))
    except BaseException:
        # Whatever failed (the copy, the start, the wait), nothing of the endpoint is left behind.
        if server is not None:
            server.stop()
            session.drop_endpoint(name)
        shutil.rmtree(folder, ignore_errors=True)
        progress.done("failed")
        raise
    record.state = "Ready"
    session.set_endpoint(record)
    progress.done("ready")
    print(f"Endpoint {name} (local) serves {model.label} at {server.url}/invocations (ready in {seconds:.1f} s).")


def _download(model, folder):
    """The model's files in `folder`: the server then needs no store, credential or network."""
    from mlflow.artifacts import download_artifacts

    from ..masking import first_line

    folder.mkdir(parents=True, exist_ok=True)
    try:
        path = download_artifacts(artifact_uri=model.uri, dst_path=str(folder))
    except Exception as exc:  # noqa: BLE001 - any store failure is one line
        raise DeployError(f"Cannot copy the files of {model.label}: {first_line(exc)}") from None
    hits = sorted(Path(path).rglob("MLmodel"), key=lambda p: len(p.parts))
    if not hits:
        raise DeployError(f"{model.label} has no MLmodel file at {model.uri}: it is not an MLflow model.")
    return hits[0].parent


# --------------------------------------------------------------------------- delete, list
def delete_endpoint(session, name: str, deployment: str | None) -> None:
    record = session.endpoints.get(name)
    if record is not None and record.target == "local":
        if deployment:
            raise DeployError(f"Local endpoint {name!r} has no deployments; delete it whole: %aml_deploy --delete {name}")
        record.handle.close()
        session.drop_endpoint(name)
        shutil.rmtree(session.state_dir / "endpoints" / name, ignore_errors=True)
        print(f"Deleted local endpoint {name} (served {record.model}); its server is stopped.")
        return
    if record is not None or default_target(session) == "aml":
        from .aml import delete_aml

        return delete_aml(session, name, deployment)
    raise DeployError(f"No endpoint named {name!r} in this session ({_known(session)}).")


def endpoints_text(session) -> str:
    rows = [_row(record) for record in session.endpoints.values()]
    if default_target(session) == "aml":
        from .aml import workspace_rows

        seen = set(session.endpoints)
        rows += [row for row in workspace_rows(session) if row[0] not in seen]
    if not rows:
        return "No endpoints yet: %aml_deploy ENDPOINT MODEL starts one."
    header = ("ENDPOINT", "TARGET", "MODEL", "STATE", "URL", "CREATED")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *rows])


def _row(record: EndpointRecord) -> tuple:
    model = record.model + (f" ({record.deployment})" if record.deployment else "")
    created = time.strftime("%H:%M:%S", time.localtime(record.created))
    return (record.name, record.target, model, record.state, record.url, created)


def _known(session) -> str:
    names = sorted(session.endpoints)
    return f"endpoints: {', '.join(names)}" if names else "none deployed yet; %aml_deploy ENDPOINT MODEL starts one"


# --------------------------------------------------------------------------- invoke
def invoke_from_args(session, user_ns: dict, args):
    """Run %aml_invoke: predictions for a pandas DataFrame, returned or put in --into."""
    df = _pandas(user_ns, args.df)
    record = session.endpoints.get(args.endpoint)
    if record is None:
        if default_target(session) != "aml":
            raise DeployError(f"No endpoint named {args.endpoint!r} in this session ({_known(session)}).")
        from .aml import attach_aml

        record = attach_aml(session, args.endpoint)
    predictions = record.handle.invoke(df, args.timeout, args.deployment)
    if args.into:
        user_ns[args.into] = predictions
        print(f"{len(predictions):,} predictions from {args.endpoint} ({record.model}) in {args.into}.")
        return None
    return predictions


def _pandas(user_ns: dict, name: str):
    import sys

    if name not in user_ns:
        raise DeployError(f"No variable {name!r} in the notebook; --df expects a pandas DataFrame.")
    value = user_ns[name]
    pandas = sys.modules.get("pandas")
    if pandas is None or not isinstance(value, pandas.DataFrame):
        hint = " (for Spark DataFrames use %aml_score)" if type(value).__name__ == "DataFrame" else ""
        raise DeployError(f"--df {name} is a {type(value).__name__}, not a pandas DataFrame{hint}.")
    if value.empty:
        raise DeployError(f"--df {name} has no rows: nothing to send.")
    return value

"""Azure ML managed online endpoints (v2) through the azureml-mlflow deployment plugin.

Everything that changes Azure goes through the plugin's own client
(`mlflow.deployments.get_deploy_client("azureml://...")`, `AzureMLDeploymentClient`). What
azureml-mlflow 1.60 does on its own, and what is done about it here:
- with no config and no endpoint it deploys to ACI (v1): every call passes a deploy-config
  file and `endpoint=`, so only v2 managed online endpoints are ever made;
- `models:/name@alias` is mis-parsed: the model is pinned to `models:/name/<version>` first;
- numeric `request_timeout_ms` fails serialization: ISO durations (`PT90S`) are sent;
- `update_deployment` without `instance_count` resets capacity to 1: the current count is sent;
- its long-running-operation polling prints dots to stdout from its poller thread: those bare
  dots are dropped (`_NoPollingDots`), everything else printed passes;
- its LRO timeouts return silently: the state is read back and a non-final state is said; when
  our own --timeout passes first, the states are said with the line that deletes the endpoint;
- its v2 calls go to the cloud's `resource_manager` endpoint (https only), not the workspace
  host: the service context given to it carries the cloud's real management endpoint;
- its scoring POST has no timeout: invocations are our own bounded, kept-alive requests
  with the endpoint key the plugin reads (listKeys).
"""

import contextlib
import copy
import io
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import DeployError
from ..masking import first_line, remember_secret
from ..session import EndpointRecord
from .rules import check_name

__all__ = ["deploy_aml", "delete_aml", "attach_aml", "workspace_rows"]

_AML_TIMEOUT = 1800.0  # managed deployments take 5-15 minutes on Azure
_DEFAULT_DEPLOYMENT = "default"
_DEFAULT_INSTANCE_TYPE = "Standard_DS3_v2"
_REQUEST_TIMEOUT = "PT90S"
_FINAL = ("Succeeded", "Failed", "Canceled")
_JSON = {"Content-Type": "application/json"}


# --------------------------------------------------------------------------- the plugin client
def _aml_target(session):
    link = session.activate()
    target = next((t for t in link.targets if t.kind == "aml"), None)
    if target is None:
        raise DeployError(
            "--target aml needs a link to an Azure ML workspace: %aml_link -s SUB -g RG -w WS (or --config); "
            "or deploy with --target local."
        )
    return target


def _deploy_uri(target) -> str:
    """The plugin's target URI for deployments: the workspace path under a key of its own, so
    the service context made for it (real management endpoint) never replaces the tracking one."""
    return target.uri.replace("/mlflow/v2.0/", "/deployments/v2.0/", 1)


def _client(target):
    """The plugin's AzureMLDeploymentClient for the linked workspace, with our credential."""
    from azureml.mlflow._internal.service_context_loader import _AzureMLServiceContextLoader
    from mlflow.deployments import get_deploy_client

    from .. import arm
    from ..workspace import _service_context

    from azureml.mlflow._internal.utils import ServiceContext

    base = _service_context(target)
    cloud = copy.deepcopy(base.cloud)
    try:
        cloud.endpoints.resource_manager = arm._management_endpoint(arm.cloud(cloud.name))
    except arm.ArmUnreachable as exc:
        raise DeployError(f"Cannot find Azure Resource Manager for cloud {cloud.name}: {exc}") from None
    context = ServiceContext(
        host_url=base.host_url, subscription_id=base.subscription_id, workspace_name=base.workspace_name,
        resource_group_name=base.resource_group_name, auth=base.auth, cloud=cloud,
    )
    uri = _deploy_uri(target)
    _AzureMLServiceContextLoader.add_service_context(uri, context)
    try:
        return get_deploy_client(uri)
    except Exception as exc:  # noqa: BLE001 - a missing or broken plugin is one line
        raise DeployError(f"Cannot load the azureml-mlflow deployment plugin: {first_line(exc)}") from None


class _NoPollingDots(io.TextIOBase):
    """sys.stdout minus the plugin's polling dots: bare "." writes from threads other than the
    kernel's. The dots come from the poller's own thread, which outlives a silent timeout, so
    the filter stays once installed; everything else passes unchanged."""

    def __init__(self, inner, kernel_thread: int):
        self.inner, self.kernel_thread = inner, kernel_thread

    def write(self, text):
        if text and not text.strip(".") and threading.get_ident() != self.kernel_thread:
            return len(text)
        return self.inner.write(text)

    def flush(self):
        return self.inner.flush()

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _mute_polling_dots() -> None:
    if not isinstance(sys.stdout, _NoPollingDots):
        sys.stdout = _NoPollingDots(sys.stdout, threading.get_ident())


def _call(what: str, work, deadline: float, progress=None, state=None):
    """Run one plugin call on a worker thread, showing progress until it returns or
    `deadline` (monotonic) passes; the service's own reason on failure."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed back to the kernel thread
            outcome["error"] = exc

    _mute_polling_dots()
    worker = threading.Thread(target=run, name="dbxml-aml-deploy", daemon=True)
    worker.start()
    last_state = 0.0
    while worker.is_alive() and time.monotonic() < deadline:
        worker.join(0.5)
        if progress is not None:
            now = time.monotonic()
            if state is not None and now - last_state > 5:
                last_state = now
                progress.update(f"{what}: {_safely(state) or 'in progress'}")
            else:
                progress.update(what)
    if worker.is_alive():
        raise TimeoutError(what)
    if "error" in outcome:
        raise _ServiceFailure(what, outcome["error"])
    return outcome.get("value")


class _ServiceFailure(Exception):
    def __init__(self, what: str, error: BaseException):
        super().__init__(f"{what} failed: {reason(error)}")
        self.error = error


def reason(exc: BaseException) -> str:
    """Azure's own words for a failure: the ARM error code and message, found along the cause
    chain; where ARM nests the specific cause under a generic error (`details`), that cause."""
    seen = exc
    while seen is not None:
        error = getattr(seen, "error", None)
        while getattr(error, "details", None) and getattr(error.details[0], "message", None):
            error = error.details[0]
        code, message = getattr(error, "code", None), getattr(error, "message", None)
        if message:
            return " ".join(f"{code}: {message}".split()) if code else " ".join(str(message).split())
        seen = seen.__cause__ or seen.__context__
    return first_line(exc, 300)


def _safely(function):
    try:
        return function()
    except Exception:  # noqa: BLE001 - a status read is a courtesy
        return None


def _config_file(folder: Path, name: str, payload: dict) -> str:
    path = folder / name
    path.write_text(json.dumps(payload))
    return str(path)


def _is_missing(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) == 404 or "NotFound" in str(exc) or "No deployment" in str(exc)


# --------------------------------------------------------------------------- deploy
def deploy_aml(session, args) -> None:
    from .progress import StatusLine

    name = args.endpoint
    deployment = check_name(args.deployment or _DEFAULT_DEPLOYMENT, "deployment")
    if args.port is not None:
        raise DeployError("--port applies to --target local only; Azure gives the endpoint its address.")
    if args.instance_count is not None and args.instance_count < 1:
        raise DeployError(f"--instance-count {args.instance_count} must be 1 or more.")
    if args.traffic is not None and not 0 <= args.traffic <= 100:
        raise DeployError(f"--traffic {args.traffic} must be a percentage from 0 to 100.")
    if not args.model and args.traffic is None:
        raise DeployError(
            f"Name the model to serve (%aml_deploy {name} MODEL), or move traffic: "
            f"%aml_deploy {name} --deployment NAME --traffic PCT."
        )
    target = _aml_target(session)
    model = _aml_model(session, target, args.model) if args.model else None
    client = _client(target)
    deadline = time.monotonic() + (args.timeout or _AML_TIMEOUT)
    progress = StatusLine(f"AML endpoint {name}")
    endpoint = _existing_endpoint(client, name, deadline)
    if model is None:
        if endpoint is None:
            raise DeployError(f"Endpoint {name!r} does not exist in workspace {target.workspace!r}; deploy a model to it first.")
        traffic = _move_traffic(client, name, endpoint, deployment, args.traffic, deadline, progress)
        record = session.endpoints.get(name)
        if record is not None:
            record.traffic = traffic
            session.set_endpoint(record)
        print(f"Endpoint {name}: traffic {_traffic_text(traffic)}.")
        return
    with tempfile.TemporaryDirectory(prefix="dbxml-deploy-") as folder:
        created_endpoint = endpoint is None
        if created_endpoint:
            endpoint = _create_endpoint(client, name, Path(folder), deadline, progress)
        try:
            existing = _existing_deployment(client, name, deployment, deadline)
            _deploy_version(client, name, deployment, model, existing, args, Path(folder), deadline, progress)
            share = args.traffic if args.traffic is not None else (100 if created_endpoint else None)
            traffic = endpoint.get("properties", {}).get("traffic") or {}
            if share is not None:
                traffic = _move_traffic(client, name, endpoint, deployment, share, deadline, progress)
        except TimeoutError:
            # Azure goes on provisioning: say where it stands and how to remove it, rather than
            # delete what may be minutes from ready.
            progress.done("timed out")
            raise _still_provisioning(session, client, target, name, deployment, model, created_endpoint, args) from None
        except BaseException as exc:
            _undo(client, name, deployment, created_endpoint, existing if not created_endpoint else None, progress)
            progress.done("failed")
            if isinstance(exc, (DeployError, KeyboardInterrupt)):
                raise
            raise _as_deploy_error(exc, name, deployment, args) from None
    endpoint = _call("reading the endpoint", lambda: client.get_endpoint(name), deadline)
    url = endpoint.get("properties", {}).get("scoringUri") or ""
    record = EndpointRecord(name=name, target="aml", model=model.label, model_uri=model.uri, url=url, state="Ready",
                            deployment=deployment, traffic=dict(traffic), handle=AmlEndpoint(client, name, url))
    old = session.endpoints.get(name)
    if old is not None and old.handle is not None:
        old.handle.close()
    session.set_endpoint(record)
    progress.done("ready")
    print(
        f"Endpoint {name} (Azure ML, workspace {target.workspace}) serves {model.label} in deployment {deployment} "
        f"at {url} (traffic {_traffic_text(traffic)})."
    )


class _Model:
    def __init__(self, name: str, version: str, label: str):
        self.name, self.version, self.label = name, version, label
        self.uri = f"models:/{name}/{version}"


def _aml_model(session, target, text: str) -> _Model:
    """The model pinned to one version of the workspace's registry (resolved here: the plugin
    mis-reads aliases). In `both` mode the version is the mirror's copy of the primary's."""
    from ..model_ref import resolve_model

    ref = resolve_model(session, text)
    if not ref.name or not ref.version:
        raise DeployError(
            f"{text} is not a registered model version; Azure ML deploys registered models: "
            f"%aml_register NAME --uri {ref.uri}, then %aml_deploy ENDPOINT NAME."
        )
    link = session.link
    if link.primary.kind == "aml":
        return _Model(ref.name, ref.version, ref.label)
    return _mirror_model(target, ref)


def _mirror_model(target, ref) -> _Model:
    from mlflow import MlflowClient

    from ..registry.mirror import SOURCE_VERSION_TAG

    marker = f"{ref.source_run_id}/{ref.version}"
    client = MlflowClient(tracking_uri=target.uri, registry_uri=target.registry_uri or target.uri)
    try:
        versions = client.search_model_versions(f"name = '{ref.name}'")
    except Exception as exc:  # noqa: BLE001
        raise DeployError(f"Cannot read the model registry of {target.display}: {first_line(exc)}") from None
    found = next((v for v in versions if (v.tags or {}).get(SOURCE_VERSION_TAG) == marker), None)
    if found is None:
        raise DeployError(
            f"{ref.label} has no copy in workspace {target.workspace!r} yet (the mirror may still be pending: "
            "%aml_sync --flush), so it cannot be deployed there."
        )
    return _Model(ref.name, str(found.version), f"{ref.name} v{found.version} (mirror of {ref.label})")


def _existing_endpoint(client, name: str, deadline: float):
    try:
        return _call("reading the endpoint", lambda: client.get_endpoint(name), deadline)
    except _ServiceFailure as exc:
        if _is_missing(exc.error):
            return None
        raise DeployError(f"Cannot read endpoint {name!r}: {reason(exc.error)}") from None
    except TimeoutError:
        raise DeployError(f"Azure did not answer about endpoint {name!r} in time; check the network.") from None


def _existing_deployment(client, endpoint: str, deployment: str, deadline: float):
    # A listing, not get_deployment: for a v2 deployment that does not exist yet, the
    # plugin's get_deployment goes looking for a v1 (ACI/AKS) service of that name.
    deployments = _call("reading the deployments", lambda: client.list_deployments(endpoint=endpoint), deadline)
    return next((d for d in deployments if d.get("name") == deployment), None)


def _create_endpoint(client, name: str, folder: Path, deadline: float, progress):
    config = {
        "auth_mode": "key",
        "identity": {"type": "system_assigned"},
        "properties": {"azureml.mlflow_client_endpoint": "True"},
    }
    path = _config_file(folder, "endpoint.json", config)
    try:
        return _call("creating the endpoint", lambda: client.create_endpoint(name, config={"endpoint-config-file": path}),
                     deadline, progress)
    except _ServiceFailure as exc:
        raise DeployError(f"Azure ML refused endpoint {name!r}: {reason(exc.error)}") from None
    except TimeoutError:
        raise DeployError(f"Endpoint {name!r} was not created within --timeout; Azure may still create it: follow it "
                          f"with %aml_deploy --list, remove it with %aml_deploy --delete {name}.") from None


def _deploy_version(client, endpoint, deployment, model, existing, args, folder: Path, deadline, progress) -> None:
    count = args.instance_count or (_capacity(existing) if existing else 1)
    config = {
        "instance_type": args.instance_type or _instance_type(existing) or _DEFAULT_INSTANCE_TYPE,
        "instance_count": count,
        "request_settings": {"request_timeout_ms": _REQUEST_TIMEOUT},
    }
    path = _config_file(folder, "deployment.json", config)
    what = f"{'updating' if existing else 'creating'} deployment {deployment} ({model.label}, {config['instance_type']} x{count})"
    if existing is None:
        work = lambda: client.create_deployment(  # noqa: E731
            deployment, model.uri, config={"deploy-config-file": path}, endpoint=endpoint
        )
    else:
        work = lambda: client.update_deployment(  # noqa: E731
            deployment, model_uri=model.uri, config={"deploy-config-file": path}, endpoint=endpoint
        )
    state = lambda: client.get_deployment(deployment, endpoint=endpoint)["properties"]["provisioningState"]  # noqa: E731
    _call(what, work, deadline, progress, state)
    final = _safely(state)
    if final != "Succeeded":
        # The plugin's poller gives up silently after its own timeout: the state says what happened.
        raise DeployError(
            f"Deployment {deployment} of endpoint {endpoint} is {final or 'in an unknown state'} "
            f"after the plugin returned; see %aml_deploy --list."
        )


def _capacity(deployment: dict) -> int:
    return int((deployment.get("sku") or {}).get("capacity") or 1)


def _instance_type(deployment) -> str | None:
    return ((deployment or {}).get("properties") or {}).get("instanceType")


def _move_traffic(client, name: str, endpoint: dict, deployment: str, share: int, deadline, progress) -> dict:
    """`share` percent to `deployment`, the rest spread over the others in their current proportions."""
    current = dict((endpoint.get("properties") or {}).get("traffic") or {})
    others = {k: v for k, v in current.items() if k != deployment}
    if share < 100 and not others:
        raise DeployError(
            f"Endpoint {name!r} has no other deployment to take the other {100 - share}% of traffic; "
            "deploy another one first (--deployment NAME)."
        )
    rest, total = 100 - share, sum(others.values())
    traffic = {k: (rest * v // total if total else rest // len(others)) for k, v in others.items()}
    if traffic:
        first = next(iter(traffic))
        traffic[first] += rest - sum(traffic.values())
    traffic[deployment] = share
    with tempfile.TemporaryDirectory(prefix="dbxml-traffic-") as folder:
        path = _config_file(Path(folder), "traffic.json", {"traffic": traffic})
        try:
            _call("updating traffic", lambda: client.update_endpoint(name, config={"endpoint-config-file": path}),
                  deadline, progress)
        except _ServiceFailure as exc:
            raise DeployError(f"Azure ML refused the traffic {_traffic_text(traffic)} for {name!r}: {reason(exc.error)}") from None
    return traffic


def _traffic_text(traffic: dict) -> str:
    return ", ".join(f"{k} {v}%" for k, v in traffic.items()) or "none"


def _undo(client, endpoint: str, deployment: str, created_endpoint: bool, existing, progress) -> None:
    """After a failure: nothing of this call stays (a new endpoint goes whole, a new deployment goes)."""
    deadline = time.monotonic() + 600
    progress.update("cleaning up")
    with contextlib.suppress(Exception):
        if created_endpoint:
            _call("deleting the endpoint", lambda: client.delete_endpoint(endpoint), deadline)
        elif existing is None:
            _call("deleting the deployment", lambda: client.delete_deployment(deployment, endpoint=endpoint), deadline)


def _still_provisioning(session, client, target, name: str, deployment: str, model, created_endpoint: bool,
                        args) -> DeployError:
    """--timeout passed while Azure provisions: the states Azure reports now, the endpoint on
    record with them (never as ready), and the line that deletes it."""
    deadline = time.monotonic() + 30
    found = _safely(lambda: _existing_deployment(client, name, deployment, deadline))
    endpoint = _safely(lambda: _call("reading the endpoint", lambda: client.get_endpoint(name), deadline)) or {}
    props = endpoint.get("properties") or {}
    state = ((found or {}).get("properties") or {}).get("provisioningState") or ("not created" if found is None else "?")
    traffic = props.get("traffic") or {}
    if created_endpoint and endpoint:
        session.set_endpoint(EndpointRecord(
            name=name, target="aml", model=model.label, model_uri=model.uri, url=props.get("scoringUri") or "",
            state=state, deployment=deployment, traffic=dict(traffic),
            handle=AmlEndpoint(client, name, props.get("scoringUri") or ""),
        ))
    delete = f"%aml_deploy --delete {name}" + ("" if created_endpoint else f" --deployment {deployment}")
    return DeployError(
        f"Deployment {deployment} of endpoint {name} did not finish within --timeout {args.timeout or _AML_TIMEOUT:g} s: "
        f"Azure reports the deployment {state}, the endpoint {props.get('provisioningState') or '?'} with traffic "
        f"{_traffic_text(traffic)}, and goes on provisioning. Follow it with %aml_deploy --list; remove it with {delete}."
    )


def _as_deploy_error(exc: BaseException, endpoint: str, deployment: str, args) -> DeployError:
    if isinstance(exc, _ServiceFailure):
        return DeployError(f"Deployment {deployment} of endpoint {endpoint} failed and was removed: {reason(exc.error)}")
    return DeployError(f"Deployment {deployment} of endpoint {endpoint} failed and was removed: {first_line(exc)}")


# --------------------------------------------------------------------------- delete, list, attach
def delete_aml(session, name: str, deployment: str | None) -> None:
    check_name(name)
    target = _aml_target(session)
    client = _client(target)
    deadline = time.monotonic() + 900
    if _existing_endpoint(client, name, deadline) is None:
        session.drop_endpoint(name)
        raise DeployError(f"No endpoint named {name!r} in workspace {target.workspace!r} (see %aml_deploy --list).")
    try:
        if deployment:
            check_name(deployment, "deployment")
            if _existing_deployment(client, name, deployment, deadline) is None:
                raise DeployError(f"Endpoint {name!r} has no deployment {deployment!r}.")
            _call(f"deleting deployment {deployment}", lambda: client.delete_deployment(deployment, endpoint=name), deadline)
            print(f"Deleted deployment {deployment} of endpoint {name}.")
            return
        _call("deleting the endpoint", lambda: client.delete_endpoint(name), deadline)
    except _ServiceFailure as exc:
        raise DeployError(f"Azure ML refused to delete {deployment or name!r}: {reason(exc.error)}") from None
    except TimeoutError:
        raise DeployError(f"Deleting {deployment or name!r} did not finish in time; check with %aml_deploy --list.") from None
    record = session.drop_endpoint(name)
    if record is not None and record.handle is not None:
        record.handle.close()
    print(f"Deleted endpoint {name} and its deployments from workspace {target.workspace}.")


def attach_aml(session, name: str) -> EndpointRecord:
    """An endpoint of the workspace made elsewhere (another session, the studio), for %aml_invoke."""
    check_name(name)
    target = _aml_target(session)
    client = _client(target)
    endpoint = _existing_endpoint(client, name, time.monotonic() + 60)
    if endpoint is None:
        raise DeployError(f"No endpoint named {name!r} in workspace {target.workspace!r} (see %aml_deploy --list).")
    url = endpoint.get("properties", {}).get("scoringUri") or ""
    traffic = endpoint.get("properties", {}).get("traffic") or {}
    record = EndpointRecord(name=name, target="aml", model="?", model_uri="", url=url,
                            state=endpoint.get("properties", {}).get("provisioningState", "?"), traffic=dict(traffic),
                            handle=AmlEndpoint(client, name, url))
    return session.set_endpoint(record)


def workspace_rows(session) -> list[tuple]:
    """Rows for --list: the workspace's endpoints, each with its deployments' models."""
    target = _aml_target(session)
    client = _client(target)
    try:
        endpoints = _call("listing endpoints", client.list_endpoints, time.monotonic() + 60)
    except Exception as exc:  # noqa: BLE001 - listing is best effort next to the session's own
        return [("?", "aml", f"cannot list workspace endpoints: {reason(getattr(exc, 'error', exc))}", "", "", "")]
    rows = []
    for endpoint in endpoints:
        props = endpoint.get("properties") or {}
        traffic = props.get("traffic") or {}
        rows.append((endpoint.get("name"), "aml", _traffic_text(traffic), props.get("provisioningState", "?"),
                     props.get("scoringUri", ""), ""))
    return rows


# --------------------------------------------------------------------------- invoke
class AmlEndpoint:
    """Invocations of one managed online endpoint: its key (read once through the plugin) and one
    kept-alive HTTPS connection; Azure's MLflow scoring takes `{"input_data": split}`."""

    def __init__(self, client, name: str, url: str):
        self.client, self.name, self.url = client, name, url
        self._key = None
        self._http = None

    def invoke(self, df, timeout: float, deployment: str | None = None):
        import requests

        from .payload import error_text, read_predictions, split_body

        if self._key is None:
            try:
                self._key = _call("reading the endpoint key", lambda: self.client._mir_client._list_keys(self.name).primary_key,
                                  time.monotonic() + timeout)
            except (_ServiceFailure, TimeoutError) as exc:
                raise DeployError(f"Cannot read the key of endpoint {self.name!r}: {reason(getattr(exc, 'error', exc))}") from None
            remember_secret(self._key)
        if self._http is None:
            self._http = requests.Session()
        headers = {**_JSON, "Authorization": f"Bearer {self._key}"}
        if deployment:
            headers["azureml-model-deployment"] = deployment
        try:
            response = self._http.post(self.url, data=split_body(df, "input_data"), headers=headers, timeout=timeout)
        except requests.Timeout:
            raise DeployError(f"Endpoint {self.name!r} gave no answer within {timeout:g} s; raise --timeout.") from None
        except requests.RequestException as exc:
            raise DeployError(f"Cannot reach endpoint {self.name!r} at {self.url}: {first_line(exc)}") from None
        if response.status_code != 200:
            raise DeployError(f"Endpoint {self.name!r} refused the request: {error_text(response)}")
        return read_predictions(response.json(), df.index)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

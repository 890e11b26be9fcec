"""Azure ML managed online endpoints, emulated on loopback for the deployment plugin's own code.

`OnlineEndpoints(arm, mlflow_uri, folder)` adds to an `ArmEmulator` (TLS, bearer tokens) the
routes azureml-mlflow 1.60 calls (api-version 2022-02-01-preview; the workspace read 2022-01-01-preview):
endpoints (PUT, GET, PATCH traffic, DELETE, list), deployments (PUT, PATCH, GET, DELETE, list),
`listKeys`, `token`, and the operation status that long-running deployments are polled at
(`Azure-AsyncOperation`). Each deployment is backed by a real `mlflow models serve` started
from the model version's files in the real MLflow server behind the workspace; it becomes
`Succeeded` when the server answers /ping, `Failed` (with the container's log) when it exits.
Failures as Azure reports them, in the operation status (ARM's error format):
- `fail_next`: the next deployment fails before anything starts, with `(code, message)` or a
  whole ARM error (`details` nest the specific cause, as for an image build);
- `probe_window`: the readiness probe gives up after that many seconds without a 200 from
  /ping (`ResourceNotReady`); the container keeps running, as Azure's restarts, until the
  deployment or its endpoint is deleted;
- `hold`: provisioning never finishes (the operation stays `InProgress`) until deleted,
  which cancels it.

The scoring front door (`scoringUri`) is a plain HTTP server: it checks the endpoint key,
routes by traffic (or the `azureml-model-deployment` header), and speaks Azure's MLflow
scoring protocol (`{"input_data": split}` in, a bare list out) to the deployments' servers.
"""

import json
import random
import secrets
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from arm_emulator import PROVIDER, WORKSPACE_API_VERSIONS, ArmFault

__all__ = ["OnlineEndpoints", "API_VERSION"]

API_VERSION = "2022-02-01-preview"
_WS = (r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
       rf"/providers/{PROVIDER}/workspaces/(?P<ws>[^/]+)")
_EP = _WS + r"/onlineEndpoints/(?P<ep>[^/]+)"
_DEP = _EP + r"/deployments/(?P<dep>[^/]+)"
_OPERATION = rf"/subscriptions/(?P<sub>[^/]+)/providers/{PROVIDER}/locations/(?P<loc>[^/]+)/mfeOperationsStatus/(?P<op>[^/]+)"


class OnlineEndpoints:
    def __init__(self, arm, mlflow_uri: str, folder: Path):
        self.arm = arm
        self.mlflow_uri = mlflow_uri
        self.folder = Path(folder)
        self.endpoints: dict[str, dict] = {}
        self.keys: dict[str, str] = {}
        self.deployments: dict[tuple[str, str], dict] = {}
        self.servers: dict[tuple[str, str], object] = {}
        self.operations: dict[str, dict] = {}
        self.fail_next: tuple[str, str] | dict | None = None  # the next deployment's error: (code, message) or ARM's
        self.probe_window: float | None = None  # readiness probe's patience, seconds (None: as long as start-up takes)
        self.hold = False  # deployments stay InProgress
        self.stalling = threading.Event()  # while set, scoring requests get no answer (a hung container)
        self.deployment_bodies: list[dict] = []  # PUT/PATCH bodies as sent, for tests
        self._lock = threading.Lock()
        self._scoring = ThreadingHTTPServer(("127.0.0.1", 0), _scoring_handler(self))
        self._scoring.daemon_threads = True
        threading.Thread(target=self._scoring.serve_forever, name="scoring-front-door", daemon=True).start()
        versions = (API_VERSION,)
        # The plugin reads the workspace (its location) with the api-version of its workspaces client.
        arm.route("GET", _WS, WORKSPACE_API_VERSIONS + ("2022-01-01-preview",))(arm._get_workspace)
        arm.route("GET", _WS + r"/onlineEndpoints", versions)(self._list_endpoints)
        arm.route("GET", _EP, versions)(self._get_endpoint)
        arm.route("PUT", _EP, versions)(self._put_endpoint)
        arm.route("PATCH", _EP, versions)(self._patch_endpoint)
        arm.route("DELETE", _EP, versions)(self._delete_endpoint)
        arm.route("POST", _EP + r"/listKeys", versions)(self._list_keys)
        arm.route("POST", _EP + r"/token", versions)(self._token)
        arm.route("GET", _EP + r"/deployments", versions)(self._list_deployments)
        arm.route("GET", _DEP, versions)(self._get_deployment)
        arm.route("PUT", _DEP, versions)(self._put_deployment)
        arm.route("PATCH", _DEP, versions)(self._put_deployment)
        arm.route("DELETE", _DEP, versions)(self._delete_deployment)
        arm.route("GET", _OPERATION, versions)(self._operation)

    @property
    def scoring_url(self) -> str:
        return f"http://127.0.0.1:{self._scoring.server_address[1]}"

    def close(self) -> None:
        for server in list(self.servers.values()):
            server.close()
        self.servers.clear()
        self._scoring.shutdown()
        self._scoring.server_close()

    # ------------------------------------------------------------------ endpoints
    def _endpoint(self, ep: str) -> dict:
        endpoint = self.endpoints.get(ep.lower())
        if endpoint is None:
            raise ArmFault(404, "ResourceNotFound", f"Online endpoint '{ep}' was not found in this workspace.")
        return endpoint

    def _list_endpoints(self, request, sub, rg, ws):
        return 200, {"value": list(self.endpoints.values())}

    def _get_endpoint(self, request, sub, rg, ws, ep):
        return 200, self._endpoint(ep)

    def _put_endpoint(self, request, sub, rg, ws, ep):
        body = request.json()
        if ep.lower() in self.endpoints:
            raise ArmFault(409, "Conflict", f"Online endpoint '{ep}' already exists.")
        properties = body.get("properties") or {}
        resource = {
            "id": request.path, "name": ep, "type": f"{PROVIDER}/workspaces/onlineEndpoints",
            "location": body.get("location"), "identity": body.get("identity"), "tags": body.get("tags") or {},
            "properties": {
                **properties, "traffic": properties.get("traffic") or {}, "provisioningState": "Succeeded",
                "scoringUri": f"{self.scoring_url}/endpoints/{ep}/score",
                "swaggerUri": f"{self.scoring_url}/endpoints/{ep}/swagger.json",
            },
        }
        with self._lock:
            self.endpoints[ep.lower()] = resource
            self.keys[ep.lower()] = secrets.token_urlsafe(24)
        return 200, resource

    def _patch_endpoint(self, request, sub, rg, ws, ep):
        endpoint = self._endpoint(ep)
        traffic = ((request.json() or {}).get("properties") or {}).get("traffic")
        if traffic is not None:
            unknown = [d for d in traffic if (ep.lower(), d) not in self.deployments]
            if unknown:
                raise ArmFault(400, "BadArgument", f"Traffic names deployments that do not exist: {', '.join(unknown)}.")
            if sum(traffic.values()) not in (0, 100):
                raise ArmFault(400, "BadArgument", f"Traffic must add up to 0 or 100, not {sum(traffic.values())}.")
            endpoint["properties"]["traffic"] = {k: int(v) for k, v in traffic.items()}
        return 200, endpoint

    def _delete_endpoint(self, request, sub, rg, ws, ep):
        self._endpoint(ep)
        for key in [k for k in self.deployments if k[0] == ep.lower()]:
            self._remove_deployment(key)
        with self._lock:
            del self.endpoints[ep.lower()]
            self.keys.pop(ep.lower(), None)
        return 200, None

    def _list_keys(self, request, sub, rg, ws, ep):
        self._endpoint(ep)
        return 200, {"primaryKey": self.keys[ep.lower()], "secondaryKey": "unused-" + ep}

    def _token(self, request, sub, rg, ws, ep):
        self._endpoint(ep)
        return 200, {"accessToken": self.keys[ep.lower()], "tokenType": "Bearer",
                     "expiryTimeUtc": int(time.time()) + 3600, "refreshAfterTimeUtc": int(time.time()) + 1800}

    # ------------------------------------------------------------------ deployments
    def _deployment(self, ep: str, dep: str) -> dict:
        self._endpoint(ep)
        deployment = self.deployments.get((ep.lower(), dep))
        if deployment is None:
            raise ArmFault(404, "ResourceNotFound", f"Deployment '{dep}' of online endpoint '{ep}' was not found.")
        return deployment

    def _list_deployments(self, request, sub, rg, ws, ep):
        self._endpoint(ep)
        return 200, {"value": [d for (e, _), d in self.deployments.items() if e == ep.lower()]}

    def _get_deployment(self, request, sub, rg, ws, ep, dep):
        return 200, self._deployment(ep, dep)

    def _put_deployment(self, request, sub, rg, ws, ep, dep):
        self._endpoint(ep)
        body = request.json()
        self.deployment_bodies.append(body)
        properties = body.get("properties") or {}
        for name in ("requestTimeout", "maxQueueWait"):
            value = (properties.get("requestSettings") or {}).get(name)
            if value is not None and not str(value).startswith("P"):
                raise ArmFault(400, "BadArgument", f"requestSettings.{name} must be an ISO 8601 duration, not {value!r}.")
        model = str(properties.get("model") or "")
        parts = model.split("/")
        if len(parts) < 4 or parts[-4] != "models" or parts[-2] != "versions":
            raise ArmFault(400, "BadArgument", f"properties.model must be a model version id, not {model!r}.")
        resource = {
            "id": request.path, "name": dep, "type": f"{PROVIDER}/workspaces/onlineEndpoints/deployments",
            "location": body.get("location"), "sku": body.get("sku") or {"name": "Default", "capacity": 1},
            "properties": {**properties, "provisioningState": "Creating" if request.method == "PUT" else "Updating"},
        }
        operation = uuid.uuid4().hex
        with self._lock:
            self.deployments[(ep.lower(), dep)] = resource
            self.operations[operation] = {"status": "InProgress", "for": (ep.lower(), dep)}
        failure, self.fail_next = self.fail_next, None
        if not self.hold:
            threading.Thread(target=self._provision, args=(ep.lower(), dep, parts[-3], parts[-1], operation, failure),
                             daemon=True).start()
        url = f"{self.arm.url}subscriptions/{sub}/providers/{PROVIDER}/locations/local/mfeOperationsStatus/{operation}"
        headers = {"Azure-AsyncOperation": f"{url}?api-version={API_VERSION}", "Retry-After": "1"}
        return (201 if request.method == "PUT" else 202), resource, headers

    def _provision(self, ep: str, dep: str, model: str, version: str, operation: str, failure) -> None:
        """Like Azure: pull the model, start its container, wait for the readiness probe."""
        from dbxml_magics.deploy.local import LocalServer, free_port
        from dbxml_magics.errors import DeployError

        key = (ep, dep)
        if failure is not None:
            error = failure if isinstance(failure, dict) else {"code": failure[0], "message": failure[1]}
            return self._finish(key, operation, "Failed", error)
        try:
            model_dir = self._model_files(model, version, self.folder / f"{ep}-{dep}-{uuid.uuid4().hex[:6]}")
            server = LocalServer(f"{ep}/{dep}", model_dir, free_port(), model_dir.parent / "container.log")
            old = self.servers.pop(key, None)
            server.start()
            if self.probe_window is not None and not self._probe(server, self.probe_window):
                self.servers[key] = server  # still running: Azure restarts it until the deployment goes
                return self._finish(key, operation, "Failed", {
                    "code": "ResourceNotReady",
                    "message": f"Readiness probe failed: GET /ping on port {server.port} did not answer 200 within "
                               f"{self.probe_window:g} s (probe_settings: initial_delay, period, failure_threshold).",
                })
            server.wait_ready(600)
        except DeployError as exc:
            return self._finish(key, operation, "Failed", {
                "code": "ResourceNotReady",
                "message": f"User container has crashed or terminated: {exc}",
            })
        except Exception as exc:  # noqa: BLE001 - the operation reports it, as Azure would
            return self._finish(key, operation, "Failed", {"code": "ModelNotFound", "message": str(exc)[:300]})
        if old is not None:
            old.close()
        self.servers[key] = server
        self._finish(key, operation, "Succeeded", None)

    @staticmethod
    def _probe(server, window: float) -> bool:
        """Azure's readiness probe: GET /ping until 200, for `window` seconds."""
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(server.url + "/ping", timeout=1) as answer:
                    if answer.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.2)
        return False

    def _finish(self, key, operation: str, status: str, error) -> None:
        with self._lock:
            deployment = self.deployments.get(key)
            if deployment is not None:
                deployment["properties"]["provisioningState"] = status
            self.operations[operation] = {"status": status, "for": key, **({"error": error} if error else {})}

    def _model_files(self, model: str, version: str, folder: Path) -> Path:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=self.mlflow_uri, registry_uri=self.mlflow_uri)
        source = client.get_model_version_download_uri(model, version)
        folder.mkdir(parents=True)
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(folder),
                                                        tracking_uri=self.mlflow_uri))
        return sorted(path.rglob("MLmodel"), key=lambda p: len(p.parts))[0].parent

    def _delete_deployment(self, request, sub, rg, ws, ep, dep):
        self._deployment(ep, dep)
        if self._endpoint(ep)["properties"]["traffic"].get(dep):
            raise ArmFault(400, "BadArgument", f"Deployment '{dep}' still receives traffic; move it first.")
        self._remove_deployment((ep.lower(), dep))
        return 200, None

    def _remove_deployment(self, key) -> None:
        server = self.servers.pop(key, None)
        if server is not None:
            server.close()
        with self._lock:
            self.deployments.pop(key, None)
            for operation in self.operations.values():  # deleting cancels what still provisions it
                if operation["for"] == key and operation["status"] == "InProgress":
                    operation.update(status="Canceled", error={
                        "code": "OperationCanceled", "message": "The deployment was deleted while it was provisioning."})

    def _operation(self, request, sub, loc, op):
        operation = self.operations.get(op)
        if operation is None:
            raise ArmFault(404, "ResourceNotFound", f"No operation {op}.")
        shown = {k: v for k, v in operation.items() if k != "for"}
        return 200, {"id": request.path, "name": op, **shown}, {"Retry-After": "1"}

    # ------------------------------------------------------------------ scoring
    def route_request(self, ep: str, key: str, wanted: str | None):
        """The deployment's server that answers a scoring request, or (status, message)."""
        endpoint = self.endpoints.get(ep.lower())
        if endpoint is None:
            return None, (404, f"Endpoint {ep} not found.")
        if key != self.keys.get(ep.lower()):
            return None, (401, "Invalid key.")
        traffic = endpoint["properties"]["traffic"]
        if wanted is None:
            choices = [d for d, share in traffic.items() if share > 0]
            if not choices:
                return None, (424, "No deployment receives traffic.")
            wanted = random.choices(choices, weights=[traffic[d] for d in choices])[0]
        server = self.servers.get((ep.lower(), wanted))
        if server is None:
            return None, (404, f"Deployment {wanted} not found or not ready.")
        return server, None


def _scoring_handler(endpoints: OnlineEndpoints):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _reply(self, status: int, payload) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if endpoints.stalling.is_set():  # a hung container: no answer at all, until the test releases it
                released = time.monotonic() + 60
                while endpoints.stalling.is_set() and time.monotonic() < released:
                    time.sleep(0.05)
                self.close_connection = True
                return
            parts = self.path.strip("/").split("/")
            if len(parts) != 3 or parts[0] != "endpoints" or parts[2] != "score":
                return self._reply(404, {"message": "no such scoring path"})
            key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            server, error = endpoints.route_request(parts[1], key, self.headers.get("azureml-model-deployment"))
            if error:
                return self._reply(error[0], {"message": error[1]})
            try:
                split = json.loads(body)["input_data"]
            except (ValueError, KeyError, TypeError):
                return self._reply(400, {"message": "The request body must be {\"input_data\": {...}}."})
            request = urllib.request.Request(server.url + "/invocations", method="POST",
                                             data=json.dumps({"dataframe_split": split}).encode(),
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as answer:
                    self._reply(200, json.loads(answer.read())["predictions"])
            except urllib.error.HTTPError as exc:
                self._reply(exc.code, json.loads(exc.read() or b"{}"))
            except OSError as exc:  # the container is gone: Azure answers 502
                self._reply(502, {"message": f"The deployment did not answer: {exc}"})

    return Handler

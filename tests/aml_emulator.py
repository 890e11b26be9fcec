"""A stand-in for an Azure ML workspace's MLflow endpoint, on loopback, for protocol tests.

Azure is unreachable from the test machine, so this server plays the two Azure parts the
real client code talks to after workspace lookup:

- the **managed-identity token endpoint** (App Service protocol: `IDENTITY_ENDPOINT` +
  `IDENTITY_HEADER`), so azure-identity's real `ManagedIdentityCredential` obtains tokens
  over HTTP exactly as on Azure compute;
- the region's **discovery** document (`/discovery`, anonymous), which azureml-core reads for
  `Workspace.get_mlflow_tracking_uri()`;
- the **workspace MLflow endpoint** `/mlflow/v2.0/subscriptions/<sub>/resourceGroups/<rg>/
  providers/Microsoft.MachineLearningServices/workspaces/<ws>/api/2.0/mlflow/...`: it rejects
  requests without a bearer token it issued (401), answers 404 for another workspace, strips
  the workspace prefix and forwards to a real `mlflow server`. `rejecting` answers 401 to
  everything (an expired or revoked token), `forbidding` 403 (an identity without the
  workspace's MLflow permissions); `throttled_batches` answers 429 to that many
  log-batch requests, as AML does under heavy logging.

Every request is recorded (`requests`), so tests can count round trips as AML would see them.

Artifacts: AML hands out `azureml://` artifact locations served by its own artifact service
(SAS uploads to blob storage), which is not emulated. The MLflow server's
`mlflow-artifacts:/` locations are rewritten to its plain HTTP artifact endpoint, so artifact
writes still work end to end, through MLflow's HTTP artifact repository.
"""

import base64
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from arm_emulator import ArmEmulator, QuietHandler, stop_server

__all__ = ["AmlEmulator", "SeenRequest", "WORKSPACE_PREFIX", "link_line", "start_arm"]

WORKSPACE_PREFIX = (
    "/mlflow/v2.0/subscriptions/{sub}/resourceGroups/{rg}"
    "/providers/Microsoft.MachineLearningServices/workspaces/{ws}"
)
TOKEN_PATH = "/msi/token"
TENANT_ID = "72f988bf-0000-0000-0000-000000000001"
MANAGED_IDENTITY_CLIENT_ID = "5e1f0000-0000-4000-8000-00000000c11d"


def _b64(part: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


@dataclass(frozen=True)
class SeenRequest:
    """One request as the emulated endpoint saw it."""

    method: str
    path: str  # after the workspace prefix, e.g. /api/2.0/mlflow/runs/log-batch
    status: int
    authorized: bool
    metric_points: int  # metrics carried by a log-metric / log-batch body
    body: str  # request body (tests search it for secrets)


class AmlEmulator:
    """Threaded HTTP server on 127.0.0.1 that checks bearer tokens and forwards to MLflow."""

    def __init__(self, mlflow_uri: str, subscription: str = "00000000-1111-2222-3333-444444444444",
                 resource_group: str = "rg-test", workspace: str = "ws-test"):
        self.mlflow_uri = mlflow_uri.rstrip("/")
        self.subscription = subscription
        self.resource_group = resource_group
        self.workspace = workspace
        self.identity_header = secrets.token_hex(8)
        self.requests: list[SeenRequest] = []
        self.tokens_issued: list[str] = []
        self.token_requests = 0
        self.rejecting = False  # answer 401 to everything (an expired or revoked token)
        self.forbidding = False  # answer 403: the identity may read the workspace but not use its MLflow
        self.throttled_batches = 0  # answer 429 to this many log-batch requests (AML throttles)
        self.token_lifetime = 3600  # seconds a token it issues is valid
        self.arm: ArmEmulator | None = None  # Azure Resource Manager in front of it (`start_arm`)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._server.connections = set()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ addresses
    @property
    def host_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def prefix(self) -> str:
        return WORKSPACE_PREFIX.format(sub=self.subscription, rg=self.resource_group, ws=self.workspace)

    @property
    def tracking_uri(self) -> str:
        return f"azureml://{self.netloc}{self.prefix}"

    @property
    def identity_env(self) -> dict[str, str]:
        """Environment that makes azure-identity's ManagedIdentityCredential ask this server."""
        return {"IDENTITY_ENDPOINT": self.host_url + TOKEN_PATH, "IDENTITY_HEADER": self.identity_header}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "AmlEmulator":
        self._thread = threading.Thread(target=self._server.serve_forever, name="aml-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """The endpoint goes away: no new connection, and the kept-alive ones are cut."""
        stop_server(self._server, self._thread)

    # ------------------------------------------------------------------ views for tests
    def mlflow_requests(self, suffix: str = "") -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith(suffix)]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    # ------------------------------------------------------------------ internals
    def _record(self, request: SeenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _issue_token(self, resource: str = "https://management.azure.com/") -> str:
        """A token shaped like Entra ID's (a JWT: SDKs read its claims), signed with nothing."""
        now = int(time.time())
        claims = {"aud": resource, "iss": f"https://sts.windows.net/{TENANT_ID}/", "tid": TENANT_ID,
                  "appid": MANAGED_IDENTITY_CLIENT_ID, "oid": "00000000-0000-0000-0000-0000000000aa",
                  "iat": now, "nbf": now, "exp": now + self.token_lifetime}
        token = ".".join(_b64(part) for part in ({"typ": "JWT", "alg": "RS256"}, claims)) + "." + secrets.token_urlsafe(24)
        with self._lock:
            self.tokens_issued.append(token)
            self.token_requests += 1
        return token

    def _take_throttle(self) -> bool:
        with self._lock:
            if self.throttled_batches > 0:
                self.throttled_batches -= 1
                return True
            return False

    def _token_is_valid(self, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Bearer "):
            return False
        with self._lock:
            return authorization[len("Bearer "):] in self.tokens_issued


def _count_metric_points(path: str, body: bytes) -> int:
    if not body or not (path.endswith("/runs/log-batch") or path.endswith("/runs/log-metric")):
        return 0
    try:
        payload = json.loads(body)
    except ValueError:
        return 0
    return len(payload.get("metrics", [])) if path.endswith("log-batch") else 1


def _handler_for(emulator: AmlEmulator):
    class Handler(QuietHandler):
        def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, code: str, message: str) -> None:
            self._reply(status, json.dumps({"error_code": code, "message": message}).encode())

        def _handle(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            if parts.path == TOKEN_PATH:
                return self._token(parts.query)
            if parts.path == "/discovery":  # the region's service map, anonymous as on AML
                host = emulator.host_url
                services = {key: host for key in ("api", "catalog", "experimentation", "history", "hyperdrive",
                                                  "modelmanagement", "pipelines")}
                return self._reply(200, json.dumps({**services, "studio": "https://ml.azure.com"}).encode())
            authorized = emulator._token_is_valid(self.headers.get("Authorization"))
            inner = parts.path[len(emulator.prefix):] if parts.path.startswith(emulator.prefix) else None
            status = self._mlflow(parts, inner, body, authorized)
            emulator._record(
                SeenRequest(
                    method=self.command,
                    path=inner if inner is not None else parts.path,
                    status=status,
                    authorized=authorized,
                    metric_points=_count_metric_points(parts.path, body),
                    body=body.decode("utf-8", "replace"),
                )
            )

        def _token(self, query: str) -> None:
            # App Service managed identity protocol (api-version 2019-08-01).
            if self.headers.get("X-IDENTITY-HEADER") != emulator.identity_header:
                return self._reply(401, b'{"error": "invalid identity header"}')
            resource = parse_qs(query).get("resource", [""])[0]
            token = emulator._issue_token(resource)
            payload = {
                "access_token": token,
                "expires_on": str(int(time.time()) + emulator.token_lifetime),
                "resource": resource,
                "token_type": "Bearer",
            }
            self._reply(200, json.dumps(payload).encode())

        def _mlflow(self, parts, inner, body: bytes, authorized: bool) -> int:
            if not authorized or emulator.rejecting:
                self._error(401, "UNAUTHENTICATED", "The access token is missing, invalid or expired.")
                return 401
            if emulator.forbidding:
                self._error(403, "PERMISSION_DENIED", "The client 'emulated-identity' does not have authorization to "
                            "perform action 'Microsoft.MachineLearningServices/workspaces/experiments/read'.")
                return 403
            if inner is not None and inner.endswith("/runs/log-batch") and emulator._take_throttle():
                self._error(429, "REQUEST_LIMIT_EXCEEDED", "Too many requests; retry later.")
                return 429
            if inner is None:
                self._error(404, "RESOURCE_DOES_NOT_EXIST", f"No workspace at {parts.path}")
                return 404
            url = emulator.mlflow_uri + inner + (f"?{parts.query}" if parts.query else "")
            # The reverse of the answer's rewrite below: a model version's source names the
            # server's own artifact store again (MLflow refuses plain http sources).
            body = body.replace(f'"{emulator.mlflow_uri}/api/2.0/mlflow-artifacts/artifacts/'.encode(), b'"mlflow-artifacts:/')
            request = urllib.request.Request(url, data=body if self.command != "GET" else None, method=self.command)
            request.add_header("Content-Type", self.headers.get("Content-Type") or "application/json")
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    status, answer = response.status, response.read()
                    content_type = response.headers.get("Content-Type", "application/json")
            except urllib.error.HTTPError as exc:
                status, answer = exc.code, exc.read()
                content_type = exc.headers.get("Content-Type", "application/json")
            answer = answer.replace(b'"mlflow-artifacts:/', f'"{emulator.mlflow_uri}/api/2.0/mlflow-artifacts/artifacts/'.encode())
            self._reply(status, answer, content_type)
            return status

    return Handler


# ---------------------------------------------------------------------- fixtures
import pytest  # noqa: E402 - fixtures below; the classes above work without pytest

_AZURE_ENV = (
    "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_USERNAME", "AZURE_PASSWORD", "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET",
    "IMDS_ENDPOINT", "AZUREML_CURRENT_CLOUD", "AZURE_CONFIG_DIR", "ARM_CLOUD_METADATA_URL", "REQUESTS_CA_BUNDLE",
)


@pytest.fixture
def azure_env(monkeypatch, tmp_path_factory):
    """No Azure identity at all: no credential variables, an empty Azure CLI profile, no `az`."""
    for name in _AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(home / ".azure"))
    bin_dir = home / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return bin_dir


@pytest.fixture
def aml_emulator(mlflow_server):
    """The emulated AML workspace endpoint in front of the shared real MLflow server."""
    emulator = AmlEmulator(mlflow_server.uri).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def identity_endpoint():
    """The emulator's managed-identity token endpoint alone (no MLflow server behind it)."""
    emulator = AmlEmulator("http://127.0.0.1:9").start()
    yield emulator
    emulator.stop()


def start_arm(emulator: AmlEmulator, monkeypatch) -> ArmEmulator:
    """An ARM emulator that accepts the tokens `emulator` issues, found and trusted through the
    environment (ARM_CLOUD_METADATA_URL, REQUESTS_CA_BUNDLE); `emulator.arm` holds it."""
    arm = ArmEmulator(lambda token: token in emulator.tokens_issued).start()
    for name, value in arm.env.items():
        monkeypatch.setenv(name, value)
    emulator.arm = arm
    return arm


@pytest.fixture
def aml_workspace(aml_emulator, azure_env, monkeypatch):
    """A managed identity served by the emulator, and an ARM emulator (`aml_workspace.arm`) that
    knows its workspace: `%aml_link -s/-g/-w --auth managed-identity` (or `default`) reaches it."""
    for name, value in aml_emulator.identity_env.items():
        monkeypatch.setenv(name, value)
    arm = start_arm(aml_emulator, monkeypatch)
    e = aml_emulator
    arm.add_workspace(e.subscription, e.resource_group, e.workspace, mlflow_host=e.host_url)
    yield aml_emulator
    arm.close()


def link_line(emulator: AmlEmulator, extra: str = "") -> str:
    return f"-s {emulator.subscription} -g {emulator.resource_group} -w {emulator.workspace} {extra}".strip()

"""A stand-in for Azure Resource Manager (ARM), on 127.0.0.1, over TLS.

azure-core refuses to send a bearer token over plain http, so this server speaks https with
a certificate made at start-up: a throw-away CA (`ca_path`, a PEM file) signs a leaf
certificate for 127.0.0.1. Clients trust it through the CA bundle settings: `REQUESTS_CA_BUNDLE`
(requests, and so azure-core, azureml-core and azureml-mlflow) and `SSL_CERT_FILE` (urllib).

Like ARM, every request needs `Authorization: Bearer <token>` that the token check accepts
(401 `InvalidAuthenticationToken` otherwise) and an `api-version` the route supports (400
`InvalidApiVersionParameter` / `NoRegisteredProviderFound`); errors come in ARM's format
`{"error": {"code": ..., "message": ...}}`. Built-in routes:

- `GET /metadata/endpoints` (no token, as on ARM): the cloud list, each cloud's
  `resourceManager` pointing here, so `ARM_CLOUD_METADATA_URL` steers the SDKs to this server;
- `GET /subscriptions`: the subscriptions of the emulated tenant;
- `GET /subscriptions/<s>/providers/Microsoft.MachineLearningServices/workspaces` and
  `GET /subscriptions/<s>/resourceGroups/<rg>/providers/.../workspaces`: listings, paged
  through `nextLink` (`page_size`);
- `GET .../resourceGroups/<rg>/providers/Microsoft.MachineLearningServices/workspaces/<ws>`.

More routes: `emulator.route(method, pattern, api_versions)(handler)`, where `pattern` is a
regular expression over the path (named groups reach the handler as keyword arguments) and
`handler(request, **groups)` returns `(status, json_body)` or `(status, json_body, headers)`
(long-running operations: `Azure-AsyncOperation`, `Retry-After`) or raises `ArmFault`. Faults to
inject: `throttled` (answer that many requests 429 with `Retry-After`), `denied` (ARM ids
whose reads answer 403 `AuthorizationFailed`). Every request is recorded in `requests`.
"""

import datetime
import ipaddress
import json
import os
import re
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlencode, urlsplit

__all__ = ["ArmEmulator", "ArmFault", "ArmRequest", "QuietHandler", "stop_server", "FOLDER_PREFIX", "PROVIDER", "WORKSPACE_API_VERSIONS"]

FOLDER_PREFIX = "arm-emulator-"  # + pid: the temp folder of an emulator's CA and certificate

PROVIDER = "Microsoft.MachineLearningServices"
# What the clients in this repository send (workspace.py, azureml-core 1.61, azureml-mlflow 1.60,
# azure-ai-ml 1.35's 2024-10-01-preview), plus recent GA versions; a route refuses anything else, as ARM refuses an unknown version.
WORKSPACE_API_VERSIONS = ("2021-01-01", "2022-05-01", "2023-10-01", "2024-04-01", "2024-10-01", "2024-10-01-preview",
                          "2025-06-01")
SUBSCRIPTION_API_VERSIONS = ("2016-06-01", "2020-01-01", "2022-12-01")
METADATA_API_VERSIONS = ("2015-01-01", "2019-05-01", "2020-06-01", "2022-09-01")
_RG = r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
_WS = _RG + rf"/providers/{PROVIDER}/workspaces/(?P<ws>[^/]+)"

# The public clouds as ARM's metadata endpoint describes them; `resourceManager` is replaced
# by this server's address.
_CLOUDS = (
    ("AzureCloud", "https://login.microsoftonline.com", "https://management.core.windows.net/",
     "https://management.azure.com/", "core.windows.net"),
    ("AzureChinaCloud", "https://login.chinacloudapi.cn", "https://management.core.chinacloudapi.cn/",
     "https://management.chinacloudapi.cn", "core.chinacloudapi.cn"),
    ("AzureUSGovernment", "https://login.microsoftonline.us", "https://management.core.usgovcloudapi.net/",
     "https://management.usgovcloudapi.net", "core.usgovcloudapi.net"),
)


class ArmFault(Exception):
    """An ARM error answer: status, code and message in ARM's error format."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclass(frozen=True)
class ArmRequest:
    """One request as the emulator saw it (tests count and inspect them)."""

    method: str
    path: str
    query: dict
    api_version: str | None
    authorized: bool
    body: bytes = b""
    status: int = 0

    def json(self):
        return json.loads(self.body or b"null")


@dataclass
class _Route:
    method: str
    pattern: re.Pattern
    api_versions: tuple
    handler: Callable
    needs_token: bool = True


@dataclass
class _Workspace:
    subscription: str
    resource_group: str
    name: str
    location: str
    mlflow_host: str  # scheme://host:port of the workspace's MLflow endpoint
    workspace_id: str
    kind: str = "Default"
    extra: dict = field(default_factory=dict)

    @property
    def arm_id(self) -> str:
        return f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/{PROVIDER}/workspaces/{self.name}"

    def resource(self, tenant_id: str) -> dict:
        netloc = urlsplit(self.mlflow_host).netloc
        return {
            "id": self.arm_id,
            "name": self.name,
            "type": f"{PROVIDER}/workspaces",
            "location": self.location,
            "kind": self.kind,
            "identity": {"type": "SystemAssigned", "tenantId": tenant_id},
            "sku": {"name": "Basic", "tier": "Basic"},
            "properties": {
                "friendlyName": self.name,
                "workspaceId": self.workspace_id,
                "tenantId": tenant_id,
                "provisioningState": "Succeeded",
                "discoveryUrl": f"{self.mlflow_host}/discovery",
                "mlFlowTrackingUri": f"azureml://{netloc}/mlflow/v1.0{self.arm_id}",
                **self.extra,
            },
        }


class ArmEmulator:
    """Threaded https server on 127.0.0.1 answering like Azure Resource Manager."""

    def __init__(self, accepts_token: Callable[[str], bool], tenant_id: str = "72f988bf-0000-0000-0000-000000000001",
                 page_size: int = 100):
        self.accepts_token = accepts_token
        self.tenant_id = tenant_id
        self.page_size = page_size
        self.subscriptions: dict[str, str] = {}  # id -> display name
        self.resource_groups: set[tuple[str, str]] = set()  # (subscription, lower-case name)
        self.workspaces: dict[tuple[str, str, str], _Workspace] = {}  # lower-case ids
        self.requests: list[ArmRequest] = []
        self.throttled = 0  # answer this many requests with 429
        self.retry_after = 7  # seconds, in the 429 answers
        self.denied: set[str] = set()  # lower-case ARM ids (or prefixes) the identity may not read
        self.routes: list[_Route] = []
        self._lock = threading.Lock()
        # The pid in the name lets a test session find what it left behind (conftest checks after each test).
        self._folder = tempfile.TemporaryDirectory(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")
        self.ca_path, context = _tls_context(Path(self._folder.name))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._server.connections = set()
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread: threading.Thread | None = None
        self._builtin_routes()

    # ------------------------------------------------------------------ addresses
    @property
    def url(self) -> str:
        """The management endpoint, as a cloud's `resourceManager` (trailing slash)."""
        return f"https://127.0.0.1:{self._server.server_address[1]}/"

    @property
    def metadata_url(self) -> str:
        """What `ARM_CLOUD_METADATA_URL` is set to, so the SDKs take their endpoints from here."""
        return self.url + "metadata/endpoints?api-version=2022-09-01"

    @property
    def env(self) -> dict[str, str]:
        """The environment that makes clients find and trust this server: requests reads
        REQUESTS_CA_BUNDLE, urllib (azureml-core's cloud metadata) OpenSSL's SSL_CERT_FILE."""
        ca = str(self.ca_path)
        return {"ARM_CLOUD_METADATA_URL": self.metadata_url, "REQUESTS_CA_BUNDLE": ca, "SSL_CERT_FILE": ca}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "ArmEmulator":
        self._thread = threading.Thread(target=self._server.serve_forever, name="arm-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """The server goes (ARM unreachable); the CA file stays, as clients still point at it."""
        stop_server(self._server, self._thread)

    def close(self) -> None:
        """`stop`, and the certificates' folder goes: what the test that made the emulator calls
        at its end (a finalizer alone would keep every folder until the session exits, and a
        killed session would leave them all in the temp folder)."""
        self.stop()
        self._folder.cleanup()

    # ------------------------------------------------------------------ the emulated tenant
    def add_subscription(self, subscription: str, name: str = "Emulated subscription") -> None:
        self.subscriptions[subscription] = name

    def add_workspace(self, subscription: str, resource_group: str, name: str, mlflow_host: str,
                      location: str = "local", kind: str = "Default", **properties) -> dict:
        """A workspace (its subscription and resource group appear with it); returns its ARM resource."""
        self.subscriptions.setdefault(subscription, "Emulated subscription")
        self.resource_groups.add((subscription, resource_group.lower()))
        workspace = _Workspace(subscription, resource_group, name, location, mlflow_host.rstrip("/"),
                               workspace_id=f"{len(self.workspaces) + 1:08d}-0000-4000-8000-000000000000",
                               kind=kind, extra=properties)
        self.workspaces[(subscription.lower(), resource_group.lower(), name.lower())] = workspace
        return workspace.resource(self.tenant_id)

    # ------------------------------------------------------------------ routes
    def route(self, method: str, pattern: str, api_versions=WORKSPACE_API_VERSIONS, needs_token: bool = True):
        """Register `handler(request, **groups) -> (status, body)` for `method` and a path regex."""
        def register(handler):
            with self._lock:
                self.routes.append(_Route(method.upper(), re.compile(pattern + r"/?$", re.IGNORECASE),
                                          tuple(api_versions), handler, needs_token))
            return handler
        return register

    def seen(self, method: str = "", path_part: str = "") -> list[ArmRequest]:
        with self._lock:
            return [r for r in self.requests if r.method.startswith(method) and path_part in r.path]

    def _builtin_routes(self) -> None:
        self.route("GET", r"/metadata/endpoints", METADATA_API_VERSIONS, needs_token=False)(self._metadata)
        self.route("GET", r"/subscriptions", SUBSCRIPTION_API_VERSIONS)(self._list_subscriptions)
        self.route("GET", rf"/subscriptions/(?P<sub>[^/]+)/providers/{PROVIDER}/workspaces")(self._list_workspaces)
        self.route("GET", _RG + rf"/providers/{PROVIDER}/workspaces")(self._list_workspaces)
        self.route("GET", _WS)(self._get_workspace)

    def _metadata(self, request):
        clouds = [
            {
                "name": name,
                "resourceManager": self.url,
                "portal": "https://portal.azure.com",
                "authentication": {"loginEndpoint": login, "audiences": [core, arm], "tenant": "common",
                                   "identityProvider": "AAD"},
                "suffixes": {"storage": storage, "keyVaultDns": "vault.azure.net"},
                "graph": "https://graph.windows.net/",
                "gallery": "https://gallery.azure.com/",
                "activeDirectoryDataLake": "https://datalake.azure.net/",
                "batch": "https://batch.core.windows.net/",
                "sqlManagement": "https://management.core.windows.net:8443/",
                "vmImageAliasDoc": "",
                "media": "https://rest.media.azure.net",
            }
            for name, login, core, arm, storage in _CLOUDS
        ]
        return 200, clouds

    def _list_subscriptions(self, request):
        values = [
            {"id": f"/subscriptions/{sub}", "subscriptionId": sub, "tenantId": self.tenant_id,
             "displayName": name, "state": "Enabled"}
            for sub, name in self.subscriptions.items()
        ]
        return 200, self._page(request, values)

    def _list_workspaces(self, request, sub, rg=None):
        self._subscription_exists(sub)
        if rg is not None:
            self._group_exists(sub, rg)
        values = [
            w.resource(self.tenant_id)
            for (s, g, _), w in sorted(self.workspaces.items())
            if s == sub.lower() and (rg is None or g == rg.lower()) and not self._is_denied(w.arm_id)
        ]
        return 200, self._page(request, values)

    def _get_workspace(self, request, sub, rg, ws):
        arm_id = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{PROVIDER}/workspaces/{ws}"
        if self._is_denied(arm_id):
            raise ArmFault(403, "AuthorizationFailed",
                           f"The client 'emulated-identity' with object id '00000000-0000-0000-0000-0000000000aa' does "
                           f"not have authorization to perform action '{PROVIDER}/workspaces/read' over scope "
                           f"'{arm_id}' or the scope is invalid.")
        self._subscription_exists(sub)
        self._group_exists(sub, rg)
        workspace = self.workspaces.get((sub.lower(), rg.lower(), ws.lower()))
        if workspace is None:
            raise ArmFault(404, "ResourceNotFound",
                           f"The Resource '{PROVIDER}/workspaces/{ws}' under resource group '{rg}' was not found. "
                           "For more details please go to https://aka.ms/ARMResourceNotFoundFix")
        return 200, workspace.resource(self.tenant_id)

    # ------------------------------------------------------------------ helpers for routes
    def _subscription_exists(self, sub: str) -> None:
        if sub not in self.subscriptions:
            raise ArmFault(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")

    def _group_exists(self, sub: str, rg: str) -> None:
        if (sub, rg.lower()) not in self.resource_groups:
            raise ArmFault(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")

    def _is_denied(self, arm_id: str) -> bool:
        return any(arm_id.lower().startswith(d) for d in self.denied)

    def _page(self, request, values: list) -> dict:
        """ARM paging: `value` plus an absolute `nextLink` while more remain."""
        start = int(request.query.get("$skiptoken", ["0"])[0])
        page = {"value": values[start:start + self.page_size]}
        if start + self.page_size < len(values):
            query = {"api-version": request.api_version, "$skiptoken": start + self.page_size}
            page["nextLink"] = f"{self.url.rstrip('/')}{request.path}?{urlencode(query)}"
        return page

    def _take_throttle(self) -> bool:
        with self._lock:
            if self.throttled > 0:
                self.throttled -= 1
                return True
            return False

    def _record(self, request: ArmRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _dispatch(self, request: ArmRequest) -> tuple[int, object, dict]:
        with self._lock:
            routes = list(self.routes)
        matches = [(r, r.pattern.match(request.path)) for r in routes if r.method == request.method]
        matches = [(r, m) for r, m in matches if m]
        if not matches:
            raise ArmFault(404, "InvalidResourceType" if "/providers/" in request.path else "NotFound",
                           f"No route for {request.method} {request.path} in the ARM emulator.")
        route, match = matches[-1]  # later registrations win, so a test can override a route
        if route.needs_token and not request.authorized:
            raise ArmFault(401, "InvalidAuthenticationToken", "The access token is invalid.",
                           {"WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/", '
                                                'error="invalid_token"'})
        if request.api_version is None:
            raise ArmFault(400, "MissingApiVersionParameter",
                           "The api-version query parameter (?api-version=) is required for all requests.")
        if request.api_version not in route.api_versions:
            raise ArmFault(400, "NoRegisteredProviderFound" if "/providers/" in request.path else "InvalidApiVersionParameter",
                           f"The api-version '{request.api_version}' is invalid. The supported versions are "
                           f"'{','.join(route.api_versions)}'.")
        if route.needs_token and self._take_throttle():
            raise ArmFault(429, "TooManyRequests", "The request is being throttled.",
                           {"Retry-After": str(self.retry_after)})
        groups = {k: v for k, v in match.groupdict().items() if v is not None}
        status, body, *headers = route.handler(request, **groups)
        return status, body, headers[0] if headers else {}


class QuietHandler(BaseHTTPRequestHandler):
    """Every method goes to `_handle`; nothing is logged to pytest's output. Open connections are
    kept in the server's `connections` set, so `stop_server` can cut the kept-alive ones."""

    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.connections.discard(self.connection)

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._handle()

    def do_PUT(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_PATCH(self):
        self._handle()

    def do_DELETE(self):
        self._handle()

    def _handle(self):
        raise NotImplementedError


def stop_server(server: ThreadingHTTPServer, thread: threading.Thread | None) -> None:
    """Shut a server down and cut its kept-alive connections too: a host that went away answers
    nothing more, not even on a connection a client opened before (the handler threads of
    ThreadingHTTPServer would go on serving those)."""
    server.shutdown()
    server.server_close()
    for connection in list(server.connections):
        try:
            connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    if thread is not None:
        thread.join(timeout=5)


def _handler_for(emulator: ArmEmulator):
    class Handler(QuietHandler):
        def _handle(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            authorization = self.headers.get("Authorization") or ""
            authorized = authorization.startswith("Bearer ") and emulator.accepts_token(authorization[7:])
            request = ArmRequest(self.command, parts.path.rstrip("/") or "/", query,
                                 query.get("api-version", [None])[0], authorized, body)
            try:
                status, answer, headers = emulator._dispatch(request)
            except ArmFault as fault:
                status, headers = fault.status, fault.headers
                answer = {"error": {"code": fault.code, "message": fault.message}}
            payload = b"" if answer is None else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("x-ms-request-id", "00000000-0000-0000-0000-00000000beef")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
            emulator._record(ArmRequest(request.method, request.path, query, request.api_version, authorized,
                                        body, status))

    return Handler


def _tls_context(folder: Path) -> tuple[Path, ssl.SSLContext]:
    """A throw-away CA and a leaf certificate for 127.0.0.1 signed by it: (CA PEM path, server context).

    A separate CA rather than one self-signed leaf: OpenSSL's strict chain checks (Python 3.13
    sets VERIFY_X509_STRICT) refuse a CA certificate presented as the server's own.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dbxml-magics test ARM CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return ca_path, context

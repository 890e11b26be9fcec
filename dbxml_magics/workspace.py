"""Azure ML workspaces: config.json search, credentials, ids -> tracking URI, the plugin hookup.

With `arm.py` (the REST calls to Azure Resource Manager), the only module that imports
azureml-mlflow, azure-identity or (only for `--workspace` with an SDK v1 object) azureml-core.
Tests run all of it for real, against loopback servers: the ARM emulator over TLS, the AML
MLflow endpoint emulator and its managed-identity token endpoint.

Resolution of `%aml_link --config` / `-s -g -w`:
  reference (config file or ids) -> credential for `--auth` (checked within
  `credential_timeout` s) -> ARM GET of the workspace (its MLflow host) ->
  `azureml://<region>.api.azureml.ms/mlflow/v2.0/subscriptions/.../workspaces/<ws>` Target.
`probe_aml_target` then asks the endpoint once through the real plugin store, and
`register_aml_target` hands the plugin our credential for that URI, so neither the
kernel nor the journal's flusher ever falls into the plugin's own interactive login chain.
"""

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlsplit, urlunsplit

from .errors import LinkError
from .masking import first_line, remember_secret
from .stores import quick_requests
from .targets import Target

__all__ = [
    "AUTH_CHOICES",
    "WorkspaceRef",
    "WorkspaceInfo",
    "lookup_workspace",
    "list_workspaces",
    "find_config_file",
    "read_config_file",
    "workspaces_in_config_files",
    "account_workspaces",
    "list_account_workspaces",
    "azure_credentials_available",
    "credential_for",
    "cloud_scope",
    "check_credential",
    "within",
    "target_from_workspace_object",
    "tracking_uri_for",
    "studio_url_for",
    "studio_run_url",
    "resolve_workspace_target",
    "target_from_azureml_uri",
    "probe_aml_target",
    "register_aml_target",
]

AUTH_CHOICES = ("default", "interactive", "cli", "service-principal", "managed-identity")
_AUTH_FIXES = {
    "cli": "--auth cli after `az login`",
    "service-principal": "--auth service-principal with AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET set",
    "managed-identity": "--auth managed-identity on Azure compute",
    "interactive": "--auth interactive to sign in in a browser",
}
# The SDK's search order (azureml-core Workspace.from_config): folder first, then file name.
_CONFIG_DIRS = (".azureml", "aml_config", None)
_CONFIG_FILES = ("config.json", "project.json")
_WORKSPACE_PATH = re.compile(
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/?]+)",
    re.IGNORECASE,
)
_SUBSCRIPTION = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_RESOURCE_GROUP = re.compile(r"^[-\w.()]{1,90}$")
_WORKSPACE = re.compile(r"^[A-Za-z0-9][-\w]{1,32}$")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_ARM_TIMEOUT = 30.0  # workspace lookups: ARM answers in about a second when reachable
_INTERACTIVE_TIMEOUT = 300  # a person signing in needs minutes, not credential_timeout
_TOKEN_MARGIN = 300  # refresh a token this many seconds before it expires


# --------------------------------------------------------------------------- references
@dataclass(frozen=True)
class WorkspaceRef:
    """An AML workspace by its ARM ids, and where that reference came from."""

    subscription: str
    resource_group: str
    workspace: str
    source: str = "-s/-g/-w"  # config file path, "-s/-g/-w", "uri" or "account"
    tenant_id: str | None = None

    @property
    def arm_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{self.workspace}"
        )

    @property
    def path(self) -> Path | None:
        """The config file this reference was read from, if any."""
        return None if self.source in ("-s/-g/-w", "uri", "account") else Path(self.source)

    def __str__(self) -> str:
        return f"{self.workspace} (resource group {self.resource_group}, subscription {self.subscription})"


@dataclass(frozen=True)
class WorkspaceInfo:
    """What Azure Resource Manager says about a workspace: where its MLflow endpoint lives."""

    mlflow_host: str  # e.g. "https://westeurope.api.azureml.ms"
    tenant_id: str | None = None  # for studio links (&tid=); the workspace is named by its ARM id (wsid=)


def _validated(ref: WorkspaceRef) -> WorkspaceRef:
    where = f" (from {ref.source})" if ref.source not in ("-s/-g/-w", "uri") else ""
    if not _SUBSCRIPTION.match(ref.subscription):
        raise LinkError(
            f"Subscription {ref.subscription!r}{where} is not a subscription id: give the GUID shown in the Azure "
            "portal, e.g. -s 00000000-0000-0000-0000-000000000000."
        )
    if not _RESOURCE_GROUP.match(ref.resource_group):
        raise LinkError(f"Resource group {ref.resource_group!r}{where} is not a valid resource group name.")
    if not _WORKSPACE.match(ref.workspace):
        raise LinkError(
            f"Workspace {ref.workspace!r}{where} is not a valid AML workspace name (3-33 letters, digits, - or _)."
        )
    return ref


# --------------------------------------------------------------------------- config files
def find_config_file(path: str | None = None) -> Path:
    """The AML config file for `path` (a file, or a folder searched upwards), as the SDK finds it.

    Search order as in azureml-core `Workspace.from_config`: `.azureml/`, `aml_config/`, then
    the folder itself; `config.json` before the legacy `project.json`; each from the start
    folder up to the root.
    """
    start = Path(path).expanduser() if path else Path.cwd()
    if start.is_file():
        return start.resolve()
    if not start.is_dir():
        raise LinkError(f"No AML config file at {start}: give the path of config.json or of a folder containing it.")
    start = start.resolve()
    for folder in _CONFIG_DIRS:
        for name in _CONFIG_FILES:
            for directory in (start, *start.parents):
                candidate = directory / folder / name if folder else directory / name
                if candidate.is_file():
                    return candidate
    raise LinkError(
        f"No AML config.json in {start}, its parents or their .azureml/ folders. Download it from ml.azure.com "
        "(workspace menu > Download config file) into this folder, or link with -s/-g/-w."
    )


def read_config_file(path: Path) -> WorkspaceRef:
    """The workspace a config.json names (`subscription_id`/`resource_group`/`workspace_name`, or `Scope`)."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise LinkError(f"Cannot read the AML config file {path} ({exc.strerror}).") from None
    except ValueError as exc:
        raise LinkError(
            f"The AML config file {path} is not valid JSON ({exc.msg}, line {getattr(exc, 'lineno', '?')}): "
            "download it again from ml.azure.com."
        ) from None
    if not isinstance(config, dict):
        raise LinkError(f"The AML config file {path} must hold a JSON object: download it again from ml.azure.com.")
    scope = config.get("Scope") or config.get("scope")
    if scope:
        match = _WORKSPACE_PATH.search(str(scope))
        if not match:
            raise LinkError(f"The Scope in {path} does not name a workspace: download the file again from ml.azure.com.")
        ids = match.group("sub"), match.group("rg"), match.group("ws")
    else:
        missing = [k for k in ("subscription_id", "resource_group", "workspace_name") if not config.get(k)]
        if missing:
            raise LinkError(
                f"The AML config file {path} lacks {', '.join(missing)}: download it again from ml.azure.com."
            )
        ids = str(config["subscription_id"]), str(config["resource_group"]), str(config["workspace_name"])
    return _validated(WorkspaceRef(*ids, source=str(path), tenant_id=config.get("tenant_id") or None))


def workspaces_in_config_files(start: str | None = None) -> list[WorkspaceRef]:
    """Every workspace named by a readable config file the SDK search could reach from `start`.

    For the panel's selector: all candidates along the search path, nearest first, each
    workspace once; unreadable files are skipped (linking one of them says why).
    """
    origin = Path(start).expanduser().resolve() if start else Path.cwd()
    found: dict[str, WorkspaceRef] = {}
    for directory in (origin, *origin.parents):
        for folder in _CONFIG_DIRS:
            for name in _CONFIG_FILES:
                candidate = directory / folder / name if folder else directory / name
                if not candidate.is_file():
                    continue
                try:
                    ref = read_config_file(candidate)
                except LinkError:
                    continue
                found.setdefault(ref.arm_id.lower(), ref)
    return list(found.values())


# --------------------------------------------------------------------------- credentials
class _CheckedCredential:
    """An azure-identity credential with a token cache; every token is registered as a secret.

    The plugin asks for a token on every request, and some credentials (Azure CLI) start a
    process per call: caching keeps the journal's batches cheap. The repr names the
    method only, never a secret.
    """

    def __init__(self, inner, auth: str):
        self._inner = inner
        self.auth = auth
        self._tokens: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def get_token(self, *scopes: str, **kwargs):
        key = (scopes, kwargs.get("tenant_id"))
        with self._lock:
            token = self._tokens.get(key)
        if token is not None and token.expires_on - _TOKEN_MARGIN > time.time():
            return token
        token = self._inner.get_token(*scopes, **kwargs)
        remember_secret(token.token)
        with self._lock:
            self._tokens[key] = token
        return token

    def __repr__(self) -> str:
        return f"<Azure credential --auth {self.auth}>"


def _auth_fixes(tried: str) -> str:
    """The other --auth options, as the fix in a sign-in error."""
    options = [text for auth, text in _AUTH_FIXES.items() if auth != tried]
    return "use " + ", ".join(options[:-1]) + ", or " + options[-1]


def _cloud(name: str | None = None):
    """The named cloud (AZUREML_CURRENT_CLOUD, default AzureCloud). An unknown name is refused:
    the plugin would fetch cloud metadata from ARM for it and print a long network error."""
    from .arm import CLOUDS, cloud

    try:
        return cloud(name)
    except KeyError as exc:
        raise LinkError(f"Unknown Azure cloud {exc.args[0]!r} (AZUREML_CURRENT_CLOUD): use one of {', '.join(CLOUDS)}.") from None


def cloud_scope(cloud_name: str | None = None) -> str:
    """The token scope of ARM and of AML's MLflow endpoint in the current cloud."""
    return _cloud(cloud_name).arm_scope


def credential_for(auth: str, cloud_name: str | None = None, tenant_id: str | None = None, timeout: float = 10.0):
    """The azure-identity credential `--auth` selects, configured from the environment.

    Only `interactive` may open a browser or print a device code: `default` is
    DefaultAzureCredential without its interactive member, so a headless kernel never waits
    for a person. Secrets are read from the environment by azure-identity, never passed here.
    """
    import logging

    from azure import identity

    # azure-identity logs each failed attempt as a multi-line WARNING (printed by Python's
    # last-resort handler in a kernel); the one LinkError line says it. A level the user set stays.
    identity_log = logging.getLogger("azure.identity")
    if identity_log.level == logging.NOTSET:
        identity_log.setLevel(logging.ERROR)
    if auth not in AUTH_CHOICES:
        raise LinkError(f"Unknown --auth {auth!r}: use one of {', '.join(AUTH_CHOICES)}.")
    authority = _cloud(cloud_name).authority
    tenant_id = os.environ.get("AZURE_TENANT_ID") or tenant_id
    # The sign-in bound is ours (check_credential's wait); a CLI process allowed to run a
    # little longer never races it into azure-identity's vaguer "Failed to invoke" message.
    process_timeout = max(1, int(timeout)) + 5
    if auth == "default":
        inner = identity.DefaultAzureCredential(
            authority=authority, exclude_interactive_browser_credential=True, process_timeout=process_timeout
        )
    elif auth == "cli":
        inner = identity.AzureCliCredential(tenant_id=tenant_id, process_timeout=process_timeout)
    elif auth == "managed-identity":
        inner = identity.ManagedIdentityCredential(client_id=os.environ.get("AZURE_CLIENT_ID") or None)
    elif auth == "service-principal":
        client_id = os.environ.get("AZURE_CLIENT_ID")
        secret = os.environ.get("AZURE_CLIENT_SECRET")
        certificate = os.environ.get("AZURE_CLIENT_CERTIFICATE_PATH")
        missing = [
            name
            for name, value in (
                ("AZURE_TENANT_ID", tenant_id),
                ("AZURE_CLIENT_ID", client_id),
                ("AZURE_CLIENT_SECRET (or AZURE_CLIENT_CERTIFICATE_PATH)", secret or certificate),
            )
            if not value
        ]
        if missing:
            raise LinkError(
                f"--auth service-principal needs {', '.join(missing)} in the environment (never on the magic "
                "line); or choose another --auth: default, interactive, cli, managed-identity."
            )
        if secret:
            inner = identity.ClientSecretCredential(tenant_id, client_id, secret, authority=authority)
        else:
            inner = identity.CertificateCredential(
                tenant_id,
                client_id,
                certificate,
                password=os.environ.get("AZURE_CLIENT_CERTIFICATE_PASSWORD") or None,
                authority=authority,
            )
    else:  # interactive: a browser where there is one, else a device code printed in the cell
        inner = identity.ChainedTokenCredential(
            identity.InteractiveBrowserCredential(authority=authority, tenant_id=tenant_id, timeout=_INTERACTIVE_TIMEOUT),
            identity.DeviceCodeCredential(authority=authority, tenant_id=tenant_id, timeout=_INTERACTIVE_TIMEOUT),
        )
    return _CheckedCredential(inner, auth)


def check_credential(credential: _CheckedCredential, cloud_name: str | None, timeout: float) -> None:
    """Obtain one token within `timeout` s; a failure or a hang is one line naming the --auth options."""
    scope = _cloud(cloud_name).arm_scope
    wait = _INTERACTIVE_TIMEOUT if credential.auth == "interactive" else timeout
    what = f"Azure sign-in with --auth {credential.auth}"
    try:
        within(wait, lambda: credential.get_token(scope))
    except TimeoutError:
        raise LinkError(
            f"{what} gave no token within {wait:g} s; {_auth_fixes(credential.auth)} "
            "(%config DbxmlMagics.credential_timeout sets the wait)."
        ) from None
    except Exception as exc:  # noqa: BLE001 - azure-identity's errors are long and multi-line
        raise LinkError(f"{what} failed ({first_line(exc, 200)}); {_auth_fixes(credential.auth)}.") from None


def within(seconds: float, work: Callable[[], Any]) -> Any:
    """Run `work` on a daemon thread and wait at most `seconds`.

    A daemon thread, not an executor: a credential stuck in a network call must neither
    block the kernel now nor hold up interpreter exit later.
    """
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run():
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="dbxml-azure-call", daemon=True).start()
    if not done.wait(seconds):
        raise TimeoutError(f"no answer within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# --------------------------------------------------------------------------- Azure Resource Manager
# The roles that grant what linking needs (read the workspace, MLflow runs and models).
_ROLES = "the AzureML Data Scientist role (or Contributor)"


def lookup_workspace(ref: WorkspaceRef, credential, cloud_name: str | None = None) -> WorkspaceInfo:
    """What ARM says about the workspace; every failure is one LinkError line."""
    from .arm import ResourceManager

    cloud = _cloud(cloud_name)
    resource = _arm_call(ref, credential, lambda: ResourceManager(credential, cloud).workspace(
        ref.subscription, ref.resource_group, ref.workspace))
    properties = resource.get("properties") or {}
    location = resource.get("location")
    # The MLflow host ARM gives (private-link workspaces have their own), else the discovery
    # host, else the region's public host (what azureml-mlflow builds).
    hosts = [urlsplit(properties.get(k) or "").netloc for k in ("mlFlowTrackingUri", "discoveryUrl")]
    host = next((h for h in hosts if h), f"{location}.{cloud.mlflow_suffix}" if location else "")
    return WorkspaceInfo(
        mlflow_host=host,
        tenant_id=properties.get("tenantId") or (resource.get("identity") or {}).get("tenantId"),
    )


def list_workspaces(credential, cloud_name: str | None = None, subscription: str | None = None,
                    resource_group: str | None = None) -> list[WorkspaceRef]:
    """AML workspaces of one resource group, one subscription, or every subscription the identity sees.

    Across subscriptions, one that refuses (403) is skipped; if all refuse, that is the error.
    """
    from .arm import ArmError, ResourceManager

    cloud = _cloud(cloud_name)
    scope = WorkspaceRef(subscription or "-", resource_group or "-", "-", source="account")

    def listing():
        manager = ResourceManager(credential, cloud)
        if subscription:
            return manager.workspaces(subscription, resource_group)
        found, refusals = [], []
        subscriptions = manager.subscriptions()
        for entry in subscriptions:
            try:
                found.extend(manager.workspaces(entry["subscriptionId"]))
            except ArmError as exc:
                if exc.status != 403:
                    raise
                refusals.append(exc)
        if refusals and len(refusals) == len(subscriptions):
            raise refusals[0]
        return found

    refs = []
    for resource in _arm_call(scope, credential, listing):
        match = _WORKSPACE_PATH.search(resource.get("id") or "")
        if match and (resource.get("kind") or "").lower() != "hub":  # hubs hold no runs; their projects do
            refs.append(WorkspaceRef(match.group("sub"), match.group("rg"), match.group("ws"), source="account"))
    return sorted(refs, key=lambda r: (r.workspace.lower(), r.resource_group.lower()))


def _arm_call(ref: WorkspaceRef, credential, work: Callable[[], Any]) -> Any:
    """`work` within _ARM_TIMEOUT s, ARM's answers turned into one line naming the fix."""
    from .arm import ArmError, ArmUnreachable

    auth = getattr(credential, "auth", "default")
    what = f"workspace {ref.workspace!r}" if ref.workspace != "-" else "the workspace list"
    try:
        return within(_ARM_TIMEOUT, work)
    except ArmError as exc:
        raise LinkError(_arm_failure(exc, ref, auth, what)) from None
    except ArmUnreachable as exc:
        raise LinkError(
            f"Cannot reach Azure Resource Manager: {exc}. Check the network or proxy, or link the workspace's "
            "azureml:// URI with --uri."
        ) from None
    except TimeoutError:
        raise LinkError(
            f"Azure Resource Manager did not answer within {_ARM_TIMEOUT:g} s about {what}: "
            "check the network, or link the workspace's azureml:// URI with --uri."
        ) from None
    except Exception as exc:  # noqa: BLE001 - anything else from azure-core is one line too
        raise LinkError(
            f"Reading {what} from Azure Resource Manager failed ({first_line(exc, 200)}); check --auth, or link "
            "the workspace's azureml:// URI with --uri."
        ) from None


def _arm_failure(exc, ref: WorkspaceRef, auth: str, what: str) -> str:
    where = f" (named in {ref.source})" if ref.path else ""
    code = exc.code.lower()
    if code == "resourcegroupnotfound":
        return (f"Resource group {ref.resource_group!r}{where} was not found in subscription {ref.subscription}: "
                "check -g (the workspace's own resource group, not its managed one).")
    if code in ("subscriptionnotfound", "invalidsubscriptionid"):
        return (f"Subscription {ref.subscription}{where} was not found, or --auth {auth} is signed in to another "
                "tenant: check -s, or sign in to the workspace's tenant.")
    if exc.status == 404:
        return (f"Azure ML workspace {ref.workspace!r}{where} was not found in resource group "
                f"{ref.resource_group!r}: check -w (`%aml_link` with no arguments lists the workspaces you can see).")
    if exc.status == 403:
        scope = f"workspace {ref.workspace!r}" if ref.workspace != "-" else f"subscription {ref.subscription}"
        return (f"The identity of --auth {auth} may not read {scope} (403 {exc.code}): ask for {_ROLES} "
                "on the workspace or its resource group, or choose another --auth.")
    if exc.status == 401:
        return f"Azure Resource Manager refused the token of --auth {auth} (401 {exc.code}): sign in again, or {_auth_fixes(auth)}."
    if exc.status == 429:
        wait = f"in {exc.retry_after} s" if exc.retry_after else "in a minute"
        return f"Azure Resource Manager is throttling this identity (429 {exc.code}) while reading {what}: try again {wait}."
    return f"Azure Resource Manager refused reading {what} ({exc.status} {exc.code}: {exc.message[:200]})."


# --------------------------------------------------------------------------- URIs
def tracking_uri_for(ref: WorkspaceRef, mlflow_host: str) -> str:
    """`azureml://<region>.api.azureml.ms/mlflow/v2.0<arm id>`, as azureml-mlflow builds it for MLflow >= 2."""
    netloc = urlsplit(mlflow_host).netloc if "://" in mlflow_host else mlflow_host
    if not netloc:
        raise LinkError(f"Azure returned no MLflow endpoint for workspace {ref.workspace!r}; link with --uri instead.")
    return f"azureml://{netloc}/mlflow/v2.0{ref.arm_id}"


def studio_url_for(ref: WorkspaceRef, tenant_id: str | None = None) -> str:
    """The workspace in AML studio (runs, models), the link the panel shows."""
    url = f"https://ml.azure.com/?wsid={ref.arm_id}"
    return url + (f"&tid={tenant_id}" if tenant_id else "")


def studio_run_url(studio_url: str, run_id: str) -> str:
    """One run's page in AML studio: the workspace link with the path `/runs/<run id>`, as
    azureml-core's HasRunPortal builds it (an MLflow run id is the AML run id)."""
    parts = urlsplit(studio_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/runs/{quote(run_id, safe='')}", parts.query, ""))


def _host_url(netloc: str) -> str:
    """Base URL of the MLflow endpoint: https, except a loopback proxy or emulator (plain http)."""
    host = urlsplit(f"//{netloc}").hostname or ""
    return f"{'http' if host in _LOOPBACK else 'https'}://{netloc}"


def _ref_from_uri(uri: str) -> WorkspaceRef:
    match = _WORKSPACE_PATH.search(urlsplit(uri).path)
    if not urlsplit(uri).netloc or not match:
        raise LinkError(
            "An azureml:// URI looks like azureml://<region>.api.azureml.ms/mlflow/v2.0/subscriptions/<id>/"
            "resourceGroups/<rg>/providers/Microsoft.MachineLearningServices/workspaces/<ws>; "
            "or link with -s/-g/-w or --config."
        )
    return _validated(WorkspaceRef(match.group("sub"), match.group("rg"), match.group("ws"), source="uri"))


# --------------------------------------------------------------------------- linking
def resolve_workspace_target(args, settings, namespace: dict | None = None) -> Target:
    """The Target for `--config [PATH]`, `-s/-g/-w`, or `-w VAR` alone (a workspace object in
    `namespace`): checked credential + ARM lookup."""
    alone = args.config is None and args.workspace and not (args.subscription or args.resource_group)
    if alone and args.workspace.strip() in (namespace or {}):
        return target_from_workspace_object(namespace[args.workspace.strip()], args.workspace.strip(), settings)
    if args.config is not None:
        ref = read_config_file(find_config_file(args.config or None))
    else:
        given = {"-s": args.subscription, "-g": args.resource_group, "-w": args.workspace}
        missing = [flag for flag, value in given.items() if not value]
        if missing:
            sdk_v1 = "" if _has_sdk_v1() else " (a `Workspace` object of azureml-core needs pip install dbxml-magics[sdk-v1])"
            raise LinkError(
                f"An AML workspace needs -s, -g and -w together (missing {', '.join(missing)}), or -w VAR alone naming "
                f"a workspace object in the notebook{sdk_v1}; or use --config with the workspace's config.json."
            )
        ref = _validated(WorkspaceRef(args.subscription.strip(), args.resource_group.strip(), args.workspace.strip()))
    timeout = float(getattr(settings, "credential_timeout", 10.0))
    credential = credential_for(getattr(args, "auth", None) or "default", None, ref.tenant_id, timeout)
    check_credential(credential, None, timeout)
    info = lookup_workspace(ref, credential)
    return Target(
        uri=tracking_uri_for(ref, info.mlflow_host),
        kind="aml",
        workspace=ref.workspace,
        studio_url=studio_url_for(ref, info.tenant_id or ref.tenant_id),
        credential=credential,
    )


def _has_sdk_v1() -> bool:
    from importlib.util import find_spec

    try:
        return find_spec("azureml.core") is not None
    except ModuleNotFoundError:
        return False


class _SdkV1Auth:
    """azure-identity's `get_token` over an azureml-core auth object: its public
    `get_authentication_header()` (an ARM token; AML's MLflow endpoint takes the same audience);
    the expiry is the token's `exp` claim, or five minutes when it has none."""

    def __init__(self, auth):
        self._auth = auth

    def get_token(self, *scopes, **kwargs):
        import base64

        from azure.core.credentials import AccessToken

        token = self._auth.get_authentication_header()["Authorization"].split(" ", 1)[-1]
        try:
            payload = token.split(".")[1]
            expires = int(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])
        except (IndexError, ValueError, KeyError, TypeError):
            expires = int(time.time()) + _TOKEN_MARGIN
        return AccessToken(token, expires)


def target_from_workspace_object(workspace, variable: str, settings=None) -> Target:
    """The Target for a workspace object the notebook already holds, reusing its credential:
    azureml-core's `Workspace` (the seed's `ws = Workspace.get(...)`: its own tracking URI) or
    azure-ai-ml's `MLClient` (the workspace as the client itself reads it, its credential)."""
    module = type(workspace).__module__ or ""
    timeout = float(getattr(settings, "credential_timeout", 10.0)) if settings is not None else 10.0
    if module.startswith("azureml.core"):
        ref = _validated(WorkspaceRef(workspace.subscription_id, workspace.resource_group, workspace.name,
                                      source="-s/-g/-w"))
        credential = _CheckedCredential(_SdkV1Auth(workspace._auth), "workspace-object")
        check_credential(credential, None, timeout)
        try:
            host = urlsplit(within(_ARM_TIMEOUT, workspace.get_mlflow_tracking_uri)).netloc
        except Exception as exc:  # noqa: BLE001 - the SDK's errors are long
            raise LinkError(f"Workspace {variable!r} gave no MLflow tracking URI ({first_line(exc, 200)}); "
                            "link with -s/-g/-w instead.") from None
        tenant = None
    elif module.startswith("azure.ai.ml") and hasattr(workspace, "workspaces"):
        if not workspace.workspace_name:
            raise LinkError(f"MLClient {variable!r} names no workspace: build it with workspace_name=..., "
                            "or link with -s/-g/-w.")
        ref = _validated(WorkspaceRef(workspace.subscription_id, workspace.resource_group_name,
                                      workspace.workspace_name, source="-s/-g/-w"))
        credential = _CheckedCredential(workspace._credential, "workspace-object")
        check_credential(credential, None, timeout)
        # The client reads its workspace itself: its cloud and endpoint, its pipeline and policies.
        found = _arm_call(ref, credential, lambda: _ml_client_workspace(workspace, ref.workspace))
        host, tenant = urlsplit(found.mlflow_tracking_uri or "").netloc, None
    else:
        raise LinkError(f"{variable!r} is a {type(workspace).__name__}, not an Azure ML workspace object "
                        "(azureml-core Workspace or azure-ai-ml MLClient): link with -s/-g/-w or --config.")
    return Target(uri=tracking_uri_for(ref, host), kind="aml", workspace=ref.workspace,
                  studio_url=studio_url_for(ref, tenant), credential=credential)


def _ml_client_workspace(client, name: str):
    """`client.workspaces.get(name)`, azure-core's failures as arm.py's (one message per ARM error)."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    from .arm import ArmError, ArmUnreachable

    try:
        return client.workspaces.get(name)
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise ArmUnreachable(f"no answer from the MLClient's endpoint ({type(exc).__name__})") from None
    except HttpResponseError as exc:
        error, response = getattr(exc, "error", None), getattr(exc, "response", None)
        raise ArmError(exc.status_code or 0, getattr(error, "code", None) or exc.reason or "Error",
                       first_line(getattr(error, "message", None) or exc.message, 200),
                       response.headers.get("Retry-After") if response is not None else None) from None


def target_from_azureml_uri(uri: str, args=None, settings=None) -> Target:
    """The Target for `--uri azureml://...`: the region host is in the URI, no ARM lookup needed."""
    base = uri.split("?", 1)[0].rstrip("/")  # query forms (auth=, token=) are deprecated by the plugin
    ref = _ref_from_uri(base)
    timeout = float(getattr(settings, "credential_timeout", 10.0)) if settings is not None else 10.0
    credential = credential_for(getattr(args, "auth", None) or "default", None, None, timeout)
    check_credential(credential, None, timeout)
    return Target(
        uri=tracking_uri_for(ref, urlsplit(base).netloc),
        kind="aml",
        workspace=ref.workspace,
        studio_url=studio_url_for(ref),
        credential=credential,
    )


def _service_context(target: Target):
    """The plugin's ServiceContext for a Target: our credential and a named cloud, so the
    plugin neither builds its interactive credential chain nor fetches cloud metadata."""
    from azureml.mlflow._common._cloud.cloud import KNOWN_CLOUDS
    from azureml.mlflow._internal.utils import ServiceContext

    ref = _ref_from_uri(target.uri)
    return ServiceContext(
        host_url=_host_url(urlsplit(target.uri).netloc),
        subscription_id=ref.subscription,
        workspace_name=ref.workspace,
        resource_group_name=ref.resource_group,
        auth=target.credential,
        cloud=KNOWN_CLOUDS[_cloud().name],
    )


def register_aml_target(target: Target) -> None:
    """Let MLflow's registry build the plugin store for this URI (fluent API and journal flusher)."""
    from azureml.mlflow._internal.service_context_loader import _AzureMLServiceContextLoader

    _AzureMLServiceContextLoader.add_service_context(target.uri, _service_context(target))


def probe_aml_target(target: Target, timeout: float = 5.0) -> None:
    """One request through the real plugin store, without registering anything yet."""
    from azureml.mlflow._store.tracking.store import AzureMLRestStore

    try:
        with quick_requests(timeout):
            AzureMLRestStore(_service_context(target)).search_experiments(max_results=1)
    except LinkError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one actionable line
        raise LinkError(_probe_failure(target, exc)) from None


def _probe_failure(target: Target, exc: Exception) -> str:
    text = str(exc)
    code = getattr(exc, "error_code", "") or ""
    where = f"Azure ML workspace {target.workspace!r} ({target.display})"
    auth = getattr(target.credential, "auth", "default")
    if code == "PERMISSION_DENIED" or re.search(r"\b403\b", text):  # signed in, but without the role
        return (
            f"{where} refused the identity of --auth {auth} (403): ask for {_ROLES} on the workspace, "
            "or choose another --auth; the previous link is unchanged."
        )
    if code == "UNAUTHENTICATED" or re.search(r"\b401\b", text):
        return (
            f"{where} rejected the credential of --auth {auth}: "
            f"sign in again or {_auth_fixes('')}; the previous link is unchanged."
        )
    if code in ("RESOURCE_DOES_NOT_EXIST", "ENDPOINT_NOT_FOUND") or re.search(r"\b404\b", text):
        return f"{where} has no MLflow endpoint there: check the URI or link with -s/-g/-w; the previous link is unchanged."
    return (
        f"Cannot reach {where}: {first_line(exc, 200)}. Check the network and the URI; the previous link is unchanged."
    )


# --------------------------------------------------------------------------- the selector
def azure_credentials_available() -> bool:
    """A cheap, offline guess whether a non-interactive sign-in could work here, so the panel
    only starts an account listing where one can succeed."""
    import shutil

    env = os.environ
    cli_profile = Path(env.get("AZURE_CONFIG_DIR") or Path.home() / ".azure")
    # `az login` leaves a token cache behind; an `az` on PATH with a profile may hold one elsewhere.
    cli_signed_in = any((cli_profile / name).is_file() for name in ("msal_token_cache.json", "msal_token_cache.bin"))
    return bool(
        (env.get("AZURE_CLIENT_ID") and (env.get("AZURE_CLIENT_SECRET") or env.get("AZURE_CLIENT_CERTIFICATE_PATH")))
        or env.get("AZURE_FEDERATED_TOKEN_FILE")
        or env.get("IDENTITY_ENDPOINT")
        or env.get("MSI_ENDPOINT")
        or cli_signed_in
        or (shutil.which("az") and cli_profile.is_dir())
    )


def account_workspaces(settings=None, auth: str = "default") -> list[WorkspaceRef]:
    """Workspaces of the signed-in account (blocks up to credential_timeout + 30 s: call it off
    the kernel thread, or use `list_account_workspaces`). Never signs in interactively."""
    if auth == "interactive":
        raise LinkError("Listing workspaces never signs in interactively: link once with --auth interactive.")
    timeout = float(getattr(settings, "credential_timeout", 10.0)) if settings is not None else 10.0
    credential = credential_for(auth, None, None, timeout)
    check_credential(credential, None, timeout)
    return list_workspaces(credential)


def list_account_workspaces(settings=None, auth: str = "default", callback: Callable | None = None):
    """`account_workspaces` on a daemon thread: returns a `concurrent.futures.Future` at once,
    resolved to the list or to a LinkError; `callback(future)` runs when it is."""
    from concurrent.futures import Future

    future: Future = Future()
    if callback is not None:
        future.add_done_callback(callback)

    def work():
        try:
            future.set_result(account_workspaces(settings, auth))
        except BaseException as exc:  # noqa: BLE001 - the panel shows it inline
            future.set_exception(exc if isinstance(exc, LinkError) else LinkError(first_line(exc, 200)))

    threading.Thread(target=work, name="dbxml-list-workspaces", daemon=True).start()
    return future



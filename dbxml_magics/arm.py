"""Azure Resource Manager (ARM) over REST: the clouds' endpoints, one azure-core pipeline, ARM's errors.

azure-core and azure-mgmt-core come with azure-identity and azureml-mlflow, so reading a
workspace or listing subscriptions costs no SDK of its own (azureml-core is out of support;
azure-ai-ml would add ~20 packages for three GET requests). The pipeline is the one the
Azure management SDKs build: bearer token for the cloud's management scope (with ARM's
claims challenges), a user agent, connection retries. Throttling (429) is not waited out
here: a magic answers at once and says when to try again.

The management endpoint is the cloud's, unless `ARM_CLOUD_METADATA_URL` names a cloud
metadata document (the Azure CLI's and SDKs' setting for private and sovereign clouds),
whose `resourceManager` then wins; tests point it at a loopback emulator. TLS trust is the
HTTP client's: `REQUESTS_CA_BUNDLE` for a private CA.
"""

import os
import threading
from dataclasses import dataclass, replace
from typing import Iterator

__all__ = ["API_VERSIONS", "CLOUDS", "Cloud", "ArmError", "ArmUnreachable", "cloud", "ResourceManager"]

API_VERSIONS = {
    "workspaces": "2024-10-01",  # the first GA versions with mlFlowTrackingUri are 2023-xx; 2024-10-01 is stable
    "subscriptions": "2022-12-01",
}
_CONNECT_TIMEOUT = 5
_READ_TIMEOUT = 20
_METADATA_TIMEOUT = 5


@dataclass(frozen=True)
class Cloud:
    name: str
    authority: str  # Entra ID host
    arm_scope: str  # token scope for ARM and for the AML MLflow endpoint
    management: str  # ARM endpoint
    mlflow_suffix: str  # region hosts of AML's MLflow endpoint: <region>.<suffix>


# Kept here rather than read from azureml-mlflow: a failing sign-in must not first pay the
# plugin's import (seconds on a busy machine). Values as in azureml-mlflow's KNOWN_CLOUDS.
CLOUDS = {
    "AzureCloud": Cloud("AzureCloud", "login.microsoftonline.com", "https://management.azure.com/.default",
                        "https://management.azure.com/", "api.azureml.ms"),
    "AzureChinaCloud": Cloud("AzureChinaCloud", "login.chinacloudapi.cn", "https://management.chinacloudapi.cn/.default",
                             "https://management.chinacloudapi.cn/", "api.ml.azure.cn"),
    "AzureUSGovernment": Cloud("AzureUSGovernment", "login.microsoftonline.us",
                               "https://management.usgovcloudapi.net/.default", "https://management.usgovcloudapi.net/",
                               "api.ml.azure.us"),
}
_metadata: dict[str, dict] = {}  # metadata URL -> {cloud name: resourceManager}
_metadata_lock = threading.Lock()


class ArmError(Exception):
    """ARM answered with an error: HTTP status, ARM's error code and message, Retry-After (429)."""

    def __init__(self, status: int, code: str, message: str, retry_after: str | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


class ArmUnreachable(Exception):
    """No HTTP answer from the management endpoint (DNS, connection, TLS, timeout)."""


def cloud(name: str | None = None) -> Cloud:
    """The named cloud (AZUREML_CURRENT_CLOUD, default AzureCloud); unknown names raise KeyError."""
    return CLOUDS[name or os.environ.get("AZUREML_CURRENT_CLOUD") or "AzureCloud"]


def _management_endpoint(base: Cloud) -> str:
    """The cloud's ARM endpoint, or the one ARM_CLOUD_METADATA_URL's document gives it (fetched once)."""
    url = os.environ.get("ARM_CLOUD_METADATA_URL")
    if not url:
        return base.management
    with _metadata_lock:
        endpoints = _metadata.get(url)
    if endpoints is None:
        import requests

        try:
            with requests.get(url, timeout=_METADATA_TIMEOUT) as answer:
                answer.raise_for_status()
                endpoints = {c["name"]: c["resourceManager"] for c in answer.json() if c.get("resourceManager")}
        except (requests.RequestException, ValueError, TypeError, KeyError) as exc:
            raise ArmUnreachable(f"cannot read the cloud metadata at ARM_CLOUD_METADATA_URL ({type(exc).__name__})") from None
        with _metadata_lock:
            _metadata[url] = endpoints
    if base.name not in endpoints:
        raise ArmUnreachable(f"the cloud metadata at ARM_CLOUD_METADATA_URL has no cloud {base.name!r}")
    return endpoints[base.name]


class ResourceManager:
    """GET requests to ARM for one credential and cloud."""

    def __init__(self, credential, cloud_: Cloud):
        from azure.core import PipelineClient
        from azure.core.pipeline import policies
        from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy

        self.endpoint = _management_endpoint(cloud_)
        self.cloud = replace(cloud_, management=self.endpoint)
        self._client = PipelineClient(
            self.endpoint,
            policies=[
                policies.HeadersPolicy(),
                policies.UserAgentPolicy(sdk_moniker="dbxml-magics"),
                # Connection failures once more; statuses never: 429 is reported, not slept through.
                policies.RetryPolicy(retry_total=1, retry_status=0, retry_backoff_factor=0.3),
                ARMChallengeAuthenticationPolicy(credential, cloud_.arm_scope),
            ],
        )

    def get(self, path: str, api_version: str) -> dict:
        """One resource (`path` relative to the endpoint, or a `nextLink`), as JSON."""
        from azure.core.exceptions import ServiceRequestError, ServiceResponseError
        from azure.core.rest import HttpRequest

        params = {"api-version": api_version} if "api-version=" not in path else None
        try:
            response = self._client.send_request(
                HttpRequest("GET", self._client.format_url(path), params=params),
                connection_timeout=_CONNECT_TIMEOUT,
                read_timeout=_READ_TIMEOUT,
            )
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise ArmUnreachable(f"no answer from {self.endpoint} ({type(exc).__name__})") from None
        if response.status_code >= 400:
            raise _arm_error(response)
        return response.json()

    def pages(self, path: str, api_version: str) -> Iterator[dict]:
        """The items of an ARM list, following `nextLink`."""
        link: str | None = path
        while link:
            page = self.get(link, api_version)
            yield from page.get("value", [])
            link = page.get("nextLink")

    # ------------------------------------------------------------------ the resources we read
    def workspace(self, subscription: str, resource_group: str, name: str) -> dict:
        return self.get(
            f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{name}",
            API_VERSIONS["workspaces"],
        )

    def workspaces(self, subscription: str, resource_group: str | None = None) -> list[dict]:
        scope = f"/subscriptions/{subscription}" + (f"/resourceGroups/{resource_group}" if resource_group else "")
        return list(self.pages(f"{scope}/providers/Microsoft.MachineLearningServices/workspaces", API_VERSIONS["workspaces"]))

    def subscriptions(self) -> list[dict]:
        """Enabled subscriptions the identity can see."""
        return [s for s in self.pages("/subscriptions", API_VERSIONS["subscriptions"]) if s.get("state", "Enabled") != "Disabled"]


def _arm_error(response) -> ArmError:
    """ARM's error format `{"error": {"code", "message"}}`; anything else keeps the HTTP reason."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    code = error.get("code") or response.reason or "Error"
    message = (error.get("message") or "").strip().splitlines()[0:1]
    return ArmError(response.status_code, code, message[0] if message else "", response.headers.get("Retry-After"))

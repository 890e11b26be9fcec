"""workspace.py: config.json discovery, credential selection, URIs, and atomic link failures.

Nothing on the Azure path is replaced: credentials are real azure-identity objects built from
the environment, and Azure Resource Manager is the TLS emulator on loopback (`arm_emulator.py`).
"""

import json
import subprocess
import sys
import threading
import time

import mlflow
import pytest
from IPython.core.error import UsageError

from aml_emulator import (  # noqa: F401 - fixtures
    aml_emulator, aml_workspace, azure_env, identity_endpoint, link_line, start_arm,
)
from dbxml_magics import workspace
from dbxml_magics.errors import LinkError
from dbxml_magics.workspace import WorkspaceRef

SUB = "00000000-1111-2222-3333-444444444444"


def _config(folder, sub=SUB, rg="rg-a", ws="ws-a", **extra):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(json.dumps({"subscription_id": sub, "resource_group": rg, "workspace_name": ws, **extra}))
    return path


# ----------------------------------------------------------------------- config discovery
def test_config_found_in_parents_and_azureml_folder_like_the_sdk(tmp_path, monkeypatch):
    project = tmp_path / "project"
    nested = project / "notebooks" / "deep"
    nested.mkdir(parents=True)
    plain = _config(nested, ws="ws-plain")
    dotted = _config(project / ".azureml", ws="ws-dotted")
    monkeypatch.chdir(nested)
    # azureml-core looks for .azureml/config.json all the way up before a plain config.json.
    assert workspace.find_config_file() == dotted
    assert workspace.read_config_file(workspace.find_config_file()).workspace == "ws-dotted"
    assert workspace.find_config_file(str(plain)) == plain
    dotted.unlink()
    assert workspace.find_config_file() == plain
    with pytest.raises(LinkError, match="No AML config.json in"):  # the search starts at the given folder
        workspace.find_config_file(str(project))


def test_config_scope_form_and_tenant(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({
        "Scope": f"/subscriptions/{SUB}/resourceGroups/rg-s/providers/Microsoft.MachineLearningServices/workspaces/ws-s",
        "tenant_id": "tenant-1",
    }))
    ref = workspace.read_config_file(path)
    assert (ref.subscription, ref.resource_group, ref.workspace, ref.tenant_id) == (SUB, "rg-s", "ws-s", "tenant-1")
    assert ref.path == path


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"is not valid JSON .*download it again"),
        (json.dumps({"subscription_id": SUB}), r"lacks resource_group, workspace_name"),
        (json.dumps({"subscription_id": "nope", "resource_group": "rg", "workspace_name": "ws1"}), r"not a subscription id"),
        (json.dumps(["a"]), r"must hold a JSON object"),
    ],
)
def test_malformed_config_is_one_line(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(LinkError, match=message):
        workspace.read_config_file(path)


def test_missing_config_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LinkError, match=r"No AML config.json in .*ml.azure.com"):
        workspace.find_config_file()


def test_workspaces_in_config_files_lists_each_once(tmp_path, monkeypatch):
    _config(tmp_path / "a" / ".azureml", ws="ws-one")
    _config(tmp_path / "a", ws="ws-one")  # same workspace again
    _config(tmp_path, ws="ws-two")
    (tmp_path / "a" / "b").mkdir()
    broken = tmp_path / "a" / "b" / "config.json"
    broken.write_text("{")
    monkeypatch.chdir(tmp_path / "a" / "b")
    found = workspace.workspaces_in_config_files()
    assert [r.workspace for r in found] == ["ws-one", "ws-two"]
    assert found[0].path == tmp_path / "a" / ".azureml" / "config.json"


# ----------------------------------------------------------------------- URIs
def test_tracking_and_studio_uris():
    ref = WorkspaceRef(SUB, "rg-a", "ws-a")
    uri = workspace.tracking_uri_for(ref, "https://westeurope.api.azureml.ms")
    assert uri == (
        f"azureml://westeurope.api.azureml.ms/mlflow/v2.0/subscriptions/{SUB}/resourceGroups/rg-a"
        "/providers/Microsoft.MachineLearningServices/workspaces/ws-a"
    )
    assert workspace.tracking_uri_for(ref, "westeurope.api.azureml.ms") == uri
    assert workspace.studio_url_for(ref, "t1") == f"https://ml.azure.com/?wsid={ref.arm_id}&tid=t1"
    assert workspace._host_url("westeurope.api.azureml.ms") == "https://westeurope.api.azureml.ms"
    assert workspace._host_url("127.0.0.1:8080") == "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    "uri, message",
    [
        ("azureml://westeurope.api.azureml.ms/mlflow/v2.0/nothing", r"azureml:// URI looks like"),
        (f"azureml://h/mlflow/v2.0/subscriptions/{SUB}/resourceGroups/rg/providers/"
         "Microsoft.MachineLearningServices/workspaces/-bad", r"not a valid AML workspace name"),
    ],
)
def test_bad_azureml_uri_is_one_line(ext, shell, uri, message):
    before_link, before_uri = ext.link, mlflow.get_tracking_uri()
    with pytest.raises(UsageError, match=message) as info:
        shell.run_line_magic("aml_link", f"--uri {uri}")
    assert "\n" not in str(info.value)
    assert ext.link == before_link and mlflow.get_tracking_uri() == before_uri


# ----------------------------------------------------------------------- credentials
def test_credential_selection_follows_auth_and_environment(azure_env, monkeypatch):
    from azure import identity

    assert isinstance(workspace.credential_for("default")._inner, identity.DefaultAzureCredential)
    assert isinstance(workspace.credential_for("cli")._inner, identity.AzureCliCredential)
    assert isinstance(workspace.credential_for("managed-identity")._inner, identity.ManagedIdentityCredential)
    interactive = workspace.credential_for("interactive")._inner
    assert [type(c) for c in interactive.credentials] == [
        identity.InteractiveBrowserCredential, identity.DeviceCodeCredential
    ]
    with pytest.raises(LinkError, match=r"needs AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET"):
        workspace.credential_for("service-principal")
    monkeypatch.setenv("AZURE_TENANT_ID", "t")
    monkeypatch.setenv("AZURE_CLIENT_ID", "c")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "a-very-secret-value")
    principal = workspace.credential_for("service-principal")
    assert isinstance(principal._inner, identity.ClientSecretCredential)
    assert "a-very-secret-value" not in repr(principal)
    monkeypatch.setenv("AZUREML_CURRENT_CLOUD", "MarsCloud")
    with pytest.raises(LinkError, match=r"Unknown Azure cloud 'MarsCloud'.*AzureCloud"):
        workspace.credential_for("default")


def test_default_chain_never_prompts(azure_env):
    """The plugin's own chain ends in browser and device-code login; ours must not."""
    from azure import identity

    chain = workspace.credential_for("default")._inner
    kinds = {type(c) for c in chain.credentials}
    assert identity.InteractiveBrowserCredential not in kinds
    assert identity.DeviceCodeCredential not in kinds


def test_tokens_are_cached_and_registered_as_secrets(identity_endpoint, azure_env, monkeypatch):
    from dbxml_magics.masking import redact

    for name, value in identity_endpoint.identity_env.items():
        monkeypatch.setenv(name, value)
    credential = workspace.credential_for("managed-identity")
    workspace.check_credential(credential, None, 5)
    token = credential.get_token("https://management.azure.com/.default").token
    assert identity_endpoint.token_requests == 1, "the checked token is reused by later calls"
    assert redact(f"Authorization: Bearer {token}") == "Authorization: Bearer ***"


def test_listing_account_workspaces_never_blocks(azure_env, identity_endpoint, monkeypatch):
    for name, value in identity_endpoint.identity_env.items():
        monkeypatch.setenv(name, value)
    arm = start_arm(identity_endpoint, monkeypatch)
    release = threading.Event()
    listed = arm.route("GET", r"/subscriptions", ("2022-12-01",))

    @listed
    def slow_subscriptions(request):  # ARM taking its time
        release.wait(10)
        return arm._list_subscriptions(request)

    other = "99999999-1111-2222-3333-444444444444"
    arm.add_workspace(SUB, "rg-b", "ws-b", "https://westeurope.api.azureml.ms", location="westeurope")
    arm.add_workspace(SUB, "rg-a", "ws-a", "https://westeurope.api.azureml.ms")
    arm.add_workspace(other, "rg-c", "ws-c", "https://eastus.api.azureml.ms", location="eastus")
    arm.add_workspace(SUB, "rg-a", "hub-a", "https://westeurope.api.azureml.ms", kind="Hub")
    arm.page_size = 1  # every list is paged through nextLink
    try:
        assert workspace.azure_credentials_available()
        done = []
        started = time.monotonic()
        future = workspace.list_account_workspaces(auth="managed-identity", callback=done.append)
        assert time.monotonic() - started < 0.5 and not future.done()
        release.set()
        refs = future.result(timeout=20)
        assert [(r.workspace, r.resource_group, r.source) for r in refs] == [
            ("ws-a", "rg-a", "account"), ("ws-b", "rg-b", "account"), ("ws-c", "rg-c", "account")
        ]
        assert done == [future]
        assert all(r.authorized and r.status == 200 for r in arm.seen(path_part="/subscriptions"))
        assert {r.api_version for r in arm.seen(path_part="/workspaces")} == {"2024-10-01"}
        with pytest.raises(LinkError, match="never signs in interactively"):
            workspace.list_account_workspaces(auth="interactive").result(timeout=5)
    finally:
        arm.close()


def test_no_credentials_hint_is_offline(azure_env):
    assert not workspace.azure_credentials_available()


def test_loading_the_module_stays_light():
    code = (
        "import sys, dbxml_magics.workspace, dbxml_magics\n"
        "heavy = [m for m in ('azureml', 'azure.identity', 'mlflow') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------- atomic link failures
def _assert_unchanged(ext, before_link, before_uri):
    assert ext.link == before_link
    assert mlflow.get_tracking_uri() == before_uri


def test_config_link_resolves_through_arm(ext, shell, aml_workspace, tmp_path):
    _config(tmp_path / ".azureml", aml_workspace.subscription, aml_workspace.resource_group, aml_workspace.workspace)
    link = shell.run_line_magic("aml_link", "--config --auth managed-identity")
    assert link.primary.uri == aml_workspace.tracking_uri
    assert link.primary.workspace == aml_workspace.workspace
    [lookup] = aml_workspace.arm.seen("GET", "/workspaces/")
    assert lookup.path.endswith(f"/workspaces/{aml_workspace.workspace}") and lookup.authorized
    assert lookup.api_version == "2024-10-01"


@pytest.mark.parametrize(
    "ids, message",
    [
        ((SUB, "rg-test", "ws-nope"), r"workspace 'ws-nope' was not found in resource group 'rg-test': check -w"),
        ((SUB, "rg-nope", "ws-test"), r"Resource group 'rg-nope' was not found in subscription .*check -g"),
        (("99999999-1111-2222-3333-444444444444", "rg-test", "ws-test"), r"Subscription 9999.* was not found.*check -s"),
    ],
)
def test_unknown_workspace_changes_nothing(ext, shell, aml_workspace, ids, message):
    before_link, before_uri = ext.link, mlflow.get_tracking_uri()
    with pytest.raises(UsageError, match=message) as info:
        shell.run_line_magic("aml_link", f"-s {ids[0]} -g {ids[1]} -w {ids[2]} --auth managed-identity")
    assert "\n" not in str(info.value)
    _assert_unchanged(ext, before_link, before_uri)


def test_arm_refusals_are_one_line_naming_the_fix(ext, shell, aml_workspace):
    arm = aml_workspace.arm
    line = link_line(aml_workspace, "--auth managed-identity")
    before_link, before_uri = ext.link, mlflow.get_tracking_uri()
    arm.denied.add(f"/subscriptions/{SUB}/resourcegroups/rg-test")
    with pytest.raises(UsageError, match=r"--auth managed-identity may not read workspace 'ws-test' \(403 "
                       r"AuthorizationFailed\): ask for the AzureML Data Scientist role \(or Contributor\)"):
        shell.run_line_magic("aml_link", line)
    arm.denied.clear()
    arm.throttled = 5
    with pytest.raises(UsageError, match=r"throttling this identity \(429 TooManyRequests\).*try again in 7 s"):
        shell.run_line_magic("aml_link", line)
    assert arm.throttled == 4, "a 429 is reported at once, not slept through"
    arm.throttled = 0
    arm.stop()
    started = time.monotonic()
    with pytest.raises(UsageError, match=r"Cannot reach Azure Resource Manager: no answer from https://127.0.0.1"):
        shell.run_line_magic("aml_link", line)
    assert time.monotonic() - started < 10
    _assert_unchanged(ext, before_link, before_uri)


def test_arm_checks_token_and_api_version(aml_workspace):
    import requests

    url = aml_workspace.arm.url + f"subscriptions/{SUB}/resourceGroups/rg-test/providers/" \
        "Microsoft.MachineLearningServices/workspaces/ws-test"
    ca = str(aml_workspace.arm.ca_path)
    answer = requests.get(url + "?api-version=2024-10-01", headers={"Authorization": "Bearer forged"}, verify=ca)
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "InvalidAuthenticationToken"
    token = aml_workspace._issue_token()
    answer = requests.get(url + "?api-version=1999-01-01", headers={"Authorization": f"Bearer {token}"}, verify=ca)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "NoRegisteredProviderFound"
    answer = requests.get(url + "?api-version=2024-10-01", headers={"Authorization": f"Bearer {token}"}, verify=ca)
    assert answer.json()["properties"]["mlFlowTrackingUri"].startswith(f"azureml://{aml_workspace.netloc}/mlflow/")
    plain = requests.Session()
    plain.trust_env = False  # without REQUESTS_CA_BUNDLE the certificate is not trusted
    with pytest.raises(requests.exceptions.SSLError):
        plain.get(url, timeout=5)


def test_malformed_config_link_changes_nothing(ext, shell, tmp_path):
    (tmp_path / "config.json").write_text("{oops")
    before_link, before_uri = ext.link, mlflow.get_tracking_uri()
    with pytest.raises(UsageError, match=r"config.json is not valid JSON"):
        shell.run_line_magic("aml_link", "--config")
    _assert_unchanged(ext, before_link, before_uri)


@pytest.mark.parametrize(
    "line, message",
    [
        ("-s x -g rg -w ws", r"not a subscription id"),
        (f"-s {SUB} -w ws", r"needs -s, -g and -w together \(missing -g\)"),
        (f"-s {SUB} -g rg -w ws --auth service-principal", r"needs AZURE_TENANT_ID.*in the environment"),
        ("--config missing/config.json", r"No AML config file at missing/config.json"),
        (f"--config -s {SUB}", r"Choose one of --config, -s/-g/-w"),
    ],
)
def test_bad_workspace_requests_are_one_line(ext, shell, azure_env, line, message):
    before_link, before_uri = ext.link, mlflow.get_tracking_uri()
    with pytest.raises(UsageError, match=message) as info:
        shell.run_line_magic("aml_link", line)
    assert "\n" not in str(info.value)
    _assert_unchanged(ext, before_link, before_uri)


def test_unreachable_endpoint_changes_previous_aml_link_nothing(ext, shell, aml_workspace, monkeypatch):
    first = shell.run_line_magic("aml_link", link_line(aml_workspace, "--auth managed-identity"))
    from servers import free_port

    e = aml_workspace
    e.arm.add_workspace(e.subscription, e.resource_group, e.workspace, mlflow_host=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UsageError, match=r"Cannot reach Azure ML workspace 'ws-test' .*previous link is unchanged"):
        shell.run_line_magic("aml_link", link_line(aml_workspace, "--auth managed-identity"))
    _assert_unchanged(ext, first, aml_workspace.tracking_uri)
    # The plugin still holds the working service context of the first link.
    shell.run_cell_magic("track", "still-linked --no-source", "import mlflow\nmlflow.log_metric('m', 1.0)")
    assert ext.journal.flush(timeout=60) and ext.journal.pending() == 0  # cells no longer wait for shipping


def test_unreachable_server_by_uri_changes_nothing(ext, shell):
    from servers import free_port

    before_link, before_uri = ext.link, mlflow.get_tracking_uri()
    with pytest.raises(UsageError, match=r"Cannot reach http://127.0.0.1:\d+"):
        shell.run_line_magic("aml_link", f"--uri http://127.0.0.1:{free_port()}")
    _assert_unchanged(ext, before_link, before_uri)


# ----------------------------------------------------------------------- a real MLflow server
def test_link_track_unlink_track(ext, shell, mlflow_server, tmp_path):
    embedded = ext.link
    shell.run_line_magic("aml_link", f"--uri {mlflow_server.uri}")
    assert mlflow.get_tracking_uri() == mlflow_server.uri
    shell.run_cell_magic("track", "on-server --metrics m", "m = 1.0")
    server_run = ext.last_run.run_id
    shell.run_line_magic("aml_unlink", "")
    assert ext.link == embedded and mlflow.get_tracking_uri() == embedded.primary.uri
    shell.run_cell_magic("track", "on-embedded --metrics m", "m = 2.0")
    local_run = ext.last_run.run_id

    server = mlflow_server.client()
    local = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert server.get_run(server_run).data.metrics == {"m": 1.0}
    assert local.get_run(local_run).data.metrics == {"m": 2.0}
    with pytest.raises(mlflow.exceptions.MlflowException):
        local.get_run(server_run)
    with pytest.raises(mlflow.exceptions.MlflowException):
        server.get_run(local_run)


def test_cloud_table_matches_the_plugin():
    from azureml.mlflow._common._cloud.cloud import KNOWN_CLOUDS

    from dbxml_magics.arm import CLOUDS

    for name, cloud in CLOUDS.items():
        assert (cloud.authority, cloud.arm_scope) == (
            KNOWN_CLOUDS[name]._get_authority(), KNOWN_CLOUDS[name]._get_default_scope()
        )
        assert cloud.management.rstrip("/") == KNOWN_CLOUDS[name].endpoints.resource_manager.rstrip("/")


@pytest.mark.parametrize("cloud, audience", [("AzureChinaCloud", "https://management.chinacloudapi.cn"),
                                             ("AzureUSGovernment", "https://management.usgovcloudapi.net")])
def test_sovereign_cloud_links_through_its_own_endpoints(ext, shell, aml_workspace, monkeypatch, cloud, audience):
    """AZUREML_CURRENT_CLOUD picks the cloud: its management endpoint (here the cloud's entry of
    the emulator's metadata document) and its token audience, for ARM and for the plugin alike."""
    import base64

    from dbxml_magics.arm import ResourceManager
    from dbxml_magics.arm import cloud as named_cloud

    monkeypatch.setenv("AZUREML_CURRENT_CLOUD", cloud)
    link = shell.run_line_magic("aml_link", link_line(aml_workspace, "--auth managed-identity"))
    assert link.primary.uri == aml_workspace.tracking_uri
    assert aml_workspace.arm.seen("GET", f"/workspaces/{aml_workspace.workspace}")
    shell.run_cell_magic("track", "sovereign --no-source --metrics m", "m = 1.0")
    assert ext.journal.flush(timeout=60) and ext.journal.pending() == 0

    def audience_of(token):
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["aud"].rstrip("/")

    assert {audience_of(t) for t in aml_workspace.tokens_issued} == {audience}
    monkeypatch.delenv("ARM_CLOUD_METADATA_URL")  # without a metadata document: the cloud's own endpoint
    assert ResourceManager(None, named_cloud()).endpoint == audience + "/"


# ----------------------------------------------------------------------- -w VAR: a workspace object
def test_seed_workspace_object_links_with_its_uri_and_auth(ext, shell, aml_workspace, mlflow_server):
    """The seed's flow with azureml-core (the sdk-v1 extra): `ws = Workspace.get(...)` over the ARM
    emulator, then `%aml_link -w ws` reuses its tracking URI and its authentication."""
    pytest.importorskip("azureml.core", reason="the sdk-v1 extra is not installed")
    from azureml.core import Workspace
    from azureml.core.authentication import TokenAuthentication

    e = aml_workspace
    issued = []

    def token_for(audience):  # the user's own auth object; tokens from the emulated identity
        issued.append(e._issue_token())
        return issued[-1]

    ws = Workspace.get(name=e.workspace, subscription_id=e.subscription, resource_group=e.resource_group,
                       auth=TokenAuthentication(token_for))
    shell.user_ns["ws"] = ws
    link = shell.run_line_magic("aml_link", "-w ws")
    assert link.primary.kind == "aml" and link.primary.uri == e.tracking_uri
    assert e.arm.seen("GET", f"/workspaces/{e.workspace}"), "azureml-core read the workspace from the ARM emulator"
    shell.run_cell_magic("track", "seed --no-source --metrics m", "m = 0.5")
    assert ext.journal.flush(timeout=60) and ext.journal.pending() == 0  # cells no longer wait for shipping
    assert any(r.path.endswith("/runs/log-batch") and r.authorized for r in e.mlflow_requests())
    assert issued, "the Workspace's own auth signed the MLflow requests"


def test_workspace_variable_that_is_not_a_workspace_is_one_line(ext, shell, azure_env):
    shell.user_ns["ws"] = 42
    before_link, before_uri = ext.link, mlflow.get_tracking_uri()
    with pytest.raises(UsageError, match=r"'ws' is a int, not an Azure ML workspace object"):
        shell.run_line_magic("aml_link", "-w ws")
    with pytest.raises(UsageError, match=r"needs -s, -g and -w together \(missing -s, -g\), or -w VAR alone"):
        shell.run_line_magic("aml_link", "-w not_defined")
    _assert_unchanged(ext, before_link, before_uri)


def test_no_default_path_imports_azureml_core(aml_workspace, tmp_path):
    """azureml-core is the sdk-v1 extra: a fresh kernel links with -s/-g/-w and lists the account's
    workspaces without ever importing it (whether it is installed or not; the runtime profiles of
    compat/ install no extra, and test_aml_protocol links there for real)."""
    code = (
        "import sys\n"
        "from IPython.testing.globalipapp import start_ipython\n"
        "shell = start_ipython()\n"
        "shell.run_line_magic('load_ext', 'dbxml_magics')\n"
        "shell.run_line_magic('config', 'DbxmlMagics.show_panel_on_link = False')\n"
        f"link = shell.run_line_magic('aml_link', {link_line(aml_workspace, '--auth managed-identity')!r})\n"
        "from dbxml_magics import workspace\n"
        "refs = workspace.account_workspaces(auth='managed-identity')\n"
        "print(link.primary.kind, [r.workspace for r in refs], 'azureml.core' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == f"aml ['{aml_workspace.workspace}'] False"


def _ml_client(e, monkeypatch, workspace_name=None):
    """A real azure-ai-ml MLClient whose ARM calls reach the emulator: azure-ai-ml keeps the
    public clouds' endpoints in its own table (ARM_CLOUD_METADATA_URL only adds other clouds),
    so its developer endpoint override AZUREML_DEV_URL_MFE points it there; TLS as for the rest."""
    from azure.ai.ml import MLClient
    from azure.identity import ManagedIdentityCredential

    monkeypatch.setenv("AZUREML_DEV_URL_MFE", e.arm.url.rstrip("/"))
    monkeypatch.setenv("AZUREML_CURRENT_CLOUD", "AzureCloud")  # MLClient sets it; the test's teardown unsets it
    return MLClient(ManagedIdentityCredential(), e.subscription, e.resource_group, workspace_name or e.workspace)


def test_ml_client_links_with_the_workspace_it_reads(ext, shell, aml_workspace, monkeypatch):
    """`ml_client = MLClient(credential, sub, rg, ws)`, then `%aml_link -w ml_client`: the client
    itself reads the workspace from the ARM emulator over TLS, and its credential signs MLflow."""
    e = aml_workspace
    shell.user_ns["ml_client"] = _ml_client(e, monkeypatch)
    link = shell.run_line_magic("aml_link", "-w ml_client")
    assert link.primary.kind == "aml" and link.primary.uri == e.tracking_uri
    [read] = e.arm.seen("GET", f"/workspaces/{e.workspace}")
    assert read.api_version == "2024-10-01-preview" and read.authorized, "azure-ai-ml's own request, not arm.py's"
    shell.run_cell_magic("track", "ml-client --no-source --metrics m", "m = 0.25")
    assert ext.journal.flush(timeout=60) and ext.journal.pending() == 0
    assert any(r.path.endswith("/runs/log-batch") and r.authorized for r in e.mlflow_requests())


def test_ml_client_of_a_missing_workspace_is_one_line(ext, shell, aml_workspace, monkeypatch):
    shell.user_ns["ml_client"] = _ml_client(aml_workspace, monkeypatch, "ws-gone")
    before_link, before_uri = ext.link, mlflow.get_tracking_uri()
    with pytest.raises(UsageError, match=r"workspace 'ws-gone' was not found in resource group 'rg-test'") as info:
        shell.run_line_magic("aml_link", "-w ml_client")
    assert "\n" not in str(info.value)
    _assert_unchanged(ext, before_link, before_uri)


def test_selector_lists_the_account_and_links_the_chosen_workspace(ext, shell, aml_workspace):
    """The panel's selector: with a credential in the environment it lists the account's
    workspaces (ARM emulator) on its own; choosing one and clicking Link links it, through the
    real plugin, like -s/-g/-w."""
    from dbxml_magics.panel import live_panel

    shell.run_line_magic("aml_panel", "")
    picker = live_panel(ext).picker
    picker.account_lookup.result(timeout=60)
    label = f"AML {aml_workspace.workspace} ({aml_workspace.resource_group}, subscription "
    deadline = time.monotonic() + 30  # the selector grows in the listing's callback, after the result
    while not any(text.startswith(label) for text, _ in picker.store.options) and time.monotonic() < deadline:
        time.sleep(0.05)
    [choice] = [value for text, value in picker.store.options if text.startswith(label)]
    picker.store.value = choice
    picker.auth.value = "managed-identity"
    picker.link_button.click()
    assert "Linked" in picker.message.value, picker.message.value
    assert ext.link.mode == "aml-only" and ext.link.primary.uri == aml_workspace.tracking_uri

"""One rule for experiment names per kind of store, used by %%track, %aml_register, %aml_score and the mirror."""

import uuid

import mlflow
import pytest

from aml_emulator import aml_emulator, aml_workspace, azure_env  # noqa: F401 - fixtures
from test_databricks import on_databricks  # noqa: F401 - fixture
from dbxml_magics.experiments import resolve_experiment
from dbxml_magics.targets import Target

AML = Target(uri="azureml://eastus.api.azureml.ms/mlflow/v2.0/subscriptions/s/resourceGroups/g/providers/x/workspaces/w", kind="aml")
DATABRICKS = Target(uri="databricks", kind="databricks")
SERVER = Target(uri="http://127.0.0.1:5000", kind="uri")


class Rules:
    aml_experiment_rule = "basename"
    databricks_experiment_folder = "/Shared"


@pytest.mark.parametrize(
    "target, name, expected",
    [
        (AML, "/Users/a@b.c/proj/churn", "churn"),
        (AML, "churn", "churn"),
        (DATABRICKS, "churn", "/Shared/churn"),
        (DATABRICKS, "/Users/a@b.c/proj/churn", "/Users/a@b.c/proj/churn"),
        (SERVER, "/Users/a@b.c/proj/churn", "/Users/a@b.c/proj/churn"),
        (SERVER, "churn", "churn"),
    ],
)
def test_name_on_each_kind_of_store(target, name, expected):
    assert resolve_experiment(target, name, Rules()) == expected


def test_rules_follow_config():
    class Flatten(Rules):
        aml_experiment_rule = "flatten"
        databricks_experiment_folder = "/Users/me@x.com/dbxml/"

    assert resolve_experiment(AML, "/Users/a@b.c/proj/churn", Flatten()) == "proj-churn"
    assert resolve_experiment(DATABRICKS, "churn", Flatten()) == "/Users/me@x.com/dbxml/churn"


def test_config_reaches_the_rule(ext, shell):
    shell.run_line_magic("config", "DbxmlMagics.databricks_experiment_folder = '/Users/me@x.com'")
    assert resolve_experiment(DATABRICKS, "churn", ext.settings) == "/Users/me@x.com/churn"


def test_every_magic_uses_the_same_experiment(ext, shell, tmp_path):
    """%aml_register's own run and %%track land in the link's experiment, translated by one rule
    (a local store keeps a Databricks-style path as it is)."""
    shell.run_line_magic("aml_link", "--local --experiment /Users/a@b.c/proj/churn")
    shell.run_cell(
        "from sklearn.linear_model import LogisticRegression\n"
        "clf = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])"
    )
    shell.run_line_magic("aml_register", "churn-clf --model clf")  # no tracked run yet: a run of its own
    shell.run_cell_magic("track", "t", "x = 1")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("/Users/a@b.c/proj/churn")
    runs = client.search_runs([experiment.experiment_id])
    assert {r.info.run_name for r in runs} == {"register-churn-clf", "t"}
    assert len(client.search_experiments()) == 2  # Default + the link's experiment, nothing else


def _register_then_track(shell) -> str:
    """A model registered with no tracked run yet (%aml_register makes a run of its own), then a
    %%track cell: the registered name."""
    shell.run_cell(
        "import pandas as pd\nfrom sklearn.linear_model import LogisticRegression\n"
        "frame = pd.DataFrame({'a': [0.0, 1.0, 2.0, 3.0]})\n"
        "clf = LogisticRegression().fit(frame, [0, 0, 1, 1])"
    )
    model = f"clf-{uuid.uuid4().hex[:8]}"
    shell.run_line_magic("aml_register", f"{model} --model clf")
    shell.run_cell_magic("track", "t --no-source", "x = 1")
    return model


@pytest.mark.parametrize("mode", ["aml-only", "both"])
def test_every_magic_maps_the_experiment_for_aml(ext, shell, aml_workspace, mlflow_server, mode):
    """On an AML store (the primary in aml-only, the mirror in both) the run %aml_register creates,
    %%track's and %aml_score --log-run's all land in the experiment AML can find again (the
    basename of a Databricks-style path); a store of another kind keeps the path."""
    from aml_emulator import link_line

    folder = f"/Users/a@b.c/proj-{uuid.uuid4().hex[:8]}"
    shell.run_line_magic("aml_link", link_line(aml_workspace, f"--mode {mode} --auth managed-identity "
                                                              f"--experiment {folder}/churn-{mode}"))
    model = _register_then_track(shell)
    shell.run_line_magic("aml_score", f"{model} --df frame --log-run --into scored")
    assert ext.journal.flush(timeout=60) and ext.journal.pending() == 0

    server = mlflow_server.client()
    assert server.get_experiment_by_name(f"{folder}/churn-{mode}") is None
    on_aml = server.get_experiment_by_name(f"churn-{mode}")
    assert on_aml is not None, "the AML side gets the basename"
    names = {r.info.run_name for r in server.search_runs([on_aml.experiment_id])}
    assert names == {f"register-{model}", "t", f"score {model}-v1"}
    if mode == "both":  # the embedded primary keeps the path as given
        local = mlflow.MlflowClient(tracking_uri=ext.link.primary.uri)
        kept = local.get_experiment_by_name(f"{folder}/churn-{mode}")
        assert {r.info.run_name for r in local.search_runs([kept.experiment_id])} == names


@pytest.fixture
def databricks_workspace(on_databricks, monkeypatch, mlflow_server):
    """MLflow's own `databricks` store, its host (DATABRICKS_HOST) the test's real MLflow server,
    which answers the same /api/2.0/mlflow REST routes; a personal access token as the SDK takes it."""
    monkeypatch.setenv("DATABRICKS_HOST", mlflow_server.uri)
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-test-token")
    # The workspace model registry (MLflow 3 defaults a Databricks store to Unity Catalog's).
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "databricks")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield on_databricks


@pytest.mark.parametrize("mode", ["default", "both"])
def test_magics_put_a_plain_name_under_a_databricks_folder(databricks_workspace, request, mlflow_server, tmp_path,
                                                           mode):
    """A Databricks primary takes only absolute experiment paths: with nothing linked (the
    notebook's workspace) and in `both` mode (an AML mirror beside it), the run %aml_register
    creates and %%track's go to /Shared/<name>; the AML mirror keeps the plain name.
    (%aml_score --log-run takes the same `use_experiment`; reading a Databricks registry's
    model files needs Databricks' own artifact API, which the test server has not.)"""
    from dbxml_magics.session import get_session

    shell = databricks_workspace
    shell.run_line_magic("load_ext", "dbxml_magics")
    shell.run_line_magic("config", "DbxmlMagics.show_panel_on_link = False")
    session = get_session(shell)
    assert session.link.primary.kind == "databricks"
    name = f"churn-{uuid.uuid4().hex[:8]}"
    # Databricks keeps artifacts where the client writes them itself (dbfs:/); this server's
    # default, mlflow-artifacts:/, needs an http tracking URI.
    server = mlflow_server.client()
    server.create_experiment(f"/Shared/{name}", artifact_location=(tmp_path / "dbfs").as_uri())
    if mode == "both":
        from aml_emulator import link_line

        aml = request.getfixturevalue("aml_workspace")
        shell.run_line_magic("aml_link", link_line(aml, f"--mode both --auth managed-identity --experiment {name}"))
        assert session.link.primary.kind == "databricks" and session.link.mirror.kind == "aml"
    else:
        shell.run_line_magic("config", f"DbxmlMagics.experiment = '{name}'")
    model = _register_then_track(shell)
    assert session.journal.flush(timeout=60) and session.journal.pending() == 0

    runs = {f"register-{model}", "t"}
    on_databricks = server.get_experiment_by_name(f"/Shared/{name}")  # databricks_experiment_folder
    assert {r.info.run_name for r in server.search_runs([on_databricks.experiment_id])} == runs
    mirror = server.get_experiment_by_name(name)  # the AML side (same server behind the emulator)
    if mode == "both":
        assert {r.info.run_name for r in server.search_runs([mirror.experiment_id])} == runs
    else:
        assert mirror is None

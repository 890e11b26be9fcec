"""One rule for experiment names per kind of store, used by %%track, %aml_register, %aml_score and the mirror."""

import mlflow
import pytest

from aml_emulator import aml_emulator, aml_workspace, azure_env  # noqa: F401 - fixtures
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


@pytest.mark.parametrize("mode", ["aml-only", "both"])
def test_every_magic_maps_the_experiment_for_aml(ext, shell, aml_workspace, mlflow_server, mode):
    """On an AML store (the primary in aml-only, the mirror in both) the run %aml_register creates,
    %%track's and %aml_score --log-run's all land in the experiment AML can find again (the
    basename of a Databricks-style path); a store of another kind keeps the path."""
    import uuid

    from aml_emulator import link_line

    folder = f"/Users/a@b.c/proj-{uuid.uuid4().hex[:8]}"
    shell.run_line_magic("aml_link", link_line(aml_workspace, f"--mode {mode} --auth managed-identity "
                                                              f"--experiment {folder}/churn-{mode}"))
    shell.run_cell(
        "import pandas as pd\nfrom sklearn.linear_model import LogisticRegression\n"
        "frame = pd.DataFrame({'a': [0.0, 1.0, 2.0, 3.0]})\n"
        "clf = LogisticRegression().fit(frame, [0, 0, 1, 1])"
    )
    model = f"churn-clf-{uuid.uuid4().hex[:8]}"
    shell.run_line_magic("aml_register", f"{model} --model clf")  # no tracked run yet: a run of its own
    shell.run_cell_magic("track", "t --no-source", "x = 1")
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

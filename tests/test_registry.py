"""%aml_register through a real IPython shell, against the embedded SQLite registry and real
`mlflow server` registries (one, or two in `both` mode), with the shared local `spark`.
Everything asserted is read back from the stores; bad input is checked for its one-line
message and an unchanged registry."""

import uuid

import mlflow
import pytest
from IPython.core.error import UsageError

from servers import model_name

TRAIN = """\
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
X, y = load_iris(return_X_y=True, as_frame=True)
clf = LogisticRegression(max_iter=300).fit(X, y)
"""


def _unique(prefix: str) -> str:
    # The shared server outlives a test: every test registers its own names.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _client(uri):
    # Explicit registry: the session points MLflow's global registry at the primary store.
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _embedded_client(tmp_path):
    return _client(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _versions(client, name):
    return sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))


def _load(uri, tracking_uri):
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return mlflow.pyfunc.load_model(uri)


@pytest.fixture
def trained(ext, shell):
    """The extension on the embedded store, with one tracked run that trained `clf` on iris."""
    shell.run_cell_magic("track", "train", TRAIN)
    yield ext


# ---------------------------------------------------------------------- scikit-learn, versions
def test_sklearn_model_registered_twice_gets_versions_1_and_2(trained, shell, tmp_path, capsys):
    run_id = trained.last_run.run_id
    shell.run_line_magic("aml_register", "iris-clf --model clf")
    shell.run_line_magic("aml_register", "iris-clf --model clf")

    out = capsys.readouterr().out
    assert f"Registered iris-clf version 1 from run {run_id} (train)" in out
    assert f"Registered iris-clf version 2 from run {run_id} (train)" in out
    client = _embedded_client(tmp_path)
    assert _versions(client, "iris-clf") == [1, 2]
    v1, v2 = client.get_model_version("iris-clf", "1"), client.get_model_version("iris-clf", "2")
    assert v1.run_id == v2.run_id == run_id
    # A version's files never change: the second model got its own folder in the run.
    assert v1.source.endswith("/model") and v2.source.endswith("/model-2")
    assert {a.path for a in client.list_artifacts(run_id)} == {"cell.py", "model", "model-2"}
    # The session remembers both, for %aml_score last and the panel.
    assert [(m.name, m.version, m.source_run_id) for m in trained.models] == [
        ("iris-clf", "1", run_id),
        ("iris-clf", "2", run_id),
    ]
    assert trained.last_model.model_uri == "models:/iris-clf/2"
    assert trained.last_run.model_versions == ["iris-clf v1", "iris-clf v2"]

    model = _load("models:/iris-clf/1", f"sqlite:///{tmp_path / 'mlflow.db'}")
    X = shell.user_ns["X"]
    assert (model.predict(X) == shell.user_ns["clf"].predict(X)).all()
    # Without --input-example the signature comes from what the estimator remembers (feature_names_in_).
    assert model.metadata.signature.inputs.input_names() == list(X.columns)
    assert model.metadata.run_id == run_id


def test_alias_tags_description_and_load_back_by_alias_on_server(linked, shell, mlflow_server, capsys):
    name = _unique("iris")
    shell.run_cell_magic("track", "served", TRAIN + "sample = X.head(3)\n")
    shell.run_line_magic(
        "aml_register",
        f"{name} --model clf --input-example sample --alias champion --tags stage=dev team=ml "
        "--description 'iris baseline'",
    )
    assert f"Registered {name} version 1" in capsys.readouterr().out
    client = _client(mlflow_server.uri)
    version = client.get_model_version_by_alias(name, "champion")
    assert version.version == "1"
    assert version.run_id == linked.last_run.run_id
    assert version.tags == {"stage": "dev", "team": "ml"}
    assert version.description == "iris baseline"

    model = _load(f"models:/{name}@champion", mlflow_server.uri)
    X = shell.user_ns["X"]
    assert (model.predict(X) == shell.user_ns["clf"].predict(X)).all()
    assert model.metadata.saved_input_example_info is not None
    assert model.metadata.signature.inputs.input_names() == list(X.columns)
    assert linked.last_model.alias == "champion"


# ---------------------------------------------------------------------- other flavors
@pytest.mark.spark
def test_spark_pipeline_model_registered_and_loaded_back(linked, shell, mlflow_server, spark):
    import pandas as pd
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import VectorAssembler

    frame = pd.DataFrame({"x1": [0.0, 0.2, 0.9, 1.1, 0.1, 1.0], "x2": [1.0, 0.8, 0.1, 0.0, 0.9, 0.2]})
    frame["label"] = (frame["x1"] > 0.5).astype(float)
    df = spark.createDataFrame(frame)
    pipeline = Pipeline(stages=[VectorAssembler(inputCols=["x1", "x2"], outputCol="features"), LogisticRegression(maxIter=20)])
    shell.user_ns.update(pipeline=pipeline, df=df, sample=frame[["x1", "x2"]].head(2))
    shell.run_cell_magic("track", "spark-train", "pm = pipeline.fit(df)")
    name = _unique("spark-clf")

    with pytest.raises(UsageError, match="Spark ML Pipeline that is not fitted") as info:
        shell.run_line_magic("aml_register", f"{name} --model pipeline")
    assert "\n" not in str(info.value)

    shell.run_line_magic("aml_register", f"{name} --model pm --input-example sample")
    client = _client(mlflow_server.uri)
    assert _versions(client, name) == [1]
    mlflow.set_tracking_uri(mlflow_server.uri)
    mlflow.set_registry_uri(mlflow_server.uri)
    info = mlflow.models.get_model_info(f"models:/{name}/1")
    assert "spark" in info.flavors
    assert info.signature.inputs.input_names() == ["x1", "x2"]
    loaded = mlflow.spark.load_model(f"models:/{name}/1")
    expected = [r.prediction for r in shell.user_ns["pm"].transform(df).select("prediction").collect()]
    assert [r.prediction for r in loaded.transform(df).select("prediction").collect()] == expected


def test_object_with_predict_registered_as_pyfunc(ext, shell, tmp_path):
    shell.run_cell("class Doubler:\n    def predict(self, frame):\n        return frame * 2\n\ndoubler = Doubler()")
    shell.run_cell_magic("track", "custom", "import pandas as pd\nsample = pd.DataFrame({'a': [1.0, 2.0]})")
    shell.run_line_magic("aml_register", "doubler --model doubler --input-example sample")
    model = _load("models:/doubler/1", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert list(model.metadata.flavors) == ["python_function"]
    import pandas as pd

    assert model.predict(pd.DataFrame({"a": [3.0, 4.0]}))["a"].tolist() == [6.0, 8.0]


@pytest.mark.parametrize("verbose", [False, True])
def test_mlflow_warnings_about_the_registration_show_only_with_verbose(trained, shell, capsys, verbose):
    import warnings

    # The iris classifier predicts integers: inferring its signature from the input example makes
    # MLflow warn about integer columns. The user's own model warns too; that warning always shows.
    shell.run_cell(
        "import warnings\n"
        "class Loud:\n"
        "    def __init__(self, model): self.model = model\n"
        "    def predict(self, frame):\n"
        "        warnings.warn('the model itself speaks')\n"
        "        return self.model.predict(frame)\n"
        "loud = Loud(clf)"
    )
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        shell.run_line_magic("aml_register", "quiet-iris --model loud --input-example X" + (" -v" if verbose else ""))
    err = capsys.readouterr().err
    libraries = [w for w in seen if "site-packages" in w.filename]
    assert not libraries, [str(w.message) for w in libraries]
    assert "the model itself speaks" in [str(w.message) for w in seen]
    assert ("dbxml -v: UserWarning: Hint: Inferred schema contains integer column(s)" in err) == verbose


def test_model_without_tracked_run_gets_a_new_run(ext, shell, tmp_path):
    shell.run_cell(TRAIN)
    assert ext.last_run is None
    shell.run_line_magic("aml_register", "untracked --model clf")
    client = _embedded_client(tmp_path)
    version = client.get_model_version("untracked", "1")
    run = client.get_run(version.run_id)
    assert run.info.run_name == "register-untracked"
    assert run.info.status == "FINISHED"
    assert ext.last_run.run_id == version.run_id and ext.last_run.status == "FINISHED"


# ---------------------------------------------------------------------- already logged models
def test_register_from_run_last_and_from_runs_uri(linked, shell, mlflow_server):
    shell.run_cell_magic("track", "logged", TRAIN + f"import mlflow\nmlflow.sklearn.log_model(clf, **{model_name()!r})\n")
    run_id = linked.last_run.run_id
    from_run, from_uri = _unique("from-run"), _unique("from-uri")
    shell.run_line_magic("aml_register", f"{from_run} --run last")
    shell.run_line_magic("aml_register", f"{from_uri} --uri runs:/{run_id}/model --alias prod")

    client = _client(mlflow_server.uri)
    first = client.get_model_version(from_run, "1")
    second = client.get_model_version_by_alias(from_uri, "prod")
    assert first.run_id == second.run_id == run_id
    run = client.get_run(run_id)
    if hasattr(run, "outputs"):
        # An MLflow 3 logged model (not in the run's artifacts) is registered as itself.
        assert first.source == second.source == f"models:/{run.outputs.model_outputs[0].model_id}"
    else:
        # MLflow 2.x has no logged models: the model is the run's artifact folder.
        assert first.source == second.source and first.source.endswith(f"{run_id}/artifacts/model")
    model = _load(f"models:/{from_uri}@prod", mlflow_server.uri)
    X = shell.user_ns["X"]
    assert (model.predict(X) == shell.user_ns["clf"].predict(X)).all()
    assert [m.name for m in linked.models] == [from_run, from_uri]


def test_register_run_artifact_folder_with_artifact_path(trained, shell, tmp_path):
    shell.run_cell_magic(
        "track",
        "exported",
        "import mlflow, mlflow.sklearn, tempfile, os\n"
        "folder = os.path.join(tempfile.mkdtemp(), 'm')\n"
        "mlflow.sklearn.save_model(clf, folder)\n"
        "mlflow.log_artifacts(folder, 'exported')\n",
    )
    run_id = trained.last_run.run_id
    with pytest.raises(UsageError, match=r"has no MLflow model at 'model' \(its models: exported; pass --artifact-path exported\)"):
        shell.run_line_magic("aml_register", "exported --run last")
    shell.run_line_magic("aml_register", f"exported --run {run_id} --artifact-path exported")
    version = _embedded_client(tmp_path).get_model_version("exported", "1")
    assert version.run_id == run_id and version.source.endswith("/exported")


# ---------------------------------------------------------------------- bad input changes nothing
BAD_INPUT = [
    ("iris --model nope", "there is no variable 'nope'"),
    ("iris --model answer", "answer (int) is not a model"),
    ("iris --model raw", "raw is a scikit-learn LogisticRegression that is not fitted"),
    ("iris --model clf --flavor spark", "--flavor spark: clf (sklearn LogisticRegression) is not a Spark ML model"),
    ("iris --model clf --input-example missing", "--input-example: there is no variable 'missing'"),
    ("iris", "Say what to register"),
    ("iris --model clf --run last", "Choose one of --model, --run"),
    ("a/b --model clf", "Invalid model name 'a/b'"),
    ("iris --model clf --alias v1", "The alias 'v1' is reserved"),
    ("iris --model clf --alias 'two words'", "Invalid alias 'two words'"),
    ("iris --model clf --tags novalue", "key=value"),
    ("iris --run last", "has no MLflow model at 'model' (it has no logged model)"),
    ("iris --run 0123456789abcdef0123456789abcdef", "Run '0123456789abcdef0123456789abcdef' is not in"),
    ("iris --uri models:/nope/1", "No model behind models:/nope/1"),
    ("iris --uri runs:/abc/model --artifact-path m", "--artifact-path goes with --model or --run"),
    ("iris --uri ./no-such-folder", "There is no MLflow model in"),
    ("iris --model clf --bogus", "unrecognized arguments"),
]


@pytest.mark.parametrize("line, message", BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_bad_input_is_one_line_and_creates_nothing(trained, shell, tmp_path, line, message):
    shell.run_cell("answer = 42\nraw = LogisticRegression()")
    run_id = trained.last_run.run_id
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("aml_register", line)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    client = _embedded_client(tmp_path)
    assert client.search_registered_models() == []
    assert [a.path for a in client.list_artifacts(run_id)] == ["cell.py"]
    assert len(trained.runs) == 1 and trained.models == []


def test_run_last_without_any_run(ext, shell, tmp_path):
    with pytest.raises(UsageError, match=r"^No run in this session yet: run a %%track cell first"):
        shell.run_line_magic("aml_register", "iris --run last")
    assert not (tmp_path / "mlflow.db").exists() or _embedded_client(tmp_path).search_registered_models() == []


def test_failed_registration_keeps_existing_versions(trained, shell, tmp_path):
    shell.run_line_magic("aml_register", "iris --model clf")
    with pytest.raises(UsageError, match="reserved"):
        shell.run_line_magic("aml_register", "iris --model clf --alias latest")
    client = _embedded_client(tmp_path)
    assert _versions(client, "iris") == [1]
    assert client.get_registered_model("iris").aliases == {}


def test_name_created_by_another_kernel_after_the_probe_is_used_not_refused(trained, shell, tmp_path, monkeypatch):
    """Two kernels both find no `iris` and both create it; the later one adds its version to it.

    The interleaving is forced here: the probe says "new" while the model already exists (the
    two-kernel version of the race runs in test_concurrency.py)."""
    from dbxml_magics import registry

    shell.run_line_magic("aml_register", "iris --model clf")
    monkeypatch.setattr(registry, "probe_registry", lambda client, name, display: False)
    shell.run_line_magic("aml_register", "iris --model clf --alias champion")
    client = _embedded_client(tmp_path)
    assert _versions(client, "iris") == [1, 2]
    assert client.get_registered_model("iris").aliases == {"champion": 2}


def test_version_refused_by_server_leaves_no_registered_model(linked, shell, mlflow_server, tmp_path):
    # A real server refuses a local folder as a version source: the registered model created
    # just before must be removed again.
    shell.run_cell(TRAIN + "import mlflow.sklearn\nmlflow.sklearn.save_model(clf, 'local-model')")
    name = _unique("refused")
    with pytest.raises(UsageError, match=f"refused to register '{name}'.*Nothing was registered") as info:
        shell.run_line_magic("aml_register", f"{name} --uri {tmp_path / 'local-model'}")
    assert "\n" not in str(info.value)
    assert _client(mlflow_server.uri).search_registered_models(filter_string=f"name = '{name}'") == []


def test_unreachable_registry_is_one_line_and_nothing_is_created(ext, shell, own_server):
    shell.run_line_magic("aml_link", f"--uri {own_server.uri}")
    shell.run_cell_magic("track", "before-outage", TRAIN)
    run_id = ext.last_run.run_id
    own_server.stop()
    with pytest.raises(UsageError, match=r"^Cannot reach the model registry of http://127\.0\.0\.1:\d+: .*Nothing was registered") as info:
        shell.run_line_magic("aml_register", "iris --model clf")
    assert "\n" not in str(info.value)
    own_server.start()
    client = _client(own_server.uri)
    assert client.search_registered_models() == []
    assert [a.path for a in client.list_artifacts(run_id)] == ["cell.py"]
    assert ext.models == []


# ---------------------------------------------------------------------- both mode
def test_both_mode_registers_on_mirror_and_queues_while_it_is_down(ext, shell, mlflow_server, own_server, capsys):
    # Long enough for the mirror run, its artifacts and the registration on a busy machine.
    shell.run_line_magic("config", "DbxmlMagics.flush_timeout = 60")
    shell.run_line_magic("aml_link", f"--uri {mlflow_server.uri}")
    shell.run_line_magic("aml_link", f"--uri {own_server.uri} --mode both")
    name = _unique("mirrored")
    shell.run_cell_magic("track", "both-train", TRAIN)
    run_id = ext.last_run.run_id

    shell.run_line_magic("aml_register", f"{name} --model clf --alias champion --tags team=ml")
    out = capsys.readouterr().out
    assert f"Registered {name} version 1 from run {run_id}" in out
    assert f"Mirror {own_server.uri}: {name} version 1" in out
    assert ext.last_model.mirror_version == "1"
    mirror = _client(own_server.uri)
    mirrored = mirror.get_model_version_by_alias(name, "champion")
    mirror_run = mirror.get_run(mirrored.run_id)
    assert mirror_run.data.tags["dbxml.source_run_id"] == run_id
    assert mirrored.tags["team"] == "ml"
    model = _load(f"models:/{name}@champion", own_server.uri)
    X = shell.user_ns["X"]
    assert (model.predict(X) == shell.user_ns["clf"].predict(X)).all()

    # Mirror down: the primary registers at once, the mirror's registration waits in the journal.
    own_server.stop()
    shell.run_line_magic("config", "DbxmlMagics.flush_timeout = 3")
    shell.run_line_magic("aml_register", f"{name} --model clf")
    captured = capsys.readouterr()
    assert f"Registered {name} version 2" in captured.out
    assert "registration queued" in captured.err
    assert _versions(_client(mlflow_server.uri), name) == [1, 2]
    record = ext.last_model
    assert record.mirror_version is None
    assert ext.journal.pending(run_id) > 0
    own_server.start()
    assert ext.journal.flush(timeout=90)
    assert record.mirror_version == "2"
    assert _versions(_client(own_server.uri), name) == [1, 2]
    # Replays register once: flushing again changes nothing.
    assert ext.journal.flush(timeout=10)
    assert _versions(_client(own_server.uri), name) == [1, 2]

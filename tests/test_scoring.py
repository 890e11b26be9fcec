"""%aml_score on real Spark: a local session, a Spark Connect server, and a fresh kernel process.

Models are registered with plain MLflow into a module-wide embedded store (one test uses
the working directory's own store). Predictions are compared with the model's own
`predict` on the same rows; every bad input asserts its one-line message.
"""

import contextlib
import io
import os
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from IPython.core.error import UsageError

from dbxml_magics.session import ModelRecord
from servers import model_name

pytestmark = pytest.mark.spark

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


# ---------------------------------------------------------------------- data and models
def _iris() -> pd.DataFrame:
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    frame.columns = FEATURES + ["target"]
    frame.insert(0, "id", range(len(frame)))
    return frame


def _log(model, name=None, signature=True, frame=None, flavor="sklearn"):
    from mlflow.models import infer_signature

    frame = _iris() if frame is None else frame
    kwargs = {"registered_model_name": name} if name else {}
    if signature:
        kwargs["signature"] = infer_signature(frame[FEATURES], model.predict(frame[FEATURES]))
    with mlflow.start_run() as run:
        if flavor == "sklearn":
            mlflow.sklearn.log_model(model, **model_name(), **kwargs)
        else:
            if signature:
                kwargs["signature"] = infer_signature(frame[FEATURES], np.ones(len(frame)))
            mlflow.pyfunc.log_model(python_model=model, **model_name(), **kwargs)
    return run.info.run_id


class Registry:
    """A module-wide embedded store holding the registered models the tests score with."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.uri = f"sqlite:///{folder / 'mlflow.db'}"
        self.run_ids: dict[str, str] = {}

    def expected(self, model_uri: str, frame: pd.DataFrame) -> np.ndarray:
        """The model's own `predict` on `frame`, loaded from this store whatever MLflow points at."""
        from mlflow.tracking._model_registry import utils as registry_utils

        saved = mlflow.get_tracking_uri(), registry_utils._registry_uri
        mlflow.set_tracking_uri(self.uri)
        registry_utils._registry_uri = self.uri
        try:
            return np.asarray(mlflow.pyfunc.load_model(model_uri).predict(frame[FEATURES]))
        finally:
            mlflow.set_tracking_uri(saved[0])
            registry_utils._registry_uri = saved[1]


@pytest.fixture(autouse=True)
def _no_inherited_registry(monkeypatch):
    # mlflow.set_registry_uri (called when the extension activates a link) also exports
    # MLFLOW_REGISTRY_URI, which would send the next test's registrations to this one's store.
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)


def _slow_model():
    # Defined here so cloudpickle ships the class by value to Spark's Python workers.
    class SlowModel(mlflow.pyfunc.PythonModel):
        def predict(self, model_input, params=None):
            time.sleep(0.8)
            return np.ones(len(model_input))

    return SlowModel()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    folder = tmp_path_factory.mktemp("registry")
    registry = Registry(folder)
    frame = _iris()
    from mlflow.tracking._model_registry import utils as registry_utils

    previous = os.getcwd(), mlflow.get_tracking_uri(), registry_utils._registry_uri
    os.chdir(folder)
    mlflow.set_tracking_uri(registry.uri)
    registry_utils._registry_uri = registry.uri  # wins over an MLFLOW_REGISTRY_URI left by other tests
    try:
        classifier = LogisticRegression(max_iter=500).fit(frame[FEATURES], frame["target"])
        registry.run_ids["v1"] = _log(classifier, "iris-clf", frame=frame)
        constant = DummyClassifier(strategy="constant", constant=2).fit(frame[FEATURES], frame["target"])
        registry.run_ids["v2"] = _log(constant, "iris-clf", frame=frame)
        mlflow.MlflowClient().set_registered_model_alias("iris-clf", "champion", "1")
        registry.run_ids["raw"] = _log(classifier, "iris-raw", signature=False, frame=frame)
        registry.run_ids["slow"] = _log(_slow_model(), "slow", flavor="pyfunc", frame=frame)
        registry.run_ids["unregistered"] = _log(classifier, None, frame=frame)
    finally:
        os.chdir(previous[0])
        mlflow.set_tracking_uri(previous[1])
        registry_utils._registry_uri = previous[2]
    return registry


@pytest.fixture
def scoring(ext, registry):
    """The extension loaded, MLflow pointed at the module's registry (as `mlflow.set_tracking_uri` would)."""
    mlflow.set_tracking_uri(registry.uri)
    return ext


def _view(spark, frame: pd.DataFrame, prefix="iris") -> str:
    name = f"{prefix}_{time.monotonic_ns()}"
    spark.createDataFrame(frame).createOrReplaceTempView(name)
    return name


def _scored(shell, variable="scored") -> pd.DataFrame:
    return shell.user_ns[variable].toPandas().sort_values("id").reset_index(drop=True)


# ---------------------------------------------------------------------- local Spark
def test_table_scored_with_registered_name_equals_model_predict(scoring, shell, spark, registry, capsys):
    frame = _iris()
    table = _view(spark, frame)
    events = []
    scoring.subscribe(lambda event, payload: events.append((event, payload)))

    assert shell.run_line_magic("aml_score", f"models:/iris-clf/1 --table {table} --into scored --limit 3") is None

    scored = _scored(shell)
    assert list(scored.columns) == ["id", *FEATURES, "target", "prediction"]
    assert scored["prediction"].dtype == np.int64
    np.testing.assert_array_equal(scored["prediction"], registry.expected("models:/iris-clf/1", frame))
    record = scoring.scorings[-1]
    assert (record.model_uri, record.model_version, record.input, record.rows) == (
        "models:/iris-clf/1", "1", f"table {table}", 150
    )
    assert record.seconds > 0 and "variable scored" in record.output
    assert events[-1] == ("scored", record)
    out = capsys.readouterr().out
    assert f"Scored 150 rows of table {table} with iris-clf v1" in out
    assert "on the active Spark session (master local[2])" in out


def test_every_model_reference_form_pins_the_version_it_means(scoring, shell, spark, registry):
    frame = _iris()
    table = _view(spark, frame)
    v1 = registry.expected("models:/iris-clf/1", frame)
    assert not np.array_equal(v1, registry.expected("models:/iris-clf/2", frame))
    scoring.add_model(ModelRecord(name="iris-clf", version="1", source_run_id=None, model_uri="models:/iris-clf/1"))
    run_v1 = registry.run_ids["v1"]
    cases = [
        ("iris-clf", "models:/iris-clf/2", "2"),
        ("models:/iris-clf/latest", "models:/iris-clf/2", "2"),
        ("models:/iris-clf@champion", "models:/iris-clf/1", "1"),
        ("last", "models:/iris-clf/1", "1"),
        (f"runs:/{run_v1}/model", f"runs:/{run_v1}/model", None),
    ]
    for reference, pinned, version in cases:
        shell.run_line_magic("aml_score", f"{reference} --table {table} --into scored --limit 0")
        expected = registry.expected(pinned, frame)
        np.testing.assert_array_equal(_scored(shell)["prediction"], expected, err_msg=reference)
        assert (scoring.scorings[-1].model_uri, scoring.scorings[-1].model_version) == (pinned, version)


def test_pandas_input_with_column_mapping_filter_output_col_and_result_type(scoring, shell, spark, registry):
    frame = _iris()
    renamed = frame.rename(columns=dict(zip(FEATURES, ["a", "b", "c", "d"])))
    shell.user_ns["measurements"] = renamed

    shell.run_line_magic(
        "aml_score",
        'models:/iris-clf/1 --df measurements --engine spark --columns a b c d --where "a > 5.0" --output-col label '
        "--result-type double --into scored --limit 0",
    )

    result = shell.user_ns["scored"]
    assert dict(result.dtypes)["label"] == "double"
    assert result.rdd.getNumPartitions() == 1  # a small frame: one Python worker loads the model, not one per core
    scored = result.toPandas().sort_values("id")
    kept = frame[frame["sepal_length"] > 5.0]
    assert len(scored) == len(kept) == scoring.scorings[-1].rows
    np.testing.assert_array_equal(scored["label"], registry.expected("models:/iris-clf/1", kept).astype(float))
    assert scoring.scorings[-1].input == "DataFrame measurements (150 pandas rows) where a > 5.0"


def test_pandas_input_reaches_spark_as_one_arrow_slice_per_core_and_leaves_the_session_conf_alone(
    scoring, shell, spark, registry
):
    # A LocalRelation (rows inside the plan) or one partition per 10,000-row Arrow batch
    # (one model load each) made a million rows take 16-70 s instead of about 2.
    frame = pd.concat([_iris()] * 150, ignore_index=True)  # 22,500 rows: three default Arrow batches
    frame["id"] = range(len(frame))
    shell.user_ns["many"] = frame
    keys = [
        "spark.sql.execution.arrow.pyspark.enabled",
        "spark.sql.execution.arrow.maxRecordsPerBatch",
        "spark.sql.execution.arrow.localRelationThreshold",
    ]
    before = {key: spark.conf.get(key, None) for key in keys}

    shell.run_line_magic("aml_score", "models:/iris-clf/1 --df many --engine spark --into scored --limit 0")

    result = shell.user_ns["scored"]
    assert result.rdd.getNumPartitions() == spark.sparkContext.defaultParallelism
    plan = result._jdf.queryExecution().analyzed().toString()
    assert "LocalRelation" not in plan, plan
    assert {key: spark.conf.get(key, None) for key in keys} == before
    assert scoring.scorings[-1].rows == len(frame)
    np.testing.assert_array_equal(_scored(shell)["prediction"], registry.expected("models:/iris-clf/1", frame))
    result.unpersist()


def test_a_session_the_user_created_is_left_as_it_was(scoring, shell, spark, registry):
    """Quietness and loopback are for the session the magic starts: the user's session keeps
    its log level, its settings, and the environment and Python loggers around it."""
    import logging

    def state():
        jvm = spark.sparkContext._jvm
        loggers = {name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers))
                   for name in ("py4j", "mlflow", "pyspark")}
        return {
            "log4j": jvm.org.apache.logging.log4j.LogManager.getRootLogger().getLevel().toString(),
            "conf": dict(spark.conf.getAll),
            "env": {k: os.environ.get(k) for k in ("SPARK_LOCAL_IP", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")},
            "loggers": loggers,
        }

    table = _view(spark, _iris())
    shell.user_ns["frame"] = _iris()
    spark.sparkContext.setLogLevel("FATAL")  # not the level the magic gives its own sessions
    try:
        before = state()
        shell.run_line_magic("aml_score", f"iris-clf --table {table} --into scored --limit 0")
        shell.run_line_magic("aml_score", "iris-clf --df frame --engine spark --into scored --limit 0")
        shell.run_line_magic("aml_score", "iris-clf --df frame --engine spark --dry-run")
        after = state()
    finally:
        spark.sparkContext.setLogLevel("ERROR")
    assert after == before
    assert shell.user_ns["scored"].sparkSession is spark


def test_spark_dataframe_with_integer_columns_is_cast_to_the_signature_types(scoring, shell, spark, registry):
    frame = _iris()
    whole = frame.copy()
    whole[FEATURES] = (whole[FEATURES] * 10).round().astype("int32")
    shell.user_ns["tenths"] = spark.createDataFrame(whole)

    shell.run_line_magic("aml_score", "models:/iris-clf/1 --df tenths --into scored --limit 0")

    np.testing.assert_array_equal(
        _scored(shell)["prediction"], registry.expected("models:/iris-clf/1", whole.astype({c: float for c in FEATURES}))
    )


def test_model_without_signature_scores_named_columns(scoring, shell, spark, registry):
    frame = _iris()
    table = _view(spark, frame)
    shell.run_line_magic("aml_score", f"iris-raw --table {table} --columns {' '.join(FEATURES)} --into scored --limit 0")
    np.testing.assert_array_equal(_scored(shell)["prediction"], registry.expected("models:/iris-raw/1", frame))


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_files_are_read_in_each_format(scoring, shell, spark, registry, tmp_path, fmt):
    frame = _iris()
    folder = tmp_path / f"input.{fmt}"
    writer = spark.createDataFrame(frame).coalesce(1).write
    {"parquet": writer.parquet, "csv": lambda p: writer.option("header", True).csv(p), "json": writer.json}[fmt](str(folder))

    shell.run_line_magic("aml_score", f"iris-clf@champion --path {folder} --format {fmt} --into scored --limit 0")

    np.testing.assert_array_equal(_scored(shell)["prediction"], registry.expected("models:/iris-clf/1", frame))
    assert scoring.scorings[-1].input == f"{fmt} files at {folder}"


def test_results_saved_as_table_and_files_and_preview_shown(scoring, shell, spark, registry, tmp_path, capsys):
    frame = _iris()
    table = _view(spark, frame)
    saved_table = f"scored_{time.monotonic_ns()}"
    saved_path = tmp_path / "scored.parquet"

    returned = shell.run_line_magic(
        "aml_score", f"models:/iris-clf/1 --table {table} --save-as {saved_table} --save-path {saved_path} --limit 4"
    )

    expected = registry.expected("models:/iris-clf/1", frame)
    from_table = spark.table(saved_table).toPandas().sort_values("id")
    from_files = spark.read.parquet(str(saved_path)).toPandas().sort_values("id")
    np.testing.assert_array_equal(from_table["prediction"], expected)
    np.testing.assert_array_equal(from_files["prediction"], expected)
    assert returned.count() == 150  # without --into the result is the magic's value
    assert scoring.scorings[-1].output == f"table {saved_table}, parquet at {saved_path}"
    out = capsys.readouterr().out
    assert "prediction" in out.split("output:", 1)[1]  # the preview table follows the summary
    with pytest.raises(UsageError, match=f"Table '{saved_table}' already exists"):
        shell.run_line_magic("aml_score", f"models:/iris-clf/1 --table {table} --save-as {saved_table}")
    with pytest.raises(UsageError, match="already exists"):
        shell.run_line_magic("aml_score", f"models:/iris-clf/1 --table {table} --save-path {saved_path}")


def test_log_run_records_the_lineage(scoring, shell, spark, registry):
    table = _view(spark, _iris())
    shell.run_line_magic("aml_score", f"iris-clf@champion --table {table} --log-run --limit 0")

    record = scoring.scorings[-1]
    run = mlflow.MlflowClient(tracking_uri=registry.uri).get_run(record.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model_uri"] == "models:/iris-clf/1"
    assert run.data.params["model_version"] == "1"
    assert run.data.params["input"] == f"table {table}"
    assert run.data.params["rows"] == "150"
    assert run.data.metrics["rows"] == 150
    assert run.data.tags["dbxml.kind"] == "scoring"
    assert run.data.tags["dbxml.score.model_run_id"] == registry.run_ids["v1"]
    assert mlflow.active_run() is None


def test_working_directory_store_is_the_default(ext, shell, spark, tmp_path):
    """The embedded store of the working directory, as a notebook without %aml_link has it."""
    from sklearn.linear_model import LogisticRegression

    frame = _iris()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = LogisticRegression(max_iter=300).fit(frame[FEATURES], frame["target"])
    _log(model, "local-clf", frame=frame)
    from mlflow.tracking._tracking_service import utils

    utils._tracking_uri = None  # as a fresh notebook: nothing set, the extension picks the store
    shell.user_ns["frame"] = frame

    shell.run_line_magic("aml_score", "local-clf --df frame --into scored --limit 0")

    np.testing.assert_array_equal(shell.user_ns["scored"]["prediction"], model.predict(frame[FEATURES]))


# ---------------------------------------------------------------------- bad input
@pytest.fixture
def bad_inputs_table(spark):
    frame = _iris()
    frame["sepal_width"] = frame["sepal_width"].astype(str)
    return _view(spark, frame.drop(columns=["petal_width"]), prefix="broken")


@pytest.mark.parametrize(
    "line, message",
    [
        ("iris-clf", "Say what to score: --table TABLE, --df VAR"),
        ("iris-clf --table t --df frame", "Give one input, not --table and --df"),
        ("iris-clf --path p --format avro", "--format must be one of parquet, csv, json, delta; got 'avro'"),
        ("iris-clf --table t --limit -1", "--limit must be 0 or more rows; got -1"),
        ("iris-clf --table t --into 1abc", "--into expects a variable name; '1abc' is not one"),
        ("iris-clf --table t --into spark", "--into spark would replace the notebook's Spark session"),
        ("iris-clf --table t --engine fast", "--engine must be one of auto, local, spark; got 'fast'"),
        ("iris-clf --table t --engine local", "--engine local scores data held in the kernel .* table t is in Spark"),
        ("iris-clf --df frame --engine local --save-as t", "--engine local cannot do --save-as \\(Spark only\\)"),
        ("iris-clf --df frame --where 'sepal_length >'", r"--where 'sepal_length >' is not a valid filter on DataFrame frame \(150 pandas rows\)"),
        ("iris-clf --df frame --result-type 'array<double>'", "--result-type 'array<double>' has no in-kernel equivalent"),
        ("iris-clf --df frame --dry-run --columns a b c d", "DataFrame frame .* does not fit model iris-clf v2: missing columns a \(for sepal_length\)"),
        ("iris-clf --table {broken} --dry-run", r"table broken_\d+ does not fit model iris-clf v2"),
        ("iris-clff --table t", r"No registered model named 'iris-clff' in sqlite:///.*\. Did you mean 'iris-clf'\?"),
        ("models:/nosuch/1 --table t", "No registered model named 'nosuch'"),
        ("models:/iris-clf/7 --table t", r"Model 'iris-clf' has no version 7 in .* \(versions: 1, 2\)"),
        ("models:/iris-clf@gold --table t", r"Model 'iris-clf' has no alias 'gold' in .* \(aliases: champion\)"),
        ("models:/ --table t", "models:/ needs a model"),
        ("last --table t", "No model was registered in this session, so `last` means nothing yet"),
        ("runs:/0123456789abcdef0123456789abcdef/model --table t", "Run 0123456789abcdef0123456789abcdef does not exist"),
        ("iris-clf --table no_such_table", "No table or view 'no_such_table' in the active Spark session"),
        ("iris-clf --df nowhere", "No variable 'nowhere' in the notebook"),
        ("iris-clf --df a_list", "--df a_list is a list, not a Spark or pandas DataFrame"),
        ("iris-clf --path {tmp}/nothing-here", "No files at --path"),
        ("iris-clf --path {tmp} --format delta", "Delta Lake is not available in this Spark session"),
        ("iris-clf --remote http://127.0.0.1:1 --table t", "--remote expects a Spark Connect URL like sc://host:15002"),
        ("iris-clf --remote sc://127.0.0.1:{port} --table t", r"Cannot reach the Spark Connect server sc://127\.0\.0\.1:\d+"),
        ("iris-clf --table {good} --where 'no_such_col > 1'", r"--where 'no_such_col > 1' is not a valid filter on table iris_\d+"),
        ("iris-clf --table {good} --output-col sepal_length", "already has a column 'sepal_length'; choose another name"),
        ("iris-clf --table {good} --result-type blah", "--result-type 'blah' is not a Spark type"),
        ("iris-clf --table {good} --columns a b c", "--columns gives 3 columns but model iris-clf v2 has 4 inputs"),
        ("iris-clf --table {good} --columns id sepal_width petal_length nope", r"missing columns nope \(for petal_width\)"),
        ("iris-raw --table {good}", "Model iris-raw v1 has no input signature"),
        ("iris-raw --table {good} --columns sepal_length nope", "lacks the columns nope given with --columns"),
        (
            "iris-clf --table {broken}",
            r"table broken_\d+ does not fit model iris-clf v2: missing columns petal_width; incompatible types: "
            r"sepal_width is string \(model expects double\)\. Input columns: id, sepal_length",
        ),
    ],
)
def test_bad_input_is_one_line_and_runs_no_spark_job(scoring, shell, spark, registry, bad_inputs_table, tmp_path, line, message):
    from servers import free_port

    shell.user_ns["a_list"] = [1, 2]
    shell.user_ns["frame"] = _iris()
    good = _view(spark, _iris())
    line = line.format(tmp=tmp_path, port=free_port(), good=good, broken=bad_inputs_table)
    if "--into" not in line:
        line += " --into never_assigned"
    with _no_spark_job(spark):
        with pytest.raises(UsageError, match=message) as info:
            shell.run_line_magic("aml_score", line)
    assert "\n" not in str(info.value)
    assert "never_assigned" not in shell.user_ns


@contextlib.contextmanager
def _no_spark_job(spark):
    """Fails unless the block ran no Spark job (the jobs of this thread's probe group are listed)."""
    context = spark.sparkContext
    probe = f"no-job-probe-{time.monotonic_ns()}"
    context.setJobGroup(probe, "jobs started by a block that must run none")
    try:
        yield
        jobs = context.statusTracker().getJobIdsForGroup(probe)
        spark.range(3).count()  # the probe itself sees jobs: an empty answer above means something
        assert context.statusTracker().getJobIdsForGroup(probe)
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)
    assert jobs == []


def test_runs_uri_without_a_model_is_one_line(scoring, shell, registry):
    with pytest.raises(UsageError, match=f"No MLflow model at runs:/{registry.run_ids['v1']}/elsewhere"):
        shell.run_line_magic("aml_score", f"runs:/{registry.run_ids['v1']}/elsewhere --table t")


# ---------------------------------------------------------------------- local engine and --dry-run
def test_kernel_data_is_scored_in_the_kernel_with_the_spark_paths_checks_and_casts(scoring, shell, spark, registry, monkeypatch, capsys):
    frame = _iris()
    tenths = frame.rename(columns=dict(zip(FEATURES, ["a", "b", "c", "d"])))
    tenths[["a", "b", "c", "d"]] = (tenths[["a", "b", "c", "d"]] * 10).round().astype("int32")
    shell.user_ns["tenths"] = tenths
    loads = []
    original = mlflow.pyfunc.load_model
    monkeypatch.setattr(mlflow.pyfunc, "load_model", lambda *a, **k: loads.append(a) or original(*a, **k))
    line = 'models:/iris-clf/1 --df tenths --columns a b c d --where "a > 50" --output-col label --into scored'

    with _no_spark_job(spark):
        shell.run_line_magic("aml_score", line + " --limit 2 --log-run")
        shell.run_line_magic("aml_score", line + " --limit 0 --result-type double")

    assert len(loads) == 1  # the second call found the model of that pinned version loaded
    result = shell.user_ns["scored"]
    assert isinstance(result, pd.DataFrame) and result["label"].dtype == np.float64
    kept = tenths[tenths["a"] > 50]
    as_features = kept.rename(columns=dict(zip(["a", "b", "c", "d"], FEATURES))).astype({c: float for c in FEATURES})
    np.testing.assert_array_equal(result["label"], registry.expected("models:/iris-clf/1", as_features).astype(float))
    assert list(result.index) == list(kept.index)  # rows keep their index, as pandas users expect
    first, second = scoring.scorings[-2:]
    assert (second.model_uri, second.rows) == ("models:/iris-clf/1", len(kept))
    assert second.input == f"DataFrame tenths (150 pandas rows) where a > 50"
    out = capsys.readouterr().out
    assert "on the kernel (local engine); output: variable scored." in out
    run = mlflow.MlflowClient(tracking_uri=registry.uri).get_run(first.run_id)
    assert run.data.tags["dbxml.score.engine"] == "the kernel (local engine)"
    assert run.data.params["rows"] == str(len(kept)) and run.data.params["model_version"] == "1"


def test_numpy_arrays_and_records_are_scored_as_frames(scoring, shell, registry):
    frame = _iris()
    shell.user_ns["array"] = frame[FEATURES].to_numpy()
    shell.user_ns["records"] = frame[FEATURES].head(7).to_dict("records")

    from_array = shell.run_line_magic("aml_score", "iris-clf@champion --df array --engine local --limit 0")
    from_records = shell.run_line_magic("aml_score", "iris-clf@champion --df records --limit 0")

    expected = registry.expected("models:/iris-clf/1", frame)
    np.testing.assert_array_equal(from_array["prediction"], expected)
    np.testing.assert_array_equal(from_records["prediction"], expected[:7])
    assert list(from_array.columns) == [*FEATURES, "prediction"]
    assert scoring.scorings[-1].input == "DataFrame records (7 records)"
    assert isinstance(from_array, pd.DataFrame) and isinstance(from_records, pd.DataFrame)
    shell.user_ns["narrow"] = frame[FEATURES[:3]].to_numpy()
    with pytest.raises(UsageError, match="--df narrow has 3 columns but the model's named inputs are 4"):
        shell.run_line_magic("aml_score", "iris-clf --df narrow")


def test_large_frames_are_scored_in_chunks_with_progress(scoring, shell, registry, monkeypatch, capsys):
    from dbxml_magics import local_scoring

    monkeypatch.setattr(local_scoring, "CHUNK_ROWS", 50)  # 3 chunks of the slow model: 0.8 s each
    shell.user_ns["frame"] = _iris()

    scored = shell.run_line_magic("aml_score", "slow --df frame --limit 0")

    err = capsys.readouterr().err
    assert "dbxml: scoring DataFrame frame (150 pandas rows) with slow v1: 100/150 rows" in err
    assert "dbxml: scoring DataFrame frame (150 pandas rows) with slow v1: done, 150/150 rows" in err
    assert len(scored) == 150 and (scored["prediction"] == 1.0).all()


def test_dry_run_of_kernel_data_prints_the_plan_and_a_sample_and_runs_nothing(scoring, shell, spark, registry, capsys):
    whole = _iris()
    whole[FEATURES] = (whole[FEATURES] * 10).round().astype("int32")
    shell.user_ns["whole"] = whole
    count = len(scoring.scorings)

    with _no_spark_job(spark):
        assert shell.run_line_magic("aml_score", "iris-clf@champion --df whole --into out --dry-run") is None
        shell.run_line_magic("aml_score", "iris-clf@champion --df whole --engine spark --dry-run")

    out = capsys.readouterr().out
    local, on_spark = out.split("Plan for %aml_score")[1:]
    assert "model:   iris-clf v1 (models:/iris-clf/1, from run " in local
    assert "engine:  local" in local and "session: the kernel (local engine)" in local
    assert "sepal_length int -> sepal_length (cast to double)" in local
    assert "output:  column 'prediction', type int64, into variable out" in local
    assert "the first 5 rows scored in the kernel" in local and "prediction" in local.split("sample:")[1]
    assert "engine:  spark" in on_spark and "session: the active Spark session (master local[2])" in on_spark
    assert "type bigint" in on_spark
    assert "out" not in shell.user_ns and len(scoring.scorings) == count


def test_dry_run_of_a_table_reads_its_schema_only(scoring, shell, spark, registry, capsys):
    table = _view(spark, _iris())
    with _no_spark_job(spark):
        shell.run_line_magic("aml_score", f"iris-clf --table {table} --dry-run")
    out = capsys.readouterr().out
    assert f"input:   table {table}" in out and "engine:  spark" in out
    assert "sepal_length double -> sepal_length;" in out
    assert "sample:  none (reading rows of Spark data would run a Spark job" in out


def test_library_chatter_is_held_back_unless_verbose(scoring, shell, spark, registry, capsys):
    import warnings

    table = _view(spark, _iris())
    shell.user_ns["frame"] = _iris()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        shell.run_line_magic("aml_score", f"models:/iris-clf/2 --table {table} --limit 0 --into scored")
        shell.run_line_magic("aml_score", "models:/iris-clf/2 --df frame --limit 0 --into scored")
    quiet = capsys.readouterr()
    for text in (quiet.out, quiet.err):
        assert " INFO " not in text and "Warning" not in text


@pytest.mark.parametrize("verbose", [False, True])
def test_captured_holds_library_lines_and_warnings_and_reissues_the_users(verbose, capsys):
    import logging
    import warnings

    from dbxml_magics.quiet import captured

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with captured(verbose):
            logging.getLogger("mlflow.models.flavor_backend_registry").info("library line")
            warnings.warn_explicit("library warning", UserWarning, str(Path(mlflow.__file__).parent / "x.py"), 1)
            warnings.warn("the user's warning")
    err = capsys.readouterr().err
    assert [str(w.message) for w in seen] == ["the user's warning"]
    assert ("dbxml -v: " in err and "library line" in err and "UserWarning: library warning" in err) == verbose
    assert verbose or err == ""
    assert logging.getLogger("mlflow").handlers  # MLflow's own handler is back


# ---------------------------------------------------------------------- progress
def test_long_scoring_shows_progress_in_a_terminal(scoring, shell, spark, registry, capsys):
    frame = _iris()
    name = f"slow_{time.monotonic_ns()}"
    spark.createDataFrame(frame).repartition(4).createOrReplaceTempView(name)

    shell.run_line_magic("aml_score", f"slow --table {name} --into scored --limit 0")

    err = capsys.readouterr().err
    assert f"dbxml: scoring table {name} with slow v1: " in err
    assert "tasks" in err
    assert f"dbxml: scoring table {name} with slow v1: done" in err
    assert (_scored(shell)["prediction"] == 1.0).all()


def test_job_progress_counts_tasks_of_its_own_jobs(spark):
    from pyspark.sql.functions import pandas_udf

    from dbxml_magics.spark_progress import JobProgress, TextView

    @pandas_udf("double")
    def slowly(values: pd.Series) -> pd.Series:
        time.sleep(0.4)
        return values * 2.0

    stream = io.StringIO()
    spark.range(10).count()  # a job outside the block: not counted
    with JobProgress(spark, "probe", show_after=0, interval=0.1, view_factory=lambda label: TextView(label, stream, every=0)) as progress:
        spark.range(0, 400, numPartitions=4).select(slowly("id")).collect()
    text = stream.getvalue()
    assert "/4 tasks, " in text.split("done", 1)[0]  # counts arrived while the job ran
    assert "dbxml: probe: done, 4/4 tasks, 1/1 stages" in text
    assert progress.snapshot().done_tasks == 4
    assert spark.sparkContext.getLocalProperty("spark.jobGroup.id") is None


def test_job_progress_stays_silent_and_asks_spark_nothing_for_short_jobs(spark):
    from dbxml_magics.spark_progress import JobProgress

    views, polls = [], []

    class Counting(JobProgress):
        def _poll(self):
            polls.append(time.monotonic())
            super()._poll()

    with Counting(spark, "short", show_after=30, interval=0.01, view_factory=views.append):
        spark.range(100).count()
    assert views == [] and polls == []
    assert spark.sparkContext.getLocalProperty("spark.jobGroup.id") is None


# ---------------------------------------------------------------------- Spark Connect and resolution order
def test_remote_wins_over_the_notebook_spark(scoring, shell, spark, spark_connect, registry, monkeypatch, capsys):
    frame = _iris()
    client = spark_connect.client()
    table = f"remote_iris_{time.monotonic_ns()}"
    client.createDataFrame(frame).write.saveAsTable(table)  # exists on the server only
    monkeypatch.setitem(shell.user_ns, "spark", spark)

    shell.run_line_magic("aml_score", f"models:/iris-clf/1 --table {table} --remote {spark_connect.url} --into scored --limit 0")

    result = shell.user_ns["scored"]
    assert type(result).__module__.startswith("pyspark.sql.connect")
    np.testing.assert_array_equal(_scored(shell)["prediction"], registry.expected("models:/iris-clf/1", frame))
    assert f"on Spark Connect {spark_connect.url}" in capsys.readouterr().out
    # The classic session still scores after Connect was used in this process.
    local = _view(spark, frame)
    shell.run_line_magic("aml_score", f"models:/iris-clf/1 --table {local} --into scored --limit 0")
    assert type(shell.user_ns["scored"]).__module__.startswith("pyspark.sql.classic")
    np.testing.assert_array_equal(_scored(shell)["prediction"], registry.expected("models:/iris-clf/1", frame))


def test_notebook_spark_wins_over_the_active_session(scoring, shell, spark, spark_connect, registry, monkeypatch, capsys):
    frame = _iris()
    client = spark_connect.client()
    view = f"connect_only_{time.monotonic_ns()}"
    client.createDataFrame(frame).createOrReplaceTempView(view)  # visible in this client's session only
    monkeypatch.setitem(shell.user_ns, "spark", client)  # as Databricks puts `spark` in the namespace
    assert spark.sparkContext is not None  # a classic active session exists and must be passed over

    shell.run_line_magic("aml_score", f"iris-clf@champion --table {view} --into scored --limit 2")

    out = capsys.readouterr().out
    assert "on the notebook's `spark` (Spark Connect client)" in out
    np.testing.assert_array_equal(_scored(shell)["prediction"], registry.expected("models:/iris-clf/1", frame))


def test_job_progress_on_spark_connect(spark_connect):
    from dbxml_magics.spark_progress import JobProgress, TextView
    from dbxml_magics.spark_session import api_mode

    client = spark_connect.client()
    with api_mode(client):
        from pyspark.sql.functions import pandas_udf

        @pandas_udf("double")
        def slowly(values: pd.Series) -> pd.Series:
            import time

            time.sleep(0.5)
            return values * 2.0

        frame = client.range(0, 400, numPartitions=4).select(slowly("id"))
    stream = io.StringIO()
    with JobProgress(client, "remote", show_after=0, interval=0.1, view_factory=lambda label: TextView(label, stream, every=0)):
        frame.collect()
    text = stream.getvalue()
    assert "/4 tasks, " in text.split("done", 1)[0]  # counts arrived while the job ran
    assert "dbxml: remote: done, 4/4 tasks" in text


# ---------------------------------------------------------------------- a fresh kernel
_FRESH_CELLS = [
    """
%load_ext dbxml_magics
import os, sys
assert "pyspark" not in sys.modules, "load_ext imported pyspark"
import mlflow
from sklearn.linear_model import LogisticRegression
from sklearn.datasets import load_iris
from mlflow.models import infer_signature
X, y = load_iris(return_X_y=True, as_frame=True)
X.columns = [c.replace(" (cm)", "").replace(" ", "_") for c in X.columns]
model = LogisticRegression(max_iter=300).fit(X, y)
mlflow.set_tracking_uri("sqlite:///" + os.path.join(os.getcwd(), "mlflow.db"))
with mlflow.start_run():
    name = {"name" if int(mlflow.__version__.split(".")[0]) >= 3 else "artifact_path": "model"}
    mlflow.sklearn.log_model(model, **name, registered_model_name="fresh",
                             signature=infer_signature(X, model.predict(X)))
mlflow.set_tracking_uri(None)
""",
    "%aml_score fresh --df X --into local_scored --limit 3",
    "%aml_score fresh --df X --engine spark --into scored --limit 3",
    """
import warnings
assert (local_scored["prediction"].to_numpy() == model.predict(X)).all()
assert (scored.toPandas()["prediction"].to_numpy() == model.predict(X)).all()
print("PYTHON-EXEC", scored.sparkSession.sparkContext.pythonExec)
print("DRIVER", scored.sparkSession.sparkContext.getConf().get("spark.driver.host"))
warnings.warn("the user's own warning")
""",
    "scored.sparkSession.stop()",
]


def _cell_text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.append(str(output.get("data", {}).get("text/plain", "")))
        parts.append(output.get("evalue", ""))
    return "\n".join(parts)


def test_fresh_kernel_scores_in_process_then_starts_a_quiet_loopback_local_session(tmp_path, monkeypatch):
    """A real kernel (nbclient): what the user sees under each cell, as the issue reported it."""
    import nbformat
    from nbclient import NotebookClient

    # Without PYTEST_CURRENT_TEST, ipykernel forwards descriptor-level output (the JVM's) to the
    # cells as it does for a user; under pytest it would not, and the noise checks could not fail.
    for variable in [v for v in os.environ if v.startswith(("PYSPARK_", "SPARK_", "MLFLOW_TRACKING", "PYTEST_CURRENT"))]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # a `python3` without pandas: the workers must not pick it
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in _FRESH_CELLS])
    NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    texts = [_cell_text(cell) for cell in notebook.cells]
    local, spark_cell, checks = texts[1], texts[2], texts[3]
    assert "on the kernel (local engine)" in local and "prediction" in local
    assert "on a new local Spark session (master local[*]" in spark_cell
    for text in (local, spark_cell):
        for noise in ("WARN", "INFO", "Warning", "log4j", "SPARK_LOCAL_IP", "NativeCodeLoader", "setLogLevel"):
            assert noise not in text, f"{noise!r} in the cell output:\n{text}"
    assert f"PYTHON-EXEC {sys.executable}" in checks
    assert "DRIVER 127.0.0.1" in checks
    assert "UserWarning: the user's own warning" in checks

"""%aml_score: score kernel data in the kernel, or a Spark table, DataFrame or files on Spark, with an MLflow model.

The path a user would write by hand (`mlflow.pyfunc.spark_udf`, read, `withColumn`,
display), with what the hand-written version lacks: the model reference is resolved and
pinned to one version, the input is checked against the model signature before any
Spark job (every missing or mistyped column named in one line), progress is visible, and
the scoring is recorded in the session (and optionally as an MLflow run with its lineage).

Order of work, cheapest first, so that a mistake costs seconds: parse the request, resolve
the model (registry metadata only), pick the Spark session, read the input's schema
(analysis, no job), match columns and types, build the UDF, then run the one job.
"""

import logging
import math
import os
import sys
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .errors import ScoreError
from .local_scoring import LOCAL_RESULT_TYPES, as_frame, is_kernel_data, load_pyfunc, pandas_schema, score_frame
from .masking import first_line, redact
from .experiments import use_experiment
from .model_ref import ModelRef, resolve_model
from .quiet import captured
from .session import ScoreRecord, Session
from .spark_progress import JobProgress
from .spark_session import SparkChoice, api_mode, describe_spark, is_connect, is_spark_dataframe, resolve_spark
from .userns import notebook_path

__all__ = ["ScoreRequest", "ColumnPlan", "score_from_args", "plan_columns", "FORMATS"]

FORMATS = ("parquet", "csv", "json", "delta")
ENGINES = ("auto", "local", "spark")

# MLflow column type -> (Spark types that convert without loss of meaning, type to cast to).
# Mirrors what MLflow's own schema enforcement accepts, plus integer -> double, which it
# refuses for int64 although a Spark cast is what every user would write by hand.
_COMPATIBLE: dict[str, tuple[frozenset[str], str | None]] = {
    "boolean": (frozenset({"boolean"}), "boolean"),
    "integer": (frozenset({"byte", "short", "integer"}), "int"),
    "long": (frozenset({"byte", "short", "integer", "long"}), "bigint"),
    "float": (frozenset({"byte", "short", "integer", "float"}), "float"),
    "double": (frozenset({"byte", "short", "integer", "long", "float", "double", "decimal"}), "double"),
    "string": (frozenset({"string", "varchar", "char"}), "string"),
    "binary": (frozenset({"binary"}), "binary"),
    "datetime": (frozenset({"timestamp", "timestamp_ntz", "date"}), None),
}


@dataclass
class ScoreRequest:
    """A parsed %aml_score line."""

    model: str
    table: str | None = None
    df: str | None = None
    path: str | None = None
    format: str = "parquet"
    where: str | None = None
    columns: list[str] | None = None
    output_col: str = "prediction"
    result_type: str | None = None
    into: str | None = None
    save_as: str | None = None
    save_path: str | None = None
    remote: str | None = None
    log_run: bool = False
    limit: int = 10
    engine: str = "auto"
    dry_run: bool = False
    verbose: bool = False

    @classmethod
    def from_args(cls, args) -> "ScoreRequest":
        names = cls.__dataclass_fields__
        request = cls(**{name: getattr(args, name) for name in names if hasattr(args, name)})
        request.validate()
        return request

    def validate(self) -> None:
        given = [option for option, value in (("--table", self.table), ("--df", self.df), ("--path", self.path)) if value]
        if not given:
            raise ScoreError(
                "Say what to score: --table TABLE, --df VAR (Spark or pandas DataFrame), or --path P [--format parquet|csv|json|delta]."
            )
        if len(given) > 1:
            raise ScoreError(f"Give one input, not {' and '.join(given)}.")
        self.format = (self.format or "parquet").lower()
        if self.format not in FORMATS:
            raise ScoreError(f"--format must be one of {', '.join(FORMATS)}; got {self.format!r}.")
        for option, value in (("--into", self.into), ("--df", self.df)):
            if value is not None and not value.isidentifier():
                raise ScoreError(f"{option} expects a variable name; {value!r} is not one.")
        if self.into == "spark":
            raise ScoreError("--into spark would replace the notebook's Spark session; choose another variable name.")
        if not self.output_col or not self.output_col.strip():
            raise ScoreError("--output-col needs a column name.")
        if self.engine not in ENGINES:
            raise ScoreError(f"--engine must be one of {', '.join(ENGINES)}; got {self.engine!r}.")
        if self.limit is None or self.limit < 0:
            raise ScoreError(f"--limit must be 0 or more rows; got {self.limit}.")

    @property
    def input_text(self) -> str:
        if self.table:
            return f"table {self.table}"
        if self.df:
            return f"DataFrame {self.df}"
        return f"{self.format} at {self.path}"


@dataclass
class ColumnPlan:
    """Which input column feeds each model input, and the cast that makes its type exact."""

    model_inputs: list[str | None]
    columns: list[str | None]  # None: an optional model input the data lacks
    casts: list[str | None]
    as_struct: bool = False  # no signature: one struct column keeps the column names for the model

    def expressions(self):
        from pyspark.sql import functions as F

        if self.as_struct:
            return [F.struct(*[F.col(_quoted(c)) for c in self.columns])]
        expressions = []
        for column, cast in zip(self.columns, self.casts):
            if column is None:
                expressions.append(F.lit(None).cast(cast or "string"))
            elif cast:
                expressions.append(F.col(_quoted(column)).cast(cast))
            else:
                expressions.append(F.col(_quoted(column)))
        return expressions


@dataclass
class _Input:
    df: Any
    description: str
    job_conf: dict[str, str] = field(default_factory=dict)  # session settings for the scoring job


def score_from_args(session: Session, user_ns: dict, args):
    """Run %aml_score; returns the scored DataFrame unless --into names a variable for it."""
    request = ScoreRequest.from_args(args)
    value = _lookup_input(user_ns, request.df) if request.df else None
    engine = _choose_engine(request, value)
    import mlflow  # noqa: F401 - MLflow configures its loggers on import; they are captured from here on

    with captured(request.verbose):
        model = resolve_model(session, request.model)
        if request.dry_run:
            return _dry_run(user_ns, request, model, value, engine)
        if engine == "local":
            return _score_locally(session, user_ns, request, model, value)
        return _score_on_spark(session, user_ns, request, model, value)


def _choose_engine(request: ScoreRequest, value) -> str:
    """`auto`: data held by the kernel is scored in it, unless only Spark can do what is asked."""
    in_kernel = value is not None and not is_spark_dataframe(value)
    spark_only = [option for option, given in (("--save-as", request.save_as), ("--remote", request.remote)) if given]
    if request.engine == "local":
        if not in_kernel:
            raise ScoreError(
                f"--engine local scores data held in the kernel (pandas, numpy, records); {request.input_text} is in Spark: "
                "drop --engine local, or bring it into the kernel with .toPandas() first."
            )
        if spark_only:
            raise ScoreError(f"--engine local cannot do {' and '.join(spark_only)} (Spark only); drop one of them.")
        return "local"
    if request.engine == "spark" or not in_kernel or spark_only:
        return "spark"
    return "local"


def _score_on_spark(session: Session, user_ns: dict, request: ScoreRequest, model: ModelRef, value):
    if value is not None and not is_spark_dataframe(value):
        value = as_frame(value, request.df, _input_names(model))
    choice = resolve_spark(user_ns, request.remote, value if is_spark_dataframe(value) else None)
    spark = choice.spark
    with api_mode(spark):
        source = _load_input(choice, request, value)
        schema = source.df.schema
        plan = plan_columns(model, schema, request, source.description)
        result_type = _parse_result_type(request.result_type) or _scalar_result_type(model)
        _check_outputs(choice, request)
        udf = _build_udf(choice, model, result_type)
        scored = source.df.withColumn(request.output_col, udf(*plan.expressions()))
        started = time.monotonic()
        with JobProgress(spark, f"scoring {source.description} with {model.label}"), _session_conf(spark, source.job_conf):
            result, rows, outputs = _materialize(spark, scored, request)
        seconds = time.monotonic() - started
        preview = result.limit(request.limit).toPandas() if request.limit else None
    return _finish(session, user_ns, request, model, result, rows, seconds, source.description, outputs, preview, choice.description)


def _score_locally(session: Session, user_ns: dict, request: ScoreRequest, model: ModelRef, value):
    frame, description = _kernel_frame(request, model, value, filtered=True)
    plan = plan_columns(model, pandas_schema(frame), request, description)
    result_type = _local_result_type(request.result_type)
    if request.save_path and os.path.exists(request.save_path):
        raise ScoreError(f"Path {request.save_path} already exists. Choose a new --save-as / --save-path.")
    pyfunc = load_pyfunc(model)
    started = time.monotonic()
    values = score_frame(pyfunc, frame, plan, result_type, f"scoring {description} with {model.label}")
    result = frame.assign(**{request.output_col: values})
    seconds = time.monotonic() - started
    outputs = []
    if request.save_path:
        result.to_parquet(request.save_path)
        outputs.append(f"parquet at {request.save_path}")
    # Without --into the frame is the cell's value, and IPython shows it: no second preview.
    preview = result.head(request.limit) if request.limit and request.into else None
    return _finish(session, user_ns, request, model, result, len(result), seconds, description, outputs, preview, LOCAL_ENGINE)


LOCAL_ENGINE = "the kernel (local engine)"


def _input_names(model: ModelRef) -> list[str] | None:
    inputs = model.signature.inputs if model.signature is not None else None
    return inputs.input_names() if inputs is not None and inputs.has_input_names() else None


def _local_result_type(text: str | None) -> str | None:
    if not text:
        return None
    name = text.strip().lower()
    if name not in LOCAL_RESULT_TYPES:
        raise ScoreError(
            f"--result-type {text!r} has no in-kernel equivalent; on the local engine use one of "
            f"{', '.join(LOCAL_RESULT_TYPES)}, or score on Spark with --engine spark."
        )
    return name


# ---------------------------------------------------------------------- --dry-run
def _dry_run(user_ns: dict, request: ScoreRequest, model: ModelRef, value, engine: str) -> None:
    """Print the plan and score 5 rows of kernel data in the kernel; no Spark job is run."""
    sample = None
    if value is not None and not is_spark_dataframe(value):
        frame, description = _kernel_frame(request, model, value, filtered=engine == "local")
        if request.where and engine == "spark":
            description += f" where {request.where} (a Spark SQL filter: not applied to the sample)"
        plan = plan_columns(model, pandas_schema(frame), request, description)
        session_text = LOCAL_ENGINE if engine == "local" else describe_spark(user_ns, request.remote)
        head = frame.head(5)
        values = score_frame(load_pyfunc(model), head, plan, _local_result_type(request.result_type) if engine == "local" else None, "sample")
        sample = head.assign(**{request.output_col: values})
        output_type = request.result_type if engine == "spark" and request.result_type else str(values.dtype)
        if engine == "spark" and not request.result_type:
            output_type = _spark_output_type(model)
        fields = {f.name: f.dataType for f in pandas_schema(frame).fields}
    else:
        # Spark data: its schema comes from analysis (no job); reading rows to sample would be one.
        choice = resolve_spark(user_ns, request.remote, value if is_spark_dataframe(value) else None)
        session_text = choice.description
        with api_mode(choice.spark):
            source = _load_input(choice, request, value)
            schema = source.df.schema
            description = source.description
            plan = plan_columns(model, schema, request, description)
            output_type = request.result_type or _spark_output_type(model)
        fields = {f.name: f.dataType for f in schema.fields}
    run = f", from run {model.source_run_id}" if model.source_run_id else ""
    lines = [
        "Plan for %aml_score (dry run: nothing is scored on Spark, nothing is saved or recorded):",
        f"  model:   {model.label} ({model.uri}{run})",
        f"  engine:  {engine}",
        f"  session: {session_text}",
        f"  input:   {description}",
        "  columns: " + "; ".join(_mapping(plan, fields)),
        f"  output:  column {request.output_col!r}, type {output_type}"
        + (f", into variable {request.into}" if request.into else ""),
    ]
    if sample is None:
        lines.append("  sample:  none (reading rows of Spark data would run a Spark job; run without --dry-run)")
    else:
        lines.append(f"  sample:  the first {len(sample)} rows scored in the kernel:")
    print("\n".join(lines))
    if sample is not None:
        from IPython.display import display

        display(sample)
    return None


def _mapping(plan: "ColumnPlan", fields: dict) -> list[str]:
    parts = []
    for name, column, cast in zip(plan.model_inputs, plan.columns, plan.casts):
        if column is None:
            parts.append(f"(absent) -> {name} (optional, null)")
            continue
        cast_text = f" (cast to {cast})" if cast else ""
        parts.append(f"{column} {fields[column].simpleString()} -> {name or column}{cast_text}")
    return parts


def _spark_output_type(model: ModelRef) -> str:
    scalar = _scalar_result_type(model)
    return scalar.simpleString() if scalar is not None else "double (spark_udf's default)"


def _finish(session, user_ns, request, model, result, rows, seconds, description, outputs, preview, engine_text):
    """Assign, report, preview, record and (with --log-run) log one scoring; the same on both engines."""
    if request.into:
        user_ns[request.into] = result
        outputs.insert(0, f"variable {request.into}")
    shown = ", ".join(outputs) if outputs else "returned"
    print(f"Scored {rows:,} rows of {description} with {model.label} in {seconds:.1f} s on {engine_text}; output: {shown}.")
    if preview is not None:
        from IPython.display import display

        display(preview)
    record = ScoreRecord(
        model_uri=model.uri,
        model_version=model.version,
        input=description,
        rows=rows,
        seconds=seconds,
        output=shown,
    )
    if request.log_run:
        record.run_id = _log_run(session, model, record, engine_text)
        print(f"Logged scoring run {record.run_id}.")
    session.add_scoring(record)
    return None if request.into else result


# ---------------------------------------------------------------------- input
_DF_KINDS = "a Spark or pandas DataFrame, a 2-D numpy array, or a list of records (dicts)"


def _lookup_input(user_ns: dict, name: str):
    if name not in user_ns:
        raise ScoreError(f"No variable {name!r} in the notebook; --df expects {_DF_KINDS}.")
    value = user_ns[name]
    if is_spark_dataframe(value) or is_kernel_data(value):
        return value
    raise ScoreError(f"--df {name} is a {type(value).__name__}, not {_DF_KINDS}.")


def _kernel_frame(request: ScoreRequest, model: ModelRef, value, filtered: bool):
    """Kernel data as a pandas DataFrame and its description; `filtered`: --where applied (pandas query)."""
    frame = as_frame(value, request.df, _input_names(model))
    kind = "pandas rows" if value is frame else ("array rows" if type(value).__module__ == "numpy" else "records")
    description = f"DataFrame {request.df} ({len(frame):,} {kind})"
    if request.where and filtered:
        try:
            frame = frame.query(request.where)
        except Exception as exc:  # noqa: BLE001 - pandas raises many kinds for a bad expression
            raise ScoreError(
                f"--where {request.where!r} is not a valid filter on {description}: {first_line(exc)} "
                "(on the local engine --where is a pandas query expression, as DataFrame.query takes)."
            ) from None
        description += f" where {request.where}"
    return frame, description


def _load_input(choice: SparkChoice, request: ScoreRequest, dataframe) -> _Input:
    """The input as a Spark DataFrame whose schema is known; analysis only, no job (csv/json infer theirs)."""
    spark = choice.spark
    if request.table:
        if not spark.catalog.tableExists(request.table):
            raise ScoreError(
                f"No table or view {request.table!r} in {choice.description}; check the name, or pass a DataFrame with --df."
            )
        source = _Input(spark.table(request.table), f"table {request.table}")
    elif request.df:
        if is_spark_dataframe(dataframe):
            source = _Input(dataframe, f"DataFrame {request.df}")
        else:
            converted, job_conf = _from_pandas(spark, dataframe)
            source = _Input(converted, f"DataFrame {request.df} ({len(dataframe):,} pandas rows)", job_conf)
    else:
        source = _Input(_read_path(spark, request.path, request.format), f"{request.format} files at {request.path}")
    if request.where:
        try:
            source.df = source.df.filter(request.where)
            source.df.schema  # noqa: B018 - analysis (no job) reports an invalid filter now
        except Exception as exc:  # noqa: BLE001 - analysis errors differ between classic and Connect
            raise ScoreError(f"--where {request.where!r} is not a valid filter on {source.description}: {_spark_message(exc)}") from None
        source.description += f" where {request.where}"
    return source


_ARROW = "spark.sql.execution.arrow.pyspark.enabled"
_ARROW_BATCH = "spark.sql.execution.arrow.maxRecordsPerBatch"
_LOCAL_RELATION = "spark.sql.execution.arrow.localRelationThreshold"
_SLICE_BYTES = 64 << 20  # one Arrow batch per partition, far below the JVM's 2 GB array limit
_MIN_SLICE_ROWS = 10_000
# Rows per model.predict call on a worker: about 16 MB of input, at most 100,000 rows, and
# never fewer than the session's own maxRecordsPerBatch.
_UDF_BATCH_BYTES = 16 << 20
_UDF_BATCH_ROWS = 100_000


def _from_pandas(spark, frame):
    """A Spark DataFrame of `frame`, sent through Arrow as an RDD, one batch per partition; and the job's settings.

    Three classic-session defaults make `createDataFrame(frame)` slow for scoring, and are
    overridden for the conversion only (measured on 1,000,000 rows of 4 doubles, 2 cores):
    - Arrow is off: rows would travel one by one (minutes);
    - a frame under localRelationThreshold (48 MB) becomes a LocalRelation, whose rows ride
      inside the query plan, planned, compared by the cache manager and shipped with each
      task (16-28 s); an RDD of Arrow batches instead costs about 1 s;
    - maxRecordsPerBatch (10,000) slices it into 100 partitions, and spark_udf loads the
      model once per partition (58-72 s); one slice per core (more for a big frame) avoids that,
      and a frame under _MIN_SLICE_ROWS stays in one slice: a second core would save less
      than its Python worker and model load cost (150 rows, cold session: 22-26 s, not 34-42).
    Returns the DataFrame and the settings for the scoring job: larger Arrow batches to the
    model (fewer predict calls), sized from the frame's row width so memory stays bounded.
    """
    if is_connect(spark):
        return spark.createDataFrame(frame), {}
    rows = len(frame)
    row_bytes = max(1.0, frame.head(1000).memory_usage(index=False, deep=True).sum() / max(1, min(rows, 1000)))
    cores = min(spark.sparkContext.defaultParallelism, math.ceil(rows / _MIN_SLICE_ROWS))
    slices = max(1, cores, math.ceil(rows * row_bytes / _SLICE_BYTES))
    with _session_conf(spark, {_ARROW: "true", _LOCAL_RELATION: "0", _ARROW_BATCH: str(max(1, math.ceil(rows / slices)))}):
        dataframe = spark.createDataFrame(frame)
    asked = int(spark.conf.get(_ARROW_BATCH, "10000"))
    udf_batch = min(_UDF_BATCH_ROWS, int(_UDF_BATCH_BYTES // row_bytes))
    return dataframe, ({_ARROW_BATCH: str(udf_batch)} if asked > 0 and udf_batch > asked else {})


@contextmanager
def _session_conf(spark, settings: dict[str, str]):
    """`settings` on the session for the block, each key's previous value (or absence) restored after."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def _read_path(spark, path: str, fmt: str):
    reader = spark.read.format(fmt)
    if fmt == "csv":
        reader = reader.option("header", True).option("inferSchema", True)
    try:
        df = reader.load(path)
        df.schema  # noqa: B018 - Spark Connect analyses lazily; errors must surface here
    except Exception as exc:  # noqa: BLE001 - a missing data source arrives as a raw Py4J error
        condition = _condition(exc) or ("DATA_SOURCE_NOT_FOUND" if "DATA_SOURCE_NOT_FOUND" in str(exc) else None)
        if condition == "DATA_SOURCE_NOT_FOUND":
            raise ScoreError(
                "Delta Lake is not available in this Spark session (delta-spark is not on its classpath); "
                "start Spark with delta-spark, or read the files with --format parquet."
            ) from None
        if condition == "PATH_NOT_FOUND":
            raise ScoreError(f"No files at --path {path}.") from None
        raise ScoreError(f"Cannot read {fmt} files at {path}: {_spark_message(exc)}") from None
    return df


# ---------------------------------------------------------------------- schema check
def plan_columns(model: ModelRef, schema, request: ScoreRequest, description: str) -> ColumnPlan:
    """Match the input schema to the model's inputs; one ScoreError names every problem."""
    fields = {f.name: f.dataType for f in schema.fields}
    output_clash = _find(fields, request.output_col)
    if output_clash is not None:
        raise ScoreError(
            f"{description} already has a column {output_clash!r}; choose another name with --output-col."
        )
    inputs = model.signature.inputs if model.signature is not None else None
    named = inputs is not None and inputs.has_input_names()
    if not named:
        if not request.columns:
            raise ScoreError(
                f"Model {model.label} has no input signature, so its inputs are unknown; name the input columns "
                "with --columns (and log models with a signature to skip this)."
            )
        missing = [c for c in request.columns if _find(fields, c) is None]
        if missing:
            raise ScoreError(
                f"{description} lacks the columns {', '.join(missing)} given with --columns; "
                f"its columns: {', '.join(fields)}."
            )
        columns = [_find(fields, c) for c in request.columns]
        return ColumnPlan([None] * len(columns), columns, [None] * len(columns), as_struct=inputs is None)
    specs = inputs.inputs
    wanted = [spec.name for spec in specs]
    if request.columns and len(request.columns) != len(specs):
        raise ScoreError(
            f"--columns gives {len(request.columns)} columns but model {model.label} has {len(specs)} inputs "
            f"({', '.join(wanted)}); give one column per input, in that order."
        )
    sources = request.columns or wanted
    columns, casts, missing, mistyped = [], [], [], []
    for spec, source_name in zip(specs, sources):
        column = _find(fields, source_name)
        expected, cast_to, accepted = _expected_type(spec)
        if column is None:
            if getattr(spec, "required", True):
                missing.append(source_name if source_name == spec.name else f"{source_name} (for {spec.name})")
            columns.append(None)
            casts.append(cast_to)
            continue
        actual = fields[column].typeName()
        if accepted is not None and actual not in accepted:
            mistyped.append(f"{column} is {fields[column].simpleString()} (model expects {expected})")
        columns.append(column)
        casts.append(cast_to if cast_to and actual != _spark_name(cast_to) else None)
    if missing or mistyped:
        problems = []
        if missing:
            problems.append(f"missing columns {', '.join(missing)}")
        if mistyped:
            problems.append(f"incompatible types: {'; '.join(mistyped)}")
        raise ScoreError(
            f"{description} does not fit model {model.label}: {'; '.join(problems)}. "
            f"Input columns: {', '.join(fields) or 'none'}. Model inputs: {', '.join(_describe_spec(s) for s in specs)}; "
            "map other column names onto them with --columns."
        )
    return ColumnPlan(wanted, columns, casts)


def _expected_type(spec) -> tuple[str, str | None, frozenset[str] | None]:
    """(what the model expects, in words; Spark cast target; accepted Spark type names or None = any)."""
    kind = getattr(getattr(spec, "type", None), "name", None)
    if kind in _COMPATIBLE and type(spec).__name__ == "ColSpec":
        accepted, cast_to = _COMPATIBLE[kind]
        return kind, cast_to, accepted
    return str(getattr(spec, "type", "any")), None, None


def _describe_spec(spec) -> str:
    kind = getattr(getattr(spec, "type", None), "name", None) or str(getattr(spec, "type", "any"))
    return f"{spec.name} {kind}"


def _spark_name(cast_to: str) -> str:
    return {"int": "integer", "bigint": "long"}.get(cast_to, cast_to)


def _find(fields: dict, name: str) -> str | None:
    """The input column for `name`: exact, else the one case-insensitive match (Spark's default)."""
    if name in fields:
        return name
    matches = [f for f in fields if f.lower() == name.lower()]
    return matches[0] if len(matches) == 1 else None


def _quoted(column: str) -> str:
    return "`" + column.replace("`", "``") + "`"


# ---------------------------------------------------------------------- model UDF
def _parse_result_type(text: str | None):
    if not text:
        return None
    from pyspark.sql.types import DataType

    try:
        return DataType.fromDDL(text)
    except Exception:  # noqa: BLE001 - parse errors differ between classic and Connect
        raise ScoreError(
            f"--result-type {text!r} is not a Spark type; examples: double, long, string, boolean, array<double>."
        ) from None


def _scalar_result_type(model: ModelRef):
    """One value per row (a 1-D array output) becomes a plain column, not one-element arrays.

    MLflow maps any tensor output to an array type; a classifier's `predict` returns a 1-D
    array whose signature is a (-1,) tensor, and users expect `prediction: bigint`.
    """
    outputs = model.signature.outputs if model.signature is not None else None
    if outputs is None or len(outputs.inputs) != 1 or not outputs.is_tensor_spec():
        return None
    spec = outputs.inputs[0]
    if len(spec.shape) != 1:
        return None
    from pyspark.sql import types

    by_kind = {
        "b": types.BooleanType(),
        "i": types.LongType() if spec.type.itemsize > 4 else types.IntegerType(),
        "u": types.LongType(),
        "f": types.DoubleType() if spec.type.itemsize > 4 else types.FloatType(),
        "U": types.StringType(),
        "O": types.StringType(),
    }
    return by_kind.get(spec.type.kind)


class _QuietLocalEnvWarning(logging.Filter):
    """%aml_score runs the model in the kernel's own environment on purpose; MLflow's
    advice to recreate the training environment would only add noise under every cell."""

    def filter(self, record: logging.LogRecord) -> bool:
        return 'env_manager="local"' not in record.getMessage()


# (session, model URI, result type) -> the UDF: spark_udf downloads the model's files and
# reads its metadata on every call; a pinned version's files do not change, so a warm
# session reuses the UDF (and the files it points the workers at) instead.
_udfs: "OrderedDict[tuple, Any]" = OrderedDict()
_CACHED_UDFS = 8


def _build_udf(choice: SparkChoice, model: ModelRef, result_type):
    import mlflow
    from mlflow.exceptions import MlflowException

    # Classic Spark: the driver downloads the model through this kernel's registry. Spark
    # Connect: each server-side worker downloads it, and only knows the tracking URI.
    uri = model.artifact_uri if choice.connect and model.artifact_uri else model.uri
    pinned = model.version is not None or uri.startswith("runs:/")
    key = (id(choice.spark), _session_token(choice.spark), mlflow.get_registry_uri(), uri, repr(result_type))
    if pinned and key in _udfs:
        _udfs.move_to_end(key)
        return _udfs[key]
    logger = logging.getLogger("mlflow.pyfunc")
    quiet = _QuietLocalEnvWarning()
    logger.addFilter(quiet)
    try:
        udf = mlflow.pyfunc.spark_udf(choice.spark, uri, result_type=result_type, env_manager="local")
    except MlflowException as exc:
        raise ScoreError(f"Cannot score with {model.label}: {first_line(exc)}") from None
    finally:
        logger.removeFilter(quiet)
    if pinned:
        _udfs[key] = udf
        while len(_udfs) > _CACHED_UDFS:
            _udfs.popitem(last=False)
    return udf


def _session_token(spark):
    """What tells a restarted session from the one a cached UDF was built for (ids are reused)."""
    if is_connect(spark):
        return getattr(spark, "session_id", None)
    return spark.sparkContext.applicationId


# ---------------------------------------------------------------------- output
def _check_outputs(choice: SparkChoice, request: ScoreRequest) -> None:
    if request.save_as and choice.spark.catalog.tableExists(request.save_as):
        raise ScoreError(f"Table {request.save_as!r} already exists; choose another --save-as name or drop it first.")


def _materialize(spark, scored, request: ScoreRequest):
    """Run the scoring job once; returns (result DataFrame that re-reads no model, rows, outputs)."""
    from pyspark.errors import PySparkException

    outputs = []
    try:
        if request.save_as:
            scored.write.saveAsTable(request.save_as)
            result = spark.table(request.save_as)
            outputs.append(f"table {request.save_as}")
            if request.save_path:
                result.write.parquet(request.save_path)
                outputs.append(f"parquet at {request.save_path}")
        elif request.save_path:
            scored.write.parquet(request.save_path)
            result = spark.read.parquet(request.save_path)
            outputs.append(f"parquet at {request.save_path}")
        else:
            # Scored once into the cache: the preview and every later use read it, not the model.
            result = scored.cache()
            outputs.append("cached")
        rows = result.count()
    except PySparkException as exc:
        if _condition(exc) in ("PATH_ALREADY_EXISTS", "TABLE_OR_VIEW_ALREADY_EXISTS"):
            raise ScoreError(f"{_spark_message(exc)} Choose a new --save-as / --save-path.") from None
        raise
    except KeyboardInterrupt:
        if not (request.save_as or request.save_path):
            scored.unpersist()
        raise
    return result, rows, outputs


# ---------------------------------------------------------------------- lineage
def _log_run(session: Session, model: ModelRef, record: ScoreRecord, engine_text: str) -> str:
    """A run of its own for the scoring: which model version scored which input, how many rows."""
    import mlflow

    session.activate()
    use_experiment(session, error=ScoreError)
    run_name = f"score {model.name}-v{model.version}" if model.name else "score"
    tags = {
        "dbxml.kind": "scoring",
        "mlflow.source.name": notebook_path(session.namespace),
        "mlflow.source.type": "NOTEBOOK",
        "dbxml.score.model_uri": model.uri,
        "dbxml.score.engine": engine_text,
    }
    if model.source_run_id:
        tags["dbxml.score.model_run_id"] = model.source_run_id
    with mlflow.start_run(run_name=run_name, tags=tags, nested=mlflow.active_run() is not None) as run:
        mlflow.log_params(
            {
                "model_uri": model.uri,
                "model_name": model.name or "",
                "model_version": model.version or "",
                "input": record.input[:6000],
                "output": record.output[:6000],
                "rows": record.rows,
            }
        )
        mlflow.log_metrics(
            {"rows": record.rows, "seconds": record.seconds, "rows_per_second": record.rows / max(record.seconds, 1e-9)}
        )
        run_id = run.info.run_id
    if session.journal_started and not session.journal.flush(run_id, primary_only=True):
        print(
            f"dbxml: the scoring run {run_id} waits in the journal for {session.link.primary.display} (see %aml_sync).",
            file=sys.stderr,
        )
    return run_id


# ---------------------------------------------------------------------- messages
def _condition(exc) -> str | None:
    for getter in ("getCondition", "getErrorClass"):
        try:
            value = getattr(exc, getter)()
        except Exception:  # noqa: BLE001 - older exception shapes
            continue
        if value:
            return value
    return None


def _spark_message(exc) -> str:
    """Spark's message without its '[CONDITION]' prefix, SQLSTATE and plan dump."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if text.startswith("[") and "]" in text:
        text = text.split("]", 1)[1].strip()
    return redact(text.split(" SQLSTATE")[0])[:300]



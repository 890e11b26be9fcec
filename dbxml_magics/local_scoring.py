"""The local engine of %aml_score: data already in the kernel, scored in-process.

A pandas DataFrame, a numpy array or a list of records is scored with the pinned pyfunc
model in this process: no JVM, no Python workers, no copy through Arrow. The checks are
those of the Spark path: the frame's dtypes are named as the Spark types
`spark.createDataFrame` would give them, so `plan_columns` (scoring.py) accepts, casts
and rejects exactly what it would on Spark, and the casts are the same ones, in numpy.

Large frames are scored in chunks (memory for one chunk's casts, not the whole frame's)
with progress after a second. Loaded models are kept per pinned model URI for the
kernel's life: a second scoring with the same version does not load it again.
"""

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from .errors import ScoreError
from .masking import first_line

__all__ = ["is_kernel_data", "as_frame", "pandas_schema", "load_pyfunc", "model_inputs", "score_frame", "LOCAL_RESULT_TYPES"]

CHUNK_ROWS = 250_000
_CACHED_MODELS = 4

# pandas dtype kind/name -> the Spark type name spark.createDataFrame gives such a column.
_SPARK_TYPE_BY_DTYPE = {
    "bool": "boolean",
    "boolean": "boolean",
    "int8": "byte",
    "int16": "short",
    "int32": "integer",
    "int64": "long",
    "Int8": "byte",
    "Int16": "short",
    "Int32": "integer",
    "Int64": "long",
    "uint8": "short",
    "uint16": "integer",
    "uint32": "long",
    "float32": "float",
    "float64": "double",
    "Float32": "float",
    "Float64": "double",
    "string": "string",
    "str": "string",
    "category": "string",
}
_SIMPLE_NAME = {"long": "bigint", "integer": "int", "byte": "tinyint", "short": "smallint"}
# Spark cast target (scoring._COMPATIBLE) -> numpy dtype doing the same cast.
_NUMPY_CAST = {"int": "int32", "bigint": "int64", "float": "float32", "double": "float64", "boolean": "bool"}
# --result-type on the local engine: the Spark type names that have a numpy equivalent.
LOCAL_RESULT_TYPES = {
    "double": "float64",
    "float": "float32",
    "bigint": "int64",
    "long": "int64",
    "int": "int32",
    "integer": "int32",
    "smallint": "int16",
    "short": "int16",
    "tinyint": "int8",
    "byte": "int8",
    "boolean": "bool",
    "string": "object",
}


def is_kernel_data(value) -> bool:
    """A pandas DataFrame, a numpy array, or a non-empty list of records (dicts)."""
    import sys

    pandas, numpy = sys.modules.get("pandas"), sys.modules.get("numpy")
    if pandas is not None and isinstance(value, pandas.DataFrame):
        return True
    if numpy is not None and isinstance(value, numpy.ndarray):
        return True
    return isinstance(value, list) and bool(value) and all(isinstance(row, dict) for row in value)


def as_frame(value, name: str, model_inputs: list[str] | None):
    """The input as a pandas DataFrame; a 2-D array's columns take the model's input names."""
    import numpy as np
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        return value
    if isinstance(value, np.ndarray):
        if value.ndim != 2:
            raise ScoreError(f"--df {name} is a {value.ndim}-D array; give a 2-D array (rows x model inputs) or a DataFrame.")
        if not model_inputs or len(model_inputs) != value.shape[1]:
            wanted = f"{len(model_inputs)} ({', '.join(model_inputs)})" if model_inputs else "known only from a signature"
            raise ScoreError(
                f"--df {name} has {value.shape[1]} columns but the model's named inputs are {wanted}; "
                "give a DataFrame with named columns."
            )
        return pd.DataFrame(value, columns=model_inputs)
    return pd.DataFrame.from_records(value)


@dataclass(frozen=True)
class _Type:
    name: str

    def typeName(self) -> str:  # noqa: N802 - the Spark DataType method plan_columns calls
        return self.name

    def simpleString(self) -> str:  # noqa: N802
        return _SIMPLE_NAME.get(self.name, self.name)


@dataclass(frozen=True)
class _Field:
    name: str
    dataType: _Type  # noqa: N815


@dataclass(frozen=True)
class _Schema:
    fields: list


def pandas_schema(frame) -> _Schema:
    """The frame's columns with the Spark type names `spark.createDataFrame` would give them."""
    return _Schema([_Field(str(column), _Type(_spark_type(frame[column]))) for column in frame.columns])


def _spark_type(series) -> str:
    dtype = series.dtype
    if str(dtype) in _SPARK_TYPE_BY_DTYPE:
        return _SPARK_TYPE_BY_DTYPE[str(dtype)]
    if dtype.kind == "M":
        return "timestamp"
    if dtype.kind == "O":
        sample = series.dropna()
        value = sample.iloc[0] if len(sample) else None
        for kind, spark in ((bool, "boolean"), (int, "long"), (float, "double"), (str, "string"), (bytes, "binary")):
            if isinstance(value, kind):
                return spark
    return str(dtype)


_models: "OrderedDict[tuple[str, str], object]" = OrderedDict()
_models_lock = threading.Lock()


def load_pyfunc(model) -> object:
    """The pyfunc model of a pinned ModelRef, loaded once per (registry, URI) in this kernel."""
    import mlflow
    from mlflow.exceptions import MlflowException

    key = (mlflow.get_registry_uri() or "", model.uri)
    with _models_lock:
        if key in _models:
            _models.move_to_end(key)
            return _models[key]
    # A registered version's files are read from where the registry says they are: the
    # version is already pinned, so asking the registry again would only cost a round trip.
    source = model.artifact_uri if model.artifact_uri and model.version else model.uri
    try:
        loaded = mlflow.pyfunc.load_model(source)
    except MlflowException as exc:
        raise ScoreError(f"Cannot score with {model.label}: {first_line(exc)}") from None
    with _models_lock:
        _models[key] = loaded
        while len(_models) > _CACHED_MODELS:
            _models.popitem(last=False)
    return loaded


def model_inputs(plan, frame):
    """The model's input frame for `frame`: mapped, renamed and cast as the Spark path would."""
    import numpy as np
    import pandas as pd

    if plan.as_struct or not any(plan.model_inputs):
        return frame[list(plan.columns)]
    data = {}
    for name, column, cast in zip(plan.model_inputs, plan.columns, plan.casts):
        if column is None:
            data[name] = pd.Series([None] * len(frame), index=frame.index, dtype=object)
        elif cast in _NUMPY_CAST:
            data[name] = frame[column].astype(np.dtype(_NUMPY_CAST[cast]))
        else:
            data[name] = frame[column]
    return pd.DataFrame(data, index=frame.index)


def score_frame(pyfunc, frame, plan, result_type: str | None, label: str):
    """The predictions for every row of `frame` as one numpy array (or object array), chunk by chunk."""
    import numpy as np

    chunks = []
    total = len(frame)
    chunk_rows = CHUNK_ROWS
    bar = _Progress(label, total)
    try:
        for start in range(0, max(total, 1), chunk_rows):
            part = frame.iloc[start : start + chunk_rows]
            chunks.append(_as_column(pyfunc.predict(model_inputs(plan, part)), len(part)))
            bar.advance(len(part))
    except KeyboardInterrupt:
        bar.finish(False)
        raise
    except ScoreError:
        bar.finish(False)
        raise
    except Exception as exc:  # noqa: BLE001 - the model's own failure is one line naming it
        bar.finish(False)
        raise ScoreError(f"{label} failed: {type(exc).__name__}: {first_line(exc)}") from None
    bar.finish(True)
    values = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    if result_type:
        values = values.astype(LOCAL_RESULT_TYPES[result_type])
    return values


def _as_column(predictions, rows: int):
    """One value per row, as the Spark path's UDF returns it (a one-column output unwrapped)."""
    import numpy as np
    import pandas as pd

    if isinstance(predictions, pd.DataFrame):
        if predictions.shape[1] == 1:
            return predictions.iloc[:, 0].to_numpy()
        column = np.empty(len(predictions), dtype=object)
        column[:] = predictions.to_dict("records")
        return column
    if isinstance(predictions, pd.Series):
        return predictions.to_numpy()
    values = np.asarray(predictions)
    if values.ndim == 2 and values.shape[1] == 1:
        return values.ravel()
    if values.ndim >= 2:
        column = np.empty(len(values), dtype=object)
        column[:] = list(values)
        return column
    if values.ndim == 0 or len(values) != rows:
        raise ScoreError(f"the model returned {values.size} values for {rows} rows")
    return values


class _Progress:
    """Rows scored so far, shown (widget or text) once scoring has taken more than a second."""

    def __init__(self, label: str, total: int, show_after: float = 1.0):
        self.label = label
        self.total = total
        self.done = 0
        self.show_after = show_after
        self.started = time.monotonic()
        self.view = None

    def _snapshot(self):
        from .spark_progress import Snapshot

        return Snapshot(self.done, self.total, 0, 0, time.monotonic() - self.started, unit="rows")

    def advance(self, rows: int) -> None:
        from .spark_progress import default_view

        self.done += rows
        if self.view is None and self.done < self.total and time.monotonic() - self.started > self.show_after:
            self.view = default_view(self.label)
        if self.view is not None:
            self.view.update(self._snapshot())

    def finish(self, ok: bool) -> None:
        if self.view is not None:
            self.view.finish(self._snapshot(), ok)

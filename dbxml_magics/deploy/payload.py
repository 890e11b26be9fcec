"""What goes over the wire to a scoring endpoint and back: pandas in, pandas out.

MLflow's scoring server takes `{"dataframe_split": {...}}` and answers `{"predictions": [...]}`;
an Azure ML managed endpoint serving an MLflow model takes `{"input_data": {...}}` (the same
split form) and answers the bare list. Plain numeric frames (the usual model input) are
written with `json`, column by column so each keeps its type (an int column stays ints for
MLflow's schema check): pandas' JSON writer costs about 0.5 ms even for one row, more than
the round trip to a local server. Anything else (dates, strings, NaN, extension types) goes
through pandas' writer, which handles numpy scalars and timestamps.
"""

import json

__all__ = ["split_body", "read_predictions", "error_text"]


def split_body(df, key: str = "dataframe_split") -> bytes:
    """The request body for `df` in pandas' split orientation, under `key`."""
    split = _numeric_split(df)
    if split is None:
        split = df.to_json(orient="split", index=False, date_format="iso")
    return b'{"%s": %s}' % (key.encode(), split.encode())


def _numeric_split(df) -> str | None:
    """`{"columns", "data"}` of a frame of bool/int/float numpy columns with string names, else None."""
    import numpy as np

    columns = list(df.columns)
    if not df.columns.is_unique or not all(isinstance(c, str) for c in columns):
        return None
    dtypes = set(df.dtypes)
    if not all(isinstance(dtype, np.dtype) and dtype.kind in "biuf" for dtype in dtypes):
        return None
    if len(dtypes) == 1:  # one numpy type: the array keeps it
        rows = df.to_numpy().tolist()
    else:
        rows = list(map(list, zip(*(column.tolist() for _, column in df.items()))))
    try:
        return json.dumps({"columns": columns, "data": rows}, allow_nan=False)
    except ValueError:  # NaN or infinity: pandas writes them as null
        return None


def read_predictions(answer, index):
    """Predictions as a pandas Series (one value per row, named `prediction` unless the model
    named it) or a DataFrame (several outputs per row), indexed like the input."""
    import pandas as pd

    values = answer.get("predictions", answer) if isinstance(answer, dict) else answer
    if isinstance(values, dict):  # a model returning a dict of columns
        return pd.DataFrame(values, index=index)
    if values and isinstance(values[0], (dict, list)):
        frame = pd.DataFrame(values, index=index)
        if frame.shape[1] > 1:
            return frame
        # One value per row in rows form (a pandas Series or one-column frame is written as
        # records, an (n, 1) array as lists): a Series, as %aml_score's local engine unwraps
        # it, named by its column when the model named it.
        column = frame.columns[0]
        return frame[column].rename("prediction" if column in ("0", 0) else column)
    return pd.Series(values, index=index, name="prediction")


def error_text(response) -> str:
    """The server's own reason from an error response, on one line."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        message = payload.get("message") or payload.get("error") or payload
        if isinstance(message, dict):
            message = message.get("message") or json.dumps(message)
    else:
        message = response.text or response.reason
    # MLflow's scoring server quotes the whole input before its reason ("Failed to predict
    # data '<every row>'. Error: ... Error: <reason>"): the last reason is the one to read.
    message = str(message).rsplit("Error: ", 1)[-1]
    return f"HTTP {response.status_code}: " + " ".join(message.split())[:400]

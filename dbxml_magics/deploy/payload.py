"""What goes over the wire to a scoring endpoint and back: pandas in, pandas out.

MLflow's scoring server takes `{"dataframe_split": {...}}` and answers `{"predictions": [...]}`;
an Azure ML managed endpoint serving an MLflow model takes `{"input_data": {...}}` (the same
split form) and answers the bare list. pandas' own JSON writer is used rather than
`to_dict` + `json.dumps`: it is faster and handles numpy scalars and timestamps.
"""

import json

__all__ = ["split_body", "read_predictions", "error_text"]


def split_body(df, key: str = "dataframe_split") -> bytes:
    """The request body for `df` in pandas' split orientation, under `key`."""
    return b'{"%s": %s}' % (key.encode(), df.to_json(orient="split", index=False, date_format="iso").encode())


def read_predictions(answer, index):
    """Predictions as a pandas Series (one value per row, named `prediction`) or a DataFrame
    (several outputs per row), indexed like the input."""
    import pandas as pd

    values = answer.get("predictions", answer) if isinstance(answer, dict) else answer
    if isinstance(values, dict):  # a model returning a DataFrame, in columns form
        return pd.DataFrame(values, index=index)
    if values and isinstance(values[0], (dict, list)):
        return pd.DataFrame(values, index=index)
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

"""Models held in the notebook: which MLflow flavor saves them, and saving them with a signature."""

import importlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import RegisterError
from ..masking import first_line
from ..userns import require_variable
from .request import DEFAULT_ARTIFACT_PATH, RegisterRequest

# Rows of an example are enough to infer a signature; more only bloats the artifact.
_EXAMPLE_ROWS = 5


def _class_names(obj) -> set[str]:
    """Qualified names of the object's classes, so flavors are told apart without importing them."""
    return {f"{cls.__module__}.{cls.__name__}" for cls in type(obj).__mro__}


# Boosting libraries' models are scikit-learn estimators too: their own flavors come first.
_OWN_FLAVORS = {
    "xgboost": ("xgboost.sklearn.XGBModel", "xgboost.core.Booster"),
    "lightgbm": ("lightgbm.sklearn.LGBMModel", "lightgbm.basic.Booster"),
}


def detect_flavor(obj) -> str | None:
    """'xgboost', 'lightgbm', 'sklearn', 'spark' or 'pyfunc' for a model object, None for anything else."""
    classes = _class_names(obj)
    for flavor, names in _OWN_FLAVORS.items():
        if classes.intersection(names):
            return flavor
    if "sklearn.base.BaseEstimator" in classes:
        return "sklearn"
    if "pyspark.ml.base.Transformer" in classes:
        return "spark"
    if "mlflow.pyfunc.model.PythonModel" in classes or callable(getattr(obj, "predict", None)):
        return "pyfunc"
    return None


def _describe(obj) -> str:
    module = type(obj).__module__.split(".")[0]
    return type(obj).__name__ if module == "builtins" else f"{module} {type(obj).__name__}"


def _check_model(var: str, obj, forced: str | None) -> str:
    classes = _class_names(obj)
    if "pyspark.ml.base.Estimator" in classes and "pyspark.ml.base.Transformer" not in classes:
        raise RegisterError(
            f"{var} is a Spark ML {type(obj).__name__} that is not fitted; register the fitted model, e.g. "
            f"model = {var}.fit(df), then %aml_register NAME --model model."
        )
    detected = detect_flavor(obj)
    if detected is None:
        raise RegisterError(
            f"{var} ({_describe(obj)}) is not a model: pass a fitted scikit-learn estimator or pipeline, a Spark ML "
            "model (PipelineModel, Transformer), or an object with a predict method."
        )
    flavor = forced or detected
    if flavor == "sklearn" and "sklearn.base.BaseEstimator" not in classes:
        raise RegisterError(f"--flavor sklearn: {var} ({_describe(obj)}) is not a scikit-learn estimator.")
    if flavor == "spark" and detected != "spark":
        raise RegisterError(f"--flavor spark: {var} ({_describe(obj)}) is not a Spark ML model.")
    if flavor == "pyfunc" and not (
        "mlflow.pyfunc.model.PythonModel" in classes or callable(getattr(obj, "predict", None))
    ):
        raise RegisterError(f"--flavor pyfunc: {var} ({_describe(obj)}) has no predict method.")
    if flavor != "pyfunc" and "sklearn.base.BaseEstimator" in classes:
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted

        try:
            check_is_fitted(obj)
        except NotFittedError:
            raise RegisterError(
                f"{var} is a scikit-learn {type(obj).__name__} that is not fitted; call {var}.fit(X, y) first."
            ) from None
        except TypeError:  # not an estimator sklearn can judge; saving will tell
            pass
    return flavor


# ---------------------------------------------------------------------- saving an in-memory model
@dataclass
class SavedModel:
    path: Path
    flavor: str


def save_in_memory_model(namespace: dict, request: RegisterRequest, path: Path, notes: list[str]) -> SavedModel:
    """Save the model locally first: a model that cannot be saved fails before any store is touched."""
    obj = require_variable(namespace, request.model, "--model", RegisterError)
    flavor = _check_model(request.model, obj, request.flavor)
    example = None
    if request.input_example is not None:
        example = _example_rows(require_variable(namespace, request.input_example, "--input-example", RegisterError), flavor)
    from mlflow.models import Model

    mlflow_model = Model(artifact_path=request.artifact_path or DEFAULT_ARTIFACT_PATH)
    try:
        if flavor == "sklearn":
            import mlflow.sklearn

            signature = None if example is not None else _signature_from_training(obj)
            if example is None and signature is None:
                notes.append(f"{request.name}: no signature recorded; pass --input-example VAR to record one.")
            mlflow.sklearn.save_model(
                obj, str(path), mlflow_model=mlflow_model, signature=signature, input_example=example,
                **_sklearn_format(obj, request.name, notes),
            )
        elif flavor in ("xgboost", "lightgbm"):
            flavor_module = importlib.import_module(f"mlflow.{flavor}")
            signature = None if example is not None else _signature_from_training(obj)
            flavor_module.save_model(obj, str(path), mlflow_model=mlflow_model, signature=signature, input_example=example)
        elif flavor == "spark":
            import mlflow.spark

            if example is None:
                notes.append(f"{request.name}: no signature recorded; pass --input-example VAR (pandas rows) to record one.")
            mlflow.spark.save_model(obj, str(path), mlflow_model=mlflow_model, input_example=example)
        else:
            import mlflow.pyfunc

            mlflow.pyfunc.save_model(
                str(path), python_model=_as_python_model(obj), mlflow_model=mlflow_model, input_example=example
            )
    except RegisterError:
        raise
    except Exception as exc:  # noqa: BLE001 - any serialisation failure is the user's to fix
        raise RegisterError(
            f"Cannot save {request.model} as a {flavor} model: {first_line(exc)}. Nothing was registered."
        ) from None
    return SavedModel(path=path, flavor=flavor)


# Types skops may be told to trust: the estimator's own library and its array types.
_SKOPS_TRUSTABLE = ("sklearn.", "numpy.", "scipy.")


def _sklearn_format(obj, name: str, notes: list[str]) -> dict:
    """How to save a scikit-learn model so that it loads back, as save_model arguments.

    MLflow 3 saves with skops by default and refuses to load types skops does not trust
    (trees and ensembles hold `sklearn.tree._tree.Tree`). Trust exactly the scikit-learn,
    numpy and scipy types this model holds; a model holding anything else (a user's class, a
    function) cannot be vouched for that way and is saved with cloudpickle, as MLflow 2 does.
    """
    import inspect

    import mlflow.sklearn

    if "skops_trusted_types" not in inspect.signature(mlflow.sklearn.save_model).parameters:
        return {}  # an MLflow without skops: cloudpickle, its only format
    try:
        import skops.io

        untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(obj))
    except Exception as exc:  # noqa: BLE001 - skops cannot serialise it: pickle can
        foreign = [first_line(exc)]
    else:
        foreign = [t for t in untrusted if not t.startswith(_SKOPS_TRUSTABLE)]
        if not foreign:
            return {"serialization_format": "skops", "skops_trusted_types": untrusted}
    notes.append(
        f"{name}: saved with cloudpickle, not skops ({', '.join(foreign[:3])}); load it only where its source is trusted."
    )
    return {"serialization_format": "cloudpickle"}


def _example_rows(value, flavor: str):
    """The first rows of an input example; a Spark DataFrame becomes pandas (what MLflow stores)."""
    is_spark_frame = any(n.startswith("pyspark.sql.") and n.endswith(".DataFrame") for n in _class_names(value))
    if is_spark_frame:
        return value.limit(_EXAMPLE_ROWS).toPandas()
    if flavor == "spark" and not hasattr(value, "iloc"):
        raise RegisterError("--input-example for a Spark model must be a pandas or Spark DataFrame.")
    if hasattr(value, "iloc"):
        return value.iloc[:_EXAMPLE_ROWS]
    if len(getattr(value, "shape", ())) >= 1 and value.shape[0] > _EXAMPLE_ROWS:
        return value[:_EXAMPLE_ROWS]
    return value


def _signature_from_training(estimator):
    """A signature from what a fitted estimator remembers of its training data.

    scikit-learn keeps feature names (`feature_names_in_`) or only their count
    (`n_features_in_`), not their types. The features are declared double, and the
    signature is kept only if the estimator predicts on such a row: a model trained on
    text columns is left without a signature rather than given a wrong one.
    """
    import numpy as np
    from mlflow.models import infer_signature

    names = getattr(estimator, "feature_names_in_", None)
    count = getattr(estimator, "n_features_in_", None)
    if names is not None:
        import pandas as pd

        row = pd.DataFrame([[0.0] * len(names)], columns=[str(n) for n in names])
    elif isinstance(count, int) and count > 0:
        row = np.zeros((1, count))
    else:
        return None
    try:
        prediction = estimator.predict(row)
    except Exception:  # noqa: BLE001 - see the docstring: no signature beats a wrong one
        return None
    return infer_signature(row, prediction)


def _as_python_model(obj):
    """A PythonModel as is; any object with predict wrapped in one.

    The wrapper class is made here, not at module level, so that cloudpickle stores it by
    value: a scoring cluster then loads the model without dbxml_magics installed.
    """
    from mlflow.pyfunc import PythonModel

    if isinstance(obj, PythonModel):
        return obj

    class PredictingObject(PythonModel):
        def __init__(self, inner):
            self.inner = inner

        def predict(self, context, model_input, params=None):
            return self.inner.predict(model_input)

    return PredictingObject(obj)

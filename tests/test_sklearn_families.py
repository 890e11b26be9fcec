"""Every common scikit-learn family registers with `%aml_register NAME --model VAR` and loads
back with equal predictions, under whatever MLflow is installed (each compat/ profile runs this
file): MLflow 3's skops format is given exactly the types the model holds, a model holding
types skops cannot vouch for is saved with cloudpickle and says so, and boosting libraries'
models go through their own MLflow flavors."""

import mlflow
import pytest

DATA = """\
import numpy as np
import pandas as pd
from sklearn.datasets import load_iris
X, y = load_iris(return_X_y=True, as_frame=True)
mixed = X.assign(colour=np.where(X["petal length (cm)"] > 3, "red", "blue"))
"""

FAMILIES = {
    "linear": "from sklearn.linear_model import LogisticRegression\nmodel = LogisticRegression(max_iter=300).fit(X, y)",
    "tree": "from sklearn.tree import DecisionTreeClassifier\nmodel = DecisionTreeClassifier(random_state=0).fit(X, y)",
    "forest": "from sklearn.ensemble import RandomForestClassifier\n"
    "model = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)",
    "boosting": "from sklearn.ensemble import GradientBoostingClassifier\n"
    "model = GradientBoostingClassifier(n_estimators=5, random_state=0).fit(X, y)",
    "hist-boosting": "from sklearn.ensemble import HistGradientBoostingClassifier\n"
    "model = HistGradientBoostingClassifier(max_iter=5, random_state=0).fit(X, y)",
    "pipeline": "from sklearn.compose import ColumnTransformer\n"
    "from sklearn.pipeline import make_pipeline\n"
    "from sklearn.preprocessing import OneHotEncoder, StandardScaler\n"
    "from sklearn.tree import DecisionTreeClassifier\n"
    "prep = ColumnTransformer([('num', StandardScaler(), list(X.columns)), "
    "('cat', OneHotEncoder(handle_unknown='ignore'), ['colour'])])\n"
    "model = make_pipeline(prep, DecisionTreeClassifier(random_state=0)).fit(mixed, y)\n"
    "X = mixed",
}


def _register_and_load(shell, tmp_path, name, train):
    shell.run_cell_magic("track", f"train-{name}", DATA + train + "\n")
    shell.run_line_magic("aml_register", f"{name} --model model")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    return mlflow.pyfunc.load_model(f"models:/{name}/1")


@pytest.mark.parametrize("family", FAMILIES)
def test_family_registers_and_predicts_the_same_after_loading(ext, shell, tmp_path, capsys, family):
    loaded = _register_and_load(shell, tmp_path, family, FAMILIES[family])

    out = capsys.readouterr().out
    assert f"Registered {family} version 1" in out
    assert "cloudpickle" not in out  # every type in these models is one skops can be told to trust
    X, model = shell.user_ns["X"], shell.user_ns["model"]
    assert (loaded.predict(X) == model.predict(X)).all()


def test_model_holding_a_users_function_is_saved_with_cloudpickle_and_says_so(ext, shell, tmp_path, capsys):
    train = (
        "from sklearn.pipeline import make_pipeline\n"
        "from sklearn.preprocessing import FunctionTransformer\n"
        "from sklearn.linear_model import LogisticRegression\n"
        "def doubled(frame):\n    return frame * 2\n"
        "model = make_pipeline(FunctionTransformer(doubled), LogisticRegression(max_iter=300)).fit(X, y)"
    )
    loaded = _register_and_load(shell, tmp_path, "own-function", train)

    X, model = shell.user_ns["X"], shell.user_ns["model"]
    assert (loaded.predict(X) == model.predict(X)).all()
    # Never trusted through skops; where MLflow offers skops, the output says why it was not used.
    assert loaded.metadata.flavors["sklearn"]["serialization_format"] == "cloudpickle"
    if _mlflow_has_skops():
        assert "dbxml: own-function: saved with cloudpickle, not skops (__main__.doubled)" in capsys.readouterr().err


def _mlflow_has_skops():
    import inspect

    import mlflow.sklearn

    return "skops_trusted_types" in inspect.signature(mlflow.sklearn.save_model).parameters


@pytest.mark.parametrize(
    "library, train",
    [
        ("lightgbm", "import lightgbm\nmodel = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(X, y)"),
        ("xgboost", "import xgboost\nmodel = xgboost.XGBClassifier(n_estimators=5).fit(X, y)"),
    ],
)
def test_boosting_library_models_use_their_own_flavor(ext, shell, tmp_path, library, train):
    pytest.importorskip(library)
    loaded = _register_and_load(shell, tmp_path, f"{library}-clf", train)

    assert library in loaded.metadata.flavors
    X, model = shell.user_ns["X"], shell.user_ns["model"]
    assert (loaded.predict(X).reshape(-1) == model.predict(X).reshape(-1)).all()

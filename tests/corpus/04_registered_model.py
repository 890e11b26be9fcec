# log_model with registered_model_name (the seed's "register models with MLflow" step).
# names: compare
import mlflow
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

X, y = load_iris(return_X_y=True, as_frame=True)
clf = LogisticRegression(max_iter=300).fit(X, y)
with mlflow.start_run(run_name="iris-register"):
    mlflow.log_param("max_iter", 300)
    mlflow.log_metric("accuracy", clf.score(X, y))
    mlflow.sklearn.log_model(clf, "model", registered_model_name="corpus-iris-clf", input_example=X.head(3))

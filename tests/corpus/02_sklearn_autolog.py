# MLflow's autologging example (examples/sklearn_autolog): autolog, then fit inside start_run.
import mlflow
import numpy as np
from sklearn.linear_model import LinearRegression

mlflow.sklearn.autolog(log_models=False)

X = np.array([[1, 1], [1, 2], [2, 2], [2, 3]])
y = np.dot(X, np.array([1, 2])) + 3

with mlflow.start_run() as run:
    model = LinearRegression()
    model.fit(X, y)
    print("Logged data and model in run: {}".format(run.info.run_id))

mlflow.sklearn.autolog(disable=True)

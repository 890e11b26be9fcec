# mlflow.log_input of a pandas dataset (MLflow's dataset tracking docs).
import mlflow
import pandas as pd

df = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0], "y": [0.1, 0.9, 2.1, 2.9]})
dataset = mlflow.data.from_pandas(df, source="https://raw.githubusercontent.com/mlflow/mlflow/master/tests/datasets/winequality-white.csv", name="points", targets="y")
with mlflow.start_run():
    mlflow.log_input(dataset, context="training")
    mlflow.log_param("rows", len(df))

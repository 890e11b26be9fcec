# A custom pyfunc model (MLflow's python_model docs): log_model of a PythonModel.
import mlflow
import pandas as pd


class AddN(mlflow.pyfunc.PythonModel):
    def __init__(self, n):
        self.n = n

    def predict(self, context, model_input, params=None):
        return model_input.apply(lambda column: column + self.n)


with mlflow.start_run():
    mlflow.log_param("n", 5)
    mlflow.pyfunc.log_model("add_n_model", python_model=AddN(n=5), input_example=pd.DataFrame({"x": [1.0]}))

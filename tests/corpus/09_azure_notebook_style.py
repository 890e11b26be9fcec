# The style of Azure ML's MLflow notebooks: set_experiment, start_run with name/tags/description,
# log_params/log_metrics/set_tags dicts, an explicit end_run, then reading the run back.
# track: --experiment corpus-azure-diabetes
# names: compare
import mlflow
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_squared_error

experiment_name = "corpus-azure-diabetes"
mlflow.set_experiment(experiment_name)

X, y = load_diabetes(return_X_y=True)
run = mlflow.start_run(run_name="ridge-diabetes", tags={"framework": "sklearn"}, description="Ridge on diabetes")
params = {"alpha": 0.3, "solver": "auto"}
mlflow.log_params(params)
model = Ridge(**params).fit(X[:300], y[:300])
mlflow.log_metrics({"train_mse": mean_squared_error(y[:300], model.predict(X[:300])),
                    "test_mse": mean_squared_error(y[300:], model.predict(X[300:]))})
mlflow.set_tags({"stage": "dev", "owner": "data-science"})
mlflow.end_run()

finished = mlflow.get_run(run.info.run_id)
print(finished.info.run_name, finished.data.metrics["test_mse"])

# MLflow's tracking quickstart style: log_metrics per step, set_tag, an explicit run name.
# names: compare
import math

import mlflow

with mlflow.start_run(run_name="curves"):
    mlflow.set_tag("Training Info", "synthetic learning curves")
    mlflow.log_param("epochs", 8)
    for step in range(8):
        mlflow.log_metrics({"loss": math.exp(-step / 3), "accuracy": 1 - math.exp(-step / 2)}, step=step)

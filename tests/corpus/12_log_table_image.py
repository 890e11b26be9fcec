# log_table and log_image (MLflow's evaluation-style artifacts).
import mlflow
import numpy as np
import pandas as pd

table = pd.DataFrame({"feature": ["alcohol", "pH", "sulphates"], "importance": [0.5, 0.3, 0.2]})
image = (np.outer(np.linspace(0, 1, 16), np.linspace(0, 1, 16)) * 255).astype(np.uint8)
with mlflow.start_run():
    mlflow.log_table(table, artifact_file="importance.json")
    mlflow.log_image(image, "gradient.png")

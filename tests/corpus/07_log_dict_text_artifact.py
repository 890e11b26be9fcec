# log_dict, log_text and log_artifact of a local file.
import json

import mlflow

config = {"model": "elasticnet", "alpha": 0.5, "features": ["alcohol", "pH"]}
with open("notes.md", "w") as fh:
    fh.write("# notes\nbaseline run\n")
with mlflow.start_run():
    mlflow.log_dict(config, "config/params.json")
    mlflow.log_dict(config, "config/params.yaml")
    mlflow.log_text("feature importance: alcohol > pH\n", "reports/summary.txt")
    mlflow.log_artifact("notes.md")
    mlflow.log_artifact("notes.md", artifact_path="docs")

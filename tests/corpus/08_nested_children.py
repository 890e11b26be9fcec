# A parent run with one nested child per setting (MLflow's hyperparameter-tuning docs).
# names: compare
import mlflow
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

X, y = load_iris(return_X_y=True)
with mlflow.start_run(run_name="tuning") as parent:
    best = 0.0
    for C in (0.1, 1.0, 10.0):
        with mlflow.start_run(run_name=f"C={C}", nested=True):
            score = cross_val_score(LogisticRegression(C=C, max_iter=500), X, y, cv=3).mean()
            mlflow.log_param("C", C)
            mlflow.log_metric("cv_accuracy", score)
            best = max(best, score)
    mlflow.log_metric("best_cv_accuracy", best)

# Autologging with no start_run at all: plain MLflow starts (and ends) a run around fit().
import mlflow
from sklearn.datasets import load_diabetes
from sklearn.ensemble import RandomForestRegressor

mlflow.autolog(log_models=False, log_datasets=False)
db = load_diabetes()
X, y = db.data[:150], db.target[:150]
rf = RandomForestRegressor(n_estimators=10, max_depth=4, max_features=3, random_state=0)
rf.fit(X, y)
predictions = rf.predict(X[:5])
mlflow.autolog(disable=True)

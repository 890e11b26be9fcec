# The seed how-to's cell: metrics logged per epoch with no start_run, then log_model with a
# registered name (the run starts implicitly at the first log call).
import mlflow
import mlflow.sklearn
import numpy as np
from sklearn.linear_model import SGDRegressor

rng = np.random.default_rng(7)
X = rng.normal(size=(80, 3))
y = X @ np.array([1.5, -2.0, 0.5]) + 0.1 * rng.normal(size=80)
model = SGDRegressor(learning_rate="constant", eta0=0.01, random_state=7)
for epoch in range(5):
    model.partial_fit(X, y)
    loss = float(np.mean((model.predict(X) - y) ** 2))
    mlflow.log_metric("epoch_loss", loss, step=epoch)
mlflow.sklearn.log_model(model, artifact_path="model", registered_model_name="corpus-seed-model")

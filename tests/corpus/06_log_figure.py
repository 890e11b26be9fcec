# mlflow.log_figure with a matplotlib figure (residual plot), as in MLflow's docs.
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import numpy as np

x = np.linspace(0, 1, 20)
residuals = np.sin(6 * x) / 10
fig, ax = plt.subplots()
ax.scatter(x, residuals)
ax.set_title("residuals")
with mlflow.start_run():
    mlflow.log_figure(fig, "plots/residuals.png")
    mlflow.log_metric("max_residual", float(residuals.max()))
plt.close(fig)

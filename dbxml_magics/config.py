"""Settings of the extension, as traitlets so that `%config DbxmlMagics.<name> = ...` works."""

from traitlets import Bool, Dict, Enum, Float, Int, List, Unicode
from traitlets.config import Configurable

__all__ = ["Settings"]


class Settings(Configurable):
    """Defaults read by the Session; the magics object is the configurable instance."""

    store_dir = Unicode(
        "",
        help="Folder of the embedded store (SQLite file + artifact folder). Empty: the working directory.",
    ).tag(config=True)
    store_file = Unicode("mlflow.db", help="SQLite file name of the embedded store.").tag(config=True)
    artifact_dir = Unicode("mlruns", help="Artifact folder name of the embedded store.").tag(config=True)
    state_dir = Unicode(
        ".dbxml",
        help="Folder (relative to store_dir unless absolute) holding the journal and session state.",
    ).tag(config=True)
    experiment = Unicode(
        "",
        help="Default experiment for %%track. Empty: MLflow's active experiment (or 'Default').",
    ).tag(config=True)
    aml_experiment_rule = Enum(
        ["basename", "flatten"],
        default_value="basename",
        help=(
            "How a Databricks-style experiment path maps to an AML name: 'basename' keeps the last "
            "path segment (/Users/a@b.c/proj/exp -> exp); 'flatten' joins the segments after "
            "/Users/<user> with '-' (proj-exp). AML cannot find names containing '/'."
        ),
    ).tag(config=True)
    databricks_experiment_folder = Unicode(
        "/Shared",
        help=(
            "Folder a plain experiment name goes under on a Databricks store, which only takes absolute "
            "paths: 'churn' -> /Shared/churn. Names starting with '/' are kept."
        ),
    ).tag(config=True)
    flush_interval = Float(1.0, help="Seconds between background journal flushes.").tag(config=True)
    flush_timeout = Float(
        10.0,
        help="Seconds a read of a run (or a cell end, with wait_at_cell_end) waits for the run's queued writes.",
    ).tag(config=True)
    wait_at_cell_end = Bool(
        False,
        help=(
            "Make %%track wait (up to flush_timeout) for the run to reach its primary store. Off: the cell "
            "ends once its writes are in the journal on disk; reads of the run still wait for them."
        ),
    ).tag(config=True)
    journal_lease = Float(
        30.0,
        help="Seconds a kernel's claim on its journal rows lasts without renewal; then another kernel adopts them.",
    ).tag(config=True)
    shutdown_flush_timeout = Float(
        5.0,
        help="Seconds a normal kernel exit waits for pending writes; the rest stays in the journal for the next session.",
    ).tag(config=True)
    retry_max_delay = Float(30.0, help="Longest wait between retries to an unreachable store.").tag(config=True)
    key_metrics = List(Unicode(), default_value=[], help="Metrics shown first in the panel's runs table.").tag(
        config=True
    )
    metric_goals = Dict(
        value_trait=Enum(["min", "max"]),
        default_value={},
        help=(
            "Whether lower ('min') or higher ('max') is better, per metric, for the panel's compare view: "
            "{'loss': 'min', 'auc': 'max'}. Unlisted metrics: 'min' when the name says loss, error, mse, "
            "mae, time..., else 'max'."
        ),
    ).tag(config=True)
    panel_max_metrics = Int(3, help="How many metrics the runs table shows per run.").tag(config=True)
    credential_timeout = Float(10.0, help="Seconds allowed to obtain an Azure credential when linking.").tag(
        config=True
    )
    show_panel_on_link = Bool(True, help="Display the panel after a successful %aml_link.").tag(config=True)

"""Which experiment a run goes to, on each kind of store: one rule for every magic and the mirror.

AML creates experiments whose names contain "/" but cannot find them by name again, and
Databricks takes only absolute paths; a session's experiment name is translated per store.
"""

from .errors import DbxmlError
from .masking import first_line
from .targets import Target

__all__ = ["aml_experiment_name", "databricks_experiment_name", "resolve_experiment", "use_experiment"]


def aml_experiment_name(name: str, rule: str = "basename") -> str:
    """Map a Databricks-style experiment path to a name AML can find again.

    AML creates experiments whose names contain "/" but cannot look them up by name, so
    `/Users/<user>/<folder>/<name>` becomes `<name>` ("basename") or `<folder>-<name>`
    ("flatten"). Plain names pass unchanged.
    """
    if "/" not in name:
        return name
    segments = [s for s in name.split("/") if s]
    if len(segments) >= 2 and segments[0] in ("Users", "Shared", "Repos"):
        segments = segments[2:] if segments[0] != "Shared" else segments[1:]
    if not segments:
        return "Default"
    return segments[-1] if rule == "basename" else "-".join(segments)


def databricks_experiment_name(name: str, folder: str = "/Shared") -> str:
    """Databricks needs an absolute workspace path: a plain name goes under `folder`."""
    if name.startswith("/"):
        return name
    return f"{folder.rstrip('/') or ''}/{name.strip('/')}"


def resolve_experiment(target: Target, name: str, settings=None) -> str:
    """The name `name` has on `target`'s side (settings: the rules' `%config` values)."""
    if target.kind == "aml":
        return aml_experiment_name(name, getattr(settings, "aml_experiment_rule", "basename"))
    if target.kind == "databricks":
        return databricks_experiment_name(name, getattr(settings, "databricks_experiment_folder", "/Shared"))
    return name


def use_experiment(session, requested: str | None = None, error: type[DbxmlError] = DbxmlError) -> tuple[str, str]:
    """Make the experiment of a new run active on the primary store: `requested`, else the link's,
    else MLflow's active one (on Databricks: the notebook's). Returns (experiment id, name)."""
    import mlflow

    name = requested or session.experiment
    if name:
        name = resolve_experiment(session.link.primary, name, session.settings)
        try:
            experiment = mlflow.set_experiment(name)
        except Exception as exc:  # noqa: BLE001
            raise error(f"Cannot use experiment {name!r}: {first_line(exc)}") from None
        return experiment.experiment_id, experiment.name
    experiment_id = mlflow.tracking.fluent._get_experiment_id()
    # One lookup per store and experiment: a request per cell would be most of an empty cell's cost.
    key = (mlflow.get_tracking_uri(), experiment_id)
    if key not in session.experiment_names:
        try:
            experiment = mlflow.get_experiment(experiment_id)
        except Exception as exc:  # noqa: BLE001
            raise error(f"Cannot reach the tracking store {session.link.primary.display}: {first_line(exc)}.") from None
        session.experiment_names[key] = experiment.name if experiment else "Default"
    return experiment_id, session.experiment_names[key]

"""Read one run back from its store, for the panel's inspector.

The panel never calls MLflow; it asks the Session (`Session.run_details`), which lands
here. What comes back is plain data (a dataclass of dicts and lists), so the panel and
its text form render it without knowing MLflow's entities.
"""

from dataclasses import dataclass, field

from .errors import DbxmlError
from .masking import redact
from .stores import list_artifacts
from .targets import Target
from .ui_server import store_ui_url

__all__ = ["RunDetails", "read_run_details", "run_ui_url"]

# Enough to see what a run holds without a slow click on a run with thousands of files.
MAX_ARTIFACTS = 200
MAX_PLOTTED_METRICS = 20


@dataclass
class RunDetails:
    """Everything the inspector shows about one run."""

    run_id: str
    name: str
    status: str
    experiment_id: str
    store: str  # masked URI of the store the run was read from
    start_time: float | None = None  # seconds since the epoch
    end_time: float | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # latest value per key
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # (step, value), by step
    artifacts: list[str] = field(default_factory=list)
    artifacts_truncated: bool = False
    models: list = field(default_factory=list)  # ModelRecord of this session registered from the run
    scorings: list = field(default_factory=list)  # ScoreRecord of this session using those models
    ui_url: str | None = None
    # The same run's copy in `both` mode's mirror store, once the journal has created it there.
    mirror_run_id: str | None = None
    mirror_store: str | None = None
    mirror_ui_url: str | None = None


def run_ui_url(target: Target, experiment_id: str, run_id: str) -> str | None:
    """Where a person sees the run: MLflow's UI for http stores (and for the embedded store
    while `%aml_ui` serves it), AML studio for AML ones, the workspace for Databricks.

    Credentials are stripped from the address, not masked: a link carrying `***` would
    only fail to log in, while a bare one lets the browser ask for them.
    """
    if target.kind == "aml":
        from .workspace import studio_run_url

        return studio_run_url(target.studio_url, run_id) if target.studio_url else None
    base = store_ui_url(target)
    return f"{base}/{experiment_id}/runs/{run_id}" if base else None


def _store_of(session, record) -> Target:
    """The linked target that holds the run: the store the run was started on, if still linked."""
    targets = session.link.targets
    if record is not None:
        for target in targets:
            if target.display == record.target:
                return target
        raise DbxmlError(
            f"Run {record.run_id} was logged to {record.target}, which is no longer linked. "
            f"Link it again (%aml_link --uri ...) to inspect the run."
        )
    return session.link.primary


def read_run_details(session, run_id: str) -> RunDetails:
    """Params, tags, metric histories and artifacts of `run_id`, plus what this session did with it."""
    import mlflow

    record = session.find_run(run_id)
    target = _store_of(session, record)
    # Through MLflow's store registry, so a run whose writes still wait in the journal is
    # flushed before it is read (the journal wraps every builder).
    client = mlflow.MlflowClient(tracking_uri=target.uri)
    try:
        run = client.get_run(run_id)
        metric_keys = sorted(run.data.metrics)[:MAX_PLOTTED_METRICS]
        histories = {key: _history(client, run_id, key) for key in metric_keys}
        artifacts, truncated = _list_artifacts(client, run_id)
    except Exception as exc:  # noqa: BLE001 - any store failure is one line in the panel
        lines = str(exc).strip().splitlines()
        reason = redact(lines[0] if lines else type(exc).__name__)[:200]
        raise DbxmlError(f"Cannot read run {run_id} from {target.display}: {reason}") from None
    info = run.info
    models = [m for m in session.models if m.source_run_id == run_id]
    model_refs = {m.model_uri for m in models} | {f"models:/{m.name}/{m.version}" for m in models}
    scorings = [s for s in session.scorings if s.run_id == run_id or s.model_uri in model_refs]
    mirror, mirror_id, mirror_url = _mirror_copy(session, record, target)
    return RunDetails(
        run_id=run_id,
        name=info.run_name or run_id,
        status=info.status,
        experiment_id=info.experiment_id,
        store=target.display,
        start_time=info.start_time / 1000 if info.start_time else None,
        end_time=info.end_time / 1000 if info.end_time else None,
        params={k: redact(v) for k, v in sorted(run.data.params.items())},
        tags={k: redact(v) for k, v in sorted(run.data.tags.items())},
        metrics=dict(sorted(run.data.metrics.items())),
        histories=histories,
        artifacts=artifacts,
        artifacts_truncated=truncated,
        models=models,
        scorings=scorings,
        ui_url=run_ui_url(target, info.experiment_id, run_id),
        mirror_run_id=mirror_id,
        mirror_store=mirror.display if mirror else None,
        mirror_ui_url=mirror_url,
    )


def _mirror_copy(session, record, primary: Target) -> tuple[Target | None, str | None, str | None]:
    """`both` mode: the mirror store, the run's id there and its page, once the journal made it.

    The page needs the mirror's experiment id: one read of the mirror run, only when its
    store has a UI to link to (never for the embedded store without `%aml_ui`)."""
    mirror = next((t for t in session.link.targets if t.display != primary.display), None)
    mirror_id = session.mirror_run_id(record) if record is not None and mirror is not None else None
    if mirror_id is None:
        return None, None, None
    url = None
    if mirror.kind == "aml" or store_ui_url(mirror):
        try:
            import mlflow

            experiment_id = mlflow.MlflowClient(tracking_uri=mirror.uri).get_run(mirror_id).info.experiment_id
            url = run_ui_url(mirror, experiment_id, mirror_id)
        except Exception:  # noqa: BLE001 - the id is still shown; the link waits for the store
            url = None
    return mirror, mirror_id, url


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return [(m.step, m.value) for m in points]


def _list_artifacts(client, run_id: str) -> tuple[list[str], bool]:
    """Artifact file paths, breadth first, at most MAX_ARTIFACTS of them."""
    found: list[str] = []
    folders = [None]
    while folders:
        for item in list_artifacts(client, run_id, folders.pop(0)):
            if item.is_dir:
                folders.append(item.path)
            else:
                found.append(item.path)
            if len(found) >= MAX_ARTIFACTS:
                return found, True
    return found, False

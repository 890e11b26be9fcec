"""The panel as text (terminals, `%aml_sync`, widget fallbacks) and the row builders both forms share."""

import re
import time
from collections import Counter

from ..session import Session

# Rows shown at once. Keeping the visible window bounded is what makes a new run cost the
# same with 10 or 1,000 runs in the session: older rows are built only when asked for.
PAGE_SIZE = 25


# ---------------------------------------------------------------------- formatting
def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m {int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h {int(seconds % 3600 // 60):02d}m"


def format_clock(timestamp: float | None) -> str:
    """Absolute times: a live widget showing "3s ago" would be wrong a second later."""
    if not timestamp:
        return "never"
    if time.strftime("%Y%m%d", time.localtime(timestamp)) == time.strftime("%Y%m%d"):
        return time.strftime("%H:%M:%S", time.localtime(timestamp))
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def key_metrics(metrics: dict[str, float], preferred: list[str], limit: int) -> list[tuple[str, float]]:
    """The metrics a row shows: the configured key metrics first, then the others by name."""
    first = [name for name in preferred if name in metrics]
    rest = sorted(name for name in metrics if name not in first)
    return [(name, metrics[name]) for name in (first + rest)[: max(0, limit)]]


def format_metrics(record, settings) -> str:
    shown = key_metrics(record.metrics, list(settings.key_metrics), settings.panel_max_metrics)
    return "  ".join(f"{name}={value:.4g}" for name, value in shown)


# Names that read as "lower is better"; every other metric is taken as "higher is better".
_LOWER_IS_BETTER = re.compile(r"loss|err|mse|mae|mape|perplexity|latency|time|duration|cost|regret|distance", re.I)


def metric_goal(name: str, goals: dict) -> str:
    """`min` or `max`: the configured goal (`%config DbxmlMagics.metric_goals`), else guessed from the name."""
    goal = goals.get(name)
    if goal in ("min", "max"):
        return goal
    return "min" if _LOWER_IS_BETTER.search(name) else "max"


# ---------------------------------------------------------------------- parents and children
def run_tree(runs: list) -> tuple[list, dict[str, list]]:
    """The top-level runs and each parent's children, both in run order: a run whose parent is a
    run of the session (a sweep's combination, %%track --nested) is shown under that parent."""
    ids = {run.run_id for run in runs}
    top, children = [], {}
    for run in runs:
        if run.parent_run_id in ids:
            children.setdefault(run.parent_run_id, []).append(run)
        else:
            top.append(run)
    return top, children


def ranked_children(parent, children: list, settings) -> tuple[str | None, object | None, list]:
    """(metric, best child, children best first): by the sweep's --metric/--goal, else by the first
    key metric the children logged (its goal from metric_goals or its name); run order without one."""
    from ..sweep import best_child

    if parent.best_by:
        metric, goal = parent.best_by
    else:
        logged = {name: 0.0 for child in children for name in child.metrics}
        shown = key_metrics(logged, list(settings.key_metrics), 1)
        if not shown:
            return None, None, list(children)
        metric = shown[0][0]
        goal = metric_goal(metric, dict(settings.metric_goals))
    best = best_child(children, metric, goal)
    scored = [child for child in children if isinstance(child.metrics.get(metric), (int, float))]
    scored.sort(key=lambda child: child.metrics[metric], reverse=goal == "max")
    ranked = {id(child) for child in scored}
    return metric, best, scored + [child for child in children if id(child) not in ranked]


def group_text(parent, children: list, settings) -> str:
    """A parent's row: `4 runs (1 failed)  best r2=0.9997 [alpha=0.01,max_iter=300]`."""
    counts = Counter(child.status for child in children)
    others = ", ".join(f"{n} {status.lower()}" for status, n in counts.items() if status != "FINISHED")
    text = f"{len(children)} runs" + (f" ({others})" if others else "")
    metric, best, _ = ranked_children(parent, children, settings)
    if best is not None:
        name = best.name[len(parent.name):] if best.name.startswith(parent.name + "[") else best.name
        text += f"  best {metric}={best.metrics[metric]:.4g} {name}"
    return text


def live_text(history: dict[str, list[tuple[int, float]]], settings) -> str:
    """`name=value ... step N`: the latest value of the key metrics of a running run and its newest step."""
    latest = {name: points[-1][1] for name, points in history.items() if points}
    shown = key_metrics(latest, list(settings.key_metrics), settings.panel_max_metrics)
    step = max((points[-1][0] for points in history.values() if points), default=0)
    return "  ".join(f"{name}={value:.4g}" for name, value in shown) + f"  step {step}"


def _row_metrics(session: Session, run) -> str:
    """A running run shows what the journal accepted so far; an ended one its summary."""
    if run.status == "RUNNING" and session.journal_started:
        history = session.journal.live_history(run.run_id)
        if history:
            return live_text(history, session.settings)
    return format_metrics(run, session.settings)


def journal_lines(link, statuses: list[dict]) -> list[tuple[str, str, str]]:
    """(role, masked URI, state) for each linked store, then earlier stores still holding writes."""
    by_target = {status["target"]: status for status in statuses}
    lines = []
    for role, target in (("primary", link.primary), ("mirror", link.mirror)):
        if target is None:
            continue
        status = by_target.pop(target.display, None)
        lines.append((role, target.display, _journal_state(status)))
    for key, status in by_target.items():
        if status["pending"] or status["failed"]:
            lines.append(("earlier", key, _journal_state(status)))
    return lines


def _journal_state(status: dict | None) -> str:
    if status is None:
        return "nothing written yet"
    state = f"{status['pending']} pending, last sync {format_clock(status['last_sync'])}"
    if status.get("failed"):
        state += f", {status['failed']} failed"
    if status.get("last_error"):
        state += f", last error: {status['last_error']}"
    return state


def journal_statuses(session: Session) -> list[dict]:
    # The journal opens on the first link or run; the panel alone must not create it.
    return session.journal.status() if session.journal_started else []


def endpoint_lines(session: Session) -> list[str]:
    """One line per endpoint of this session (%aml_deploy): the model version it serves, its state, its URL."""
    return [
        f"endpoint {e.name} ({e.target}): {e.model}{f' in {e.deployment}' if e.deployment else ''}, {e.state}, {e.url}"
        for e in list(session.endpoints.values())
    ]


def panel_text(session: Session, statuses: list[dict] | None = None, limit: int = PAGE_SIZE) -> str:
    """The panel as plain text: what a terminal (or a frontend without widgets) shows."""
    link = session.link
    statuses = journal_statuses(session) if statuses is None else statuses
    lines = [f"dbxml panel: mode {link.mode}, experiment {session.experiment or 'Default'}"]
    for role, uri, state in journal_lines(link, statuses):
        lines.append(f"  {role:<8}{uri}: {state}")
    lines += [f"  {line}" for line in endpoint_lines(session)]
    if not session.runs:
        lines.append("No runs yet in this session: run a cell with %%track <name>.")
        return "\n".join(lines)
    top, children = run_tree(list(session.runs))
    runs = top[-limit:][::-1] if limit else []
    lines.append(f"Runs ({len(session.runs)}, newest first):")
    rows = []
    for run in runs:
        kids = children.get(run.run_id, [])
        metrics = group_text(run, kids, session.settings) if kids else _row_metrics(session, run)
        rows.append(_text_row(run, run.name, metrics))
        rows += [_text_row(kid, f"  {kid.name}", _row_metrics(session, kid)) for kid in kids]
    lines += text_table(("name", "status", "start", "duration", "metrics", "versions"), rows)
    older = len(top) - len(runs)
    if older > 0:
        lines.append(f"  ... and {older} older runs")
    return "\n".join(lines)


def _text_row(run, name: str, metrics: str) -> tuple:
    return (
        name, run.status, format_clock(run.start_time), format_duration(run.duration), metrics,
        ", ".join(run.model_versions),
    )


def run_text(details) -> str:
    """One run's details as plain text: what the inspector shows, for a terminal."""
    lines = [
        f"Run {details.name}: {details.status}, {details.run_id}, started {format_clock(details.start_time)}, "
        f"{run_duration(details)}, in {details.store}",
        f"  {details.ui_url}" if details.ui_url else
        f"  no web UI running for {details.store}; run %aml_ui to see it in MLflow's UI",
    ]
    if details.mirror_run_id:
        lines.append(
            f"  mirror copy {details.mirror_run_id} in {details.mirror_store}"
            + (f": {details.mirror_ui_url}" if details.mirror_ui_url else "")
        )

    def section(title: str, header: tuple, rows: list, empty: str) -> None:
        lines.extend([f"{title}:", *text_table(header, rows)] if rows else [f"{title}: {empty}"])

    section("Metrics", METRIC_HEADER, metric_rows(details), "none logged")
    section("Params", ("param", "value"), list(details.params.items()), "none logged")
    section(
        "Tags", ("tag", "value"),
        [(k, shortened(v, 100)) for k, v in details.tags.items() if not k.startswith("mlflow.")],
        "none besides MLflow's own",
    )
    artifacts = ", ".join(details.artifacts) + (" (first files only)" if details.artifacts_truncated else "")
    lines.append(f"Artifacts: {artifacts or 'none'}")
    section("Models registered from it in this session", MODEL_HEADER, model_rows(details), "none")
    section("Scorings with those models", SCORING_HEADER, scoring_rows(details), "none")
    return "\n".join(lines)


# What the inspector shows, as rows: the widgets render them as HTML, run_text as text.
METRIC_HEADER = ("metric", "last", "steps", "min", "max")


MODEL_HEADER = ("model", "version", "mirror version", "alias", "registered")


SCORING_HEADER = ("scored with", "input", "rows", "seconds", "output")


def metric_rows(details) -> list[tuple]:
    rows = []
    for name, value in details.metrics.items():
        values = [v for _, v in details.histories.get(name, [])]
        rows.append(
            (name, f"{value:.6g}", len(values), f"{min(values):.6g}" if values else "",
             f"{max(values):.6g}" if values else "")
        )
    return rows


def model_rows(details) -> list[tuple]:
    return [
        (m.name, m.version, m.mirror_version or "", m.alias or "", format_clock(m.registered_at))
        for m in details.models
    ]


def scoring_rows(details) -> list[tuple]:
    return [(s.model_uri, s.input, f"{s.rows:,}", f"{s.seconds:.1f}", s.output) for s in details.scorings]


def run_duration(details) -> str:
    if details.end_time and details.start_time:
        return format_duration(details.end_time - details.start_time)
    return "running"


def shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def text_table(header: tuple, rows: list[tuple]) -> list[str]:
    """Rows as aligned, indented text lines under their header."""
    table = [tuple(str(cell) for cell in row) for row in [header, *rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]

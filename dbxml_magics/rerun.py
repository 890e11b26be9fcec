"""%aml_rerun: a tracked run's recorded cell (`cell.py`) runs again as a new run.

The variables the cell reads before assigning them are its inputs: those that were params of
the run are put back (read as Python literals), `--set` overrides them, and the others are
named, since their current values may differ from the run's. The new run keeps the run's
experiment and %%track options (the `dbxml.track` tag) and is tagged `dbxml.rerun_of`.
Works for any run on the linked store that has a `cell.py`, from this session or an earlier one.
"""

import ast
import builtins
import json
import sys
import tempfile
import types
from pathlib import Path

from .errors import TrackError
from .masking import first_line
from .session import Session
from .tracking import TrackRequest, run_tracked_cell
from .userns import literal, parse_assignment

__all__ = ["rerun", "rerun_from_args", "cell_inputs"]

RERUN_TAG = "dbxml.rerun_of"


def rerun_from_args(session: Session, shell, args):
    overrides = dict(parse_assignment(item, "--set", TrackError) for item in args.set)
    return rerun(session, shell, args.run, overrides, args.name)


def rerun(session: Session, shell, run_ref: str, overrides: dict | None = None, name: str | None = None):
    """Run the cell recorded by `run_ref` (`last`, a run name of this session, or a run id) again.

    `overrides` maps variable names to values; a str value is read as a Python literal when it
    is one (`"0.1"` -> 0.1), as `--set` does. Returns the value of the cell's last expression.
    The panel's "Re-run" button calls this too.
    """
    __tracebackhide__ = True  # noqa: F841
    import mlflow

    overrides = {key: literal(value) if isinstance(value, str) else value for key, value in (overrides or {}).items()}
    run_id = session.resolve_run(run_ref)
    link = session.activate()
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - a missing run or an unreachable store: one line either way
        raise TrackError(
            f"Cannot read run {run_id} on {link.primary.display} ({first_line(exc)}); "
            "%aml_link to the store it was logged to first."
        ) from None
    cell = _recorded_cell(run_id)
    reads, assigned = cell_inputs(shell, cell)
    for key in overrides:
        if key not in reads:
            where = "assigns it before reading it" if key in assigned else "does not read it"
            raise TrackError(f"--set {key}: the cell of run {run_id} {where}, so the value would change nothing.")
    params = run.data.params
    inputs = {key: overrides[key] if key in overrides else literal(params[key]) for key in reads if key in overrides or key in params}
    missing = [key for key in reads if key not in inputs]
    options = json.loads(run.data.tags.get("dbxml.track") or "{}")
    experiment = client.get_experiment(run.info.experiment_id)
    request = TrackRequest(
        name=name or _rerun_name(run.info.run_name),
        experiment=experiment.name if experiment is not None else None,
        params=options.get("params", []),
        metrics=options.get("metrics", []),
        artifacts=options.get("artifacts", []),
        autolog=bool(options.get("autolog")),
        tags={RERUN_TAG: run_id},
        inputs=inputs,
    )
    _say(run, inputs, overrides, missing, shell.user_ns)
    return run_tracked_cell(session, shell, request, cell)


def _recorded_cell(run_id: str) -> str:
    import mlflow

    with tempfile.TemporaryDirectory(prefix="dbxml-rerun-") as folder:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="cell.py", dst_path=folder)
        except Exception as exc:  # noqa: BLE001
            raise TrackError(
                f"Run {run_id} has no recorded cell (cell.py: {first_line(exc)}); only runs of %%track "
                "(without --no-source) can be re-run."
            ) from None
        return Path(path).read_text(encoding="utf-8")


def _rerun_name(name: str) -> str:
    return name if name.endswith("-rerun") else f"{name}-rerun"


_TOOLS = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)


def _say(run, inputs: dict, overrides: dict, missing: list[str], namespace: dict) -> None:
    """One line for what was put back, one for what could not be."""
    put = ", ".join(f"{key}={value!r}" + (" (--set)" if key in overrides else "") for key, value in inputs.items())
    print(f"dbxml: re-running run {run.info.run_id} ({run.info.run_name!r})" + (f" with {put}" if put else ""), file=sys.stderr)
    if missing:
        # Modules, functions and classes defined earlier are the cell's tools, not its data.
        current = [key for key in missing if key in namespace and not isinstance(namespace[key], _TOOLS)]
        absent = [key for key in missing if key not in namespace]
        parts = []
        if current:
            parts.append(f"{', '.join(current)} (their current values are used)")
        if absent:
            parts.append(f"{', '.join(absent)} (not defined in this session: run the cells that define them first)")
        if parts:
            print(f"dbxml: not restored, not params of run {run.info.run_id}: {'; '.join(parts)}", file=sys.stderr)


def cell_inputs(shell, cell: str) -> tuple[list[str], set[str]]:
    """The variables a cell reads before assigning them (in order of first use), and those it assigns.

    The cell is transformed as IPython runs it (magics become calls). Builtins and IPython's own
    names are not inputs. An unparsable cell has none (running it reports the syntax error).
    """
    try:
        tree = ast.parse(shell.transform_cell(cell))
    except SyntaxError:
        return [], set()
    reads = _Reads()
    reads.statements(tree.body)
    hidden = set(getattr(shell, "user_ns_hidden", {}))
    inputs = [key for key in reads.inputs if not hasattr(builtins, key) and key not in hidden]
    return inputs, reads.assigned


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


class _Reads:
    """Walks statements in execution order: a name read before any assignment is an input."""

    def __init__(self):
        self.inputs: dict[str, int] = {}
        self.assigned: set[str] = set()

    def statements(self, body) -> None:
        for node in body:
            self.statement(node)

    def statement(self, node) -> None:
        if isinstance(node, ast.Assign):
            self.reads(node.value)
            for target in node.targets:
                self.stores(target)
        elif isinstance(node, ast.AnnAssign):
            self.reads(node.value)
            self.stores(node.target)
        elif isinstance(node, ast.AugAssign):
            self.reads(node.value)
            self.reads(ast.Name(node.target.id, ast.Load()) if isinstance(node.target, ast.Name) else node.target)
            self.stores(node.target)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            self.reads(node.iter)
            self.stores(node.target)
            self.statements(node.body + node.orelse)
        elif isinstance(node, (ast.While, ast.If)):
            self.reads(node.test)
            self.statements(node.body + node.orelse)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                self.reads(item.context_expr)
                if item.optional_vars is not None:
                    self.stores(item.optional_vars)
            self.statements(node.body)
        elif isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            self.statements(node.body)
            for handler in node.handlers:
                self.reads(handler.type)
                if handler.name:
                    self.assigned.add(handler.name)
                self.statements(handler.body)
            self.statements(node.orelse + node.finalbody)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            self.assigned.update(alias.asname or alias.name.split(".")[0] for alias in node.names if alias.name != "*")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            self.assigned.add(node.name)  # first, so a recursive function is not its own input
            self.reads(node)
        elif (timed := _timed_code(node)) is not None:
            self.statements(timed)
        else:
            self.reads(node)

    def stores(self, target) -> None:
        for node in ast.walk(target):
            if isinstance(node, ast.Name):
                if isinstance(node.ctx, ast.Store):
                    self.assigned.add(node.id)
                else:  # `a[i] = v`, `obj.x = v` read a, i, obj
                    self.read(node)

    def reads(self, node) -> None:
        if node is None:
            return
        local = _locals(node)
        walrus = []
        for child in ast.walk(node):
            if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Load) and child.id not in local:
                self.read(child)
            elif isinstance(child, ast.NamedExpr):
                walrus.append(child.target.id)
        self.assigned.update(walrus)

    def read(self, node: ast.Name) -> None:
        if node.id not in self.assigned:
            self.inputs.setdefault(node.id, getattr(node, "lineno", 0))


def _timed_code(node) -> list | None:
    """The statements of `%time CODE` / `%%time` (IPython runs CODE in the user namespace)."""
    call = node.value if isinstance(node, ast.Expr) else None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
        return None
    if call.func.attr not in ("run_line_magic", "run_cell_magic") or len(call.args) < 2:
        return None
    name, code = call.args[0], call.args[-1]
    if not (isinstance(name, ast.Constant) and name.value in ("time", "timeit")):
        return None
    if not (isinstance(code, ast.Constant) and isinstance(code.value, str)):
        return None
    try:
        return ast.parse(code.value).body
    except SyntaxError:
        return None


def _locals(node) -> set[str]:
    """Names bound inside the function, lambda, class and comprehension scopes within `node`."""
    names = set()
    for scope in ast.walk(node):
        if not isinstance(scope, _SCOPES):
            continue
        if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            arguments = scope.args
            names.update(a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs)
            names.update(a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None)
        body = getattr(scope, "body", [])  # comprehensions bind only their targets
        body = body if isinstance(body, list) else [body]
        for part in body + [g.target for g in getattr(scope, "generators", [])]:
            for child in ast.walk(part):
                if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                    names.add(child.id)
                elif isinstance(child, (ast.Import, ast.ImportFrom)):
                    names.update(alias.asname or alias.name.split(".")[0] for alias in child.names)
    return names

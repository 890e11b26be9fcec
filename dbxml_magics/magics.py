"""The magics: declare arguments, parse, delegate. No logic of their own.

Every user mistake reaches the user as one `UsageError` line (IPython prints it without
a traceback); the domain modules raise `DbxmlError` subclasses with the fix in the text.
"""

import functools
import math
import re
from argparse import ArgumentTypeError

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .config import Settings
from .errors import DbxmlError
from .masking import redact

__all__ = ["DbxmlMagics"]


def _parse(magic, line: str):
    try:
        args = parse_argstring(magic, line)
    except UsageError as exc:
        raise UsageError(_one_line(str(exc))) from None
    except ValueError as exc:  # unbalanced quotes from IPython's tokenizer
        raise UsageError(f"Cannot parse the arguments ({exc}); check the quotes.") from None
    for name, value in vars(args).items():
        if isinstance(value, str):
            setattr(args, name, _unquote(value))
        elif isinstance(value, list):
            setattr(args, name, [_unquote(item) if isinstance(item, str) else item for item in value])
    return args


def _one_line(message: str) -> str:
    """The message on one line, secrets masked, and any huge value it quotes shortened so
    that the fix at the end of the line stays readable."""
    text = redact(" ".join(message.split()))
    return _LONG_WORD.sub(lambda m: f"{m[0][:60]}...({len(m[0])} characters)...{m[0][-12:]}", text)


_LONG_WORD = re.compile(r"\S{200,}")


def _unquote(text: str) -> str:
    """IPython splits magic lines without POSIX rules (so Windows paths survive) and keeps
    the quotes: `--experiment "my runs"` must name `my runs`, not `"my runs"`."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _seconds(text: str) -> float:
    """A finite, non-negative number of seconds (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise ArgumentTypeError(f"expects a number of seconds, got {text!r}. Example: --timeout 30") from None
    if not math.isfinite(value) or value < 0:
        raise ArgumentTypeError(f"expects a finite number of seconds >= 0, got {text!r}. Example: --timeout 30")
    return value


def _user_errors(method):
    """Turn domain errors into one UsageError line; no traceback for a user's mistake."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        __tracebackhide__ = True  # noqa: F841
        try:
            return method(self, *args, **kwargs)
        except DbxmlError as exc:
            raise UsageError(_one_line(str(exc))) from None

    return wrapper


@magics_class
class DbxmlMagics(Settings, Magics):
    """Magics linking this notebook to MLflow stores and Azure ML. Settings: `%config DbxmlMagics`."""

    def __init__(self, shell, session):
        super().__init__(shell=shell)
        self.session = session

    # ------------------------------------------------------------------ %%track
    @magic_arguments()
    @argument("name", nargs="?", default=None, help="Run name (default: MLflow's generated name).")
    @argument("--experiment", "-e", default=None, help="Experiment name or /Users/<user>/<folder>/<name> path.")
    @argument("--params", "-p", nargs="+", default=[], metavar="VAR", help="Variables logged as params after the cell.")
    @argument(
        "--metrics", "-m", nargs="+", default=[], metavar="VAR",
        help="Variables logged as metrics after the cell; a sequence becomes a step history.",
    )
    @argument("--tags", "-t", nargs="+", default=[], metavar="KEY=VALUE", help="Tags set on the run.")
    @argument("--artifacts", "-a", nargs="+", default=[], metavar="PATH", help="Files, folders or globs logged after the cell.")
    @argument("--autolog", action="store_true", help="Enable mlflow.autolog() for the cell.")
    @argument("--nested", action="store_true", help="Start a child run of the active run.")
    @argument("--no-source", action="store_true", help="Do not log the cell source as an artifact.")
    @argument(
        "--sweep", nargs="+", default=None, metavar="NAME=V1,V2",
        help="Run the cell once per combination of values, each a child run of one parent run.",
    )
    @argument("--random", type=int, default=None, metavar="N", help="With --sweep: N combinations drawn from the grid.")
    @argument("--metric", default=None, help="With --sweep: the metric whose best child the parent records.")
    @argument("--goal", choices=["min", "max"], default=None, help="With --metric: which value is best.")
    @cell_magic
    @_user_errors
    def track(self, line, cell):
        """Run the cell as an MLflow run: params, metrics, source, status (FINISHED/FAILED/KILLED).

        MLflow code already in the cell runs unchanged: mlflow.start_run() continues the cell's
        run, start_run(nested=True) makes a child of it. --sweep runs the cell once per combination."""
        __tracebackhide__ = True  # noqa: F841
        from .tracking import TrackRequest, run_tracked_cell
        from .userns import parse_tags

        args = _parse(self.track, line)
        request = TrackRequest(
            name=args.name,
            experiment=args.experiment,
            params=args.params,
            metrics=args.metrics,
            tags=parse_tags(args.tags),
            artifacts=args.artifacts,
            autolog=args.autolog,
            nested=args.nested,
            log_source=not args.no_source,
        )
        if args.sweep is None:
            if args.random is not None or args.metric or args.goal:
                raise UsageError("--random, --metric and --goal go with --sweep. Example: --sweep alpha=0.01,0.1 --metric r2 --goal max")
            return run_tracked_cell(self.session, self.shell, request, cell)
        from .sweep import SweepRequest, run_sweep

        sweep = SweepRequest(values=args.sweep, random=args.random, metric=args.metric, goal=args.goal)
        return run_sweep(self.session, self.shell, request, sweep, cell)

    @magic_arguments()
    @argument("run", help="`last`, a run name of this session, or a run id (also of an earlier session).")
    @argument("--set", nargs="+", default=[], metavar="NAME=VALUE", help="Variables set before the cell, over the run's params.")
    @argument("--name", default=None, help="Name of the new run (default: the run's name + -rerun).")
    @line_magic
    @_user_errors
    def aml_rerun(self, line):
        """Run the cell a tracked run recorded (cell.py) again as a new run, its params put back as variables."""
        __tracebackhide__ = True  # noqa: F841
        from .rerun import rerun_from_args

        args = _parse(self.aml_rerun, line)
        return rerun_from_args(self.session, self.shell, args)

    # ------------------------------------------------------------------ %aml_link
    @magic_arguments()
    @argument("--local", nargs="?", const="", default=None, metavar="PATH", help="The embedded store (in PATH).")
    @argument("--uri", default=None, help="Any MLflow tracking URI: http(s)://, databricks, sqlite:///, file:, azureml://.")
    @argument("--config", nargs="?", const="", default=None, metavar="PATH", help="AML config.json (searched like the SDK).")
    @argument("-s", "--subscription", default=None, help="Azure subscription id.")
    @argument("-g", "--resource-group", default=None, help="Azure resource group.")
    @argument(
        "-w", "--workspace", default=None,
        help="Azure ML workspace name; alone, a variable holding a workspace object (azureml-core Workspace, MLClient).",
    )
    @argument("--mode", choices=["aml-only", "both"], default=None, help="aml-only: AML alone; both: keep the current store and mirror to the new one.")
    @argument(
        "--auth", choices=["default", "interactive", "cli", "service-principal", "managed-identity"], default="default",
        help="Azure credential; secrets come from the environment, never from this line.",
    )
    @argument("--experiment", "-e", default=None, help="Experiment for runs of this link.")
    @argument("--doctor", action="store_true", help="Check the current link: one line per check, OK/WARN/FAIL + fix.")
    @line_magic
    @_user_errors
    def aml_link(self, line):
        """Choose where runs go. Without arguments: show the panel with the workspace selector."""
        from .link import link_from_args

        args = _parse(self.aml_link, line)
        if args.doctor:
            from .doctor import doctor_from_args

            print(doctor_from_args(self.session, args))
            return None
        link = link_from_args(self.session, args)
        if link is None or self.show_panel_on_link:
            self._show_panel()
        return link

    @magic_arguments()
    @line_magic
    @_user_errors
    def aml_unlink(self, line):
        """Return to what was active before the first %aml_link."""
        _parse(self.aml_unlink, line)
        return self.session.unlink()

    # ------------------------------------------------------------------ %aml_register
    @magic_arguments()
    @argument("name", help="Registered model name.")
    @argument("--model", default=None, metavar="VAR", help="In-memory model variable (scikit-learn, Spark ML, pyfunc).")
    @argument("--run", default=None, metavar="RUN_ID|last", help="Register the model logged in this run.")
    @argument("--artifact-path", default=None, help="Model path inside the run (default: model).")
    @argument("--uri", default=None, metavar="MODEL_URI", help="Register a model URI (runs:/..., models:/...).")
    @argument("--flavor", choices=["sklearn", "spark", "pyfunc"], default=None, help="Force the flavor.")
    @argument("--alias", default=None, help="Alias set on the new version.")
    @argument("--tags", nargs="+", default=[], metavar="KEY=VALUE", help="Tags of the new version.")
    @argument("--description", default=None, help="Description of the new version.")
    @argument("--input-example", default=None, metavar="VAR", help="Input example variable (signature inferred).")
    @argument("-v", "--verbose", action="store_true", help="Also show MLflow's log lines and warnings about the magic's calls.")
    @line_magic
    @_user_errors
    def aml_register(self, line):
        """Register a model (new name: version 1; existing: next version)."""
        from .registry import register_from_args

        args = _parse(self.aml_register, line)
        return register_from_args(self.session, self.shell.user_ns, args)

    # ------------------------------------------------------------------ %aml_score
    @magic_arguments()
    @argument("model", help="models:/name/version, models:/name@alias, a registered name, runs:/..., or last.")
    @argument("--table", default=None, help="Input Spark table.")
    @argument("--df", default=None, metavar="VAR", help="Input DataFrame variable (Spark or pandas).")
    @argument("--path", default=None, help="Input files.")
    @argument("--format", default="parquet", help="Format of --path: parquet, csv, json, delta.")
    @argument("--where", default=None, help="SQL filter applied before scoring.")
    @argument("--columns", nargs="+", default=None, help="Input columns (default: the model signature's inputs).")
    @argument("--output-col", default="prediction", help="Name of the prediction column.")
    @argument("--result-type", default=None, help="Spark type of the prediction (default: from the signature).")
    @argument("--into", default=None, metavar="VAR", help="Variable receiving the scored DataFrame (pandas for kernel data).")
    @argument("--save-as", default=None, metavar="TABLE", help="Save the result as a table.")
    @argument("--save-path", default=None, help="Save the result as files.")
    @argument("--remote", default=None, metavar="sc://host:port", help="Spark Connect server to use.")
    @argument("--log-run", action="store_true", help="Log the scoring as an MLflow run with its lineage.")
    @argument("--limit", type=int, default=10, help="Rows in the preview (0: none).")
    @argument("--engine", default="auto", help="auto (kernel data in the kernel, the rest on Spark), local, or spark.")
    @argument("--dry-run", action="store_true", help="Print the plan and score 5 rows in the kernel; no Spark job.")
    @argument("-v", "--verbose", action="store_true", help="Also show MLflow's log lines and warnings about the magic's calls.")
    @line_magic
    @_user_errors
    def aml_score(self, line):
        """Score a pandas frame in the kernel, or a Spark table, DataFrame or files on Spark, with a registered model."""
        from .scoring import score_from_args

        args = _parse(self.aml_score, line)
        return score_from_args(self.session, self.shell.user_ns, args)

    # ------------------------------------------------------------------ %aml_deploy / %aml_invoke
    @magic_arguments()
    @argument("endpoint", nargs="?", default=None, help="Endpoint name (3-32 characters: letters, digits, '-').")
    @argument("model", nargs="?", default=None, help="last, name@alias, models:/name/version, a registered name, runs:/...")
    @argument("--target", choices=["local", "aml"], default=None, help="Default: aml when linked to an AML workspace, else local.")
    @argument("--deployment", default=None, metavar="NAME", help="aml: deployment in the endpoint (default: default).")
    @argument("--instance-type", default=None, metavar="T", help="aml: VM size, e.g. Standard_DS3_v2.")
    @argument("--instance-count", type=int, default=None, metavar="N", help="aml: instances (default 1; kept on update).")
    @argument("--traffic", type=int, default=None, metavar="PCT", help="aml: share of the endpoint's traffic for the deployment.")
    @argument("--port", type=int, default=None, help="local: port on 127.0.0.1 (default: a free one).")
    @argument("--timeout", type=_seconds, default=None, metavar="S", help="Seconds to wait until ready (local 300, aml 1800).")
    @argument("--list", action="store_true", help="List the endpoints of this session (and of the AML workspace).")
    @argument("--delete", default=None, metavar="ENDPOINT", help="Delete ENDPOINT (or only --deployment NAME of it).")
    @argument("-v", "--verbose", action="store_true", help="Also show MLflow's log lines and warnings about the magic's calls.")
    @line_magic
    @_user_errors
    def aml_deploy(self, line):
        """Serve a registered model version as a real-time endpoint: local MLflow server or AML managed online endpoint."""
        from .deploy import deploy_from_args

        args = _parse(self.aml_deploy, line)
        return deploy_from_args(self.session, args)

    @magic_arguments()
    @argument("endpoint", help="Endpoint name (see %aml_deploy --list).")
    @argument("--df", required=True, metavar="VAR", help="pandas DataFrame to score.")
    @argument("--into", default=None, metavar="VAR", help="Variable receiving the predictions (else they are returned).")
    @argument("--deployment", default=None, metavar="NAME", help="aml: send to this deployment, bypassing traffic rules.")
    @argument("--timeout", type=_seconds, default=60.0, metavar="S", help="Seconds to wait for the answer.")
    @line_magic
    @_user_errors
    def aml_invoke(self, line):
        """Score a pandas DataFrame with an endpoint; predictions come back as a Series or DataFrame."""
        from .deploy import invoke_from_args

        args = _parse(self.aml_invoke, line)
        return invoke_from_args(self.session, self.shell.user_ns, args)

    # ------------------------------------------------------------------ %aml_sync / %aml_panel
    @magic_arguments()
    @argument("--flush", action="store_true", help="Ship pending writes now and wait for them.")
    @argument("--timeout", type=_seconds, default=30.0, help="Seconds to wait with --flush.")
    @argument("--retry", action="store_true", help="Queue the writes the stores refused again.")
    @argument("--discard", action="store_true", help="Delete the writes the stores refused (says what it drops).")
    @line_magic
    @_user_errors
    def aml_sync(self, line):
        """Show what waits to be written to each store; --flush ships it now; --retry / --discard act on failed writes."""
        from . import status

        args = _parse(self.aml_sync, line)
        if args.retry and args.discard:
            raise UsageError("Give --retry or --discard, not both.")
        if args.retry:
            print(status.retry_failed(self.session))
        elif args.discard:
            print(status.discard_failed(self.session))
        print(status.sync_report(self.session, flush=args.flush or args.retry, timeout=args.timeout))

    @magic_arguments()
    @argument("run", nargs="?", help="Open this run in the inspector: `last`, a run name of this session, or a run id.")
    @argument(
        "--compare", nargs="+", default=None, metavar="RUN",
        help="Compare 2 to 10 runs: params that differ, overlaid metric histories, best run per metric.",
    )
    @line_magic
    @_user_errors
    def aml_panel(self, line):
        """Show the live panel of this session again; with RUN, open that run (text in a terminal)."""
        args = _parse(self.aml_panel, line)
        if args.compare is not None:
            from .panel.compare import read_comparison

            runs = ([args.run] if args.run else []) + args.compare
            comparison = read_comparison(self.session, [self.session.resolve_run(run) for run in runs])
            return self._show_panel(comparison=comparison)
        details = self.session.run_details(self.session.resolve_run(args.run)) if args.run else None
        self._show_panel(details)

    def _show_panel(self, details=None, comparison=None) -> None:
        from .panel import show_panel

        show_panel(self.session, details, comparison)

    # ------------------------------------------------------------------ %aml_ui
    @magic_arguments()
    @argument("--stop", action="store_true", help="Stop the MLflow UI server(s) %aml_ui started.")
    @line_magic
    @_user_errors
    def aml_ui(self, line):
        """MLflow's UI for the linked stores: started on 127.0.0.1 for the embedded store and shown
        inline; for a tracking server, AML or Databricks, the link to that store's own UI."""
        from .ui_server import UiLinks, stop_ui, store_uis

        args = _parse(self.aml_ui, line)
        if args.stop:
            stopped = stop_ui()
            print(f"Stopped the MLflow UI at {', '.join(stopped)}." if stopped else "No MLflow UI server was running.")
            return None
        return UiLinks(store_uis(self.session))

"""The live panel of a session: header, runs table, run inspector, workspace picker.

The panel observes the Session (`Session.subscribe`) and never calls MLflow itself: run
details come from `Session.run_details`, linking goes through `link.link_from_args`, the
same code path as `%aml_link`. Widgets are built once and updated by setting `.value` /
`.children` from the observer, touching only what an event changed. Where ipywidgets is
not installed, or the frontend cannot render widgets (terminal IPython), the same
information is shown as text through IPython's display protocol.
"""

import html
import traceback
from concurrent.futures import Future, ThreadPoolExecutor

from ..errors import DbxmlError
from ..masking import redact
from ..session import Session
from .compat import set_titles
from .compare import CompareView, comparison_text
from .inspector import Inspector
from .live import LiveUpdates
from .picker import WorkspacePicker
from .runs_table import RunsTable
from .text import (
    PAGE_SIZE,
    endpoint_lines,
    journal_lines,
    journal_statuses,
    panel_text,
    run_text,
)
from .widgets import close_tree, guarded

__all__ = ["SessionPanel", "PanelView", "live_panel", "show_panel", "close_panel", "panel_text", "run_text", "WorkspacePicker", "PAGE_SIZE"]

_panels: dict[int, "SessionPanel"] = {}


# ---------------------------------------------------------------------- the panel
class SessionPanel:
    """The live panel of one Session; one per shell (see `live_panel`)."""

    def __init__(self, session: Session):
        import ipywidgets as widgets

        self.session = session
        self.statuses: list[dict] = journal_statuses(session)
        self.header = widgets.HTML()
        self.message = widgets.HTML()
        self.log = widgets.Output()  # tracebacks of unexpected errors, so none is lost
        self.runs = RunsTable(session, on_select=self.inspect, report=self.report, on_compare=self.compare)
        self.inspector = Inspector(session, report=self.report, on_rerun=self.rerun)
        self.comparison = CompareView(session, report=self.report)
        self.live = LiveUpdates(session, self.runs, self.inspector, report=self.report)
        self.ui_button = widgets.Button(
            description="MLflow UI", icon="external-link",
            tooltip="Open MLflow's UI for the linked stores (starts it for the embedded store): %aml_ui",
        )
        self.ui_button.on_click(guarded(self.report, lambda _button: self.open_ui()))
        self.check_button = widgets.Button(
            description="Check", icon="stethoscope",
            tooltip="Preflight of the link, stores, credentials, environment and journal: %aml_link --doctor",
        )
        self.check_button.on_click(guarded(self.report, lambda _button: self.check()))
        self.checks = widgets.Output()
        self.rerun_output = widgets.Output()  # what a re-run cell prints, below the inspector
        self.ui = widgets.Output()
        self._ui_pending: Future | None = None
        self._ui_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbxml-panel-ui")
        self.picker = WorkspacePicker(session, link_request=self._link, report=self.report)
        # Open when nothing is linked yet: that is when the picker is what the user wants.
        self.workspace = widgets.Accordion(
            children=[self.picker.widget], selected_index=None if session.linked else 0
        )
        set_titles(self.workspace, ("Link a workspace",))
        self.widget = widgets.VBox(
            [
                widgets.HBox(
                    [self.header, widgets.HBox([self.check_button, self.ui_button])],
                    layout=widgets.Layout(justify_content="space-between"),
                ),
                self.checks, self.runs.widget, self.comparison.widget, self.inspector.widget, self.rerun_output,
                self.ui, self.workspace,
                self.message, self.log,
            ]
        )
        self.refresh_header()
        self._closed = False
        session.subscribe(self.on_event)
        self.live.start()  # shown while a tracked cell already runs (from inside it)

    # -- errors
    def report(self, exc: BaseException) -> None:
        """Show an error in the panel: one line for a user's problem, a traceback for a bug."""
        if isinstance(exc, DbxmlError):
            text = redact(" ".join(str(exc).split()))
        else:
            text = f"Unexpected error in the panel: {type(exc).__name__}: {redact(str(exc).strip()[:300])}"
            self.log.append_stderr(redact("".join(traceback.format_exception(exc))))
        self.message.value = f'<span style="color:#cf222e">{html.escape(text)}</span>'

    # -- actions
    def inspect(self, run_id: str) -> Future:
        return self.inspector.show(run_id)

    def compare(self, run_ids: list[str]) -> Future:
        return self.comparison.show(run_ids)

    def open_ui(self) -> Future:
        """What %aml_ui shows, below the table; starting a server takes seconds, so off the kernel thread."""

        def start():
            from ..ui_server import UiLinks, store_uis

            try:
                links = UiLinks(store_uis(self.session))
            except DbxmlError as exc:
                self.report(exc)
                return None
            self.ui.outputs = ()
            self.ui.append_display_data(links)
            return links

        self.ui_button.disabled = True
        self._ui_pending = self._ui_executor.submit(guarded(self.report, start))
        self._ui_pending.add_done_callback(lambda _future: setattr(self.ui_button, "disabled", False))
        return self._ui_pending

    def check(self) -> Future:
        """The `%aml_link --doctor` lines under the header; the network checks take seconds, so off
        the kernel thread (they are bounded by doctor.DEADLINE)."""

        def run():
            from ..doctor import doctor_report

            report = doctor_report(self.session)
            self.checks.outputs = ()
            self.checks.append_stdout(report + "\n")
            return report

        self.check_button.disabled = True
        pending = self._ui_executor.submit(guarded(self.report, run))
        pending.add_done_callback(lambda _future: setattr(self.check_button, "disabled", False))
        return pending

    def rerun(self, run_id: str):
        """The inspector's Re-run button: `%aml_rerun RUN` on the kernel thread (a button click is
        handled there), its output shown under the inspector."""
        from IPython import get_ipython

        from ..rerun import rerun

        self.rerun_output.outputs = ()
        with self.rerun_output:
            return rerun(self.session, get_ipython(), run_id)

    def _link(self, args):
        from ..link import link_from_args

        return link_from_args(self.session, args)

    # -- observing the session
    def on_event(self, event: str, payload) -> None:
        try:
            self._apply(event, payload)
        except Exception as exc:  # noqa: BLE001 - Session.emit would swallow it silently
            self.report(exc)

    def _apply(self, event: str, payload) -> None:
        if event == "run_started":
            self.runs.add(payload)
            self.live.start()
        elif event in ("run_updated", "run_ended"):
            self.runs.update(payload.run_id)
            if event == "run_ended":
                self.inspector.refresh_if_showing(payload.run_id)
        elif event == "model_registered":
            self.runs.update(payload.source_run_id)
            self.inspector.refresh_if_showing(payload.source_run_id)
        elif event == "scored":
            self.inspector.refresh_if_showing(payload.run_id)
        elif event == "link":
            self.statuses = journal_statuses(self.session)
            self.refresh_header()
            self.picker.experiment.value = self.session.experiment or ""
        elif event == "journal":
            self.statuses = list(payload or [])
            self.refresh_header()
            self.runs.tick()
        elif event == "endpoint":
            self.refresh_header()

    def refresh_header(self) -> None:
        session = self.session
        link = session.link
        lines = [
            f"<b>dbxml</b> &nbsp;mode <b>{html.escape(link.mode)}</b> &nbsp;experiment "
            f"<b>{html.escape(session.experiment or 'Default')}</b>"
        ]
        for role, uri, state in journal_lines(link, self.statuses):
            colour = "#cf222e" if "last error" in state else "inherit"
            lines.append(
                f"{role}: <code>{html.escape(uri)}</code> &nbsp;"
                f'<span style="color:{colour}">{html.escape(state)}</span>'
            )
        lines += [html.escape(line) for line in endpoint_lines(session)]
        self.header.value = "<br>".join(lines)

    def text(self) -> str:
        return panel_text(self.session, self.statuses)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.session.unsubscribe(self.on_event)
        self.live.close()
        self._ui_executor.shutdown(wait=False, cancel_futures=True)
        self.comparison.close()
        self.inspector.close()
        self.runs.close()
        self.picker.close()
        close_tree(self.widget)


class PanelView:
    """What `show_panel` displays: the live widgets where a frontend renders them, else text."""

    def __init__(self, session: Session, panel: SessionPanel | None, details=None, comparison=None):
        self.session = session
        self.panel = panel
        self.details = details  # a run opened in the inspector: its text is what a terminal shows
        self.comparison = comparison  # runs compared: their text is what a terminal shows

    def text(self) -> str:
        if self.comparison is not None:
            return comparison_text(self.comparison)
        if self.details is not None:
            return run_text(self.details)
        return self.panel.text() if self.panel is not None else panel_text(self.session)

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = self.panel.widget._repr_mimebundle_() if self.panel is not None else {}
        bundle["text/plain"] = self.text()
        return bundle

    def _repr_pretty_(self, printer, cycle):
        printer.text(self.text())

    def __repr__(self) -> str:
        return self.text()


def live_panel(session: Session) -> SessionPanel | None:
    """The session's panel, built on first use; None where ipywidgets is not installed."""
    panel = _panels.get(id(session))
    if panel is None:
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            return None
        panel = _panels[id(session)] = SessionPanel(session)
    return panel


def show_panel(session: Session, details=None, comparison=None) -> None:
    """Display the session's one live panel (again): every display shows the same state.

    With `details` (a RunDetails) the inspector opens on that run, with `comparison` the
    compare view opens on those runs; a terminal gets their text.
    """
    from IPython.display import display

    panel = live_panel(session)
    if panel is not None and details is not None:
        panel.inspector.show_details(details)
    if panel is not None and comparison is not None:
        panel.comparison.show_comparison(comparison)
    display(PanelView(session, panel, details, comparison))


def close_panel(session: Session) -> None:
    """Stop observing the session and close the widgets (for %unload_ext / %reload_ext)."""
    panel = _panels.pop(id(session), None)
    if panel is not None:
        panel.close()

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
from concurrent.futures import Future

from ..errors import DbxmlError
from ..masking import redact
from ..session import Session
from .inspector import Inspector
from .picker import WorkspacePicker
from .runs_table import RunsTable
from .text import PAGE_SIZE, endpoint_lines, journal_lines, journal_statuses, panel_text, run_text
from .widgets import close_tree

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
        self.runs = RunsTable(session, on_select=self.inspect, report=self.report)
        self.inspector = Inspector(session, report=self.report)
        self.picker = WorkspacePicker(session, link_request=self._link, report=self.report)
        # Open when nothing is linked yet: that is when the picker is what the user wants.
        self.workspace = widgets.Accordion(
            children=[self.picker.widget], titles=("Link a workspace",), selected_index=None if session.linked else 0
        )
        self.widget = widgets.VBox(
            [self.header, self.runs.widget, self.inspector.widget, self.workspace, self.message, self.log]
        )
        self.refresh_header()
        self._closed = False
        session.subscribe(self.on_event)

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
        self.inspector.close()
        self.runs.close()
        self.picker.close()
        close_tree(self.widget)


class PanelView:
    """What `show_panel` displays: the live widgets where a frontend renders them, else text."""

    def __init__(self, session: Session, panel: SessionPanel | None, details=None):
        self.session = session
        self.panel = panel
        self.details = details  # a run opened in the inspector: its text is what a terminal shows

    def text(self) -> str:
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


def show_panel(session: Session, details=None) -> None:
    """Display the session's one live panel (again): every display shows the same state.

    With `details` (a RunDetails) the inspector opens on that run; a terminal gets the run's text.
    """
    from IPython.display import display

    panel = live_panel(session)
    if panel is not None and details is not None:
        panel.inspector.show_details(details)
    display(PanelView(session, panel, details))


def close_panel(session: Session) -> None:
    """Stop observing the session and close the widgets (for %unload_ext / %reload_ext)."""
    panel = _panels.pop(id(session), None)
    if panel is not None:
        panel.close()

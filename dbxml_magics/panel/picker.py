"""The workspace selector: config files, the signed-in account, the embedded store, a typed URI."""

import argparse
import html
from concurrent.futures import Future
from dataclasses import dataclass

from ..errors import DbxmlError
from ..masking import redact
from ..session import Session
from .widgets import close_tree, guarded


# ---------------------------------------------------------------------- workspace picker
@dataclass(frozen=True)
class StoreChoice:
    """One entry of the store selector and the %aml_link options it stands for."""

    label: str
    local: str | None = None
    uri: str | None = None
    config: str | None = None
    subscription: str | None = None
    resource_group: str | None = None
    workspace: str | None = None
    typed: bool = False  # the URI comes from the text box

    def link_args(self, typed_uri: str, mode: str | None, auth: str, experiment: str) -> argparse.Namespace:
        """The Namespace `%aml_link` would parse for this choice."""
        return argparse.Namespace(
            local=self.local,
            uri=typed_uri.strip() if self.typed else self.uri,
            config=self.config,
            subscription=self.subscription,
            resource_group=self.resource_group,
            workspace=self.workspace,
            mode=mode,
            auth=auth,
            experiment=experiment.strip() or None,
        )


def config_workspace_choices(start: str | None = None) -> list[StoreChoice]:
    """Workspaces named by AML config.json files on the SDK's search path from `start`."""
    from ..workspace import workspaces_in_config_files

    return [
        StoreChoice(label=f"AML {ref.workspace} ({ref.resource_group}) from {ref.source}", config=ref.source)
        for ref in workspaces_in_config_files(start)
    ]


def account_workspace_choice(ref) -> StoreChoice:
    """A workspace of the signed-in Azure account, linked by its ids like -s/-g/-w."""
    return StoreChoice(
        label=f"AML {ref.workspace} ({ref.resource_group}, subscription {ref.subscription[:8]}...)",
        subscription=ref.subscription,
        resource_group=ref.resource_group,
        workspace=ref.workspace,
    )


class WorkspacePicker:
    """Choose a store, mode, auth and experiment, then link: the form of `%aml_link`."""

    TYPED = StoreChoice(label="Typed URI (below)", typed=True)
    # "" stands for "no --mode": a None value would leave the dropdown with no selection.
    MODES = (("single store (default)", ""), ("aml-only", "aml-only"), ("both: keep current, mirror here", "both"))

    def __init__(self, session: Session, link_request, report):
        import ipywidgets as widgets

        from ..workspace import AUTH_CHOICES

        self.session = session
        self.link_request = link_request
        self.report = report
        self.embedded = StoreChoice(label=f"Embedded store ({session.store_dir})", local="")
        self.account_choices: list[StoreChoice] = []
        self.account_lookup: Future | None = None
        wide = widgets.Layout(width="560px")
        self.store = widgets.Dropdown(description="Store", options=self._options(), value=self.embedded, layout=wide)
        self.uri = widgets.Text(
            description="URI",
            placeholder="http://127.0.0.1:5000, databricks, sqlite:///path/mlflow.db, azureml://...",
            layout=wide,
        )
        self.uri.observe(guarded(report, self._on_uri_typed), names="value")
        self.mode = widgets.Dropdown(description="Mode", options=self.MODES, value="")
        self.auth = widgets.Dropdown(description="Auth", options=AUTH_CHOICES, value="default")
        self.experiment = widgets.Text(description="Experiment", value=session.experiment or "", layout=wide)
        self.link_button = widgets.Button(description="Link", button_style="primary", icon="link")
        self.link_button.on_click(guarded(report, lambda _button: self.link()))
        self.find_button = widgets.Button(
            description="Find my Azure workspaces", tooltip="List the workspaces of the signed-in Azure account"
        )
        self.find_button.on_click(guarded(report, lambda _button: self.find_account_workspaces()))
        self.message = widgets.HTML()
        self.account_message = widgets.HTML()
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.store, self.find_button, self.account_message]),
                self.uri,
                widgets.HBox([self.mode, self.auth]),
                self.experiment,
                widgets.HBox([self.link_button, self.message]),
            ]
        )
        from ..workspace import azure_credentials_available

        if azure_credentials_available():
            self.find_account_workspaces()

    def _options(self) -> list[tuple[str, StoreChoice]]:
        try:
            # The working directory, like `%aml_link --config` and the SDK search.
            from_config = config_workspace_choices()
        except Exception as exc:  # noqa: BLE001 - a broken config file must not hide the panel
            self.report(exc)
            from_config = []
        choices = [self.embedded, *from_config, *self.account_choices, self.TYPED]
        return [(choice.label, choice) for choice in choices]

    def find_account_workspaces(self) -> Future:
        """List the account's workspaces in a worker thread; the selector grows when they arrive."""
        from ..workspace import list_account_workspaces

        self.account_message.value = "<i>asking Azure...</i>"
        self.account_lookup = list_account_workspaces(
            self.session.settings, auth=self.auth.value, callback=self._account_listed
        )
        return self.account_lookup

    def _account_listed(self, future: Future) -> None:
        try:
            refs = future.result()
        except DbxmlError as exc:
            self.account_message.value = f'<span style="color:#9a6700">{html.escape(str(exc))}</span>'
            return
        except Exception as exc:  # noqa: BLE001 - shown in the panel, never lost in a thread
            self.report(exc)
            return
        self.account_choices = [account_workspace_choice(ref) for ref in refs]
        selected = self.store.value
        self.store.options = self._options()
        self.store.value = selected if selected in [value for _, value in self.store.options] else self.embedded
        self.account_message.value = f"{len(refs)} workspaces in the Azure account"

    def _on_uri_typed(self, change) -> None:
        if change["new"].strip():
            self.store.value = self.TYPED

    def link(self) -> None:
        """Link like `%aml_link` with these options; a refused link is shown here, never raised."""
        choice = self.store.value
        if choice.typed and not self.uri.value.strip():
            self.message.value = '<span style="color:#cf222e">Type a tracking URI first.</span>'
            return
        args = choice.link_args(self.uri.value, self.mode.value or None, self.auth.value, self.experiment.value)
        self.message.value = "<i>linking...</i>"
        try:
            link = self.link_request(args)
        except DbxmlError as exc:
            self.message.value = f'<span style="color:#cf222e">{html.escape(redact(" ".join(str(exc).split())))}</span>'
            return
        self.message.value = f'<span style="color:#1a7f37">Linked: {html.escape(repr(link))}</span>'

    def close(self) -> None:
        close_tree(self.widget)

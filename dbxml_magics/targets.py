"""Where runs go, as plain data: a Target is one tracking store, a Link a primary plus an optional mirror.

The bottom of the package: it imports only `masking`, so every module may import it.
"""

from dataclasses import dataclass, field
from typing import Any

from .masking import mask_uri

__all__ = ["MODES", "Target", "Link"]

MODES = ("aml-only", "both")


@dataclass(frozen=True)
class Target:
    """One tracking store.

    `uri` is what MLflow is given (it may carry credentials, so it is never displayed);
    `display` is the masked form shown to users. `credential` is an Azure credential for
    `azureml://` targets and stays out of every repr.
    """

    uri: str
    kind: str  # "embedded", "uri", "databricks", "aml"
    registry_uri: str | None = None
    artifact_root: str | None = None
    workspace: str | None = None
    studio_url: str | None = None
    credential: Any = field(default=None, repr=False, compare=False)

    @property
    def display(self) -> str:
        return mask_uri(self.uri)

    def __repr__(self) -> str:
        extra = f", workspace={self.workspace!r}" if self.workspace else ""
        return f"Target(kind={self.kind!r}, uri={self.display!r}{extra})"


@dataclass(frozen=True)
class Link:
    """The session's answer to "where do runs go": mode, primary, mirror, experiment."""

    mode: str  # "default", "local", "uri", "aml-only", "both"
    primary: Target
    mirror: Target | None = None
    experiment: str | None = None

    @property
    def targets(self) -> tuple[Target, ...]:
        return (self.primary, self.mirror) if self.mirror else (self.primary,)

    def __repr__(self) -> str:
        mirror = self.mirror.display if self.mirror else None
        return (
            f"Link(mode={self.mode!r}, primary={self.primary.display!r}, "
            f"mirror={mirror!r}, experiment={self.experiment!r})"
        )

    def _repr_pretty_(self, printer, cycle):
        printer.text(repr(self))

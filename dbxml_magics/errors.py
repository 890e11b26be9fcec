"""The project's exception types. Each message is one line a user can act on."""

__all__ = ["DbxmlError", "LinkError", "TrackError", "RegisterError", "ScoreError", "DeployError", "JournalError"]


class DbxmlError(Exception):
    """A user-facing failure: the magics turn it into a one-line UsageError."""


class LinkError(DbxmlError):
    """A link request could not be honoured; the previous link is unchanged."""


class TrackError(DbxmlError):
    """A %%track request is invalid or its run could not be started."""


class RegisterError(DbxmlError):
    """A model could not be registered; nothing was created."""


class ScoreError(DbxmlError):
    """A scoring request is invalid; no Spark job ran."""


class DeployError(DbxmlError):
    """An endpoint request is invalid or failed; nothing of it is left running."""


class JournalError(DbxmlError):
    """The local journal could not be read or written."""

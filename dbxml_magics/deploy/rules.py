"""Which names Azure accepts for endpoints and deployments, and which target a link implies."""

import re

from ..errors import DeployError

__all__ = ["check_name", "default_target"]

# Azure's rule for online endpoint and deployment names; local endpoints follow it too, so
# a notebook can switch targets without renaming.
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")


def check_name(name: str, what: str = "endpoint") -> str:
    if not _NAME.match(name or ""):
        raise DeployError(
            f"{what.capitalize()} name {name!r} is not valid: 3-32 characters, a letter first, then letters, "
            "digits or '-', not ending with '-' (Azure's rule). Example: iris-clf"
        )
    return name


def default_target(session) -> str:
    """`aml` when the link reaches an AML workspace (aml-only, or the mirror of both), else `local`."""
    return "aml" if any(t.kind == "aml" for t in session.link.targets) else "local"

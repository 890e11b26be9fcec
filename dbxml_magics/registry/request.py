"""What a %aml_register line asks for, and the source a version is made from."""

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RegisterRequest", "Source", "DEFAULT_ARTIFACT_PATH"]

DEFAULT_ARTIFACT_PATH = "model"


@dataclass
class RegisterRequest:
    """A parsed %aml_register line."""

    name: str
    model: str | None = None
    run: str | None = None
    artifact_path: str | None = None
    uri: str | None = None
    flavor: str | None = None
    alias: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    input_example: str | None = None


@dataclass
class Source:
    """What a version is created from: where the model is and which run made it."""

    source: str
    run_id: str | None
    artifact_path: str | None = None
    model_id: str | None = None
    local_dir: Path | None = None  # a local copy, when one exists already (--model)


# ---------------------------------------------------------------------- the stores

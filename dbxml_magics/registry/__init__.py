"""%aml_register: flavor detection, model logging, registration, version semantics.

Order of work, so that a mistake never leaves half a model behind:
1. check everything that needs no store (arguments, variables, flavor, the model saves);
2. ask the registry once, quickly, whether it is reachable and whether the name exists;
3. find (or log to) the source run and check the model is where the user says;
4. create the registered model and version together, deleting what was created if a later
   step fails.
In `both` mode the mirror registration is a journal row: it is shipped after the mirror run
exists, and waits in the journal while the mirror is down.

Models given with `--model` are written to the run's artifacts (`<run>/model`), the layout
every MLflow store understands (AML's MLflow endpoint included), and the folder that the
mirror receives.
"""

import re
import sys
import tempfile
from pathlib import Path

from ..errors import RegisterError
from ..quiet import captured
from ..session import ModelRecord, Session
from ..stores import quick_requests
from ..userns import parse_tags
from .flavors import save_in_memory_model
from .mirror import queue_mirror
from .request import DEFAULT_ARTIFACT_PATH, RegisterRequest
from .sources import log_to_run, source_from_run, source_from_uri
from .versions import create_version, probe_registry, registry_client, registry_summary

__all__ = ["RegisterRequest", "register_from_args", "register_model"]

# Azure ML model names: letters, digits, '-', '_', '.', starting with a letter or digit.
_AML_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


_ALIAS = re.compile(r"^[\w-]{1,255}$")


_RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)


def register_from_args(session: Session, namespace: dict, args) -> None:
    """The %aml_register magic: parse, register, print what was registered where."""
    tags = parse_tags(args.tags or [], RegisterError)
    # The magics already removed the quotes IPython keeps (parse_tags those inside a pair).
    request = RegisterRequest(
        name=args.name,
        model=args.model,
        run=args.run,
        artifact_path=args.artifact_path,
        uri=args.uri,
        flavor=args.flavor,
        alias=args.alias,
        tags=tags,
        description=args.description,
        input_example=args.input_example,
    )
    import mlflow  # noqa: F401 - MLflow configures its loggers on import; they are captured from here on

    # Inferring a signature and saving the model make MLflow warn about the magic's own calls
    # (integer outputs, pip requirements): held back unless -v, the user's model's own warnings still show.
    with captured(args.verbose):
        record, notes = register_model(session, namespace, request)
    print(registry_summary(session, record))
    for note in notes:
        print(f"dbxml: {note}", file=sys.stderr)


def register_model(session: Session, namespace: dict, request: RegisterRequest) -> tuple[ModelRecord, list[str]]:
    """Register `request` on the current link; returns the session's record and notes for the user."""
    _check_request(session, request)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dbxml-model-") as workdir:
        saved = None
        if request.model is not None:
            saved = save_in_memory_model(namespace, request, Path(workdir) / "model", notes)
        link = session.activate()
        client = registry_client(link.primary)
        with quick_requests(10):
            name_exists = probe_registry(client, request.name, link.primary.display)
        if saved is not None:
            source = log_to_run(session, client, request, saved)
        elif request.run is not None:
            source = source_from_run(session, client, request.run, request.artifact_path or DEFAULT_ARTIFACT_PATH)
        else:
            source = source_from_uri(session, client, request.uri)
        version = create_version(client, request, source, name_exists, link.primary.display)
        record = session.add_model(
            ModelRecord(
                name=request.name,
                version=str(version.version),
                source_run_id=source.run_id,
                model_uri=f"models:/{request.name}/{version.version}",
                alias=request.alias,
            )
        )
        if link.mirror is not None:
            notes.extend(queue_mirror(session, client, request, source, record))
    return record, notes


# ---------------------------------------------------------------------- checks without a store
def _check_request(session: Session, request: RegisterRequest) -> None:
    sources = [opt for opt, given in (("--model", request.model), ("--run", request.run), ("--uri", request.uri)) if given]
    if not sources:
        raise RegisterError(
            "Say what to register: --model VAR (an in-memory model), --run RUN_ID|last, or --uri MODEL_URI."
        )
    if len(sources) > 1:
        raise RegisterError(f"Choose one of {', '.join(sources)}: they name different models.")
    if request.uri is not None and request.artifact_path is not None:
        raise RegisterError("--artifact-path goes with --model or --run; a --uri already names the model's path.")
    if request.flavor is not None and request.model is None:
        raise RegisterError("--flavor goes with --model; a logged model already has its flavor.")
    if request.input_example is not None and request.model is None:
        raise RegisterError("--input-example goes with --model; a logged model already has its signature.")
    if request.artifact_path is not None:
        path = request.artifact_path.strip("/")
        if not path or ".." in path.split("/"):
            raise RegisterError(f"--artifact-path {request.artifact_path!r} is not a folder inside the run. Example: --artifact-path model")
    _check_name(session, request.name)
    if request.alias is not None:
        _check_alias(request.alias)


def _check_name(session: Session, name: str) -> None:
    if not name.strip():
        raise RegisterError("The model name is empty. Example: %aml_register iris-clf --model clf")
    if "/" in name or ":" in name or name != name.strip():
        raise RegisterError(
            f"Invalid model name {name!r}: names cannot contain '/' or ':' or start or end with spaces. Example: iris-clf"
        )
    aml = [t.display for t in session.link.targets if t.kind == "aml"]
    if aml and not _AML_NAME.match(name):
        raise RegisterError(
            f"Invalid model name {name!r} for Azure ML ({aml[0]}): use letters, digits, '-', '_' and '.', "
            "starting with a letter or digit. Example: iris-clf"
        )


def _check_alias(alias: str) -> None:
    if not _ALIAS.match(alias):
        raise RegisterError(f"Invalid alias {alias!r}: use letters, digits, '_' and '-'. Example: --alias champion")
    if _RESERVED_ALIAS.match(alias):
        raise RegisterError(f"The alias {alias!r} is reserved by MLflow ('latest', 'v<number>'). Example: --alias champion")

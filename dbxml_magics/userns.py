"""What the magics read from the user's namespace and the notebook around it: variables, tags, its path."""

import ast
import os

from .errors import DbxmlError

__all__ = ["lookup", "require_variable", "parse_tags", "notebook_path", "literal", "parse_assignment"]


def lookup(namespace: dict, dotted: str) -> tuple[bool, object]:
    """`a.b.c` in the namespace: (True, value), or (False, None) when any part is missing."""
    head, *rest = dotted.split(".")
    if head not in namespace:
        return False, None
    value = namespace[head]
    for attr in rest:
        if not hasattr(value, attr):
            return False, None
        value = getattr(value, attr)
    return True, value


def require_variable(namespace: dict, dotted: str, option: str, error: type[DbxmlError] = DbxmlError):
    """The value a magic's `option` names, or one line saying which part is missing."""
    parts = dotted.split(".")
    if not all(part.isidentifier() for part in parts):
        raise error(f"{option} expects a variable name; {dotted!r} is not one. Example: {option} clf")
    found, value = lookup(namespace, dotted)
    if found:
        return value
    if parts[0] not in namespace:
        raise error(f"{option}: there is no variable {parts[0]!r} in the notebook. Run the cell that defines it first.")
    for depth in range(1, len(parts)):
        if not lookup(namespace, ".".join(parts[: depth + 1]))[0]:
            raise error(f"{option}: {'.'.join(parts[:depth])} has no attribute {parts[depth]!r}.")
    raise error(f"{option}: {dotted!r} cannot be read.")


_MAX_TAG_KEY_LENGTH = 250  # MLflow's MAX_ENTITY_KEY_LENGTH


def parse_tags(items: list[str], error: type[DbxmlError] = DbxmlError) -> dict[str, str]:
    """`--tags k=v ...` as a dict; a malformed pair is one line naming it."""
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise error(f"--tags expects key=value pairs; got {item!r}. Example: --tags team=ml stage=dev")
        if len(key.strip()) > _MAX_TAG_KEY_LENGTH:
            # SQLite stores would take it, every other MLflow backend refuses it later.
            raise error(
                f"The tag key {key.strip()[:40]!r}... has {len(key.strip())} characters; MLflow allows "
                f"{_MAX_TAG_KEY_LENGTH}. Use a shorter key."
            )
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]  # `stage='dev'`: IPython keeps quotes inside a word
        tags[key.strip()] = value
    return tags


def notebook_path(namespace: dict) -> str:
    """Best known name of the notebook: VS Code, Jupyter server, Databricks context, else the kernel."""
    vscode = namespace.get("__vsc_ipynb_file__")
    if vscode:
        return str(vscode)
    dbutils = namespace.get("dbutils")
    if dbutils is not None:
        try:
            context = dbutils.notebook.entry_point.getDbutils().notebook().getContext()
            return str(context.notebookPath().get())
        except Exception:  # noqa: BLE001 - any dbutils shape that is not Databricks' own
            pass
    for variable in ("JPY_SESSION_NAME", "DATABRICKS_NOTEBOOK_PATH"):
        if os.environ.get(variable):
            return os.environ[variable]
    return "ipython"


def literal(text: str):
    """A value typed on a magic line or read back from a param: the Python literal it spells
    (`0.1`, `300`, `True`, `None`, `(10, 5)`, `'a b'`), else the text itself (`lbfgs`)."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


def parse_assignment(item: str, option: str, error: type[DbxmlError] = DbxmlError) -> tuple[str, str]:
    """`NAME=VALUE` of a magic option as (NAME, VALUE text); a malformed item is one line naming it."""
    name, sep, value = item.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise error(f"{option} expects NAME=VALUE with NAME a variable name; got {item!r}. Example: {option} alpha=0.1")
    return name, value

"""Keep secrets out of everything the user sees: outputs, reprs, tags, logs, messages."""

import os
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["mask_uri", "redact", "first_line", "SECRET_ENV_VARS"]

# Environment variables whose values are secrets wherever they appear.
SECRET_ENV_VARS = (
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "DATABRICKS_TOKEN",
    "DATABRICKS_CLIENT_SECRET",
    "AZUREML_ACCESS_TOKEN",
)
_SECRET_QUERY_KEYS = re.compile(r"(token|secret|password|passwd|pwd|sig|key|code)", re.I)
_MASK = "***"
# Values registered at run time (tokens obtained from a credential, passwords from URIs).
_known_secrets: set[str] = set()


def remember_secret(value: str | None) -> None:
    """Register a secret obtained at run time so that `redact` removes it too."""
    if value and len(value) >= 4:
        _known_secrets.add(value)


def mask_uri(uri: str | None) -> str:
    """The URI with its password and secret-looking query values replaced by ***."""
    if not uri:
        return uri or ""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return redact(uri)
    netloc = parts.netloc
    changed = False
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            user, password = userinfo.split(":", 1)
            remember_secret(password)
            userinfo = f"{user}:{_MASK}"
            changed = True
        netloc = f"{userinfo}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        masked = []
        for key, value in pairs:
            if _SECRET_QUERY_KEYS.search(key):
                remember_secret(value)
                value = _MASK
                changed = True
            masked.append((key, value))
        query = urlencode(masked, safe="*")
    if not changed:
        return redact(uri)  # rebuilding would turn sqlite:////abs into sqlite://abs
    return redact(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


def redact(text: str) -> str:
    """The text with every known secret value replaced by ***."""
    if not text:
        return text
    secrets = set(_known_secrets)
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            secrets.add(value)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return text


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an error, secrets removed, short enough for a one-line message."""
    lines = str(exc).strip().splitlines()
    return redact(lines[0] if lines else type(exc).__name__)[:limit]

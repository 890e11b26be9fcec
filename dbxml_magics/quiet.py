"""Keep the libraries' chatter about the magic's own calls out of the cell.

MLflow logs INFO lines (`mlflow.models.flavor_backend_registry`, ...), draws artifact
download bars and raises UserWarnings from calls the magic makes on the user's behalf;
none of it is something the user can act on. `captured(verbose)` holds them for the
duration of a block and prints them afterwards only with `-v`. Warnings raised by other
code in the block (a user's model, say) are issued again after it, so the user's own
filters decide as usual, and nothing outside the block is touched.
"""

import logging
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

__all__ = ["captured"]

_LOGGERS = ("mlflow", "py4j", "alembic")
_PROGRESS_BAR_VAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
_QUIET_PACKAGES = ("mlflow", "pyspark", "py4j", "pydantic", "alembic", "dbxml_magics")


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _ours(filename: str) -> bool:
    parts = Path(filename).parts
    return any(package in parts for package in _QUIET_PACKAGES)


@contextmanager
def captured(verbose: bool = False, stream=None):
    """Hold library log lines and warnings of the block; print them afterwards when `verbose`."""
    stream = stream if stream is not None else sys.stderr
    collect = _Collect()
    saved = []
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate, logger.level))
        logger.handlers = [collect]
        logger.propagate = False
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
    bar = os.environ.get(_PROGRESS_BAR_VAR)
    if not verbose:
        os.environ[_PROGRESS_BAR_VAR] = "false"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for logger, handlers, propagate, level in saved:
            logger.handlers = handlers
            logger.propagate = propagate
            logger.setLevel(level)
        if bar is None:
            os.environ.pop(_PROGRESS_BAR_VAR, None)
        else:
            os.environ[_PROGRESS_BAR_VAR] = bar
        held = []
        for warning in caught:
            if _ours(warning.filename):
                held.append(f"{warning.category.__name__}: {warning.message} ({warning.filename}:{warning.lineno})")
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        if verbose:
            for line in collect.lines + held:
                print(f"dbxml -v: {line}", file=stream)

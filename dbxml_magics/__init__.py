"""dbxml-magics: link a notebook session to Azure Machine Learning through MLflow.

`%load_ext dbxml_magics` registers %%track, %aml_link, %aml_unlink, %aml_register,
%aml_score, %aml_deploy, %aml_invoke, %aml_sync, %aml_panel and %aml_ui on one Session per shell. Loading imports nothing
heavy: mlflow, pyspark, azureml and ipywidgets are imported where first needed.
"""

import atexit
import sys

__version__ = "0.1.0"
__all__ = ["load_ipython_extension", "unload_ipython_extension", "__version__"]

_loaded: dict[int, object] = {}


def _flush_at_exit() -> None:
    """A normal kernel exit ships pending writes for a few seconds; what is left stays in
    the journal and is replayed by the next session in this folder."""
    for magics in list(_loaded.values()):
        try:
            magics.session.close(timeout=magics.shutdown_flush_timeout)
        except Exception:  # noqa: BLE001 - exiting must never fail because of a store
            pass


def _register_journal_kinds() -> None:
    """Rows other modules queue in the journal (a mirror's model version) need their shipper
    before the journal replays a dead kernel's rows, so they are registered at load."""
    from .journal import register_kind
    from .registry.mirror import MIRROR_KIND, register_on_mirror

    register_kind(MIRROR_KIND, register_on_mirror)


def load_ipython_extension(ipython) -> None:
    from .magics import DbxmlMagics
    from .session import Session

    if id(ipython) in _loaded:
        return
    from .versions import mlflow_mixture

    mixture = mlflow_mixture()
    if mixture:
        print(f"dbxml-magics: WARN {mixture}", file=sys.stderr)
    magics = DbxmlMagics(shell=ipython, session=None)
    session = Session(magics, shell_key=id(ipython), namespace=ipython.user_ns)
    magics.session = session
    ipython.register_magics(magics)
    if magics not in ipython.configurables:
        ipython.configurables.append(magics)
    # Settings given with %config before loading apply now.
    magics.update_config(ipython.config)
    _register_journal_kinds()
    _loaded[id(ipython)] = magics
    atexit.unregister(_flush_at_exit)  # one hook, however many shells load the extension
    atexit.register(_flush_at_exit)


def unload_ipython_extension(ipython) -> None:
    magics = _loaded.pop(id(ipython), None)
    if magics is None:
        return
    if not _loaded:
        atexit.unregister(_flush_at_exit)
    magics.session.close()
    from .panel import close_panel
    from .ui_server import stop_all

    close_panel(magics.session)
    stop_all()
    for kind, names in magics.magics.items():
        for name in names:
            ipython.magics_manager.magics[kind].pop(name, None)
    ipython.magics_manager.registry.pop(type(magics).__name__, None)
    if magics in ipython.configurables:
        ipython.configurables.remove(magics)

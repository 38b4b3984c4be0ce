"""Live dashboards of this kernel and the IPython hooks that flush them when a cell ends."""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import TYPE_CHECKING, Any

from .. import _background

if TYPE_CHECKING:
    from ..probe import Probe
    from .dashboard import Dashboard

__all__ = ["dashboards", "for_probe", "install", "installed", "latest", "register", "uninstall"]

_refs: list[weakref.ReferenceType[Dashboard]] = []
_lock = threading.Lock()
_shells: dict[int, Any] = {}  # id(shell) -> shell with our hooks registered
_remove_finish_hook: Any = None


def register(d: Dashboard) -> None:
    global _remove_finish_hook
    if _remove_finish_hook is None:  # background runs flush dashboards, IPython or not
        _remove_finish_hook = _background.add_finish_hook(_background_finished)
    with _lock:
        _refs[:] = [r for r in _refs if r() is not None and r() is not d]
        _refs.append(weakref.ref(d))


def unregister(d: Dashboard) -> None:
    with _lock:
        _refs[:] = [r for r in _refs if r() is not None and r() is not d]


def dashboards() -> list[Dashboard]:
    """Dashboards created in this process and not closed, oldest first."""
    with _lock:
        out = [r() for r in _refs]
    return [d for d in out if d is not None and not d.closed]


def latest() -> Dashboard | None:
    ds = dashboards()
    return ds[-1] if ds else None


def for_probe(probe: Probe) -> Dashboard | None:
    """The most recent open live dashboard of ``probe``."""
    for d in reversed(dashboards()):
        if d.probe is probe:
            return d
    return None


# ---------------------------------------------------------------------- IPython hooks
def _post_run_cell(result: Any = None) -> None:
    error = getattr(result, "error_in_exec", None) or getattr(result, "error_before_exec", None)
    for d in dashboards():
        with contextlib.suppress(Exception):  # never print tracebacks into the user's cell
            d._cell_finished(error)
    from .. import _delivery

    for strategy in _delivery.active():
        with contextlib.suppress(Exception):
            strategy.cell_finished()


def _background_finished(run: _background.BackgroundRun) -> None:
    for d in dashboards():
        with contextlib.suppress(Exception):
            d._background_finished(run)


def install(shell: Any = None) -> bool:
    """Register the end-of-cell hooks on ``shell`` (the running IPython by default); idempotent.

    Returns False outside IPython.
    """
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:  # pragma: no cover
            return False
        shell = get_ipython()
    if shell is None:
        return False
    cbs = shell.events.callbacks
    if _post_run_cell not in cbs.get("post_run_cell", []):
        shell.events.register("post_run_cell", _post_run_cell)
    _shells[id(shell)] = shell
    return True


def uninstall(shell: Any) -> None:
    """Remove what :func:`install` registered on ``shell``."""
    with contextlib.suppress(ValueError):
        shell.events.unregister("post_run_cell", _post_run_cell)
    _shells.pop(id(shell), None)


def installed(shell: Any) -> bool:
    return _post_run_cell in shell.events.callbacks.get("post_run_cell", [])

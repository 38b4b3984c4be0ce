"""Live dashboards of this kernel and the IPython hooks that flush them when a cell ends."""

from __future__ import annotations

import contextlib
import inspect
import threading
import weakref
from typing import TYPE_CHECKING, Any, Protocol

from . import _background

if TYPE_CHECKING:
    from ..probe import Probe


class Dashboard(Protocol):
    """What this registry needs of a live dashboard (``widgets.dashboard.Dashboard`` is one; this
    module does not import it, so the two do not form an import cycle)."""

    @property
    def probe(self) -> Probe | None: ...

    @property
    def closed(self) -> bool: ...

    def detach(self) -> None: ...

    def close(self) -> None: ...

    def _cell_finished(self, error: BaseException | None) -> None: ...

    def _background_finished(self, run: _background.BackgroundRun) -> None: ...

__all__ = [
    "cell_parent",
    "dashboards",
    "for_probe",
    "install",
    "installed",
    "latest",
    "register",
    "uninstall",
]

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
    _cell["parent"] = None  # from here on the kernel's statuses are the cell's own
    error = getattr(result, "error_in_exec", None) or getattr(result, "error_before_exec", None)
    for d in dashboards():
        with contextlib.suppress(Exception):  # never print tracebacks into the user's cell
            d._cell_finished(error)
    from . import _delivery

    for strategy in _delivery.active():
        with contextlib.suppress(Exception):
            strategy.cell_finished()


# ---------------------------------------------------------------------- kernel status while a cell runs
# With kernel subshells (ipykernel >= 7: trainscope's own subshell, or JupyterLab's per-comm-target
# ones), with the pump and with jupyter-ui-poll, a click's comm_msg is handled while the training
# cell runs, and ipykernel publishes ``status: busy`` then ``status: idle`` for it.  JupyterLab's
# kernel indicator shows the latest status message whatever its parent, so it read *Idle* while
# the cell was still running (the only filter it has is the server's ``untracked_message_types``).
# While a cell runs, every ``idle`` published for another message is therefore followed by a
# ``busy`` whose parent is the running cell's execute_request: the indicator stays *Busy*, the
# click's own request still gets its ``idle`` (frontends wait for it), and the cell's final
# ``idle`` (published after ``post_run_cell``) is untouched.
_cell: dict[str, Any] = {"parent": None}
_patched: dict[int, tuple[Any, Any]] = {}  # id(kernel) -> (kernel, original _publish_status)


def cell_parent() -> Any:
    """The running cell's execute_request (as ipykernel keeps it), or None between cells."""
    return _cell["parent"]


def _msg_id(msg: Any) -> Any:
    try:
        return msg["header"]["msg_id"]
    except (KeyError, TypeError, IndexError):
        return None


def _pre_run_cell(info: Any = None) -> None:
    _cell["parent"] = None
    kernel = next(iter(_patched.values()))[0] if _patched else None  # one kernel per process
    if kernel is None or threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(Exception):
        parent = kernel.get_parent("shell")
        if _msg_id(parent) is not None and parent["header"].get("msg_type") == "execute_request":
            _cell["parent"] = parent


def _kernel(shell: Any = None) -> Any:
    if shell is None:
        with contextlib.suppress(Exception):
            from IPython import get_ipython

            shell = get_ipython()
    return getattr(shell, "kernel", None)


def _patch_status(kernel: Any) -> None:
    """Wrap ``kernel._publish_status`` (an ipykernel internal; skipped if it is not there)."""
    if kernel is None or id(kernel) in _patched:
        return
    orig = getattr(kernel, "_publish_status", None)
    if orig is None or not callable(orig):
        return
    try:
        params = list(inspect.signature(orig).parameters)
    except (TypeError, ValueError):
        return
    if params[:2] != ["status", "channel"]:  # ipykernel >= 6.10; older lines are left alone
        return

    def publish_status(status: Any, channel: Any, parent: Any = None) -> Any:
        out = orig(status, channel, parent)
        cell = _cell["parent"]
        if status != "idle" or cell is None:
            return out
        try:
            this = parent if parent is not None else kernel.get_parent(channel)
            if _msg_id(this) != _msg_id(cell):
                orig("busy", "shell", cell)
        except Exception:  # the kernel's own status must never fail because of this
            pass
        return out

    kernel._publish_status = publish_status
    _patched[id(kernel)] = (kernel, orig)


def _unpatch_status(kernel: Any) -> None:
    entry = _patched.pop(id(kernel), None) if kernel is not None else None
    if entry is not None:
        with contextlib.suppress(AttributeError):
            del entry[0]._publish_status  # the class's method shows through again


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
    if _pre_run_cell not in cbs.get("pre_run_cell", []):
        shell.events.register("pre_run_cell", _pre_run_cell)
        _pre_run_cell()  # installed from inside a running cell (watch() is usually called in one)
    _patch_status(_kernel(shell))
    _shells[id(shell)] = shell
    return True


def uninstall(shell: Any) -> None:
    """Remove what :func:`install` registered on ``shell``."""
    with contextlib.suppress(ValueError):
        shell.events.unregister("post_run_cell", _post_run_cell)
    with contextlib.suppress(ValueError):
        shell.events.unregister("pre_run_cell", _pre_run_cell)
    _unpatch_status(_kernel(shell))
    _cell["parent"] = None
    _shells.pop(id(shell), None)


def installed(shell: Any) -> bool:
    return _post_run_cell in shell.events.callbacks.get("post_run_cell", [])

"""Getting dashboard clicks to Python while the training cell is still running.

A kernel runs shell messages one at a time: while a cell trains, the ``comm_msg`` a widget click
sends waits behind it, and would only be handled after the loop ends.  There is no public API to
change that, so each ipykernel line gets its own strategy, chosen by *feature detection* (never
by version number), and every one of them is pinned by a test against a real kernel of that line
(``tests/test_delivery_kernels.py``):

``subshell`` (ipykernel >= 7.4, ``BaseComm._reply_subshell_for`` exists)
    trainscope creates one private kernel *subshell* (a thread with its own event loop) and routes
    the messages of its own comms there.  Handlers run at once in that thread, with no polling;
    they only validate and enqueue.  Without this, ipykernel 7.4 routes a comm's messages to the
    shell it last published from -- the training cell's main shell for a dashboard that streams.
``pump`` (ipykernel 7.0 - 7.3, a shell-channel thread feeding the main shell over inproc)
    At step boundaries (at most every ``interval`` seconds) the main shell's inproc socket is read
    without blocking.  Messages for trainscope's comms are dispatched right away on the main
    thread; everything else (``execute_request`` of queued cells, other widgets' messages...) is
    handed back to the kernel in arrival order, to run after the current cell exactly as it would
    have without us.
``ui_poll`` (ipykernel 6.x, ``kernel.do_one_iteration`` exists)
    jupyter-ui-poll's ``ui_events()``: it processes pending shell messages at step boundaries,
    holding back ``execute_request`` until the cell ends.
``none``
    Clicks are handled after the cell; the dashboard says so ("applies after this cell").

Handlers must only validate and enqueue: with ``subshell`` they run concurrently with training in
another thread, with ``pump`` / ``ui_poll`` inside the user's ``optimizer.step()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import warnings
from typing import Any, ClassVar

from ..interventions._state import interrupts_deferred

__all__ = [
    "STRATEGIES",
    "Delivery",
    "InprocPump",
    "NoDelivery",
    "SubshellRoute",
    "UiPoll",
    "available",
    "current_kernel",
    "get_delivery",
    "reset",
]

_COMM_TYPES = frozenset({"comm_msg", "comm_open", "comm_close"})


def current_kernel() -> Any:
    """The running ipykernel ``Kernel``, or ``None`` outside a Jupyter kernel."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency of ipywidgets
        return None
    ip = get_ipython()
    return getattr(ip, "kernel", None) if ip is not None else None


class Delivery:
    """Base class: what a dashboard needs from a strategy."""

    name = "none"
    live = False
    """True when clicks reach Python while a cell runs."""
    note = "clicks are handled when the running cell finishes"

    def route(self, widget: Any) -> None:
        """Make ``widget``'s incoming messages use this strategy."""

    def pump(self) -> None:
        """Process pending frontend messages (called at step boundaries, main thread)."""

    def cell_finished(self) -> None:
        """The cell ended (``post_run_cell``)."""

    def close(self) -> None:
        """Stop using this strategy (``%unload_ext``); nothing may be left waiting."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "live": self.live, "note": self.note}


class NoDelivery(Delivery):
    """No help: clicks queue behind the running cell (Jupyter's default)."""


class SubshellRoute(Delivery):
    """Route trainscope's comms to a private subshell thread (ipykernel >= 7.4)."""

    name = "subshell"
    live = True
    note = "clicks are handled at once in a private kernel subshell"
    _ids: ClassVar[dict[int, str]] = {}  # id(kernel) -> subshell id (one per kernel process)

    @staticmethod
    def available(kernel: Any) -> bool:
        try:
            from ipykernel.comm.comm import BaseComm
        except ImportError:
            return False
        sct = getattr(kernel, "shell_channel_thread", None)
        return (
            sct is not None
            and hasattr(getattr(sct, "manager", None), "_create_subshell")
            and hasattr(BaseComm, "_reply_subshell_for")
        )

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        sid = SubshellRoute._ids.get(id(kernel))
        if sid is None or sid not in self._list():
            sid = SubshellRoute._ids[id(kernel)] = self._create()
        self.subshell_id = sid

    def _list(self) -> list[str]:
        try:
            return list(self.kernel.shell_channel_thread.manager.list_subshell())
        except Exception:
            return []

    def _create(self) -> str:
        # the subshell manager must be driven from the shell-channel thread
        sct = self.kernel.shell_channel_thread
        box: dict[str, Any] = {}
        done = threading.Event()

        def create() -> None:
            try:
                box["id"] = sct.manager._create_subshell()
            except Exception as e:  # pragma: no cover - reported below
                box["error"] = e
            finally:
                done.set()

        sct.io_loop.add_callback(create)
        if not done.wait(10) or "error" in box:
            raise RuntimeError(
                f"could not create a kernel subshell: {box.get('error', 'timed out')}"
            )
        return str(box["id"])

    def route(self, widget: Any) -> None:
        comm = getattr(widget, "comm", None)
        if comm is None or not hasattr(comm, "_reply_subshell_for"):
            return
        sid = self.subshell_id

        def reply_subshell_for(data: Any, default: Any) -> str:
            return sid

        # an instance attribute shadows BaseComm._reply_subshell_for: this comm's messages always
        # go to our subshell, whichever shell published last
        comm._reply_subshell_for = reply_subshell_for


class InprocPump(Delivery):
    """Read the main shell's inproc socket at step boundaries (ipykernel 7.0 - 7.3)."""

    name = "pump"
    live = True
    note = "clicks are handled at the next step boundary"

    def __init__(self, kernel: Any, interval: float = 0.05) -> None:
        self.kernel = kernel
        self.interval = interval
        self.socket = kernel.shell_channel_thread.manager._shell_channel_to_main.to_socket
        self.comm_ids: set[str] = set()
        self.dispatched = 0
        self.handed_back = 0
        self.errors: list[str] = []
        self._last = 0.0
        self._loop = self._kernel_loop()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._closed = False

    @staticmethod
    def available(kernel: Any) -> bool:
        sct = getattr(kernel, "shell_channel_thread", None)
        mgr = getattr(sct, "manager", None)
        return (
            mgr is not None
            and hasattr(mgr, "_shell_channel_to_main")
            and hasattr(kernel, "shell_main")
        )

    def _kernel_loop(self) -> asyncio.AbstractEventLoop | None:
        io_loop = getattr(self.kernel, "io_loop", None)
        loop = getattr(io_loop, "asyncio_loop", None)
        return loop if isinstance(loop, asyncio.AbstractEventLoop) else None

    def route(self, widget: Any) -> None:
        comm = getattr(widget, "comm", None)
        cid = getattr(comm, "comm_id", None)
        if cid:
            self.comm_ids.add(str(cid))

    def pump(self, max_msgs: int = 100) -> None:
        if self._closed or threading.current_thread() is not threading.main_thread():
            return
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        if not self.socket.poll(0):
            return
        with _interrupts_held():
            n = 0
            while n < max_msgs and self.socket.poll(0):
                self._handle(self.socket.recv_multipart(copy=False))
                n += 1

    def _handle(self, frames: list[Any]) -> None:
        k = self.kernel
        session = k.session
        try:
            idents, body = session.feed_identities(frames, copy=False)
            # header only: unlike a full deserialize this does not record the HMAC in
            # session.digest_history, so the kernel accepts the message when it runs it later
            head = session.deserialize(body, content=False, copy=False)
            mtype = head["header"]["msg_type"]
            ours = mtype in _COMM_TYPES and self._is_ours(session, head)
        except Exception:
            self._hand_back(frames, None)
            return
        if not ours:
            self._hand_back(frames, body[0])
            return
        try:
            msg = session.deserialize(body, content=True, copy=False)
            # called directly: the parent (and so any output) stays the running cell
            k.shell_handlers[mtype](None, idents, msg)
            self.dispatched += 1
        except Exception as e:  # comm already logs handler errors; never break the loop
            if len(self.errors) < 100:
                self.errors.append(f"{mtype}: {type(e).__name__}: {e}")

    def _is_ours(self, session: Any, head: dict[str, Any]) -> bool:
        content = session.unpack(head["content"])
        return isinstance(content, dict) and str(content.get("comm_id")) in self.comm_ids

    def _hand_back(self, frames: list[Any], signature: Any) -> None:
        """Give a message back to the kernel, to run once the current cell is done.

        The kernel's handler takes the main shell's asyncio lock, which the running cell holds;
        tasks wait for it in creation order, so handed-back messages run after the cell, in
        arrival order, and before anything the kernel itself reads from the socket later.
        """
        self.handed_back += 1
        if signature is not None:
            # belt and braces for versions that record the digest of a header-only peek: the
            # kernel would reject the message as a "Duplicate Signature" replay
            with contextlib.suppress(Exception):
                self.kernel.session.digest_history.discard(bytes(signature))
        coro = self.kernel.shell_main(None, frames)
        if self._loop is not None and not self._loop.is_closed():
            task = self._loop.create_task(coro)
        else:  # pragma: no cover - the kernel always has an asyncio loop
            task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # keep a reference until it ran
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        # read what is still waiting, so nothing stays behind a pump that no longer runs
        if threading.current_thread() is threading.main_thread():
            with contextlib.suppress(Exception):
                self._last = 0.0
                self.pump()
        self._closed = True


def _interrupts_held() -> contextlib.AbstractContextManager[None]:
    """Delay Ctrl-C (SIGINT) until the block ends: a message read off the socket is always
    dispatched or handed back, never lost half-way (a queued cell would hang at ``[*]``).  The
    core's :func:`~trainscope.interventions._state.interrupts_deferred` does exactly that."""
    return interrupts_deferred()


class UiPoll(Delivery):
    """ipykernel 6.x: jupyter-ui-poll's ``ui_events()`` at step boundaries."""

    name = "ui_poll"
    live = True
    note = "clicks are handled at the next step boundary (jupyter-ui-poll)"

    def __init__(self, kernel: Any, interval: float = 0.05) -> None:
        from jupyter_ui_poll import ui_events  # noqa: F401  (fail now if missing)

        self.kernel = kernel
        self.interval = interval
        self._cm: Any = None
        self._poll: Any = None
        self._last = 0.0

    @staticmethod
    def available(kernel: Any) -> bool:
        if kernel is None or not hasattr(kernel, "do_one_iteration"):
            return False
        if getattr(kernel, "shell_channel_thread", None) is not None:
            return False  # 7.0.x: do_one_iteration no longer reads the main shell's messages
        try:
            import jupyter_ui_poll  # noqa: F401
        except ImportError:
            return False
        return True

    def pump(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        if self._poll is None:
            from jupyter_ui_poll import ui_events

            # holds back execute_request until post_run_cell, then replays them in order
            self._cm = ui_events()
            self._poll = self._cm.__enter__()
        self._poll(20)

    def cell_finished(self) -> None:
        cm, self._cm, self._poll = self._cm, None, None
        if cm is not None:
            with contextlib.suppress(Exception):
                cm.__exit__(None, None, None)

    def close(self) -> None:
        self.cell_finished()


STRATEGIES: dict[str, type[Any]] = {
    "subshell": SubshellRoute,
    "pump": InprocPump,
    "ui_poll": UiPoll,
}
_ORDER = ("subshell", "pump", "ui_poll")
_CACHE: dict[tuple[int, str], Delivery] = {}


def available(kernel: Any = None) -> list[str]:
    """Strategies the current (or given) kernel supports, best first."""
    k = current_kernel() if kernel is None else kernel
    if k is None:
        return []
    out = []
    for name in _ORDER:
        try:
            if STRATEGIES[name].available(k):
                out.append(name)
        except Exception:
            continue
    return out


def get_delivery(preferred: str = "auto") -> Delivery:
    """The strategy to use in this kernel (one shared instance per kernel and strategy).

    ``preferred`` is ``"auto"`` (the best available), one of :data:`STRATEGIES` or ``"none"``.
    Outside a Jupyter kernel this returns :class:`NoDelivery`.
    """
    if preferred != "auto" and preferred != "none" and preferred not in STRATEGIES:
        raise ValueError(
            f"delivery must be 'auto', 'none' or one of {', '.join(STRATEGIES)}; got {preferred!r}"
        )
    k = current_kernel()
    if k is None or preferred == "none":
        return NoDelivery()
    names = available(k)
    if preferred != "auto":
        if preferred not in names:
            warnings.warn(
                f"trainscope: delivery {preferred!r} is not supported by this kernel "
                f"(available: {', '.join(names) or 'none'}); clicks will apply after the cell",
                RuntimeWarning,
                stacklevel=3,
            )
            return NoDelivery()
        names = [preferred]
    for name in names:
        key = (id(k), name)
        if key in _CACHE:
            return _CACHE[key]
        try:
            d: Delivery = STRATEGIES[name](k)
        except Exception as e:
            warnings.warn(
                f"trainscope: delivery {name!r} failed to start: {e!r}",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        _CACHE[key] = d
        return d
    warnings.warn(
        "trainscope: this kernel offers no way to receive clicks while a cell runs; "
        "interventions clicked during training will apply after the cell finishes",
        RuntimeWarning,
        stacklevel=3,
    )
    return NoDelivery()


def active() -> list[Delivery]:
    """The strategies started in this process."""
    return list(_CACHE.values())


def reset() -> None:
    """Close every started strategy (``%unload_ext``)."""
    for d in list(_CACHE.values()):
        with contextlib.suppress(Exception):
            d.close()
    _CACHE.clear()

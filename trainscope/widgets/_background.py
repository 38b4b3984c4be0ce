"""``fit_in_background``: run the training loop in a thread, so the kernel stays idle.

This is the fallback for frontends where no click-delivery strategy works while a cell blocks
(see :mod:`trainscope._delivery`): with training in a thread the kernel handles widget messages as
usual, and the probe applies clicked actions at the next step boundary, on the training thread.

Trade-offs (also in ``docs/dashboard.md``): Ctrl-C / "interrupt kernel" does not reach the thread
(use :meth:`BackgroundRun.stop`, which stops at the next step boundary of a watched model -- any
attached probe's step, or any optimizer step, whatever else is subscribed); prints
from the thread may appear in whichever cell is executing at the time (ipykernel 7); the loop
shares the GIL with the UI; and the user must not start a second loop on the same model meanwhile.

Stdlib only: the Jupyter layer registers itself through :func:`add_finish_hook`.
"""

from __future__ import annotations

import atexit
import contextlib
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

__all__ = [
    "BackgroundRun",
    "StopTraining",
    "add_finish_hook",
    "fit_in_background",
    "stop_requested",
]


class StopTraining(BaseException):
    """Raised at a step boundary inside a background run after :meth:`BackgroundRun.stop`.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that ``except Exception`` in the user's
    loop does not swallow it.
    """


_RUNS: dict[int, BackgroundRun] = {}  # thread ident -> run
_FINISH_HOOKS: list[Callable[[BackgroundRun], None]] = []


def add_finish_hook(hook: Callable[[BackgroundRun], None]) -> Callable[[], None]:
    """Call ``hook(run)`` when any background run ends; returns a function that removes it."""
    _FINISH_HOOKS.append(hook)

    def remove() -> None:
        with contextlib.suppress(ValueError):
            _FINISH_HOOKS.remove(hook)

    return remove


def stop_requested() -> bool:
    """True inside a background run whose :meth:`~BackgroundRun.stop` was called (cheap)."""
    run = _RUNS.get(threading.get_ident())
    return run is not None and run._stop.is_set()


def check_stop() -> None:
    """Raise :class:`StopTraining` in a background run that was asked to stop."""
    run = _RUNS.get(threading.get_ident())
    if run is not None and run._stop.is_set():
        run._stop_raised = True
        raise StopTraining(f"stopped by {run.name}.stop()")


class BackgroundRun:
    """Handle of a training function running in a thread (see :func:`fit_in_background`)."""

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], name: str
    ) -> None:
        self.fn = fn
        self.name = name
        self.result: Any = None
        self.exception: BaseException | None = None
        self.traceback: str | None = None
        self.started: float | None = None
        self.finished: float | None = None
        self._stop = threading.Event()
        self._stop_raised = False
        self._arm_lock = threading.Lock()
        self._armed = False
        self._stop_handles: list[Any] = []
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(args, kwargs), name=name, daemon=True
        )

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        _RUNS[threading.get_ident()] = self
        self.started = time.time()
        try:
            self.result = self.fn(*args, **kwargs)
        except StopTraining as e:
            self.exception = e
        except BaseException as e:  # reported on the handle, never lost silently
            self.exception = e
            self.traceback = traceback.format_exc()
        finally:
            self.finished = time.time()
            _RUNS.pop(threading.get_ident(), None)
            self._disarm()
            for hook in list(_FINISH_HOOKS):
                with contextlib.suppress(Exception):
                    hook(self)
            self._done.set()

    # ---------------------------------------------------------------- public
    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._done.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def status(self) -> str:
        """``running``, ``finished``, ``stopped`` or ``failed``."""
        if self.finished is None:  # set before the finish hooks run
            return "running"
        if isinstance(self.exception, StopTraining):
            return "stopped"
        return "failed" if self.exception is not None else "finished"

    def stop(self) -> None:
        """Ask the loop to stop: :class:`StopTraining` is raised at its next step boundary.

        Works when the loop trains a model watched by trainscope (a probe with an optimizer, or
        ``probe.step()`` calls); otherwise the function has to check :func:`stop_requested`.
        """
        self._stop.set()
        self._arm()

    # the stop check at step boundaries: installed by stop(), removed when the run ends
    def _arm(self) -> None:
        """Check for the stop at every step boundary of the loop: a callback on every attached
        probe (``probe.on_step``) and a global optimizer step hook (for a probe created after
        ``stop()`` or a loop without one).  Both run on the training thread after the step is
        complete, and do nothing on any other thread."""
        with self._arm_lock:
            if self._armed or self._done.is_set():
                return
            self._armed = True
            handles: list[Any] = []
            from ..recorder import ATTACHED  # model -> its attached probe (the public registry)

            for probe in list(ATTACHED.values()):
                with contextlib.suppress(Exception):
                    handles.append(probe.on_step(self._check_here))
            optim_mod = sys.modules.get("torch.optim.optimizer")
            register = getattr(optim_mod, "register_optimizer_step_post_hook", None)
            if register is not None:
                with contextlib.suppress(Exception):
                    handles.append(register(self._check_after_optimizer_step))
            self._stop_handles = handles

    def _disarm(self) -> None:
        with self._arm_lock:
            handles, self._stop_handles = self._stop_handles, []
            self._armed = True  # a stop() after the end installs nothing
        for h in handles:
            with contextlib.suppress(Exception):
                h.remove()

    def _check_here(self, *_: Any) -> None:
        if threading.get_ident() == self._thread.ident and self._stop.is_set():
            self._stop_raised = True
            raise StopTraining(f"stopped by {self.name}.stop()")

    def _check_after_optimizer_step(self, *_: Any) -> None:
        self._check_here()

    def join(self, timeout: float | None = None) -> Any:
        """Wait for the run; return its result or re-raise its exception (not for ``stop()``)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.name} still running after {timeout} s")
        if self.exception is not None and not isinstance(self.exception, StopTraining):
            raise self.exception
        return self.result

    def __repr__(self) -> str:
        took = ""
        if self.started is not None:
            took = f", {((self.finished or time.time()) - self.started):.1f} s"
        return f"<BackgroundRun {self.name}: {self.status}{took}>"


_counter = 0


def fit_in_background(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> BackgroundRun:
    """Run ``fn(*args, **kwargs)`` (the user's training loop) in a daemon thread.

    Use it where clicks cannot reach a blocking cell (a frontend that none of the delivery
    strategies supports): the kernel stays idle, so the dashboard receives clicks normally and
    the probe applies them at the next step boundary on the training thread.

    Parameters
    ----------
    fn
        The training function.  It should train a model watched by trainscope
        (``trainscope.watch(model, optimizer)``), so that the dashboard updates and
        :meth:`BackgroundRun.stop` can stop it at a step boundary.

    Returns
    -------
    BackgroundRun
        ``.status``, ``.result``, ``.exception``, ``.stop()``, ``.join()``.

    Examples
    --------
    >>> def train(epochs):                                          # doctest: +SKIP
    ...     for _ in range(epochs):
    ...         for x, y in loader:
    ...             loss = loss_fn(model(x), y)
    ...             opt.zero_grad(); loss.backward(); opt.step()
    >>> run = trainscope.fit_in_background(train, 20)               # doctest: +SKIP
    >>> run.stop()                                                  # doctest: +SKIP
    """
    if not callable(fn):
        raise TypeError(
            f"fit_in_background needs the training function itself, got {type(fn).__name__}; "
            "wrap the loop in a function: def train(): ..., then fit_in_background(train)"
        )
    global _counter
    _counter += 1
    run = BackgroundRun(fn, args, kwargs, name=f"trainscope-fit-{_counter}")
    _LIVE[:] = [r for r in _LIVE if not r.done]
    _LIVE.append(run)
    run._thread.start()
    return run


_LIVE: list[BackgroundRun] = []  # started runs not yet seen finished (pruned at each start)
EXIT_TIMEOUT = 10.0
"""Seconds the interpreter waits at exit for a running background loop to stop."""


def _stop_all_at_exit() -> None:
    """Stop every running background loop before the interpreter shuts down: a daemon thread
    left inside torch while Python finalizes aborts the process ("terminate called without an
    active exception")."""
    runs = [r for r in _LIVE if r.running]
    for r in runs:
        r.stop()
    deadline = time.monotonic() + EXIT_TIMEOUT
    for r in runs:
        if not r._done.wait(max(deadline - time.monotonic(), 0.0)):
            print(
                f"trainscope: {r.name} did not reach a step boundary within {EXIT_TIMEOUT:.0f} s "
                "of exit; it is abandoned (the loop never stepped a watched model or optimizer)",
                file=sys.stderr,
            )


atexit.register(_stop_all_at_exit)

"""``trainscope.watch`` and ``trainscope.show`` (re-exported lazily by the top-level package)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

from torch import nn

from ..history import History
from ..probe import Probe
from . import _live
from .dashboard import Dashboard

__all__ = ["show", "show_run", "watch"]

_DASHBOARD_KW = (
    "delivery",
    "update_interval",
    "detail_interval",
    "total_steps",
    "steps_per_epoch",
    "title",
)


def _display(obj: Any) -> bool:
    """Display ``obj`` in IPython / Jupyter, once per cell: a call that displays what it returns
    (``watch()``, ``show()``, ``open()``) leaves nothing for the cell's automatic display of its
    last expression to show again, so ``trainscope.watch(model)`` on its own line and
    ``scope = trainscope.watch(model)`` both show one dashboard.  In a plain script (no IPython)
    there is nothing to show.  Returns whether it displayed."""
    ip = _ipython()
    if ip is None:
        return False
    from IPython.display import display

    display(obj)
    _not_again_in_this_cell(obj, ip)
    return True


def _ipython() -> Any:
    with contextlib.suppress(ImportError):
        from IPython import get_ipython

        return get_ipython()
    return None


def _not_again_in_this_cell(obj: Any, ip: Any) -> None:
    """Give ``obj`` an instance ``_ipython_display_`` that skips the displayhook's call in the
    cell that is running now (the value was just displayed) and displays as usual otherwise:
    from a later cell, or an explicit ``display()`` / ``trainscope.show()``."""
    count = ip.execution_count
    old = obj.__dict__.get("_ipython_display_")

    def _ipython_display_() -> None:
        if ip.execution_count == count and _in_displayhook():
            return
        from IPython.display import display

        mine = obj.__dict__.pop("_ipython_display_", None)  # display it the way its class does
        try:
            display(obj)
        finally:
            if mine is not None:
                obj.__dict__["_ipython_display_"] = mine

    if old is not None and getattr(old, "__qualname__", "").startswith(
        "_not_again_in_this_cell"
    ):
        obj.__dict__.pop("_ipython_display_")
    try:
        obj.__dict__["_ipython_display_"] = _ipython_display_
    except (AttributeError, TypeError):  # no instance dict: it may show twice, nothing worse
        pass


def _in_displayhook() -> bool:
    """Whether IPython's displayhook (the automatic ``Out[n]`` display of a cell's last
    expression) is on the call stack, as opposed to an explicit ``display()``."""
    try:
        from IPython.core.displayhook import DisplayHook
    except ImportError:
        return False
    f: FrameType | None = sys._getframe(1)
    for _ in range(30):
        if f is None:
            return False
        if f.f_code.co_name == "__call__" and isinstance(f.f_locals.get("self"), DisplayHook):
            return True
        f = f.f_back
    return False


def show_run(run: Any) -> bool:
    """Display a saved run (a :class:`~trainscope.runlog.Run` or ``RunSet``) the way displaying
    it as a cell's value does (its read-only dashboard), once per cell; what
    :func:`trainscope.open` does in a notebook.  Returns whether it displayed."""
    return _display(run)


def watch(
    model: nn.Module | Probe,
    optimizer: Any = None,
    *,
    display: bool = True,
    delivery: str = "auto",
    update_interval: float = 0.2,
    detail_interval: float = 1.0,
    total_steps: int | None = None,
    steps_per_epoch: int | None = None,
    title: str | None = None,
    **probe_kwargs: Any,
) -> Dashboard:
    """Attach a probe to ``model`` and show the live dashboard (see :func:`trainscope.watch`)."""
    if isinstance(model, Probe):
        if optimizer is not None or probe_kwargs:
            raise TypeError(
                "watch(probe) takes no optimizer or probe options: the probe already has them"
            )
        probe = model
    else:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"watch() needs the model (a torch.nn.Module) or a trainscope.Probe, got {type(model).__name__}"
            )
        # watching the same model again (re-running the cell) replaces the previous dashboard
        for old in _live.dashboards():
            if (
                old.probe is not None
                and old.probe.model is model
                and old.probe.is_attached
                and getattr(old, "_owns_probe", False)
            ):
                old.detach()
        probe = Probe(model, optimizer, **probe_kwargs)
    try:
        dash = Dashboard(
            probe,
            delivery=delivery,
            update_interval=update_interval,
            detail_interval=detail_interval,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            title=title,
        )
    except BaseException:
        if probe is not model:
            probe.detach()  # leave the model exactly as it was
        raise
    dash._owns_probe = probe is not model
    if display:
        _display(dash)
    return dash


def show(source: Probe | History | Sequence[History] | Dashboard, **kwargs: Any) -> Dashboard:
    """Display a dashboard for a probe (live), a history / list of histories (saved runs), or
    display an existing dashboard again (see :func:`trainscope.show`)."""
    if isinstance(source, Dashboard):
        if kwargs:
            raise TypeError("show(dashboard) takes no options: the dashboard already exists")
        dash = source
    elif isinstance(source, Probe):
        found = _live.for_probe(source)
        dash = found if isinstance(found, Dashboard) and not kwargs else Dashboard(source, **kwargs)
    elif isinstance(source, History) or (
        isinstance(source, (list, tuple)) and source and all(isinstance(h, History) for h in source)
    ):
        unknown = set(kwargs) - {"names", "title"}
        if unknown:
            raise TypeError(
                f"a saved run's dashboard takes only names= and title=, got {', '.join(sorted(unknown))}"
            )
        dash = Dashboard(source, **kwargs)
    else:
        raise TypeError(
            "show() displays a trainscope.Probe, a trainscope.History (or a list of them) or a "
            f"Dashboard; got {type(source).__name__}"
        )
    _display(dash)
    return dash

"""``trainscope.watch`` and ``trainscope.show`` (re-exported lazily by the top-level package)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..history import History
from ..probe import Probe
from . import _live
from .dashboard import Dashboard

__all__ = ["show", "watch"]

_DASHBOARD_KW = (
    "delivery",
    "update_interval",
    "detail_interval",
    "total_steps",
    "steps_per_epoch",
    "title",
)


def _display(widget: Any) -> None:
    """Display in a notebook; in a plain script (no IPython) there is nothing to show."""
    with contextlib.suppress(ImportError):
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display(widget)


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
        dash = found if found is not None and not kwargs else Dashboard(source, **kwargs)
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

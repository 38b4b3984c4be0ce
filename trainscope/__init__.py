"""trainscope: make neural-network training visible and fixable from inside a Jupyter notebook.

The core (this package's top level) needs only torch and numpy.  The Jupyter layer
(:mod:`trainscope.widgets`, the ``%trainscope`` magics) is imported lazily.
"""

from __future__ import annotations

import importlib as _importlib
from typing import Any

from . import interventions
from . import runlog as _runlog
from ._version import __version__
from .builtins import register_builtins
from .checklists import checklist_state, run_check
from .history import LAYER_METRICS, History, StepRecord
from .interventions import (
    accumulate_,
    add_dropout_,
    batch_growth_,
    clip_grad_,
    early_stopping_,
    input_noise_,
    insert_norm_,
    l1_,
    label_smoothing_,
    mixup_,
    one_cycle_,
    prune_,
    reinit_,
    remove_dropout_,
    rollback_,
    scale_lr_,
    set_dropout_,
    set_lr_,
    set_schedule_,
    snapshot_,
    snapshot_ensemble_,
    switch_optimizer_,
    weight_decay_,
)
from .landscape import LandscapeResult, loss_landscape
from .layers import LayerInfo
from .lr_finder import LRFinderResult, lr_find
from .probe import Probe, ProbeError
from .search import SearchResult, search

register_builtins()


# ---- runs read from disk get their display and export here (the reader itself never imports
# ---- the report or the Jupyter layer; each hop below is lazy)
def _show_run(obj: Any, *, refresh_every: float = 0.5) -> Any:
    from .widgets._run_display import show_run

    return show_run(obj, refresh_every=refresh_every)


def _display_run(obj: Any) -> None:  # pragma: no cover - exercised in notebooks
    from .widgets._run_display import display_run

    display_run(obj)


def _runs_html(runs: Any) -> str:
    from .report import runs_overview_html

    return runs_overview_html(runs)


def _write_report(source: Any, path: Any, **kwargs: Any) -> str:
    from .report import write_report

    return write_report(source, path, **kwargs)


_runlog.reader.set_display(show=_show_run, display=_display_run, html=_runs_html, report=_write_report)


def _show_search(result: Any) -> Any:
    from .widgets.search_panel import show_search

    return show_search(result)


# ``trainscope.search`` the attribute is the function; the module is in sys.modules
_importlib.import_module(f"{__name__}.search").set_display(_show_search)

__all__ = [
    "LAYER_METRICS",
    "History",
    "LRFinderResult",
    "LandscapeResult",
    "LayerInfo",
    "Probe",
    "ProbeError",
    "SearchResult",
    "StepRecord",
    "__version__",
    "accumulate_",
    "add_dropout_",
    "batch_growth_",
    "checklist_state",
    "clip_grad_",
    "early_stopping_",
    "fit_in_background",
    "input_noise_",
    "insert_norm_",
    "interventions",
    "l1_",
    "label_smoothing_",
    "load_ipython_extension",
    "loss_landscape",
    "lr_find",
    "mixup_",
    "one_cycle_",
    "prune_",
    "reinit_",
    "remove_dropout_",
    "rollback_",
    "run_check",
    "scale_lr_",
    "search",
    "set_dropout_",
    "set_lr_",
    "set_schedule_",
    "show",
    "snapshot_",
    "snapshot_ensemble_",
    "switch_optimizer_",
    "unload_ipython_extension",
    "watch",
    "weight_decay_",
]


def watch(model: Any, optimizer: Any = None, **kwargs: Any) -> Any:
    """Attach a :class:`Probe` to ``model`` and show the live dashboard in Jupyter.

    The next cell can be the user's own plain training loop: the dashboard updates while it
    runs, and a click in it takes effect at the next ``optimizer.step()``.

    Parameters
    ----------
    model
        The ``nn.Module`` to watch (or an existing :class:`Probe`).
    optimizer
        Its optimizer: every ``optimizer.step()`` is a step boundary.
    loss_fn
        The loss *module* the loop calls (``nn.CrossEntropyLoss()``): recorded as ``loss`` in
        training and ``val_loss`` under ``no_grad``.  Without it no training loss is captured
        (call ``scope.log(loss=loss)`` instead).
    total_steps, steps_per_epoch
        The run's length (progress and ETA in the header) and the epoch shown next to the step.
    every, budget
        Sample the full per-layer statistics every ``every`` steps (default: every 10, lengthened
        so the measured overhead stays within ``budget``, 2%).
    data
        Training batches the LR finder, checks and data-dependent inits may draw from.
    display
        Show the dashboard now (default; once, whether the result is assigned or not).
    **kwargs
        Other dashboard options (``delivery="auto"``, ``update_interval=0.2``,
        ``detail_interval=1.0``, ``title``) and :class:`Probe` options (``cheap_every``,
        ``histograms``, ``include``, ``exclude``, ``logdir``...).

    Returns
    -------
    trainscope.widgets.Dashboard
        ``.probe``, ``.history``, ``.submit(action, params)``, ``.detach()``, ``.refresh()``.

    Examples
    --------
    >>> scope = trainscope.watch(model, optimizer, loss_fn=loss_fn)   # doctest: +SKIP
    """
    from .widgets import watch as _watch

    return _watch(model, optimizer, **kwargs)


def show(source: Any, **kwargs: Any) -> Any:
    """Display a dashboard: live for a :class:`Probe`, read-only for a :class:`History` (or a
    list of histories, overlaid), or an existing dashboard again."""
    from .widgets import show as _show

    return _show(source, **kwargs)


def open(
    path: Any, *, follow: bool | str = "auto", interval: float = 0.5, display: bool = True
) -> Any:
    """Open a saved run directory (``Probe(..., logdir=path)``) and, in a notebook, show it.

    ``path`` may be one run directory (returns a :class:`~trainscope.runlog.Run`), a list of them,
    or a directory of runs (a :class:`~trainscope.runlog.RunSet`, overlaid).  A run still being
    written by another process is followed live (``follow="auto"``).

    In Jupyter (or IPython) the read-only dashboard is displayed at once, whether the result is
    assigned (``run = trainscope.open(...)``) or not, and only once; ``display=False`` opts out
    (display it later with ``run.show()`` or a cell ending in ``run``).  In a plain script
    nothing is displayed.  ``run.history`` is an ordinary :class:`History`.
    Not in ``__all__``: ``from trainscope import *`` must not shadow the built-in ``open``.
    """
    import sys

    from .runlog import open_run

    run = open_run(path, follow=follow, interval=interval)
    if display and "IPython" in sys.modules:  # a script that never imported IPython: nothing to show
        from .widgets.api import show_run

        show_run(run)
    return run


def fit_in_background(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` in a thread so the kernel stays free for clicks.

    The fallback where clicks cannot reach a blocking cell; see
    :func:`trainscope.widgets._background.fit_in_background` for the trade-offs.
    """
    from .widgets._background import fit_in_background as _fit

    return _fit(fn, *args, **kwargs)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext trainscope``: register the magics and the end-of-cell flush."""
    from .magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext trainscope``: remove everything ``%load_ext`` added."""
    from .magics import unload_ipython_extension as _unload

    _unload(ipython)

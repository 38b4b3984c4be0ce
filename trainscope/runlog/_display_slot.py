"""The slot through which runs read from disk get their display and export.

The reader never imports the Jupyter layer or the report: :mod:`trainscope` fills this slot once
(:func:`set_display`) and :class:`~trainscope.runlog.Run` / ``RunSet`` look their functions up here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_DISPLAY: dict[str, Callable[..., Any]] = {}


def set_display(**fns: Callable[..., Any]) -> None:
    """Give runs their display and export (called once by :mod:`trainscope`): ``show(run_or_set,
    refresh_every=)``, ``display(run_or_set)``, ``html(runs) -> str``, ``report(source, path,
    **kwargs) -> str``."""
    unknown = set(fns) - {"show", "display", "html", "report"}
    if unknown:
        raise TypeError(f"set_display: unknown function(s) {sorted(unknown)}")
    _DISPLAY.update(fns)


def _display(what: str) -> Callable[..., Any]:
    fn = _DISPLAY.get(what)
    if fn is None:
        raise ImportError(f"run display ({what}) is not available: import trainscope (it sets it up)")
    return fn

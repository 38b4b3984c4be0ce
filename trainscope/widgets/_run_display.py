"""Displaying runs read from disk (:class:`~trainscope.runlog.Run` / ``RunSet``) in Jupyter.

The reader (:mod:`trainscope.runlog`) knows nothing about display: its ``show()``,
``_ipython_display_``, ``_repr_html_`` and ``report()`` call the functions the composition root
(:mod:`trainscope`) hands it through :func:`trainscope.runlog.reader.set_display`.  The dashboard
and the refresh thread live here, in the Jupyter layer.
"""

from __future__ import annotations

import html
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

__all__ = ["display_run", "keep_refreshed", "show_run"]


def show_run(obj: Any, *, refresh_every: float = 0.5) -> Any:
    """Display the dashboard on a run's history, or several runs overlaid (read-only).  While a
    run is followed, the dashboard is redrawn at most every ``refresh_every`` seconds after new
    records arrive (from a background thread, so it keeps up while the notebook is idle)."""
    from .api import show

    runs = list(obj.runs) if hasattr(obj, "runs") else [obj]
    if hasattr(obj, "runs"):
        dash = show([r.history for r in runs], names=[r.name for r in runs])
    else:
        dash = show(obj.history, title=obj.name)
    keep_refreshed(dash, runs, refresh_every)
    return dash


def display_run(obj: Any) -> None:  # pragma: no cover - exercised in notebooks
    """``_ipython_display_`` of a run: the dashboard, or the HTML overview when it cannot be built."""
    try:
        show_run(obj)
    except Exception as e:
        from IPython.display import HTML, display

        note = f"<p><i>dashboard unavailable: {html.escape(str(e), quote=True)}</i></p>"
        display(HTML(obj._repr_html_() + note))  # type: ignore[no-untyped-call]


def keep_refreshed(dash: Any, runs: Sequence[Any], every: float = 0.5) -> threading.Thread | None:
    """Redraw ``dash`` (anything with ``refresh()`` and ``closed``) after the runs' histories
    change, at most every ``every`` seconds, from a background thread; it ends when the dashboard
    is closed or every run is finished and no longer followed.  Returns the thread (``None`` when
    no run is followed)."""
    if not any(r.following for r in runs):
        return None
    dirty = threading.Event()
    subs = [r.history.subscribe(lambda _u: dirty.set()) for r in runs]
    ref = weakref.ref(dash)

    def loop() -> None:
        try:
            while True:
                changed = dirty.wait(timeout=max(every, 0.05) * 4)
                d = ref()
                if d is None or getattr(d, "closed", False):
                    return
                if changed:
                    dirty.clear()
                    try:
                        d.refresh()
                    except Exception:
                        return
                    del d
                    time.sleep(every)  # throttle: bursts of records become one redraw
                elif not any(r.following for r in runs):
                    return
                d = None
        finally:
            for sub in subs:
                sub.remove()

    t = threading.Thread(target=loop, name="trainscope-refresh", daemon=True)
    t.start()
    return t

"""The search panel: a live table of the trials and a parallel-coordinates plot (bqplot).

``trainscope.search(...)`` shows it in Jupyter while it runs (``display="auto"``); or build one for a
finished result with ``SearchPanel(result)``.  Each hyper-parameter is an axis scaled to its range
(log axes for ``loguniform``, the options in order for ``choice``), the metric is the last axis;
a trial is one line, coloured by its rank on the metric (dark: best) and faint when it was stopped
early or failed.  Text only (labels, never HTML): configurations may hold any string.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import bqplot as bq
import ipywidgets as W
import numpy as np

from ..search import Dist, SearchResult
from ._bq import depth_colors, figure, set_marks

__all__ = ["SearchPanel", "show_search"]

MAX_ROWS = 200
"""Rows shown in the table (the best first when there are more trials)."""


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)[:40]


class SearchPanel(W.VBox):
    """The live table and parallel-coordinates plot of a :class:`~trainscope.search.SearchResult`."""

    def __init__(self, result: SearchResult | None = None, *, interval: float = 0.5) -> None:
        self.interval = float(interval)
        self.result: SearchResult | None = None
        self._last = -math.inf
        self._lock = threading.Lock()
        self._unsubscribe: Any = None
        self.update_count = 0
        self.header = W.Label("No search yet.")
        self.table = W.GridBox([], layout=W.Layout(grid_gap="2px 14px", width="100%"))
        self._cells: list[list[W.Label]] = []
        self._columns: list[str] = []
        xs, ys = bq.OrdinalScale(), bq.LinearScale(min=0.0, max=1.0)
        self.lines = bq.Lines(x=np.array(["a", "b"]), y=np.zeros(2), scales={"x": xs, "y": ys}, stroke_width=2)
        self.fig = figure("hyper-parameters against the metric (dark: best)", [self.lines],
                          [bq.Axis(scale=xs), bq.Axis(scale=ys, side="left", tick_values=np.array([0.0, 1.0]),
                                                      label="low .. high")], height="300px")
        self.ranges = W.Label("")
        self._plot = W.Box([], layout=W.Layout(width="100%"))
        super().__init__([self.header, self._plot, self.ranges, self.table], layout=W.Layout(width="100%"))
        self.add_class("trainscope-search")
        if result is not None:
            self.attach(result)

    def attach(self, result: SearchResult) -> None:
        """Follow ``result`` (updates at most every ``interval`` seconds, and once when it ends)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.result = result
        self._unsubscribe = result.subscribe(self._on_change)
        self.update(force=True)

    def _on_change(self, result: SearchResult) -> None:
        self.update(force=result.finished)

    def close(self) -> None:
        if getattr(self, "_unsubscribe", None) is not None:
            self._unsubscribe()
            self._unsubscribe = None
        super().close()

    # ------------------------------------------------------------------ drawing
    def update(self, force: bool = False) -> None:
        now = time.monotonic()
        r = self.result
        if r is None or (not force and now - self._last < self.interval):
            return
        if not self._lock.acquire(blocking=force):
            return
        try:
            self._last = now
            self.update_count += 1
            self._draw_header(r)
            self._draw_table(r)
            self._draw_plot(r)
        finally:
            self._lock.release()

    def _draw_header(self, r: SearchResult) -> None:
        c = r.counts()
        done = sum(v for k, v in c.items() if k in ("completed", "stopped", "failed", "interrupted"))
        parts = [f"{c[k]} {k}" for k in ("running", "completed", "stopped", "failed", "interrupted") if c.get(k)]
        b = r.best
        best = (f"best {r.metric} {b.value:.4g} (trial {b.id})" if b is not None and b.value is not None
                else f"no {r.metric} yet")
        state = "finished" if r.finished else "running"
        budget = "" if r.budget is None else f"; steps used {r.steps_used:,} of {len(r.trials) * r.budget:,} without stopping"
        self.header.value = f"search {state}: {done} / {len(r.trials)} trials done ({', '.join(parts) or 'none yet'}); {best}{budget}"

    def rows(self, r: SearchResult) -> list[list[str]]:
        """The table's text rows (best first), without the header."""
        keys = list(r.space)
        sign = 1.0 if r.mode == "min" else -1.0

        def key(t: Any) -> tuple[int, float, int]:
            fin = t.value is not None and math.isfinite(t.value)
            order = {"completed": 0, "running": 1, "stopped": 2, "interrupted": 3, "failed": 4, "pending": 5}
            return (order.get(t.status, 6), sign * t.value if fin else math.inf, t.id)

        trials = sorted(r.trials, key=key)[:MAX_ROWS]
        return [[str(t.id), *[_cell(t.config.get(k)) for k in keys], _cell(t.value), _cell(t.step),
                 t.status + (f": {t.error[:60]}" if t.error else "")] for t in trials]

    def _draw_table(self, r: SearchResult) -> None:
        columns = ["trial", *r.space, r.metric, "step", "status"]
        rows = self.rows(r)
        if columns != self._columns or len(rows) != len(self._cells) - 1:
            self._columns = columns
            self._cells = [[W.Label(c, style={"font_weight": "bold"}) for c in columns]]
            self._cells += [[W.Label("") for _ in columns] for _ in rows]
            self.table.layout.grid_template_columns = " ".join(["auto"] * len(columns))
            self.table.children = [w for row in self._cells for w in row]
        for cells, row in zip(self._cells[1:], rows, strict=True):
            for w, v in zip(cells, row, strict=True):
                if w.value != v:
                    w.value = v

    def coordinates(self, r: SearchResult) -> tuple[list[str], np.ndarray, list[Any]]:
        """``(axis names, positions (trials, axes) in [0, 1], trials)`` of the trials with a value."""
        axes = [k for k, v in r.space.items() if isinstance(v, Dist)]
        shown = [t for t in r.trials if t.value is not None and math.isfinite(t.value)]
        if not shown:
            return [*axes, r.metric], np.zeros((0, len(axes) + 1)), []
        pos = np.array([[float(r.space[k].position(t.config[k])) for k in axes] for t in shown], dtype=np.float64)
        vals = np.array([t.value for t in shown], dtype=np.float64)
        lo, hi = float(vals.min()), float(vals.max())
        if lo > 0 and hi / lo > 20:  # a metric spanning decades: a log axis
            m = (np.log(vals) - math.log(lo)) / max(math.log(hi) - math.log(lo), 1e-12)
        else:
            m = (vals - lo) / (hi - lo) if hi > lo else np.full(len(vals), 0.5)
        return [*axes, r.metric], np.column_stack([pos, m]), shown

    def _draw_plot(self, r: SearchResult) -> None:
        names, coords, shown = self.coordinates(r)
        if len(shown) < 1:
            return
        sign = 1.0 if r.mode == "min" else -1.0
        rank = np.argsort(np.argsort(sign * np.array([t.value for t in shown])))
        palette = depth_colors(max(len(shown), 2))
        colors = [palette[int(k)] for k in rank]
        opac = [1.0 if t.status in ("completed", "running") else 0.3 for t in shown]
        y = coords.astype(np.float32)
        if len(shown) == 1:  # bqplot squeezes a single line's 2-D y: two copies, one hidden
            y = np.vstack([y, y])
            colors, opac = colors * 2, [*opac, 0.0]
        set_marks(self.lines, x=np.array(names), y=y, colors=colors, opacities=opac)
        parts = []
        for k in names[:-1]:
            d = r.space[k]
            parts.append(f"{k}: {d!r}")
        vals = [t.value for t in shown]
        parts.append(f"{r.metric}: {min(vals):.4g} .. {max(vals):.4g}")
        self.ranges.value = " | ".join(parts)
        if self.fig not in tuple(self._plot.children):
            self._plot.children = (self.fig,)


def show_search(result: SearchResult) -> SearchPanel:
    """Display a live :class:`SearchPanel` for ``result`` in the notebook."""
    from IPython.display import display

    panel = SearchPanel(result)
    display(panel)
    return panel

"""Per-layer views (bqplot): weight norm and update/weight ratio of every layer over time, and
the output scale of each layer by depth (the initialization view)."""

from __future__ import annotations

from typing import Any

import bqplot as bq
import ipywidgets as W
import numpy as np

from ..history import History
from ._bq import (
    EMPTY,
    LOG_FMT,
    STEP_FMT,
    UPDATE_BAND,
    depth_colors,
    figure,
    positive,
    set_marks,
    set_ticks,
)
from ._series import MAX_POINTS, mean_decimate

__all__ = ["DepthCurves", "LayerCurves"]


class LayerCurves(W.HBox):
    """Weight norm and update/weight ratio of every layer over time (colour = depth), with
    the selected layer drawn thick on top and the healthy update-ratio band shaded."""

    def __init__(self, max_total_points: int = 20_000) -> None:
        self.max_total_points = max_total_points
        wx, wy = bq.LinearScale(), bq.LogScale()
        self.w_lines = bq.Lines(
            x=EMPTY, y=EMPTY, scales={"x": wx, "y": wy}, stroke_width=1, opacities=[0.8]
        )
        self.w_sel = bq.Lines(
            x=EMPTY,
            y=EMPTY,
            scales={"x": wx, "y": wy},
            stroke_width=3,
            colors=["#d62728"],
            labels=["selected"],
            display_legend=False,
        )
        self._w_yaxis = bq.Axis(scale=wy, side="left", tick_format=LOG_FMT)
        self.weight_fig = figure(
            "weight norm per layer",
            [self.w_lines, self.w_sel],
            [
                bq.Axis(scale=wx, label="step", tick_format=STEP_FMT),
                self._w_yaxis,
            ],
            height="280px",
        )
        ux, uy = bq.LinearScale(), bq.LogScale()
        self.band = bq.Lines(
            x=EMPTY,
            y=EMPTY,
            scales={"x": ux, "y": uy},
            fill="between",
            fill_colors=["#2ca02c"],
            fill_opacities=[0.12],
            colors=["#2ca02c"],
            opacities=[0.0],
            stroke_width=0,
        )
        self.ref = bq.Lines(
            x=EMPTY,
            y=EMPTY,
            scales={"x": ux, "y": uy},
            colors=["#2ca02c"],
            line_style="dashed",
            stroke_width=1.2,
            labels=["1e-3"],
            display_legend=False,
        )
        self.u_lines = bq.Lines(
            x=EMPTY, y=EMPTY, scales={"x": ux, "y": uy}, stroke_width=1, opacities=[0.8]
        )
        self.u_sel = bq.Lines(
            x=EMPTY,
            y=EMPTY,
            scales={"x": ux, "y": uy},
            stroke_width=3,
            colors=["#d62728"],
            labels=["selected"],
            display_legend=False,
        )
        self.update_fig = figure(
            "update / weight ratio per layer (band: 1e-4 .. 1e-2)",
            [self.band, self.ref, self.u_lines, self.u_sel],
            [
                bq.Axis(scale=ux, label="step", tick_format=STEP_FMT),
                # decade ticks are set with the first data: fixed ticks on a log scale without a
                # domain were drawn at NaN (27 console errors before the first sample)
                bq.Axis(scale=uy, side="left", tick_format=".0e"),
            ],
            height="280px",
        )
        self.empty = W.Label(
            "No per-layer statistics recorded yet: they come with the probe's sampled steps "
            "(watch(..., every=N) samples more often)."
        )
        self.empty.add_class("trainscope-empty-state")
        # the figures join the tab with the first sample: a bqplot line without data is drawn
        # as d="null" and its label at translate(x, undefined) whenever the figure is laid out
        super().__init__([self.empty], layout=W.Layout(width="100%", flex_flow="row wrap"))

    def update(self, h: History, order: list[int], selected: int | None) -> None:
        L = len(order)
        if L == 0 or h.samples() == 0:
            return
        per_line = int(min(MAX_POINTS, max(32, self.max_total_points // L)))
        colors = depth_colors(L)
        lo = hi = None
        for metric, lines, sel in (
            ("weight_norm", self.w_lines, self.w_sel),
            ("update_ratio", self.u_lines, self.u_sel),
        ):
            steps, values = h.layer_series(metric)
            values = values[:, order]
            x, y, _ = mean_decimate(steps, values, None, per_line)
            y = positive(y).T  # (L, T)
            x32 = np.asarray(x, np.float32)
            if len(x32) == 1:  # bqplot squeezes size-1 axes: pad one point with a gap
                x32 = np.array([x32[0], np.nan], np.float32)
                y = np.concatenate([y, np.full((L, 1), np.nan, np.float32)], axis=1)
            set_marks(lines, x=x32, y=y, colors=colors)
            if metric == "weight_norm":
                set_ticks(self._w_yaxis, y, log=True)
            if selected is not None and selected in order:
                set_marks(
                    sel,
                    x=x32,
                    y=y[order.index(selected)],
                    labels=[f"selected: {h.layers[selected].name}"],
                )
            else:  # never an empty line (see __init__): the first layer's, hidden
                set_marks(sel, x=x32, y=y[0], visible=False)
            if selected is not None and selected in order and not sel.visible:
                sel.visible = True
            if len(x32):
                lo, hi = float(x32[0]), float(x32[-1])
        if lo is not None and hi is not None:
            bx = np.array([lo, hi], np.float32)
            set_marks(
                self.band,
                x=bx,
                y=np.array([[UPDATE_BAND[0]] * 2, [UPDATE_BAND[1]] * 2], np.float32),
            )
            set_marks(self.ref, x=bx, y=np.array([1e-3, 1e-3], np.float32))
            uaxis = self.update_fig.axes[1]
            if not len(uaxis.tick_values):
                uaxis.tick_values = np.array([1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])
        # the legend is in the titles (bqplot's boxed legends sit on the data)
        who = (
            f"red: {h.layers[selected].name}"
            if selected is not None and selected in order
            else "dark: first layer, yellow: last"
        )
        titles = (
            f"weight norm per layer ({who})",
            f"update / weight ratio per layer (band: 1e-4 .. 1e-2; {who})",
        )
        for fig, title in zip((self.weight_fig, self.update_fig), titles, strict=True):
            if fig.title != title:
                fig.title = title
        shown: tuple[Any, ...] = tuple(getattr(self, "children", ()))
        if self.weight_fig not in shown:  # with their data, never before
            self.children = (self.weight_fig, self.update_fig)


class DepthCurves(W.Box):
    """Output scale (std) of each layer by depth: at the first sampled step and now.

    The initialization view: with too small an init outputs shrink layer after layer, with
    He / Xavier they stay level, with too large an init they blow up.
    """

    def __init__(self) -> None:
        dx, dy = bq.LinearScale(), bq.LogScale()
        self.first = bq.Lines(
            x=EMPTY,
            y=EMPTY,
            scales={"x": dx, "y": dy},
            colors=["#9e9e9e"],
            marker="circle",
            marker_size=14,
            stroke_width=1.5,
            labels=["first sample"],
            display_legend=False,
            line_style="dashed",
        )
        self.now = bq.Lines(
            x=EMPTY,
            y=EMPTY,
            scales={"x": dx, "y": dy},
            colors=["#1f77b4"],
            marker="circle",
            marker_size=18,
            stroke_width=2,
            labels=["latest"],
            display_legend=False,
        )
        self.sel = bq.Scatter(
            x=EMPTY,
            y=EMPTY,
            scales={"x": dx, "y": dy},
            colors=["#d62728"],
            default_size=90,
            marker="circle",
        )
        self._yaxis = bq.Axis(scale=dy, side="left", tick_format=LOG_FMT)
        self.fig = figure(
            "output std by depth (forward order)",
            [self.first, self.now, self.sel],
            [
                bq.Axis(scale=dx, label="depth (layer index in forward order)", tick_format="d"),
                self._yaxis,
            ],
            height="300px",
        )
        self._first: tuple[int, np.ndarray] | None = None
        super().__init__([self.fig], layout=W.Layout(width="100%"))

    def update(self, h: History, order: list[int], selected: int | None) -> None:
        rec = h.latest
        if rec is None or not order:
            for m in (self.first, self.now, self.sel):
                set_marks(m, x=EMPTY, y=EMPTY)
            return
        if self._first is None or len(self._first[1]) != len(h.layers):
            steps, values = h.layer_series("act_std")
            self._first = (
                int(steps[0]) if len(steps) else rec.step,
                values[0] if len(values) else rec.metrics["act_std"],
            )
        x = np.arange(len(order), dtype=np.float32)
        first_step, first = self._first
        set_marks(self.first, x=x, y=positive(first[order]), labels=[f"step {first_step}"])
        now = positive(np.asarray(rec.metrics["act_std"])[order])
        set_marks(self.now, x=x, y=now, labels=[f"step {rec.step}"])
        title = (
            f"output std by depth: blue step {rec.step:,}, dashed grey step {first_step:,}"
            " (first sample)"
        )
        if self.fig.title != title:
            self.fig.title = title
        set_ticks(self._yaxis, np.concatenate([positive(first[order]), now]), log=True)
        if selected is not None and selected in order:
            j = order.index(selected)
            set_marks(self.sel, x=x[j : j + 1], y=now[j : j + 1])
        else:
            set_marks(self.sel, x=EMPTY, y=EMPTY)

"""bqplot figures: training curves, per-layer curves over time, output scale by depth, LR finder.

Every figure is built once; updates replace ``x`` / ``y`` of existing marks inside one
``hold_sync()`` per mark (one comm message), with decimated float32 arrays (see ``_series``).
Marks are only touched when their data changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import bqplot as bq
import ipywidgets as W
import numpy as np

from ..history import History
from ._series import (
    MAX_POINTS,
    ema,
    envelope,
    log_ticks,
    mean_decimate,
    minmax_decimate,
    nice_ticks,
)

__all__ = [
    "PALETTE",
    "Curves",
    "DepthCurves",
    "LRFinderPanel",
    "LayerCurves",
    "depth_colors",
    "user_metrics",
]

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
_RESERVED = {"loss", "val_loss", "lr", "momentum", "step_time", "epoch"}
_PROBE_PREFIXES = ("lr/", "grad_norm", "update_ratio", "step_time")
_STEP_FMT = "~s"  # 1.2k, 30k: step axes
_Y_FMT = ".3~g"
_LOG_FMT = ".2~g"  # 0.001, 0.5, 20, 1e+03
_EVENT_COLORS = {
    "intervention": "#e6550d",
    "undo": "#636363",
    "lr_find": "#756bb1",
    "rollback": "#636363",
}
_VIRIDIS = ["#440154", "#414487", "#2a788e", "#22a884", "#7ad151", "#fde725"]
UPDATE_BAND = (1e-4, 1e-2)
"""Update/weight ratios inside this band count as healthy (the 1e-3 rule of thumb, ±1 decade)."""

_EMPTY = np.zeros(0, np.float32)


def user_metrics(history: History) -> list[str]:
    """Scalars the user logged (``probe.log(acc=...)``), not the probe's own (loss, lr, norms...)."""
    return [
        n
        for n in history.scalar_names()
        if n not in _RESERVED and not n.startswith(_PROBE_PREFIXES)
    ]


def depth_colors(n: int) -> list[str]:
    """``n`` colours from dark (first layer) to yellow (last), viridis-like."""
    if n <= 0:
        return []
    out = []
    for i in range(n):
        f = i / max(n - 1, 1) * (len(_VIRIDIS) - 1)
        j = min(int(f), len(_VIRIDIS) - 2)
        a, b = _VIRIDIS[j], _VIRIDIS[j + 1]
        w = f - j
        rgb = [
            round(int(a[k : k + 2], 16) * (1 - w) + int(b[k : k + 2], 16) * w) for k in (1, 3, 5)
        ]
        out.append("#" + "".join(f"{c:02x}" for c in rgb))
    return out


def _figure(title: str, marks: list[Any], axes: list[Any], *, height: str = "260px") -> bq.Figure:
    return bq.Figure(
        title=title,
        marks=marks,
        axes=axes,
        animation_duration=0,
        fig_margin={"top": 32, "bottom": 40, "left": 62, "right": 14},
        layout=W.Layout(width="100%", height=height, min_width="260px"),
        legend_location="top-right",
        title_style={"font-size": "13px"},
    )


def _set(mark: Any, **values: Any) -> None:
    """Assign several traits of one mark as one message."""
    with mark.hold_sync():
        for k, v in values.items():
            setattr(mark, k, v)


def _set_ticks(axis: bq.Axis, values: np.ndarray, *, log: bool) -> None:
    """Round tick values over the finite range of ``values`` (small figures only)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return
    ticks = (
        log_ticks(float(v.min()), float(v.max()))
        if log
        else nice_ticks(float(v.min()), float(v.max()))
    )
    if len(ticks) and not np.array_equal(np.asarray(axis.tick_values, dtype=np.float64), ticks):
        axis.tick_values = ticks


def _pad_lines(lines: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Several (x, y) lines of different lengths as 2-D float32 arrays padded with NaN.

    One line stays 1-D; 2-D arrays get at least two columns (bqplot squeezes size-1 axes, which
    would turn one point per line into one line).
    """
    if len(lines) == 1:
        x, y = lines[0]
        return np.asarray(x, np.float32), np.asarray(y, np.float32)
    n = max(2, max((len(x) for x, _ in lines), default=0))
    X = np.full((len(lines), n), np.nan, np.float32)
    Y = np.full((len(lines), n), np.nan, np.float32)
    for i, (x, y) in enumerate(lines):
        X[i, : len(x)] = x
        Y[i, : len(y)] = y
    return X, Y


def _positive(y: np.ndarray) -> np.ndarray:
    """For log scales: non-positive values become gaps."""
    y = np.asarray(y, dtype=np.float32)
    return np.where(y > 0, y, np.nan).astype(np.float32)


class Curves(W.HBox):
    """Training loss (raw and smoothed), validation loss, user metrics, learning rate, and
    marks where interventions were applied.  Takes one history or several (overlaid runs)."""

    def __init__(
        self, n_runs: int = 1, names: Sequence[str] | None = None, max_points: int = MAX_POINTS
    ) -> None:
        self.n_runs = max(1, n_runs)
        self.names = list(names) if names else [f"run {i + 1}" for i in range(self.n_runs)]
        self.max_points = max_points
        self._versions: dict[str, Any] = {}

        # --- loss
        xs, ys = bq.LinearScale(), bq.LinearScale()
        unit = bq.LinearScale(min=0.0, max=1.0)
        self.raw: list[bq.Lines] = []
        self.smooth: list[bq.Lines] = []
        self.val: list[bq.Lines] = []
        marks: list[Any] = []
        for r in range(self.n_runs):
            c = PALETTE[r % len(PALETTE)]
            suffix = f" ({self.names[r]})" if self.n_runs > 1 else ""
            self.raw.append(
                bq.Lines(
                    x=_EMPTY,
                    y=_EMPTY,
                    scales={"x": xs, "y": ys},
                    colors=[c],
                    opacities=[0.3],
                    stroke_width=1,
                    labels=[f"loss{suffix}"],
                )
            )
            self.smooth.append(
                bq.Lines(
                    x=_EMPTY,
                    y=_EMPTY,
                    scales={"x": xs, "y": ys},
                    colors=[c],
                    stroke_width=2.2,
                    labels=[f"smoothed{suffix}"],
                    display_legend=True,
                )
            )
            self.val.append(
                bq.Lines(
                    x=_EMPTY,
                    y=_EMPTY,
                    scales={"x": xs, "y": ys},
                    colors=["#d62728" if self.n_runs == 1 else c],
                    line_style="dashed",
                    marker="circle",
                    marker_size=18,
                    stroke_width=1.8,
                    labels=[f"val loss{suffix}"],
                    display_legend=True,
                )
            )
            marks += [self.raw[-1], self.smooth[-1], self.val[-1]]
        self.event_lines = bq.Lines(
            x=_EMPTY,
            y=_EMPTY,
            scales={"x": xs, "y": unit},
            colors=[_EVENT_COLORS["intervention"]],
            stroke_width=1.5,
            line_style="dashed",
            visible=False,
        )
        self.event_labels = bq.Label(
            x=_EMPTY,
            y=_EMPTY,
            text=[],
            scales={"x": xs, "y": unit},
            colors=[_EVENT_COLORS["intervention"]],
            default_size=11,
            rotate_angle=-90,
            align="end",
            x_offset=-4,  # beside the dashed line, not on it
            visible=False,
        )
        self.nonfinite = bq.Scatter(
            x=_EMPTY,
            y=_EMPTY,
            scales={"x": xs, "y": unit},
            colors=["#d62728"],
            marker="cross",
            default_size=40,
            visible=False,
            display_legend=False,
        )
        marks += [self.event_lines, self.event_labels, self.nonfinite]
        self.loss_fig = _figure(
            "training loss",
            marks,
            [
                bq.Axis(scale=xs, label="step", grid_lines="dashed", tick_format=_STEP_FMT),
                bq.Axis(scale=ys, side="left", grid_lines="dashed", tick_format=_Y_FMT),
            ],
            height="300px",
        )

        # --- metrics
        mx, my = bq.LinearScale(), bq.LinearScale()
        self.metric_lines = bq.Lines(
            x=_EMPTY,
            y=_EMPTY,
            scales={"x": mx, "y": my},
            stroke_width=1.8,
            marker="circle",
            marker_size=10,
            display_legend=True,
            labels=[],
        )
        # small figures: round ticks set from the data (the default ones would overlap)
        self._m_xaxis = bq.Axis(scale=mx, label="step", tick_format=_STEP_FMT)
        self._m_yaxis = bq.Axis(scale=my, side="left", tick_format=_Y_FMT)
        self.metrics_fig = _figure(
            "metrics",
            [self.metric_lines],
            [self._m_xaxis, self._m_yaxis],
            height="160px",
        )
        self.metrics_fig.legend_location = "bottom-right"  # accuracies rise to the top right

        # --- learning rate
        lx, ly = bq.LinearScale(), bq.LogScale()
        self._lr_scale = ly
        self.lr_lines = bq.Lines(
            x=_EMPTY,
            y=_EMPTY,
            scales={"x": lx, "y": ly},
            stroke_width=1.8,
            colors=PALETTE,
            labels=[],
        )
        self._lr_xaxis = bq.Axis(scale=lx, label="step", tick_format=_STEP_FMT)
        self._lr_yaxis = bq.Axis(scale=ly, side="left", tick_format=".0e")
        self.lr_fig = _figure(
            "learning rate",
            [self.lr_lines],
            [self._lr_xaxis, self._lr_yaxis],
            height="160px",
        )

        right = W.VBox(
            [self.metrics_fig, self.lr_fig], layout=W.Layout(width="40%", min_width="260px")
        )
        left = W.Box([self.loss_fig], layout=W.Layout(width="60%", min_width="320px"))
        super().__init__([left, right], layout=W.Layout(width="100%", flex_flow="row wrap"))

    # ------------------------------------------------------------------ update
    def update(self, histories: Sequence[History], *, force: bool = False) -> None:
        """Redraw from the histories (marks whose data did not change are left alone)."""
        for r, h in enumerate(histories[: self.n_runs]):
            loss = h.scalar("loss")
            key = (id(h), len(loss["step"]), float(loss["step"][-1]) if len(loss["step"]) else -1.0)
            if force or self._versions.get(f"loss{r}") != key:
                self._versions[f"loss{r}"] = key
                self._draw_loss(r, loss)
            val = h.scalar("val_loss")
            vkey = (id(h), len(val["step"]), float(val["step"][-1]) if len(val["step"]) else -1.0)
            if force or self._versions.get(f"val{r}") != vkey:
                self._versions[f"val{r}"] = vkey
                x, y = minmax_decimate(val["step"], val["mean"], self.max_points)
                _set(self.val[r], x=x, y=y)
        self._draw_events(histories[0], force)
        self._draw_metrics(histories, force)
        self._draw_lr(histories, force)

    def _draw_loss(self, r: int, loss: dict[str, np.ndarray]) -> None:
        if len(loss["step"]) == 0:
            _set(self.raw[r], x=_EMPTY, y=_EMPTY)
            _set(self.smooth[r], x=_EMPTY, y=_EMPTY)
            return
        ex, ey = envelope(loss)
        x, y = minmax_decimate(ex, ey, self.max_points)
        _set(self.raw[r], x=x, y=y)
        total_steps = float(loss["last"][-1] - loss["first"][0] + 1)
        window = min(max(total_steps / 100.0, 10.0), 500.0)
        mx, mm, mc = mean_decimate(loss["step"], loss["mean"], loss["count"], self.max_points)
        _set(self.smooth[r], x=mx.astype(np.float32), y=ema(mm, mc, window).astype(np.float32))
        if r == 0:
            bad = ~np.isfinite(loss["max"]) | ~np.isfinite(loss["min"])
            if bad.any():
                bx = loss["step"][bad][-200:].astype(np.float32)
                _set(self.nonfinite, x=bx, y=np.full(len(bx), 0.96, np.float32), visible=True)
            elif self.nonfinite.visible:
                _set(self.nonfinite, x=_EMPTY, y=_EMPTY, visible=False)

    def _draw_events(self, h: History, force: bool) -> None:
        evs = [e for e in list(h.events) if e.kind in _EVENT_COLORS][-100:]
        key = tuple((e.id, e.kind) for e in evs)
        if not force and self._versions.get("events") == key:
            return
        self._versions["events"] = key
        if not evs:
            _set(self.event_lines, visible=False)
            _set(self.event_labels, visible=False)
            return
        steps = np.array([e.step for e in evs], np.float32)
        x = np.stack([steps, steps], axis=1)
        y = np.tile(np.array([0.0, 1.0], np.float32), (len(evs), 1))
        colors = [_EVENT_COLORS[e.kind] for e in evs]
        _set(self.event_lines, x=x, y=y, colors=colors, visible=True)
        _set(
            self.event_labels,
            x=steps,
            y=np.full(len(evs), 0.98, np.float32),
            text=[f"{e.label} @{e.step}" for e in evs],
            colors=colors,
            visible=True,
        )

    def _draw_metrics(self, histories: Sequence[History], force: bool) -> None:
        lines, labels, colors = [], [], []
        for r, h in enumerate(histories[: self.n_runs]):
            for j, name in enumerate(user_metrics(h)[:8]):
                s = h.scalar(name)
                lines.append(minmax_decimate(s["step"], s["mean"], self.max_points))
                labels.append(name if self.n_runs == 1 else f"{name} ({self.names[r]})")
                colors.append(PALETTE[(j + 2 + r) % len(PALETTE)])
        key = (
            tuple(labels),
            tuple(len(x) for x, _ in lines),
            tuple(float(x[-1]) if len(x) else -1 for x, _ in lines),
        )
        if not force and self._versions.get("metrics") == key:
            return
        self._versions["metrics"] = key
        if not lines:
            _set(self.metric_lines, x=_EMPTY, y=_EMPTY, labels=[])
            self.metrics_fig.title = "metrics (log more with probe.log(acc=...))"
            return
        X, Y = _pad_lines(lines)
        _set(self.metric_lines, x=X, y=Y, labels=labels, colors=colors)
        self.metrics_fig.title = "metrics"
        _set_ticks(self._m_xaxis, X, log=False)
        _set_ticks(self._m_yaxis, Y, log=False)

    def _draw_lr(self, histories: Sequence[History], force: bool) -> None:
        lines, labels = [], []
        for r, h in enumerate(histories[: self.n_runs]):
            s = h.scalar("lr")
            if len(s["step"]):
                x, y = minmax_decimate(s["step"], s["mean"], self.max_points)
                lines.append((x, _positive(y)))
                labels.append("lr" if self.n_runs == 1 else f"lr ({self.names[r]})")
        key = (
            tuple(labels),
            tuple(len(x) for x, _ in lines),
            tuple(float(x[-1]) if len(x) else -1 for x, _ in lines),
            tuple(float(np.nanmax(y)) if np.isfinite(y).any() else 0 for _, y in lines),
        )
        if not force and self._versions.get("lr") == key:
            return
        self._versions["lr"] = key
        if not lines:
            _set(self.lr_lines, x=_EMPTY, y=_EMPTY)
            return
        X, Y = _pad_lines(lines)
        _set(self.lr_lines, x=X, y=Y, labels=labels)
        finite = Y[np.isfinite(Y)]
        if len(finite):  # a constant lr would give a log scale an empty domain: pad it
            lo, hi = float(finite.min()) / 2.0, float(finite.max()) * 2.0
            with self._lr_scale.hold_sync():
                self._lr_scale.min = lo
                self._lr_scale.max = hi
            self._lr_yaxis.tick_values = log_ticks(lo, hi, 3)
        _set_ticks(self._lr_xaxis, X, log=False)


class LayerCurves(W.HBox):
    """Weight norm and update/weight ratio of every layer over time (colour = depth), with
    the selected layer drawn thick on top and the healthy update-ratio band shaded."""

    def __init__(self, max_total_points: int = 20_000) -> None:
        self.max_total_points = max_total_points
        wx, wy = bq.LinearScale(), bq.LogScale()
        self.w_lines = bq.Lines(
            x=_EMPTY, y=_EMPTY, scales={"x": wx, "y": wy}, stroke_width=1, opacities=[0.8]
        )
        self.w_sel = bq.Lines(
            x=_EMPTY,
            y=_EMPTY,
            scales={"x": wx, "y": wy},
            stroke_width=3,
            colors=["#d62728"],
            labels=["selected"],
            display_legend=True,
        )
        self._w_yaxis = bq.Axis(scale=wy, side="left", tick_format=_LOG_FMT)
        self.weight_fig = _figure(
            "weight norm per layer",
            [self.w_lines, self.w_sel],
            [
                bq.Axis(scale=wx, label="step", tick_format=_STEP_FMT),
                self._w_yaxis,
            ],
            height="280px",
        )
        ux, uy = bq.LinearScale(), bq.LogScale()
        self.band = bq.Lines(
            x=_EMPTY,
            y=_EMPTY,
            scales={"x": ux, "y": uy},
            fill="between",
            fill_colors=["#2ca02c"],
            fill_opacities=[0.12],
            colors=["#2ca02c"],
            opacities=[0.0],
            stroke_width=0,
        )
        self.ref = bq.Lines(
            x=_EMPTY,
            y=_EMPTY,
            scales={"x": ux, "y": uy},
            colors=["#2ca02c"],
            line_style="dashed",
            stroke_width=1.2,
            labels=["1e-3"],
            display_legend=False,
        )
        self.u_lines = bq.Lines(
            x=_EMPTY, y=_EMPTY, scales={"x": ux, "y": uy}, stroke_width=1, opacities=[0.8]
        )
        self.u_sel = bq.Lines(
            x=_EMPTY,
            y=_EMPTY,
            scales={"x": ux, "y": uy},
            stroke_width=3,
            colors=["#d62728"],
            labels=["selected"],
            display_legend=True,
        )
        self.update_fig = _figure(
            "update / weight ratio per layer (band: 1e-4 .. 1e-2)",
            [self.band, self.ref, self.u_lines, self.u_sel],
            [
                bq.Axis(scale=ux, label="step", tick_format=_STEP_FMT),
                bq.Axis(
                    scale=uy,
                    side="left",
                    tick_format=".0e",
                    tick_values=np.array([1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]),
                ),
            ],
            height="280px",
        )
        super().__init__(
            [self.weight_fig, self.update_fig], layout=W.Layout(width="100%", flex_flow="row wrap")
        )

    def update(self, h: History, order: list[int], selected: int | None) -> None:
        L = len(order)
        if L == 0 or h.samples() == 0:
            for m in (self.w_lines, self.w_sel, self.u_lines, self.u_sel, self.band, self.ref):
                _set(m, x=_EMPTY, y=_EMPTY)
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
            y = _positive(y).T  # (L, T)
            x32 = np.asarray(x, np.float32)
            if len(x32) == 1:  # bqplot squeezes size-1 axes: pad one point with a gap
                x32 = np.array([x32[0], np.nan], np.float32)
                y = np.concatenate([y, np.full((L, 1), np.nan, np.float32)], axis=1)
            _set(lines, x=x32, y=y, colors=colors)
            if metric == "weight_norm":
                _set_ticks(self._w_yaxis, y, log=True)
            if selected is not None and selected in order:
                _set(
                    sel,
                    x=x32,
                    y=y[order.index(selected)],
                    labels=[f"selected: {h.layers[selected].name}"],
                )
            else:
                _set(sel, x=_EMPTY, y=_EMPTY)
            if len(x32):
                lo, hi = float(x32[0]), float(x32[-1])
        if lo is not None and hi is not None:
            bx = np.array([lo, hi], np.float32)
            _set(
                self.band,
                x=bx,
                y=np.array([[UPDATE_BAND[0]] * 2, [UPDATE_BAND[1]] * 2], np.float32),
            )
            _set(self.ref, x=bx, y=np.array([1e-3, 1e-3], np.float32))


class DepthCurves(W.Box):
    """Output scale (std) of each layer by depth: at the first sampled step and now.

    The initialization view: with too small an init outputs shrink layer after layer, with
    He / Xavier they stay level, with too large an init they blow up.
    """

    def __init__(self) -> None:
        dx, dy = bq.LinearScale(), bq.LogScale()
        self.first = bq.Lines(
            x=_EMPTY,
            y=_EMPTY,
            scales={"x": dx, "y": dy},
            colors=["#9e9e9e"],
            marker="circle",
            marker_size=14,
            stroke_width=1.5,
            labels=["first sample"],
            display_legend=True,
            line_style="dashed",
        )
        self.now = bq.Lines(
            x=_EMPTY,
            y=_EMPTY,
            scales={"x": dx, "y": dy},
            colors=["#1f77b4"],
            marker="circle",
            marker_size=18,
            stroke_width=2,
            labels=["latest"],
            display_legend=True,
        )
        self.sel = bq.Scatter(
            x=_EMPTY,
            y=_EMPTY,
            scales={"x": dx, "y": dy},
            colors=["#d62728"],
            default_size=90,
            marker="circle",
        )
        self._yaxis = bq.Axis(scale=dy, side="left", tick_format=_LOG_FMT)
        self.fig = _figure(
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
                _set(m, x=_EMPTY, y=_EMPTY)
            return
        if self._first is None or len(self._first[1]) != len(h.layers):
            steps, values = h.layer_series("act_std")
            self._first = (
                int(steps[0]) if len(steps) else rec.step,
                values[0] if len(values) else rec.metrics["act_std"],
            )
        x = np.arange(len(order), dtype=np.float32)
        first_step, first = self._first
        _set(self.first, x=x, y=_positive(first[order]), labels=[f"step {first_step}"])
        now = _positive(np.asarray(rec.metrics["act_std"])[order])
        _set(self.now, x=x, y=now, labels=[f"step {rec.step}"])
        _set_ticks(self._yaxis, np.concatenate([_positive(first[order]), now]), log=True)
        if selected is not None and selected in order:
            j = order.index(selected)
            _set(self.sel, x=x[j : j + 1], y=now[j : j + 1])
        else:
            _set(self.sel, x=_EMPTY, y=_EMPTY)


class LRFinderPanel(W.VBox):
    """The latest LR range test (a history event of kind ``"lr_find"``) and its suggestion."""

    def __init__(self, submit: Callable[[str, dict[str, Any]], Any]) -> None:
        self._submit = submit
        lx, ly = bq.LogScale(), bq.LinearScale()
        unit = bq.LinearScale(min=0.0, max=1.0)
        self.curve = bq.Lines(
            x=_EMPTY, y=_EMPTY, scales={"x": lx, "y": ly}, colors=[PALETTE[0]], stroke_width=2
        )
        self.mark = bq.Lines(
            x=_EMPTY,
            y=_EMPTY,
            scales={"x": lx, "y": unit},
            colors=["#d62728"],
            line_style="dashed",
            stroke_width=2,
        )
        self.others = bq.Lines(
            x=_EMPTY,
            y=_EMPTY,
            scales={"x": lx, "y": unit},
            colors=["#9e9e9e"],
            line_style="dotted",
            stroke_width=1.2,
        )
        self.fig = _figure(
            "LR range test",
            [self.curve, self.others, self.mark],
            [
                bq.Axis(scale=lx, label="learning rate", tick_format=".0e"),
                bq.Axis(
                    scale=ly, side="left", label="loss", tick_format=_Y_FMT, label_offset="45px"
                ),
            ],
            height="280px",
        )
        self.info = W.HTML(
            "<i>No LR range test yet: run the <b>lr_find</b> action from the Interventions panel.</i>"
        )
        self.apply_lr = W.Button(
            description="Apply as LR", disabled=True, tooltip="submit set_lr(lr=suggestion)"
        )
        self.apply_cycle = W.Button(
            description="One-cycle with it",
            disabled=True,
            tooltip="submit one_cycle(max_lr=suggestion)",
        )
        self.apply_lr.add_class("trainscope-lr-apply")
        self.apply_cycle.add_class("trainscope-lr-cycle")
        self.apply_lr.on_click(lambda _b: self._click("set_lr", "lr"))
        self.apply_cycle.on_click(lambda _b: self._click("one_cycle", "max_lr"))
        self.suggestion: float | None = None
        self._event_id: int | None = None
        super().__init__([self.fig, W.HBox([self.info, self.apply_lr, self.apply_cycle])])

    def _click(self, action: str, param: str) -> None:
        if self.suggestion is not None:
            self._submit(action, {param: self.suggestion})

    def update(self, h: History, *, read_only: bool, registry: Sequence[str]) -> None:
        ev = next((e for e in reversed(list(h.events)) if e.kind == "lr_find"), None)
        self.apply_lr.disabled = read_only or ev is None or "set_lr" not in registry
        self.apply_cycle.disabled = read_only or ev is None or "one_cycle" not in registry
        if ev is None or ev.id == self._event_id:
            return
        self._event_id = ev.id
        lrs = np.asarray(ev.data.get("lrs", []), dtype=np.float64)
        losses = np.asarray(ev.data.get("losses", []), dtype=np.float64)
        ok = (lrs > 0) & np.isfinite(lrs)
        x, y = minmax_decimate(
            lrs[ok], losses[ok] if len(losses) == len(lrs) else np.full(ok.sum(), np.nan)
        )
        _set(self.curve, x=x, y=y)
        sug = ev.data.get("suggestion")
        self.suggestion = (
            float(sug) if isinstance(sug, (int, float)) and math.isfinite(sug) and sug > 0 else None
        )
        if self.suggestion is not None:
            _set(
                self.mark,
                x=np.array([[self.suggestion] * 2], np.float32),
                y=np.array([[0.0, 1.0]], np.float32),
            )
        others = {
            k: float(v)
            for k, v in (ev.data.get("suggestions") or {}).items()
            if isinstance(v, (int, float)) and math.isfinite(v) and v > 0
        }
        if others:
            xs = np.array([[v, v] for v in others.values()], np.float32)
            _set(self.others, x=xs, y=np.tile(np.array([0.0, 1.0], np.float32), (len(others), 1)))
        text = (
            f"step {ev.step}: suggested lr <b>{self.suggestion:.3g}</b>"
            if self.suggestion
            else f"step {ev.step}: no suggestion"
        )
        if others:
            text += " &nbsp;(" + ", ".join(f"{k}: {v:.2g}" for k, v in others.items()) + ")"
        self.info.value = text

"""Training curves (bqplot): loss raw and smoothed, validation loss, metrics, learning rate,
and marks where interventions were applied; one history or several overlaid.

Every figure is built once; updates replace ``x`` / ``y`` of existing marks inside one
``hold_sync()`` per mark (one comm message), with decimated float32 arrays (see ``_series``).
Marks are only touched when their data changed.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import bqplot as bq
import ipywidgets as W
import numpy as np

from ..history import History
from ._bq import (
    EMPTY,
    EVENT_COLORS,
    LOG_FMT,
    PALETTE,
    STEP_FMT,
    Y_FMT,
    depth_colors,
    figure,
    pad_lines,
    positive,
    set_marks,
    set_ticks,
    user_metrics,
)
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
    "NO_LOSS",
    "PALETTE",
    "Curves",
    "depth_colors",
    "mark_lanes",
    "step_ticks",
    "user_metrics",
]

NO_LOSS = (
    "No training loss reaches trainscope. Pass your loss function: "
    "trainscope.watch(model, optimizer, loss_fn=loss_fn) (magic: --loss loss_fn), "
    "or log it in your loop: scope.log(loss=loss.item())."
)
WAITING = "The loss curve appears with the first training step."
LANES = (0.95, 0.86, 0.77, 0.68)
"""Heights (share of the plot) of the rows of numbered intervention markers."""
MARK_GAP = 0.035
"""Markers closer than this share of the step axis go to the next row (a marker is ~16 px wide
on a ~600 px plot)."""


def step_ticks(lo: float, hi: float, n: int = 6) -> np.ndarray:
    """Round tick values on a step axis, integers only (never 0.1 .. 0.9 "steps")."""
    a, b = math.floor(min(lo, hi)), math.ceil(max(lo, hi))
    if b - a < n:
        return np.arange(a, b + 1, dtype=np.float64)
    t = nice_ticks(float(a), float(b), n)
    out: np.ndarray = t[np.isclose(t, np.round(t))]
    return out


def mark_lanes(steps: Sequence[float], lo: float, hi: float) -> tuple[list[int], list[int]]:
    """Place a numbered marker for each event so that none overlaps another.

    Markers go to the first row (:data:`LANES`) where they keep :data:`MARK_GAP` of the axis
    from the previous marker in that row; when every row is taken they join the previous marker
    (its number then stands for several).  Returns, per marker shown, its row and the index of
    the first event it stands for; events merged into a marker are the ones up to the next.
    """
    span = max(hi - lo, 1.0)
    gap = MARK_GAP * span
    last = [-math.inf] * len(LANES)
    rows: list[int] = []
    firsts: list[int] = []
    for i, s in enumerate(steps):
        lane = next((k for k, x in enumerate(last) if s - x >= gap), None)
        if lane is None:
            continue  # merged into the previous marker
        last[lane] = s
        rows.append(lane)
        firsts.append(i)
    return rows, firsts


def _legend_item(text: str, color: str, symbol: str = "━") -> W.Label:
    lab = W.Label(f"{symbol} {text}", style={"text_color": color, "font_weight": "bold"})
    lab.add_class("trainscope-legend-item")
    return lab


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

        self.lock: Any = threading.RLock()  # the dashboard's lock (set by Dashboard)
        self.log_y = False
        self._steps_seen = 0
        self._last: list[History] | None = None  # what the last update drew (for the toggle)

        # --- loss
        xs, ys = bq.LinearScale(), bq.LinearScale()
        self._xs, self._ys_lin, self._ys_log = xs, ys, bq.LogScale()
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
                    x=EMPTY,
                    y=EMPTY,
                    scales={"x": xs, "y": ys},
                    colors=[c],
                    opacities=[0.3],
                    stroke_width=1,
                    labels=[f"loss{suffix}"],
                )
            )
            self.smooth.append(
                bq.Lines(
                    x=EMPTY,
                    y=EMPTY,
                    scales={"x": xs, "y": ys},
                    colors=[c],
                    stroke_width=2.2,
                    labels=[f"smoothed{suffix}"],
                    display_legend=False,
                )
            )
            self.val.append(
                bq.Lines(
                    x=EMPTY,
                    y=EMPTY,
                    scales={"x": xs, "y": ys},
                    colors=["#d62728" if self.n_runs == 1 else c],
                    line_style="dashed",
                    marker="circle",
                    marker_size=18,
                    stroke_width=1.8,
                    labels=[f"val loss{suffix}"],
                    display_legend=False,
                )
            )
            marks += [self.raw[-1], self.smooth[-1], self.val[-1]]
        self.event_lines = bq.Lines(
            x=EMPTY,
            y=EMPTY,
            scales={"x": xs, "y": unit},
            colors=[EVENT_COLORS["intervention"]],
            stroke_width=1.5,
            line_style="dashed",
            visible=False,
        )
        # numbered markers in rows above the curves (never rotated text that piles up), the
        # event's name, step and what it did in the hover tooltip and in the list below the plot
        self.event_marks = bq.Scatter(
            x=EMPTY,
            y=EMPTY,
            scales={"x": xs, "y": unit},
            colors=[EVENT_COLORS["intervention"]],
            marker="circle",
            default_size=210,
            stroke="white",
            names=[],
            display_names=False,
            tooltip=bq.Tooltip(fields=["name"], labels=["intervention"]),
            visible=False,
        )
        self.event_numbers = bq.Label(
            x=EMPTY,
            y=EMPTY,
            text=[],
            scales={"x": xs, "y": unit},
            colors=["white"],
            default_size=10,
            font_weight="bold",
            align="middle",
            y_offset=3,
            visible=False,
        )
        self.nonfinite = bq.Scatter(
            x=EMPTY,
            y=EMPTY,
            scales={"x": xs, "y": unit},
            colors=["#d62728"],
            marker="cross",
            default_size=40,
            visible=False,
            display_legend=False,
        )
        marks += [self.event_lines, self.nonfinite, self.event_marks, self.event_numbers]
        self._loss_xaxis = bq.Axis(
            scale=xs, label="step", grid_lines="dashed", tick_format=STEP_FMT, visible=False
        )
        self._loss_yaxis = bq.Axis(
            scale=ys, side="left", grid_lines="dashed", tick_format=Y_FMT, visible=False
        )
        self._yaxis_lin = self._loss_yaxis
        self._yaxis_log = bq.Axis(
            scale=self._ys_log, side="left", grid_lines="dashed", tick_format=LOG_FMT, visible=False
        )
        self.loss_fig = figure(
            "training loss", marks, [self._loss_xaxis, self._loss_yaxis], height="300px"
        )
        self.loss_fig.add_class("trainscope-loss-fig")
        # legend, log toggle and the empty state sit above the plot, never on the data
        legend: list[Any] = []
        for r in range(self.n_runs):
            c = PALETTE[r % len(PALETTE)]
            suffix = f" ({self.names[r]})" if self.n_runs > 1 else ""
            legend.append(_legend_item(f"loss{suffix}", c + "88", "─"))
            legend.append(_legend_item(f"smoothed{suffix}", c))
            legend.append(
                _legend_item(f"val loss{suffix}", "#d62728" if self.n_runs == 1 else c, "╌●")
            )
        legend.append(_legend_item("interventions", EVENT_COLORS["intervention"], "●"))
        self.legend = W.HBox(legend, layout=W.Layout(flex_flow="row wrap", flex="1 1 auto"))
        self.legend.add_class("trainscope-legend")
        self.log_toggle = W.ToggleButton(
            value=False,
            description="log scale",
            tooltip="loss axis: logarithmic / linear",
            layout=W.Layout(width="90px"),
        )
        self.log_toggle.add_class("trainscope-log-toggle")
        self.log_toggle.observe(self._on_log_toggle, names="value")
        self.empty = W.Label(WAITING, layout=W.Layout(width="100%"))
        self.empty.add_class("trainscope-empty-state")
        self.marks_list = W.Label("", layout=W.Layout(width="100%"))
        self.marks_list.add_class("trainscope-marks-list")

        # --- metrics
        mx, my = bq.LinearScale(), bq.LinearScale()
        self.metric_lines = bq.Lines(
            x=EMPTY,
            y=EMPTY,
            scales={"x": mx, "y": my},
            stroke_width=1.8,
            marker="circle",
            marker_size=10,
            display_legend=False,
            labels=[],
        )
        self.metrics_legend = W.HBox([], layout=W.Layout(flex_flow="row wrap"))
        self.metrics_legend.add_class("trainscope-legend")
        # small figures: round ticks set from the data (the default ones would overlap)
        self._m_xaxis = bq.Axis(scale=mx, label="step", tick_format=STEP_FMT, visible=False)
        self._m_yaxis = bq.Axis(scale=my, side="left", tick_format=Y_FMT, visible=False)
        self.metrics_fig = figure(
            "metrics",
            [self.metric_lines],
            [self._m_xaxis, self._m_yaxis],
            height="160px",
        )

        # --- learning rate
        lx, ly = bq.LinearScale(), bq.LogScale()
        self._lr_scale = ly
        self.lr_lines = bq.Lines(
            x=EMPTY,
            y=EMPTY,
            scales={"x": lx, "y": ly},
            stroke_width=1.8,
            colors=PALETTE,
            labels=[],
        )
        self._lr_xaxis = bq.Axis(scale=lx, label="step", tick_format=STEP_FMT, visible=False)
        self._lr_yaxis = bq.Axis(scale=ly, side="left", tick_format=".0e", visible=False)
        self.lr_fig = figure(
            "learning rate",
            [self.lr_lines],
            [self._lr_xaxis, self._lr_yaxis],
            height="160px",
        )

        right = W.VBox(
            [self.metrics_legend, self.metrics_fig, self.lr_fig],
            layout=W.Layout(width="40%", min_width="260px"),
        )
        left = W.VBox(
            [
                W.HBox([self.legend, self.log_toggle], layout=W.Layout(width="100%")),
                self.empty,
                self.loss_fig,
                self.marks_list,
            ],
            layout=W.Layout(width="60%", min_width="320px"),
        )
        super().__init__([left, right], layout=W.Layout(width="100%", flex_flow="row wrap"))

    # ------------------------------------------------------------------ update
    def _on_log_toggle(self, change: dict[str, Any]) -> None:
        """The log-scale toggle (any thread: the click may be handled in a kernel subshell)."""
        ok = self.lock.acquire(timeout=2.0)
        try:
            self.set_log(bool(change["new"]))
            if self._last is not None:  # redraw now: the cell may have ended (no next update)
                self.update(self._last, force=True)
        finally:
            if ok:
                self.lock.release()

    def set_log(self, log: bool) -> None:
        """Show the loss on a logarithmic (True) or linear axis; non-positive values become gaps."""
        if log == self.log_y:
            return
        self.log_y = log
        ys = self._ys_log if log else self._ys_lin
        for m in [*self.raw, *self.smooth, *self.val]:
            with m.hold_sync():
                m.scales = {"x": self._xs, "y": ys}
                if log and len(m.y):
                    m.y = positive(np.asarray(m.y))
        # bqplot's axis view keeps the scale it was drawn with: swap the axis, not its scale
        visible = self._loss_yaxis.visible
        self._loss_yaxis = self._yaxis_log if log else self._yaxis_lin
        self._loss_yaxis.visible = visible
        self.loss_fig.axes = [self._loss_xaxis, self._loss_yaxis]
        if self.log_toggle.value != log:
            self.log_toggle.value = log
        self._versions.clear()  # the next update redraws every mark for this scale

    def _y(self, y: np.ndarray) -> np.ndarray:
        return positive(y) if self.log_y else np.asarray(y, np.float32)

    def update(
        self, histories: Sequence[History], *, force: bool = False, steps: int | None = None
    ) -> None:
        """Redraw from the histories (marks whose data did not change are left alone).

        ``steps``: training steps the probe has seen (live runs): with steps but no loss the
        plot says how to get the loss in; without, it waits for the first step.
        """
        self._last = list(histories)
        if steps is not None:
            self._steps_seen = steps
        has_loss = any(len(h.scalar("loss")["step"]) for h in histories[: self.n_runs])
        steps_seen = self._steps_seen or max((h.step + 1 for h in histories), default=0)
        message = "" if has_loss else (NO_LOSS if steps_seen > 0 else WAITING)
        if self.empty.value != message:
            self.empty.value = message
        display = "none" if has_loss else ""
        if self.empty.layout.display != display:
            self.empty.layout.display = display
        for axis in (self._loss_xaxis, self._loss_yaxis):
            if axis.visible != has_loss:
                axis.visible = has_loss
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
                set_marks(self.val[r], x=x, y=self._y(y))
        if has_loss and self.log_y:  # decade ticks (d3's own crowd at the top of a log axis)
            ys = np.concatenate([np.asarray(m.y, np.float64).ravel() for m in self.raw + self.val])
            ys = ys[np.isfinite(ys) & (ys > 0)]
            if len(ys):
                t = log_ticks(float(ys.min()), float(ys.max()), 5)
                if not np.array_equal(np.asarray(self._loss_yaxis.tick_values, np.float64), t):
                    self._loss_yaxis.tick_values = t
        if has_loss:
            hi = max(
                float(h.scalar("loss")["step"][-1])
                for h in histories[: self.n_runs]
                if len(h.scalar("loss")["step"])
            )
            ticks = step_ticks(0.0, hi)
            if not np.array_equal(np.asarray(self._loss_xaxis.tick_values, np.float64), ticks):
                self._loss_xaxis.tick_values = ticks
        self._draw_events(histories[0], force)
        self._draw_metrics(histories, force)
        self._draw_lr(histories, force)

    def _draw_loss(self, r: int, loss: dict[str, np.ndarray]) -> None:
        if len(loss["step"]) == 0:
            set_marks(self.raw[r], x=EMPTY, y=EMPTY)
            set_marks(self.smooth[r], x=EMPTY, y=EMPTY)
            return
        ex, ey = envelope(loss)
        x, y = minmax_decimate(ex, ey, self.max_points)
        set_marks(self.raw[r], x=x, y=self._y(y))
        total_steps = float(loss["last"][-1] - loss["first"][0] + 1)
        window = min(max(total_steps / 100.0, 10.0), 500.0)
        mx, mm, mc = mean_decimate(loss["step"], loss["mean"], loss["count"], self.max_points)
        set_marks(self.smooth[r], x=mx.astype(np.float32), y=self._y(ema(mm, mc, window)))
        if r == 0:
            bad = ~np.isfinite(loss["max"]) | ~np.isfinite(loss["min"])
            if bad.any():
                bx = loss["step"][bad][-200:].astype(np.float32)
                set_marks(self.nonfinite, x=bx, y=np.full(len(bx), 0.03, np.float32), visible=True)
            elif self.nonfinite.visible:
                set_marks(self.nonfinite, x=EMPTY, y=EMPTY, visible=False)

    def _draw_events(self, h: History, force: bool) -> None:
        evs = [e for e in list(h.events) if e.kind in EVENT_COLORS][-100:]
        loss = h.scalar("loss")
        hi = float(loss["step"][-1]) if len(loss["step"]) else float(max(h.step, 1))
        hi = max([hi] + [float(e.step) for e in evs])
        lo = 0.0
        rows, firsts = mark_lanes([float(e.step) for e in evs], lo, hi)
        key = (tuple((e.id, e.kind) for e in evs), tuple(rows), tuple(firsts))
        if not force and self._versions.get("events") == key:
            return
        self._versions["events"] = key
        if not evs:
            set_marks(self.event_lines, visible=False)
            set_marks(self.event_marks, visible=False)
            set_marks(self.event_numbers, visible=False)
            if self.marks_list.value:
                self.marks_list.value = ""
            return
        steps = np.array([e.step for e in evs], np.float32)
        x = np.stack([steps, steps], axis=1)
        lane_of = np.zeros(len(evs), np.int64)
        for k, (row, first) in enumerate(zip(rows, firsts, strict=True)):
            end = firsts[k + 1] if k + 1 < len(firsts) else len(evs)
            lane_of[first:end] = row
        tops = np.array([LANES[i] for i in lane_of], np.float32) - 0.03
        y = np.stack([np.zeros(len(evs), np.float32), tops], axis=1)
        colors = [EVENT_COLORS[e.kind] for e in evs]
        set_marks(self.event_lines, x=x, y=y, colors=colors, visible=True)
        names, numbers, mx, my, mcol = [], [], [], [], []
        for k, (row, first) in enumerate(zip(rows, firsts, strict=True)):
            end = firsts[k + 1] if k + 1 < len(firsts) else len(evs)
            group = evs[first:end]
            numbers.append(str(first + 1) if len(group) == 1 else f"{first + 1}+")
            names.append(
                " | ".join(
                    f"{j}. {e.label} at step {e.step:,}" for j, e in enumerate(group, first + 1)
                )
            )
            mx.append(float(evs[first].step))
            my.append(LANES[row])
            mcol.append(EVENT_COLORS[evs[first].kind])
        set_marks(
            self.event_marks,
            x=np.array(mx, np.float32),
            y=np.array(my, np.float32),
            names=names,
            colors=mcol,
            visible=True,
        )
        set_marks(
            self.event_numbers,
            x=np.array(mx, np.float32),
            y=np.array(my, np.float32),
            text=numbers,
            visible=True,
        )
        shown = list(enumerate(evs, 1))[-8:]
        text = "  ".join(f"{i}: {e.label} @ {e.step:,}" for i, e in shown)
        if len(evs) > len(shown):
            text = f"(1–{len(evs) - len(shown)}: hover the markers)  " + text
        if self.marks_list.value != text:
            self.marks_list.value = text

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
            set_marks(self.metric_lines, x=EMPTY, y=EMPTY, labels=[])
            self.metrics_fig.title = "metrics: log yours with scope.log(acc=...)"
            self._m_xaxis.visible = self._m_yaxis.visible = False
            self.metrics_legend.children = ()
            return
        X, Y = pad_lines(lines)
        set_marks(self.metric_lines, x=X, y=Y, labels=labels, colors=colors)
        self.metrics_fig.title = "metrics"
        if [c.value for c in self.metrics_legend.children] != [f"━ {n}" for n in labels]:
            self.metrics_legend.children = tuple(
                _legend_item(n, c) for n, c in zip(labels, colors, strict=True)
            )
        self._m_xaxis.visible = self._m_yaxis.visible = True
        xs = np.asarray(X, np.float64)
        xs = xs[np.isfinite(xs)]
        if len(xs):
            self._m_xaxis.tick_values = step_ticks(float(xs.min()), float(xs.max()), 3)
        set_ticks(self._m_yaxis, Y, log=False, fit_format=True)

    def _draw_lr(self, histories: Sequence[History], force: bool) -> None:
        lines, labels = [], []
        for r, h in enumerate(histories[: self.n_runs]):
            s = h.scalar("lr")
            if len(s["step"]):
                x, y = minmax_decimate(s["step"], s["mean"], self.max_points)
                lines.append((x, positive(y)))
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
            set_marks(self.lr_lines, x=EMPTY, y=EMPTY)
            self._lr_xaxis.visible = self._lr_yaxis.visible = False
            return
        X, Y = pad_lines(lines)
        set_marks(self.lr_lines, x=X, y=Y, labels=labels)
        self._lr_xaxis.visible = self._lr_yaxis.visible = True
        finite = Y[np.isfinite(Y)]
        if len(finite):  # a constant lr would give a log scale an empty domain: pad it
            lo, hi = float(finite.min()) / 2.0, float(finite.max()) * 2.0
            with self._lr_scale.hold_sync():
                self._lr_scale.min = lo
                self._lr_scale.max = hi
            self._lr_yaxis.tick_values = log_ticks(lo, hi, 3)
        xs = np.asarray(X, np.float64)
        xs = xs[np.isfinite(xs)]
        if len(xs):
            self._lr_xaxis.tick_values = step_ticks(float(xs.min()), float(xs.max()), 3)

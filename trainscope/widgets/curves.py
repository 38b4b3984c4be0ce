"""Training curves (bqplot): loss raw and smoothed, validation loss, metrics, learning rate,
and marks where interventions were applied; one history or several overlaid.

Every figure is built once; updates replace ``x`` / ``y`` of existing marks inside one
``hold_sync()`` per mark (one comm message), with decimated float32 arrays (see ``_series``).
Marks are only touched when their data changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import bqplot as bq
import ipywidgets as W
import numpy as np

from ..history import History
from ._bq import (
    EMPTY,
    EVENT_COLORS,
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
from ._series import MAX_POINTS, ema, envelope, log_ticks, mean_decimate, minmax_decimate

__all__ = ["PALETTE", "Curves", "depth_colors", "user_metrics"]


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
                    display_legend=True,
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
                    display_legend=True,
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
        self.event_labels = bq.Label(
            x=EMPTY,
            y=EMPTY,
            text=[],
            scales={"x": xs, "y": unit},
            colors=[EVENT_COLORS["intervention"]],
            default_size=11,
            rotate_angle=-90,
            align="end",
            x_offset=-4,  # beside the dashed line, not on it
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
        marks += [self.event_lines, self.event_labels, self.nonfinite]
        self.loss_fig = figure(
            "training loss",
            marks,
            [
                bq.Axis(scale=xs, label="step", grid_lines="dashed", tick_format=STEP_FMT),
                bq.Axis(scale=ys, side="left", grid_lines="dashed", tick_format=Y_FMT),
            ],
            height="300px",
        )

        # --- metrics
        mx, my = bq.LinearScale(), bq.LinearScale()
        self.metric_lines = bq.Lines(
            x=EMPTY,
            y=EMPTY,
            scales={"x": mx, "y": my},
            stroke_width=1.8,
            marker="circle",
            marker_size=10,
            display_legend=True,
            labels=[],
        )
        # small figures: round ticks set from the data (the default ones would overlap)
        self._m_xaxis = bq.Axis(scale=mx, label="step", tick_format=STEP_FMT)
        self._m_yaxis = bq.Axis(scale=my, side="left", tick_format=Y_FMT)
        self.metrics_fig = figure(
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
            x=EMPTY,
            y=EMPTY,
            scales={"x": lx, "y": ly},
            stroke_width=1.8,
            colors=PALETTE,
            labels=[],
        )
        self._lr_xaxis = bq.Axis(scale=lx, label="step", tick_format=STEP_FMT)
        self._lr_yaxis = bq.Axis(scale=ly, side="left", tick_format=".0e")
        self.lr_fig = figure(
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
                set_marks(self.val[r], x=x, y=y)
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
        set_marks(self.raw[r], x=x, y=y)
        total_steps = float(loss["last"][-1] - loss["first"][0] + 1)
        window = min(max(total_steps / 100.0, 10.0), 500.0)
        mx, mm, mc = mean_decimate(loss["step"], loss["mean"], loss["count"], self.max_points)
        set_marks(self.smooth[r], x=mx.astype(np.float32), y=ema(mm, mc, window).astype(np.float32))
        if r == 0:
            bad = ~np.isfinite(loss["max"]) | ~np.isfinite(loss["min"])
            if bad.any():
                bx = loss["step"][bad][-200:].astype(np.float32)
                set_marks(self.nonfinite, x=bx, y=np.full(len(bx), 0.96, np.float32), visible=True)
            elif self.nonfinite.visible:
                set_marks(self.nonfinite, x=EMPTY, y=EMPTY, visible=False)

    def _draw_events(self, h: History, force: bool) -> None:
        evs = [e for e in list(h.events) if e.kind in EVENT_COLORS][-100:]
        key = tuple((e.id, e.kind) for e in evs)
        if not force and self._versions.get("events") == key:
            return
        self._versions["events"] = key
        if not evs:
            set_marks(self.event_lines, visible=False)
            set_marks(self.event_labels, visible=False)
            return
        steps = np.array([e.step for e in evs], np.float32)
        x = np.stack([steps, steps], axis=1)
        y = np.tile(np.array([0.0, 1.0], np.float32), (len(evs), 1))
        colors = [EVENT_COLORS[e.kind] for e in evs]
        set_marks(self.event_lines, x=x, y=y, colors=colors, visible=True)
        set_marks(
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
            set_marks(self.metric_lines, x=EMPTY, y=EMPTY, labels=[])
            self.metrics_fig.title = "metrics (log more with probe.log(acc=...))"
            return
        X, Y = pad_lines(lines)
        set_marks(self.metric_lines, x=X, y=Y, labels=labels, colors=colors)
        self.metrics_fig.title = "metrics"
        set_ticks(self._m_xaxis, X, log=False)
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
            return
        X, Y = pad_lines(lines)
        set_marks(self.lr_lines, x=X, y=Y, labels=labels)
        finite = Y[np.isfinite(Y)]
        if len(finite):  # a constant lr would give a log scale an empty domain: pad it
            lo, hi = float(finite.min()) / 2.0, float(finite.max()) * 2.0
            with self._lr_scale.hold_sync():
                self._lr_scale.min = lo
                self._lr_scale.max = hi
            self._lr_yaxis.tick_values = log_ticks(lo, hi, 3)
        set_ticks(self._lr_xaxis, X, log=False)

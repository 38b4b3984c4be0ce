"""The landscape panel: the latest loss-landscape slice and the capacity-usage chart (Σ|w| per layer).

``trainscope.widgets.landscape_panel(probe)`` returns it live (display it in a cell); it also
reads a saved run's history (``landscape_panel(run.history)``).

* **Landscape**: the latest timeline event of kind ``"loss_landscape"`` (``probe.request(
  "loss_landscape", dims=1|2)`` or the buttons here): a line over α for a 1-D slice, a heat map of
  log10(loss) over (α, β) for a 2-D one, the weights themselves marked at (0, 0).
* **Capacity**: Σ|w| of each layer's own parameters over training, the lecture's capacity-usage
  chart.  It is read from the history's ``weight_l1`` layer metric when the history records one;
  otherwise a :class:`CapacityTracker` computes it from the model at the probe's sampled steps
  (an ``on_step`` callback that does nothing on other steps; at most ``max_points`` points, older
  ones thinned), from the moment the panel is created.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import bqplot as bq
import ipywidgets as W
import numpy as np
import torch

from ..history import LAYER_METRICS, History
from ..probe import Probe
from ._bq import (
    EMPTY,
    LOG_FMT,
    PALETTE,
    STEP_FMT,
    Y_FMT,
    depth_colors,
    figure,
    positive,
    set_marks,
    set_ticks,
)
from ._series import mean_decimate

__all__ = ["CapacityTracker", "LandscapePanel", "landscape_panel"]

HISTORY_METRIC = "weight_l1"


class CapacityTracker:
    """Σ|w| of every tracked layer's own parameters, at each of the probe's sampled steps.

    Bounded: at most ``max_points`` rows; when full, every other older row is dropped (the first
    and the latest are kept), so a long run keeps an evenly thinned record.
    """

    def __init__(self, probe: Probe, max_points: int = 512) -> None:
        if max_points < 4:
            raise ValueError(f"max_points must be >= 4, got {max_points!r}")
        self.max_points = max_points
        self.names = [info.name for info in probe.layers]
        self.steps: list[int] = []
        self.rows: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._seen = -1
        self.errors: list[str] = []
        self._probe = probe
        self.record(probe)  # the starting point
        self._handle = probe.on_step(self._on_step)

    def _on_step(self, probe: Probe) -> None:
        n = probe.history.samples()
        if n != self._seen:
            self._seen = n
            self.record(probe)

    def _layout(self, probe: Probe) -> tuple[list[torch.Tensor], np.ndarray]:
        """The tracked layers' own parameters (flat) and the layer index of each (cached)."""
        key = id(probe.model)
        if getattr(self, "_key", None) != key:
            modules = dict(probe.model.named_modules())
            params: list[torch.Tensor] = []
            owner: list[int] = []
            for i, name in enumerate(self.names):
                mod = modules.get(name)
                for p in [] if mod is None else mod.parameters(recurse=False):
                    params.append(p)
                    owner.append(i)
            self._key, self._params, self._owner = key, params, np.asarray(owner, dtype=np.int64)
        return self._params, self._owner

    @torch.no_grad()
    def record(self, probe: Probe) -> None:
        """Add Σ|w| per layer at the probe's current step now (one fused op and one host transfer
        for a model on one device)."""
        try:
            params, owner = self._layout(probe)
            sums = np.full(len(self.names), math.nan)
            if params:
                try:
                    norms = torch._foreach_norm([p.detach() for p in params], 1)
                    host = torch.stack(norms).double().cpu().numpy()
                except RuntimeError:  # parameters on several devices / dtypes foreach refuses
                    host = np.array([float(p.detach().abs().sum(dtype=torch.float64)) for p in params])
                sums = np.bincount(owner, weights=host, minlength=len(self.names))
                sums[np.bincount(owner, minlength=len(self.names)) == 0] = math.nan
        except Exception as e:  # never in the training loop's way
            if len(self.errors) < 20:
                self.errors.append(f"{type(e).__name__}: {e}")
            return
        with self._lock:
            step = int(probe.step_count)
            if self.steps and self.steps[-1] == step:
                self.rows[-1] = sums
                return
            self.steps.append(step)
            self.rows.append(sums)
            if len(self.steps) > self.max_points:
                keep = [*range(0, len(self.steps) - 1, 2), len(self.steps) - 1]
                self.steps = [self.steps[i] for i in keep]
                self.rows = [self.rows[i] for i in keep]

    def series(self) -> tuple[np.ndarray, np.ndarray]:
        """``(steps (T,), values (T, L))``."""
        with self._lock:
            if not self.steps:
                return np.zeros(0), np.zeros((0, len(self.names)))
            return np.asarray(self.steps, dtype=np.float64), np.stack(self.rows)

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self._handle.remove()


def history_capacity(h: History) -> tuple[np.ndarray, np.ndarray] | None:
    """Σ|w| per layer from the history's ``weight_l1`` metric, or ``None`` where it has none."""
    if HISTORY_METRIC not in LAYER_METRICS or h.samples() == 0:
        return None
    steps, values = h.layer_series(HISTORY_METRIC)
    if not len(steps) or not np.isfinite(values).any():
        return None
    return steps, values


class LandscapePanel(W.VBox):
    """The latest loss-landscape slice and Σ|w| per layer over training (see the module docstring).

    ``submit(action, params)`` sends the buttons' requests (default: ``probe.actions.submit``);
    ``follow`` redraws from the probe's step boundaries at most every ``interval`` seconds (the
    dashboard passes ``False`` and calls :meth:`update` from its own loop when the tab is shown).
    """

    def __init__(self, source: Probe | History, *, submit: Callable[[str, dict[str, Any]], Any] | None = None,
                 interval: float = 1.0, follow: bool = True) -> None:
        if isinstance(source, Probe):
            self.probe: Probe | None = source
            self.history = source.history
        elif isinstance(source, History):
            self.probe, self.history = None, source
        else:
            raise TypeError(f"landscape_panel shows a trainscope.Probe (live) or a History (a saved run's "
                            f"run.history); got {type(source).__name__}")
        self.interval = float(interval)
        self._submit = submit or (self._request if self.probe is not None else None)
        self.tracker: CapacityTracker | None = None
        self.capacity_source = "none"
        self._event_id: int | None = None
        self._last = -math.inf
        self._lock = threading.Lock()
        self.errors: list[str] = []
        # 1-D
        lx, ly = bq.LinearScale(), bq.LinearScale()
        self.line = bq.Lines(x=EMPTY, y=EMPTY, scales={"x": lx, "y": ly}, colors=[PALETTE[0]], stroke_width=2)
        self.center = bq.Scatter(x=EMPTY, y=EMPTY, scales={"x": lx, "y": ly}, colors=["#d62728"], default_size=48)
        self._ly = bq.Axis(scale=ly, side="left", label="loss", tick_format=Y_FMT, label_offset="45px")
        self.fig1 = figure("loss along a filter-normalized direction", [self.line, self.center],
                           [bq.Axis(scale=lx, label="alpha"), self._ly], height="280px")
        # 2-D
        hx, hy = bq.LinearScale(), bq.LinearScale()
        self.color_scale = bq.ColorScale(scheme="viridis")
        self.heat = bq.HeatMap(x=np.array([0.0, 1.0]), y=np.array([0.0, 1.0]), color=np.zeros((2, 2)),
                               scales={"x": hx, "y": hy, "color": self.color_scale})
        self.center2 = bq.Scatter(x=EMPTY, y=EMPTY, scales={"x": hx, "y": hy}, colors=["#d62728"], default_size=48)
        self.fig2 = figure("log10 loss over two filter-normalized directions", [self.heat, self.center2],
                           [bq.Axis(scale=hx, label="alpha"), bq.Axis(scale=hy, side="left", label="beta"),
                            bq.ColorAxis(scale=self.color_scale, side="right", tick_format=".2f")], height="320px")
        # capacity
        cx, cy = bq.LinearScale(), bq.LogScale()
        self.cap_lines = bq.Lines(x=EMPTY, y=EMPTY, scales={"x": cx, "y": cy}, stroke_width=1.5)
        self._cy = bq.Axis(scale=cy, side="left", tick_format=LOG_FMT)
        self.cap_fig = figure("capacity usage: Σ|w| per layer (dark: first layer, yellow: last)", [self.cap_lines],
                              [bq.Axis(scale=cx, label="step", tick_format=STEP_FMT), self._cy], height="280px")
        # text only (never HTML): it holds names read from a run directory
        self.info = W.Label("No loss landscape yet: run one here or with probe.request('loss_landscape', dims=1).")
        self.cap_info = W.Label("")
        self.btn1 = W.Button(description="1-D slice", tooltip="submit loss_landscape(dims=1, points=21)")
        self.btn2 = W.Button(description="2-D slice", tooltip="submit loss_landscape(dims=2, points=15)")
        self.btn1.on_click(lambda _b: self._click(1))
        self.btn2.on_click(lambda _b: self._click(2))
        self.btn1.disabled = self.btn2.disabled = self._submit is None
        self._row = W.HBox([self.btn1, self.btn2, self.info])
        self._slot = W.Box([], layout=W.Layout(width="100%"))
        self._cap_slot = W.Box([], layout=W.Layout(width="100%"))
        if self.probe is not None and HISTORY_METRIC not in LAYER_METRICS:  # the probe does not record it
            self.tracker = CapacityTracker(self.probe)
        self._subs: list[Any] = []
        if self.probe is not None and follow:  # inside the dashboard, its update loop calls update()
            self._subs.append(self.probe.on_step(self._on_step))
        super().__init__([self._row, self._slot, self.cap_info, self._cap_slot], layout=W.Layout(width="100%"))
        self.add_class("trainscope-landscape")
        if follow:  # shown on its own: draw now.  Inside the dashboard (follow=False) the update loop
            # draws it when its tab is shown -- a figure laid out in a hidden tab logs SVG errors
            self.update()

    # ------------------------------------------------------------------ actions
    def _request(self, action: str, params: dict[str, Any]) -> Any:
        assert self.probe is not None
        return self.probe.actions.submit(action, params, source="ui")

    def _click(self, dims: int) -> Any:
        if self._submit is None:
            return None
        return self._submit("loss_landscape", {"dims": dims, "points": 21 if dims == 1 else 15})

    def _on_step(self, probe: Probe) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval and self._lock.acquire(blocking=False):
            try:
                self._last = now
                self.update()
            except Exception as e:
                if len(self.errors) < 20:
                    self.errors.append(f"{type(e).__name__}: {e}")
            finally:
                self._lock.release()

    def close(self) -> None:
        for s in getattr(self, "_subs", ()):  # construction may have failed half-way
            with contextlib.suppress(Exception):
                s.remove()
        self._subs = []
        tracker = getattr(self, "tracker", None)
        if tracker is not None:
            tracker.remove()
        super().close()

    # ------------------------------------------------------------------ drawing
    def capacity(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(steps, Σ|w| (T, L))`` from the history's ``weight_l1`` if recorded, else the tracker's."""
        hist = history_capacity(self.history)
        if hist is not None:
            self.capacity_source = f"history metric {HISTORY_METRIC!r}"
            return hist
        if self.tracker is not None:
            self.capacity_source = "computed from the model at the probe's sampled steps"
            steps, values = self.tracker.series()
            return (steps, values) if len(steps) else None
        self.capacity_source = "none"
        return None

    def update(self) -> None:
        """Redraw from the history (any thread; cheap when nothing changed)."""
        self._draw_landscape()
        self._draw_capacity()

    def _draw_landscape(self) -> None:
        ev = next((e for e in reversed(list(self.history.events)) if e.kind == "loss_landscape"), None)
        if ev is None or ev.id == self._event_id:
            return
        self._event_id = ev.id
        d = ev.data
        alphas = np.asarray(d.get("alphas") or [], dtype=np.float64)
        losses = np.asarray(d.get("losses") or [], dtype=np.float64)
        center = d.get("center_loss")
        center = float(center) if isinstance(center, (int, float)) else math.nan
        dims = d.get("dims")
        if dims == 1 and losses.shape == alphas.shape and len(alphas):
            set_marks(self.line, x=alphas.astype(np.float32), y=losses.astype(np.float32))
            set_marks(self.center, x=np.array([0.0], np.float32), y=np.array([center], np.float32))
            set_ticks(self._ly, np.append(losses, center), log=False, fit_format=True)
            self._slot.children = (self.fig1,)
        elif dims == 2:
            betas = np.asarray(d.get("betas") or [], dtype=np.float64)
            if losses.shape != (len(alphas), len(betas)) or not len(alphas):
                return
            with np.errstate(divide="ignore", invalid="ignore"):
                col = np.where(losses > 0, np.log10(losses), np.nan)
            # HeatMap: color[i, j] is at (x[j], y[i]) -> rows are beta
            set_marks(self.heat, x=alphas, y=betas, color=col.T)
            set_marks(self.center2, x=np.array([0.0], np.float32), y=np.array([0.0], np.float32))
            self._slot.children = (self.fig2,)
        else:
            return
        sh = d.get("sharpness") or {}
        argmin = ", ".join(f"{float(v):+.3g}" for v in sh.get("argmin") or [] if isinstance(v, (int, float)))

        def num(v: Any) -> str:
            return f"{float(v):.3g}" if isinstance(v, (int, float)) else "?"

        self.info.value = (f"step {ev.step:,}: {dims}-D slice ({d.get('mode', '?')} mode, span {num(d.get('span'))}): "
                           f"loss {num(center)} at the weights, lowest {num(sh.get('min_loss'))} at ({argmin}); "
                           f"Keskar sharpness {num(sh.get('keskar'))}")

    def _draw_capacity(self) -> None:
        cap = self.capacity()
        if cap is None:
            self.cap_info.value = ("Σ|w| per layer: not recorded in this run" if self.probe is None
                                   else "Σ|w| per layer: appears with the probe's next sampled step")
            return
        steps, values = cap
        # layers without parameters (a ReLU) have no Σ|w|: an all-NaN line has no path (d=null)
        keep = np.isfinite(values).any(axis=0)
        names_all = self._layer_names(values.shape[1])
        values = values[:, keep]
        kept_names = [n for n, k in zip(names_all, keep, strict=False) if k]
        L = values.shape[1]
        if L == 0:
            return
        x, y, _ = mean_decimate(steps, values, None, 500)
        y = positive(y).T  # (L, T)
        x32 = np.asarray(x, np.float32)
        if len(x32) == 1:  # bqplot squeezes size-1 axes: pad one point with a gap
            x32 = np.array([x32[0], np.nan], np.float32)
            y = np.concatenate([y, np.full((L, 1), np.nan, np.float32)], axis=1)
        set_marks(self.cap_lines, x=x32, y=y, colors=depth_colors(L))
        set_ticks(self._cy, y, log=True)
        last = values[-1]
        fin = np.isfinite(last)
        top = ""
        if fin.any():
            i = int(np.nanargmax(np.where(fin, last, -np.inf)))
            top = f"; largest now: {kept_names[i] if i < len(kept_names) else i} ({last[i]:.4g})"
        self.cap_info.value = f"Σ|w| per layer ({self.capacity_source}){top}"
        if self.cap_fig not in tuple(self._cap_slot.children):
            self._cap_slot.children = (self.cap_fig,)

    def _layer_names(self, n: int) -> list[str]:
        if self.tracker is not None and len(self.tracker.names) == n:
            return list(self.tracker.names)
        names = list(self.history.layer_names)
        return names if len(names) == n else [str(i) for i in range(n)]


def landscape_panel(source: Probe | History, **kwargs: Any) -> LandscapePanel:
    """A :class:`LandscapePanel` for a live probe or a saved run's history (display it in a cell)."""
    return LandscapePanel(source, **kwargs)

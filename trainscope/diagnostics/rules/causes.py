"""Root cause before symptom: the ordered tests a symptom finding runs to name its cause.

DeepDiagnosis's decision lists, adapted to what the probe records: input scale -> init scale
(forward gain per layer at the first sample) -> effective learning rate (update / weight ratio
``||dW|| / ||W||`` per step, and loss spikes, before the onset) -> head / loss structure.  The first
test that holds is the cause; a symptom finding leads with it ("learning rate too high -> 97% of
`relu2` died at step 40").  Pure: reads the history only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...history import History
from .._series import feeder, fmt, param_layers, scalar, series
from ..assess import assess_inputs, assess_loss_inputs
from ..context import Context
from ..finding import intervention

__all__ = ["Cause", "init_gain", "root_cause"]

INIT_GAIN = 10.0
"""A hidden layer whose output std is 10x (or 1/10) its input's at the first sample: its weights
are initialized an order of magnitude off (He / Glorot keep the gain near 1)."""
SPIKE = 2.0
"""A loss spike: one step's loss twice the median of the 10 before it."""


@dataclass
class Cause:
    key: str  # "inputs" | "init_large" | "init_small" | "lr_high" | "loss_spike" | "loss_structure"
    short: str  # title prefix: "Learning rate too high"
    text: str  # evidence prefix with the numbers
    fixes: list[dict[str, Any]] = field(default_factory=list)


def init_gain(h: History, ctx: Context) -> tuple[str, float, int] | None:
    """The hidden linear / conv layer with the most extreme forward gain (output std / input std)
    at the first sample: ``(layer, gain, step)`` when it is beyond ``INIT_GAIN`` either way."""

    def get() -> tuple[str, float, int] | None:
        steps, std = series(h, ctx, "act_std")
        if len(steps) == 0:
            return None
        pl = param_layers(h, ctx)[:-1]
        row = std[0]
        worst: tuple[str, float, int] | None = None
        for i in pl:
            f = feeder(h, ctx, i)
            if f is None or not (np.isfinite(row[i]) and np.isfinite(row[f]) and row[f] > 0 and row[i] > 0):
                continue
            g = float(row[i] / row[f])
            if (g >= INIT_GAIN or g <= 1 / INIT_GAIN) and (worst is None or abs(np.log10(g)) > abs(np.log10(worst[1]))):
                worst = (h.layers[i].name, g, int(steps[0]))
        return worst

    return ctx.memo("init_gain", get)


def _update_before(h: History, onset: int) -> tuple[float, int] | None:
    """Largest whole-model update / weight ratio recorded up to ``onset`` (and its step)."""
    s, u = scalar(h, "update_ratio_total")
    ok = np.isfinite(u) & (s <= onset)
    if not ok.any():
        return None
    k = int(np.argmax(np.where(ok, u, -np.inf)))
    return float(u[k]), int(s[k])


def _loss_spike_before(h: History, onset: int) -> tuple[float, int] | None:
    s, v = scalar(h, "loss")
    ok = np.isfinite(v) & (s <= onset)
    s, v = s[ok], v[ok]
    best: tuple[float, int] | None = None
    for k in range(3, len(v)):
        med = float(np.median(v[max(0, k - 10):k]))
        if med > 0 and v[k] >= SPIKE * med and (best is None or v[k] / med > best[0]):
            best = (float(v[k] / med), int(s[k]))
    return best


def root_cause(h: History, ctx: Context, onset: int, *, symptom: str) -> Cause | None:
    """The first root-cause test that holds for a symptom seen from step ``onset``.

    ``symptom``: ``"dead"``, ``"nan"``, ``"vanishing"``, ``"exploding"``, ``"saturated"``.
    Order: inputs -> init -> learning rate (update / weight ratio >= ``update_high`` before the
    onset, or a loss spike) -> the loss's inputs.  ``None`` when no test holds (the symptom is
    then reported on its own).
    """
    th = ctx.thresholds
    rec = h.latest
    if rec is not None and rec.inputs:
        status, ev, _nums = assess_inputs(rec.inputs, th)
        if status == "warn":
            return Cause("inputs", "Inputs not normalized", f"inputs not normalized ({ev})")
    ig = init_gain(h, ctx)
    if ig is not None:
        name, g, st = ig
        big = g >= INIT_GAIN
        if (big and symptom in ("nan", "exploding", "dead", "saturated")) or (not big and symptom in ("vanishing", "dead")):
            return Cause(
                "init_large" if big else "init_small",
                f"Init too {'large' if big else 'small'} at `{name}`",
                f"init too {'large' if big else 'small'} at `{name}` (forward std x{fmt(g)} across that layer at step {st})",
                [intervention("reinit", f"Re-initialize `{name}` (LSUV)", layers=[name], scheme="lsuv")],
            )
    if symptom != "vanishing":
        u = _update_before(h, onset)
        if u is not None and u[0] >= th.update_high:
            return Cause(
                "lr_high", "Learning rate too high",
                f"learning rate too high (update/weight {fmt(u[0])} per step at step {u[1]}, rule of thumb ~1e-3)",
                [intervention("scale_lr", "Lower the learning rate 10x", factor=0.1)],
            )
        sp = _loss_spike_before(h, onset)
        if sp is not None:
            return Cause(
                "loss_spike", "Loss spike",
                f"a loss spike at step {sp[1]} ({fmt(sp[0])}x the recent level): an oversized update",
                [intervention("clip_grad", "Clip the gradient norm", max_norm=1.0),
                 intervention("scale_lr", "Lower the learning rate 10x", factor=0.1)],
            )
    if rec is not None and rec.loss_inputs:
        probs = [e for lab, sev, e in assess_loss_inputs(rec.loss_inputs) if sev in ("warning", "error")]
        if probs:
            return Cause("loss_structure", "Loss / head mismatch", f"the loss's inputs do not fit it ({probs[0]})", [])
    return None

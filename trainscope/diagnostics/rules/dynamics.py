"""Rules about when training stops: ``still_improving``."""

from __future__ import annotations

import numpy as np

from ...history import History
from .._series import fmt
from ..context import Context
from ..finding import Finding
from ..registry import rule
from .generalization import val_series


def _improving(vv: np.ndarray, window: int, min_gain: float) -> tuple[bool, float]:
    """Whether the last ``window`` evaluations still trend down: the median of their second half is
    ``min_gain`` (relative) below the median of their first half, and the latest value is within
    that gain of the best so far.  Returns ``(improving, relative gain)``."""
    w = vv[-window:]
    half = len(w) // 2
    a, b = float(np.median(w[:half])), float(np.median(w[half:]))
    scale = max(abs(a), 1e-12)
    gain = (a - b) / scale
    near_best = float(w[-1]) <= float(np.min(vv)) + min_gain * scale
    return bool(gain >= min_gain and near_best), gain


@rule("still_improving", checklist=("karpathy.overfit_then_regularize",), finite=True)
def still_improving(h: History, ctx: Context) -> Finding | None:
    """Training stopped while the validation metric was still improving.  Over the last
    ``still_window`` (6) evaluations (at least ``min_val_points``) the validation loss (or error)
    keeps falling: the median of the later half is ``still_gain`` (2%) below that of the earlier
    half and the latest evaluation is about the best so far.  Warning when early stopping fired
    during that trend (an ``early_stop`` on the timeline: its patience is too short for the metric's
    noise); info otherwise -- the run is still improving at the latest evaluation, so if training
    ends here it ends too early (raise the number of epochs)."""
    th = ctx.thresholds
    vs_ = val_series(h)
    if vs_ is None:
        return None
    vs, vv, name = vs_
    stop = next((ev for ev in reversed(list(h.events)) if ev.kind == "early_stop"), None)
    if stop is not None:
        keep = vs <= stop.step
        vs, vv = vs[keep], vv[keep]
    if len(vv) < max(th.min_val_points, th.still_window):
        return None
    ok, gain = _improving(vv, th.still_window, th.still_gain)
    if not ok:
        return None
    what = "validation loss" if name == "val_loss" else "validation error (1 - accuracy)"
    span = f"steps {int(vs[-th.still_window])}-{int(vs[-1])}"
    trend = (f"the {what} fell {fmt(100 * gain)}% over the last {th.still_window} evaluations ({span}) and the latest "
             f"({fmt(float(vv[-1]))}) is about the best so far")
    if stop is not None:
        return Finding(
            label="still_improving",
            severity="warning",
            title="Early stopping fired while validation was still improving",
            evidence=(f"early stopping stopped training at step {stop.step}, but {trend}: its patience is shorter than "
                      "the metric's step-to-step noise. Undo the early stop and train on, with a larger patience "
                      "(or a smoothed monitor)"),
            first_step=int(stop.step),
            data={"gain": gain, "stop_step": int(stop.step)},
        )
    return Finding(
        label="still_improving",
        severity="info",
        title="Validation is still improving",
        evidence=(f"{trend}: the model has not converged yet. If training ends here, it ends too early: train for "
                  "more epochs (or with a larger learning rate) until validation levels off"),
        first_step=int(vs[-th.still_window]),
        data={"gain": gain},
    )

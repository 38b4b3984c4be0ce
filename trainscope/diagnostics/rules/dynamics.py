"""Rules about when training stops: ``still_improving``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...history import RUN_END, Event, History
from .._series import fmt, loss_curve, scalar
from ..context import Context
from ..finding import Finding, intervention
from ..registry import rule
from .generalization import val_series

END_KIND = RUN_END


def run_end(h: History) -> Event | None:
    """The latest end-of-training mark (``probe.finish()``), when no training step came after it
    (training that goes on after a ``finish()`` makes the mark a thing of the past)."""
    ev = next((e for e in reversed(list(h.events)) if e.kind == END_KIND), None)
    if ev is None:
        return None
    s, _ = scalar(h, "loss", whole=True)
    if len(s) and int(s[-1]) > int(ev.step):
        return None
    return ev


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1 - 1e-12)
    out: np.ndarray = -(q * np.log(q) + (1 - q) * np.log(1 - q))
    return np.where((p <= 0) | (p >= 1), 0.0, out)


def prior_loss(h: History, ctx: Context) -> tuple[float, str] | None:
    """``(loss, what)`` of the best *constant* prediction -- what a model that learned nothing
    from its inputs scores: the entropy of the class frequencies (cross-entropy, from the class
    counts of the sampled batches), the mean binary entropy of each output's positive rate
    (binary cross-entropy), the targets' variance (MSE on one target per example).  ``None`` when
    the loss or the targets' statistics do not say."""
    recs = [r for r in (h.first_record, h.latest) if r is not None and r.loss_inputs]
    li: dict[str, Any] = recs[-1].loss_inputs if recs else {}
    name = li.get("loss") or h.meta.get("loss_fn")
    counts = h.meta.get("class_counts")
    c = np.asarray(counts, dtype=np.float64) if isinstance(counts, list) and len(counts) >= 2 else None
    if name in ("CrossEntropyLoss", "NLLLoss") and c is not None and c.sum() > 0:
        p = c / c.sum()
        q = p[p > 0]
        return float(-(q * np.log(q)).sum()), "predicting the class frequencies"
    if name in ("BCEWithLogitsLoss", "BCELoss") and c is not None and c.sum() > 0:
        multi = bool(li.get("target_shape") and tuple(li["target_shape"]) == tuple(li.get("pred_shape") or ())
                     and len(c) > 2)
        if not multi:
            return float(_binary_entropy(np.array([c[-1] / c.sum()]))[0]), "predicting the positive rate"
        means = [float(r.loss_inputs.get("target_mean", math.nan)) for r in recs]
        m = float(np.nanmean(means)) if any(math.isfinite(x) for x in means) else math.nan
        if not (m > 0):
            return None
        rows = float(c.sum()) / (m * len(c))  # every output's positives over as many rows
        return float(_binary_entropy(np.clip(c / rows, 0.0, 1.0)).mean()), "predicting each output's positive rate"
    shape = tuple(li.get("target_shape") or ())
    if name == "MSELoss" and len(shape) >= 1 and math.prod(shape[1:]) == 1:
        # one target per example: its variance is the mean predictor's loss (with several outputs the
        # pooled variance also counts the differences between the outputs' means: no constant there)
        var = [float(r.loss_inputs.get("target_std", math.nan)) ** 2 for r in recs]
        v = [x for x in var if math.isfinite(x) and x > 0]
        if v:
            return float(np.mean(v)), "predicting the targets' mean"
    return None


def _falling(h: History, ctx: Context, steps: np.ndarray, vals: np.ndarray) -> str | None:
    """How the loss is still falling at the end (the evidence), or ``None``: the training loss's
    least-squares slope over the last half of the run is ``stopped_t`` standard errors below zero,
    or the latest of at least two validation evaluations is the best so far and ``still_gain``
    below the one before."""
    th = ctx.thresholds
    half = len(vals) // 2
    x, y = steps[half:].astype(np.float64), vals[half:]
    if len(y) >= 10 and float(np.ptp(x)) > 0:
        xc = x - x.mean()
        slope = float(xc @ (y - y.mean()) / (xc @ xc))
        r = y - y.mean() - slope * xc
        se = math.sqrt(float(r @ r) / (len(y) - 2) / float(xc @ xc))
        if slope < 0 and (se == 0 or -slope / se >= th.stopped_t):
            per = -slope * float(np.ptp(x)) / max(abs(float(np.median(y))), 1e-12)
            return (f"the training loss was still falling over the last half of the run ({fmt(100 * per)}% of its "
                    f"level over those {int(np.ptp(x)) + 1} steps, {fmt(-slope / se) if se else 'inf'} standard errors)")
    vs_ = val_series(h)
    if vs_ is not None:
        vs, vv, vname = vs_
        keep = vs >= int(steps[0])
        vv = vv[keep]
        if len(vv) >= 2 and vv[-1] <= float(np.min(vv)) and vv[-2] - vv[-1] >= th.still_gain * abs(vv[-2]):
            return (f"the {'validation loss' if vname == 'val_loss' else 'validation error'} was still falling at the "
                    f"last evaluation ({fmt(float(vv[-2]))} -> {fmt(float(vv[-1]))}, the best so far)")
    return None


def _stopped_early(h: History, ctx: Context, end: Event) -> Finding | None:
    """Training ended (``probe.finish()``) while the model had learned little and was still
    learning: the training loss's tail is at least ``stopped_level`` (and at most twice) a constant
    prediction's loss (:func:`prior_loss`; else the run's first losses), the descent is not levelling
    off (the loss removed over the last third of the run is at least ``slow_keep`` of what the
    middle third removed) and the loss is still falling (:func:`_falling`)."""
    th = ctx.thresholds
    c = loss_curve(h, ctx)
    if c is None or c.nonfinite_step is not None:
        return None
    prior = prior_loss(h, ctx)
    ref, ref_what = prior if prior is not None and prior[0] > 0 else (c.head, "the first losses")
    if not (ref > 0) or not (th.stopped_level * ref <= c.tail <= 2.0 * ref):
        return None  # learned enough -- or, above twice a constant prediction's loss, broken rather than short
    m1, m2, m3 = (float(np.median(t)) for t in np.array_split(c.values, 3))
    if not (m2 - m3 > 0 and m2 - m3 >= th.slow_keep * (m1 - m2)):
        return None  # levelling off: what is left is slow, not unfinished
    falling = _falling(h, ctx, c.steps, c.values)
    if falling is None:
        return None
    _, u = scalar(h, "update_ratio_total")
    u = u[np.isfinite(u)]
    ur = float(np.median(u[-10:])) if len(u) else math.nan
    _, lr = scalar(h, "lr")
    lr = lr[np.isfinite(lr)]
    lr_now = float(lr[-1]) if len(lr) else math.nan
    slow = math.isfinite(ur) and 0 < ur < 1e-3
    steps_run = int(c.steps[-1] - c.steps[0]) + 1
    cause = (f"the weights move by only {fmt(ur)} of their norm per step (rule of thumb ~1e-3)"
             + (f" at lr {fmt(lr_now)}" if math.isfinite(lr_now) else "")
             + ": raise the learning rate, or train many times longer" if slow else
             "train for more epochs (or with a larger learning rate) until the loss levels off")
    fixes = []
    if slow:
        factor = float(min(max(10.0 ** math.floor(math.log10(1e-3 / ur) + 0.5), 2.0), 100.0))
        fixes.append(intervention("scale_lr", f"Scale the learning rate by {fmt(factor)} for the next run",
                                  factor=factor))
    fixes.append(intervention("lr_find", "Run the LR finder"))
    return Finding(
        label="still_improving",
        severity="warning",
        title="Training ended long before it converged",
        evidence=(f"training ended at step {int(end.step)} after {steps_run} steps with the training loss at "
                  f"{fmt(c.tail)}, still {fmt(100 * c.tail / ref)}% of {fmt(ref)} (the loss of {ref_what}); "
                  f"{falling}: the model had learned little and was still learning. {cause[0].upper()}{cause[1:]}"),
        first_step=int(end.step),
        interventions=fixes,
        data={"level": c.tail / ref, "prior": ref, "update_ratio": ur, "end_step": int(end.step)},
    )


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
    """Training ended (or stopped) while the model was still improving.

    *Ended far too early* (warning): after ``probe.finish()`` -- the user's statement that training
    is over -- the training loss is still at least ``stopped_level`` (2/3) of the loss of the best
    constant prediction (the class frequencies' entropy, each output's positive rate, the targets'
    variance; else the run's first losses) and at most twice it, the descent is not levelling off
    (the last third of the run removes at least ``slow_keep`` of what the middle third removed) and
    the loss is still falling (the last half's slope ``stopped_t`` (3) standard errors below zero,
    or the latest validation evaluation the best so far and ``still_gain`` below the one before).
    The evidence names the effective learning rate: with an update / weight ratio below the 1e-3
    rule of thumb the first fix is ``scale_lr``.  Ranked after every other finding of its severity
    (:data:`~trainscope.diagnostics.registry.LAST_RESORT`): anything else wrong is the cause.

    *Validation still falling*: over the last
    ``still_window`` (6) evaluations (at least ``min_val_points``) the validation loss (or error)
    keeps falling: the median of the later half is ``still_gain`` (2%) below that of the earlier
    half and the latest evaluation is about the best so far.  Warning when early stopping fired
    during that trend (an ``early_stop`` on the timeline: its patience is too short for the metric's
    noise); info otherwise -- the run is still improving at the latest evaluation, so if training
    ends here it ends too early (raise the number of epochs)."""
    th = ctx.thresholds
    end = run_end(h)
    if end is not None:
        early = _stopped_early(h, ctx, end)
        if early is not None:
            return early
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

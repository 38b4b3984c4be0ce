"""Rules about the loss curves (Tobin's table: goes up, explodes, oscillates, plateaus), the
learning rate, and generalization (overfitting, labels unrelated to the inputs)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from ...history import History
from .._series import LossCurve, fmt, loss_curve, param_layers, pct, scalar, series
from ..config import Thresholds
from ..context import Context
from ..finding import Finding, intervention
from ..registry import rule


@dataclass
class CurveState:
    """What the training-loss curve does (shared by the curve and learning-rate rules)."""

    curve: LossCurve | None
    diverging: bool = False
    exploding: bool = False
    oscillating: bool = False
    plateau: bool = False
    swing: float = 0.0  # mean |step-to-step change| / mean loss, last window
    early_plateau: bool = False  # the plateau condition already after min_steps_plateau steps
    noise_plateau: bool = False  # ... met only through _flat (the best running median is >= 5% below the start)
    no_gradient: bool = False  # every recorded total gradient norm since the curve's start is exactly 0
    slow: bool = False  # steady, non-decelerating descent with little progress (see lr_too_low)
    quarters: tuple[float, ...] = ()  # medians of the curve's four quarters


def _no_gradient(h: History, since: int) -> bool:
    """Every total gradient norm recorded since ``since`` is exactly 0 (and there are some): the
    loss cannot move because of training, whatever it does is the batches' noise."""
    s, g = scalar(h, "grad_norm_total")
    g = g[(s >= since) & np.isfinite(g)]
    return bool(len(g) >= 2 and not np.any(g != 0))


def _slow_descent(c: LossCurve, th: Thresholds) -> tuple[bool, tuple[float, ...]]:
    """A loss that falls steadily but slowly: the medians of the four quarters of the curve fall
    strictly, the last half removes at least ``slow_keep`` of what the first half removed (no
    deceleration: a well-tuned run drops fast, then flattens), and less than ``slow_progress`` of
    the initial loss is gone.  Judged after ``min_loss_points`` losses over ``slow_min_steps``
    steps."""
    if c.n < th.min_loss_points or int(c.steps[-1] - c.steps[0]) + 1 < th.slow_min_steps:
        return False, ()
    parts = np.array_split(c.values, 4)
    q = tuple(float(np.median(part)) for part in parts)
    # a drop the batches' noise cannot explain: 4 standard errors of a quarter's median
    noise = float(np.median(np.abs(np.diff(c.values)))) / math.sqrt(2)
    se = 1.25 * noise / math.sqrt(max(min(len(p) for p in parts), 1))
    falling = all(a > b for a, b in itertools.pairwise(q)) and q[0] - q[3] > 4 * se
    first, last = q[0] - q[1], q[2] - q[3]
    progress = (q[0] - q[3]) / max(abs(q[0]), 1e-12)
    return bool(falling and first > 0 and last >= th.slow_keep * first and 0 < progress < th.slow_progress), q


def _flat(c: LossCurve, th: Thresholds) -> bool:
    """No quarter of the curve is below the first by more than 4 standard errors of
    the batches' noise: the drop from the start to the best running median is the minimum of many
    noisy medians (small batches: +-15% on a flat loss), not progress.  The noise is read from the
    step-to-step changes (robust to a trend); the mean of a quarter of ``n/4`` losses has standard
    error ``sigma / sqrt(n/4)``.  Needs ``min_loss_points`` losses per quarter and noise above 0."""
    parts = np.array_split(c.values, 4)
    k = min(len(p) for p in parts)
    if k < th.min_loss_points:
        return False
    sigma = float(np.median(np.abs(np.diff(c.values)))) / 0.954
    if not (sigma > 0 and math.isfinite(sigma)):
        return False
    m = [float(np.mean(p)) for p in parts]
    se = sigma * math.sqrt(2.0 / k)
    return all(m[0] - x < 4 * se for x in m[1:])  # 4 SE: the noise margin divergence uses


def _swing(v: np.ndarray) -> tuple[float, float]:
    """(mean |step-to-step change|, mean |loss|) of a window."""
    return float(np.mean(np.abs(np.diff(v)))), float(np.mean(np.abs(v)))


def curve_state(h: History, ctx: Context) -> CurveState:
    def get() -> CurveState:
        th = ctx.thresholds
        c = loss_curve(h, ctx)
        st = CurveState(c)
        if c is None:
            return st
        level = max(abs(c.head), abs(c.best), 1e-12)
        progress = max(c.head - c.best, 0.0)
        rise = c.tail - c.best
        # the best running median is the minimum of many noisy medians: a rise within 4 standard errors
        # of a window's median is the batches' noise (small batches on a plateau), not divergence
        sigma = float(np.median(np.abs(np.diff(c.values)))) / 0.954 if c.n >= 2 else 0.0
        noise = 4 * 1.25 * sigma / math.sqrt(c.w)
        st.diverging = rise > th.divergence_lost * progress + th.divergence_level * level and rise > noise
        st.exploding = c.head > 0 and c.tail > th.explosion_factor * c.head
        w = th.osc_window
        if c.n >= 2 * w:
            # the improvement is counted from the run's start, not from the latest change: after a click
            # on a converged model the new segment has made no progress, and the batches' noise around a
            # loss of 1e-5 is not an oscillation
            _, whole = scalar(h, "loss", whole=True)
            whole = whole[np.isfinite(whole)]
            start = max(c.head, float(np.median(whole[: c.w]))) if len(whole) else c.head
            flags = []
            for k in (2, 1):
                win = c.values[c.n - k * w : c.n - (k - 1) * w]
                sw, lv = _swing(win)
                gain = max(start - float(np.mean(win)), 0.0)
                flags.append(sw >= th.osc_swing * lv and sw >= th.osc_vs_progress * gain)
                st.swing = sw / max(lv, 1e-12)
            st.oscillating = all(flags)
        steps_run = int(c.steps[-1] - c.steps[0]) + 1
        if steps_run >= th.min_steps_plateau and abs(c.head) > 1e-8:
            five = (c.head - c.best) / abs(c.head) < th.plateau_progress
            st.noise_plateau = not five and _flat(c, th)
            st.early_plateau = five or st.noise_plateau
            st.plateau = st.early_plateau and steps_run >= th.not_learning_steps
        st.slow, st.quarters = _slow_descent(c, th)
        if _no_gradient(h, int(c.steps[0])):
            # nothing the model does moves the loss: a rise or a swing is the batches' noise, not
            # divergence (the cause is upstream: a constant output, a detached graph -- wrong_loss,
            # frozen_parameters); the loss cannot improve, so it is a plateau once judged
            st.no_gradient = True
            st.noise_plateau = False
            st.diverging = st.exploding = st.oscillating = st.slow = False
            st.early_plateau = steps_run >= th.min_steps_plateau
            st.plateau = steps_run >= th.not_learning_steps
        return st

    return ctx.memo("curve_state", get)


_CURVE_FIXES = [
    intervention("lr_find", "Run the LR finder"),
    intervention("scale_lr", "Lower the learning rate 10x", factor=0.1),
]


@rule("divergence", checklist=("tobin.error_dynamics", "karpathy.decreasing_loss"))
def divergence(h: History, ctx: Context) -> Finding | None:
    """The training loss rises: the median of the last ``w`` losses is above the best running
    median by more than ``divergence_lost`` (half) of the progress made from the start plus
    ``divergence_level`` (20%) of the loss level -- or explodes: the recent median is
    ``explosion_factor`` (10x) the initial one (error).  ``w = clamp(n/10, 5, 50)`` losses."""
    st = curve_state(h, ctx)
    c = st.curve
    if c is None or not (st.diverging or st.exploding):
        return None
    lost = (c.tail - c.best) / max(c.head - c.best, 1e-12)
    how = (
        f"{fmt(c.tail / c.head)}x its initial value"
        if st.exploding
        else (f"{pct(min(lost, 9.99))} of the progress made is lost" if c.head - c.best > 0.05 * abs(c.head) else "it never went down")
    )
    return Finding(
        label="divergence",
        severity="error" if st.exploding else "warning",
        title="Training loss is " + ("exploding" if st.exploding else "rising"),
        evidence=(
            f"loss started at {fmt(c.head)}, reached {fmt(c.best)} by step {c.best_step} and is now "
            f"{fmt(c.tail)} (median of the last {c.w}): {how}. Tobin: error goes up -> flipped sign of the "
            "loss or gradient, learning rate too high, softmax over the wrong dimension"
        ),
        first_step=int(c.steps[-c.w]),
        interventions=[*_CURVE_FIXES, intervention("rollback", "Roll back to the best snapshot", to="best")],
        data={"head": c.head, "best": c.best, "tail": c.tail},
    )


@rule("oscillation", checklist=("tobin.error_dynamics", "karpathy.decreasing_loss"), finite=True)
def oscillation(h: History, ctx: Context) -> Finding | None:
    """The training loss jumps up and down by as much as it has improved: in each of the last two
    windows of ``osc_window`` (20) losses, the mean absolute step-to-step change is at least
    ``osc_swing`` (50%) of the mean loss and at least ``osc_vs_progress`` (50%) of the drop from the
    initial loss to the window's mean (the initial loss of the run, or of the segment since the latest
    change when that is higher: a converged model's noise after a click is not an oscillation).
    Warning."""
    st = curve_state(h, ctx)
    c = st.curve
    if c is None or not st.oscillating:
        return None
    win = c.values[-ctx.thresholds.osc_window :]
    return Finding(
        label="oscillation",
        severity="warning",
        title="Training loss oscillates",
        evidence=(
            f"over the last {len(win)} losses consecutive values differ by {pct(st.swing)} of the loss on average "
            f"(range {fmt(float(win.min()))} to {fmt(float(win.max()))}; initial {fmt(c.head)}). Tobin: error oscillates "
            "-> learning rate too high, or data / labels corrupted or not shuffled"
        ),
        first_step=int(c.steps[-2 * ctx.thresholds.osc_window]),
        interventions=[*_CURVE_FIXES, intervention("clip_grad", "Clip the gradient norm", max_norm=1.0)],
        data={"swing": st.swing},
    )


@rule("not_learning", checklist=("tobin.error_dynamics", "karpathy.decreasing_loss", "tobin.overfit_batch"), finite=True)
def not_learning(h: History, ctx: Context) -> Finding | None:
    """Plateau from the start: after ``not_learning_steps`` (100) steps, the best running median of
    the training loss is still within ``plateau_progress`` (5%) of the initial one -- or no quarter
    of the curve has a mean 4 standard errors of the batches' noise below the
    first quarter's (a noisy flat loss: small batches; info then, unless ``lr_too_low`` leads:
    a flat stretch that noisy does not tell a stuck run from a slow start) -- and the loss is
    not rising (that is ``divergence``).  Warning; info when validation improved at each of the
    last ``val_trend_points`` (4) evaluations down to a new best (the model learns, slowly; a noisy
    training loss hides it)."""
    st = curve_state(h, ctx)
    c = st.curve
    if c is None or not st.plateau or st.diverging or st.exploding:
        return None  # a rising loss is divergence, not a plateau
    if st.slow:
        return None  # it does move, steadily: too slowly is lr_too_low
    cause = lr_too_low(h, ctx)  # the root-cause test for a plateau: are the updates too small?
    lead = cause is not None and cause.severity != "info"
    fixes = [intervention("lr_find", "Run the LR finder"), intervention("scale_lr", "Raise the learning rate 10x", factor=10.0)]
    val = _val_new_bests(h, ctx)
    return Finding(
        label="not_learning",
        severity="info" if val or (st.noise_plateau and not lead) else "warning",
        title=("Learning rate too low -> " if lead else "") + "Training loss has not moved since the start",
        evidence=(
            (f"learning rate too low ({cause.evidence}) -> " if lead and cause is not None else "")
            + f"loss {fmt(c.head)} at the start, best {fmt(c.best)}, now {fmt(c.tail)} after "
            f"{int(c.steps[-1] - c.steps[0]) + 1} steps ("
            + (f"less than {pct(ctx.thresholds.plateau_progress)} progress" if c.head - c.best < ctx.thresholds.plateau_progress * abs(c.head)
               else "no quarter of the curve is 4 standard errors of the batches' noise below the first: "
               "the lower medians are noise"
               + ("" if lead else "; info: a flat stretch this noisy does not tell a stuck run from a slow start "
                  "-- a finding on the cause, e.g. a constant output, says more"))
            + "). "
            "Tobin: error plateaus -> learning rate too low, gradients not flowing, too much regularization, "
            "wrong input to the loss, or corrupted data"
            + (f". But validation improved at each of the last {val} evaluations: the model learns, slowly "
               "(a noisy training loss -- dropout, small batches -- can hide it)" if val else "")
        ),
        first_step=int(c.steps[0]),
        interventions=[*cause.interventions[:1], *fixes] if lead and cause is not None else fixes,
        data={"head": c.head, "best": c.best, **({"cause": "lr_too_low"} if lead else {})},
    )


def _val_new_bests(h: History, ctx: Context) -> int:
    """``val_trend_points`` when each of the last that many validation values (``val_loss``, else
    ``1 - val_acc``) is strictly better than the one before and the latest is the best so far, else 0."""
    k = ctx.thresholds.val_trend_points
    for name, flip in (("val_loss", False), ("val_acc", True), ("val_accuracy", True)):
        _, v = scalar(h, name)
        v = v[np.isfinite(v)]
        if len(v):
            v = -v if flip else v
            trend = len(v) >= k and bool(np.all(np.diff(v[-k:]) < 0))
            # ... down to a new best: four falling values of a flat, noisy series (1 in 24 by chance)
            # that stay above an earlier evaluation are not a model that learns
            return k if trend and (len(v) == k or float(v[-1]) < float(np.min(v[:-k]))) else 0
    return 0


def _recent(v: np.ndarray, k: int) -> float:
    v = v[np.isfinite(v)]
    return float(np.median(v[-k:])) if len(v) else math.nan


def _lr_factor(u: float, target: float = 3e-3) -> float:
    """Power of ten that brings an update ratio ``u`` down to about ``target``."""
    return float(min(max(10.0 ** math.floor(math.log10(target / u)), 1e-3), 0.1))


@rule("lr_too_high", checklist=("tobin.tune_lr", "tobin.error_dynamics"))
def lr_too_high(h: History, ctx: Context) -> Finding | None:
    """Whole-model update / weight ratio ``||dW|| / ||W||`` per step at or above ``update_high``
    (3e-2, 30x cs231n's ~1e-3), median of the last 10 records, **and** an unhealthy training loss:
    rising, exploding, oscillating, non-finite -- or no progress at all, which has many causes, so
    then only from ``update_high_plateau`` (0.1: a tenth of the weights' norm per step).  Error when the loss diverges or
    explodes, warning otherwise.  Also (warning) when the damage outlasts the updates: ``dead_units``
    holds at warning level or above and its root-cause test finds an update / weight ratio of
    ``update_high`` or more before the units died (the ratio falls afterwards: dead units pass no
    gradient)."""
    th = ctx.thresholds
    _, u = scalar(h, "update_ratio_total")
    ur = _recent(u, 10)
    if not (ur >= th.update_high):
        return _lr_damage(h, ctx)
    st = curve_state(h, ctx)
    c = st.curve
    _, lv = scalar(h, "loss")
    nonfinite = bool(len(lv) and not np.isfinite(lv[-1]))
    bad = [n for n, f in (("rising", st.diverging), ("exploding", st.exploding), ("oscillating", st.oscillating),
                          ("not improving", st.plateau), ("non-finite", nonfinite)) if f]
    if not bad or (bad == ["not improving"] and ur < th.update_high_plateau):
        return _lr_damage(h, ctx)  # a plateau has many causes: blame the lr only for clearly excessive updates
    _, lr = scalar(h, "lr")
    lr_now = _recent(lr, 1)
    factor = _lr_factor(ur)
    fixes = [intervention("scale_lr", f"Scale the learning rate by {fmt(factor)}", factor=factor)]
    if np.isfinite(lr_now) and lr_now > 0:
        fixes.append(intervention("set_lr", f"Set the learning rate to {fmt(lr_now * factor)}", lr=float(lr_now * factor)))
    fixes += [intervention("lr_find", "Run the LR finder"), intervention("clip_grad", "Clip the gradient norm", max_norm=1.0)]
    return Finding(
        label="lr_too_high",
        severity="error" if (st.diverging or st.exploding or nonfinite) else "warning",
        title=f"Learning rate too high (updates change {pct(ur)} of the weights per step)",
        evidence=(
            f"update/weight ratio {fmt(ur)} per step (rule of thumb ~1e-3)"
            + (f" at lr {fmt(lr_now)}" if np.isfinite(lr_now) else "")
            + f", and the training loss is {' and '.join(bad)}"
            + (f" ({fmt(c.head)} -> {fmt(c.tail)})" if c is not None else "")
        ),
        interventions=fixes,
        data={"update_ratio": ur, "lr": lr_now},
    )


def _lr_damage(h: History, ctx: Context) -> Finding | None:
    """The learning rate was too high *before* lasting damage: ``dead_units`` holds at warning
    level or above and its root-cause test blames the update / weight ratio before the units
    died (``update_high`` or more per step).  The updates may have shrunk since -- dead units pass
    no gradient -- so today's ratio cannot show it."""
    from ..registry import RULES, _nonfinite_now

    if _nonfinite_now(h):
        return None  # NaN units never "fire": dead_units is skipped then (finite=True), and so is this
    # the symptom whose root-cause test names the lr, called through the registry (activations.py
    # reads this module's curve summary: importing it back would make an import cycle)
    spec = RULES.get("dead_units")
    d = spec.fn(h, ctx) if spec is not None else None
    if d is None or d.severity == "info" or d.data.get("cause") != "lr_high":
        return None
    onset = d.data.get("onset")
    s, u = scalar(h, "update_ratio_total")
    ok = np.isfinite(u) & (s <= (onset if onset is not None else h.step))
    if not ok.any():
        return None
    k = int(np.argmax(np.where(ok, u, -np.inf)))
    peak, at = float(u[k]), int(s[k])
    _, lr = scalar(h, "lr")
    lr_now = _recent(lr, 1)
    factor = _lr_factor(peak)
    reinit = [f for f in d.interventions if f["action"] == "reinit"][:1]
    dead = list(reinit[0]["params"].get("layers") or []) if reinit else []
    # the layers the rate damaged: the dead units' layer and every layer whose own updates reached
    # update_high per step before the death (they were thrown as far as the dead one)
    st_, ur_ = series(h, ctx, "update_ratio")
    if len(st_) and ur_.ndim == 2:
        keep = st_ <= (onset if onset is not None else h.step)
        if keep.any():
            hit = np.nanmax(np.where(np.isfinite(ur_[keep]), ur_[keep], -np.inf), axis=0) >= ctx.thresholds.update_high
            dead += [h.layers[i].name for i in param_layers(h, ctx) if i < len(hit) and hit[i]
                     and h.layers[i].name not in dead]
    # one click for both halves of the fix: the damaged layers re-initialized, then the rate the LR
    # finder measures on them (a factor from updates that wrecked the weights says little about the
    # rate that trains them; the factor is the fallback)
    fixes = [intervention("recover", f"Re-initialize {', '.join(dead)}, then set the learning rate the LR finder "
                          "measures on them", layers=dead, then="lr_find", then_params={"apply": "set_lr"},
                          fallback_factor=factor)] if dead else []
    fixes.append(intervention("scale_lr", f"Scale the learning rate by {fmt(factor)}", factor=factor))
    if np.isfinite(lr_now) and lr_now > 0:
        fixes.append(intervention("set_lr", f"Set the learning rate to {fmt(lr_now * factor)}", lr=float(lr_now * factor)))
    fixes += reinit
    fixes.append(intervention("lr_find", "Run the LR finder"))
    share = max(d.data.get("dead_share", {}).values(), default=0.0)
    shown = d.data.get("shown") or (d.layers[0] if d.layers else "?")
    return Finding(
        label="lr_too_high",
        severity="warning",
        title=f"Learning rate too high at the start (updates changed {pct(peak)} of the weights per step)",
        evidence=(
            f"update/weight ratio {fmt(peak)} per step at step {at} (rule of thumb ~1e-3)"
            + (f" at lr {fmt(lr_now)}" if np.isfinite(lr_now) else "")
            + f", then {pct(share)} of `{shown}`'s units died"
            + (f" (silent since step {onset})" if onset is not None else "")
            + ": dead units pass no gradient, so a lower learning rate alone does not revive them"
            " (re-initialize them too)"
        ),
        first_step=at,
        layers=list(d.layers),
        interventions=fixes,
        data={"update_ratio": peak, "lr": lr_now, "path": "damage"},
    )


@rule("lr_too_low", checklist=("tobin.tune_lr", "karpathy.decreasing_loss"), finite=True)
def lr_too_low(h: History, ctx: Context) -> Finding | None:
    """The weights move too little for the loss to get anywhere, either way:

    * *tiny updates*: even the fastest-moving layer changes by less than ``update_low`` (1e-4) of
      its norm per step (median of the last 10 records) and after ``min_steps_plateau`` steps the
      training loss is still above ``lr_low_progress`` (half) of its initial value;
    * *stalled*: after ``min_steps_plateau`` (50) steps the loss has not moved (less than
      ``plateau_progress``, 5%) while the whole model's update /
      weight ratio stays below ``update_plateau_low`` (1e-3, the rule of thumb) -- the cause of the
      plateau to try first;
    * *slow steady descent*: over at least ``slow_min_steps`` (50) steps the medians of the loss
      curve's four quarters fall strictly (by more than 4 standard errors of the batches' noise),
      the last half removes at least ``slow_keep`` (50%) of what the first half removed (no
      deceleration), less than ``slow_progress`` (10%) of the initial loss is gone (a plateau that does move), and the whole
      model's update / weight ratio stays below ``slow_update_max`` (1e-2 per step).

    Both need a non-zero gradient and no warm-up in progress (the lr rising).  Warning for tiny
    updates, a stalled loss, and a slow descent that is a plateau (less than ``plateau_progress``,
    5%, of the loss gone after ``not_learning_steps`` steps: ``not_learning`` then gives way to this label),
    info for a slow descent with more progress (the start of a short healthy run looks the same).
    The first
    fix scales the learning rate by a factor computed from the update ratio (toward ~1e-3 for tiny
    updates, 10x -- at most up to 0.1 per step -- for a slow descent)."""
    th = ctx.thresholds
    st = curve_state(h, ctx)
    c = st.curve
    if c is None or c.head <= 0 or st.no_gradient:
        return None
    _, g = scalar(h, "grad_norm_total")
    gr = _recent(g, 10)
    _, lr = scalar(h, "lr")
    lr = lr[np.isfinite(lr)]
    warming = len(lr) >= 4 and lr[-1] > 1.5 * lr[len(lr) // 2]
    if not (gr > 0) or warming:
        return None
    lr_now = float(lr[-1]) if len(lr) else math.nan
    steps_run = int(c.steps[-1] - c.steps[0]) + 1
    tiny: float | None = None
    if steps_run >= th.min_steps_plateau and c.tail >= th.lr_low_progress * c.head:
        steps, ur = series(h, ctx, "update_ratio")
        if len(steps) >= th.persist_need:
            fin = np.where(np.isfinite(ur), ur, -np.inf)
            fastest = fin.max(axis=1) if ur.shape[1] else np.full(len(steps), -np.inf)
            u = _recent(np.where(np.isfinite(fastest), fastest, np.nan), 10)
            if u < th.update_low:
                tiny = u
    _, utot = scalar(h, "update_ratio_total")
    ut = _recent(utot, 10)
    slow = st.slow and not st.diverging and not st.oscillating and (not np.isfinite(ut) or ut < th.slow_update_max)
    stalled = tiny is None and not slow and st.early_plateau and not st.diverging and 0 < ut < th.update_plateau_low
    if tiny is None and not slow and not stalled:
        return None
    if stalled:
        factor = float(max(min(_nice(1e-2 / ut), 100.0), 2.0))  # toward ~1e-2 per step, at most 100x
        what = (f"the training loss has not moved ({fmt(c.head)} -> {fmt(c.tail)}) while the weights move by only "
                f"{fmt(ut)} of their norm per step (rule of thumb ~1e-3)")
    elif tiny is not None:
        factor = float(min(max(10.0 ** round(math.log10(1e-3 / max(tiny, 1e-12))), 10.0), 1e3))  # toward ~1e-3
        what = f"the fastest-moving layer changes by {fmt(tiny)} of its norm per step (rule of thumb ~1e-3)"
    else:
        factor = 10.0 if not (ut > 0) else float(max(min(10.0, _nice(0.1 / ut)), 2.0))
        q = st.quarters
        what = (f"the loss falls steadily but slowly ({' -> '.join(fmt(v) for v in q)} over the four quarters of "
                f"{steps_run} steps, not slowing down: the run is far from where this lr would take it)"
                + (f"; the weights move by {fmt(ut)} of their norm per step" if np.isfinite(ut) else ""))
    fixes = [intervention("scale_lr", f"Scale the learning rate by {fmt(factor)}", factor=factor)]
    if np.isfinite(lr_now) and lr_now > 0:
        fixes.append(intervention("set_lr", f"Set the learning rate to {fmt(lr_now * factor)}", lr=float(lr_now * factor)))
    fixes.append(intervention("lr_find", "Run the LR finder"))
    # a slow descent that has not even removed plateau_progress (5%) of the loss over
    # min_steps_plateau steps is a plateau that moves (the warning not_learning would otherwise
    # give); with more progress it is only worth knowing: a short healthy run's start looks the same
    plateau_like = tiny is not None or stalled or st.early_plateau
    return Finding(
        label="lr_too_low",
        severity="warning" if plateau_like else "info",
        title="Learning rate too low (" + ("weights barely move" if tiny is not None else "loss stalled, small updates"
                                           if stalled else "slow, steady progress") + ")",
        evidence=(
            what + (f" at lr {fmt(lr_now)}" if np.isfinite(lr_now) else "")
            + f"; after {steps_run} steps the loss went only from {fmt(c.head)} to {fmt(c.tail)}"
        ),
        first_step=int(c.steps[0]),
        interventions=fixes,
        data={"update_ratio": tiny if tiny is not None else ut, "lr": lr_now, "factor": factor,
              "path": "tiny" if tiny is not None else "stalled" if stalled else "slow"},
    )


def _nice(v: float) -> float:
    """``v`` rounded down to 1, 2 or 5 times a power of ten."""
    if not (v > 0 and math.isfinite(v)):
        return 1.0
    e = 10.0 ** math.floor(math.log10(v))
    return float(max(m for m in (1.0, 2.0, 5.0) if m * e <= v * (1 + 1e-9)) * e)


def chance_loss(h: History, ctx: Context) -> float | None:
    """Loss of an uninformed prediction: ``ln C`` for C-class cross-entropy (``C`` from the loss
    inputs or the context), ``ln 2`` for binary cross-entropy; ``None`` otherwise."""
    rec = h.latest
    li = rec.loss_inputs if rec is not None else {}
    name = li.get("loss") or h.meta.get("loss_fn")
    if name in ("BCEWithLogitsLoss", "BCELoss"):
        return math.log(2.0)
    if name in ("CrossEntropyLoss", "NLLLoss"):
        shape = li.get("pred_shape")
        c = shape[1] if shape and len(shape) >= 2 else ctx.n_classes
        return math.log(c) if c and c >= 2 else None
    return math.log(ctx.n_classes) if ctx.n_classes and ctx.n_classes >= 2 else None

"""Rules about the loss curves (Tobin's table: goes up, explodes, oscillates, plateaus), the
learning rate, and generalization (overfitting, labels unrelated to the inputs)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...history import History
from .._series import LossCurve, fmt, loss_curve, pct, scalar, series
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
        st.diverging = rise > th.divergence_lost * progress + th.divergence_level * level
        st.exploding = c.head > 0 and c.tail > th.explosion_factor * c.head
        w = th.osc_window
        if c.n >= 2 * w:
            flags = []
            for k in (2, 1):
                win = c.values[c.n - k * w : c.n - (k - 1) * w]
                sw, lv = _swing(win)
                gain = max(c.head - float(np.mean(win)), 0.0)
                flags.append(sw >= th.osc_swing * lv and sw >= th.osc_vs_progress * gain)
                st.swing = sw / max(lv, 1e-12)
            st.oscillating = all(flags)
        steps_run = int(c.steps[-1] - c.steps[0]) + 1
        if steps_run >= th.min_steps_plateau and abs(c.head) > 1e-8:
            st.plateau = (c.head - c.best) / abs(c.head) < th.plateau_progress
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
    initial loss to the window's mean.  Warning."""
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
    """Plateau from the start: after ``min_steps_plateau`` (50) steps, the best running median of
    the training loss is still within ``plateau_progress`` (5%) of the initial one, and the loss is
    not rising (that is ``divergence``).  Warning."""
    st = curve_state(h, ctx)
    c = st.curve
    if c is None or not st.plateau or st.diverging or st.exploding:
        return None  # a rising loss is divergence, not a plateau
    return Finding(
        label="not_learning",
        severity="warning",
        title="Training loss has not moved since the start",
        evidence=(
            f"loss {fmt(c.head)} at the start, best {fmt(c.best)}, now {fmt(c.tail)} after "
            f"{int(c.steps[-1] - c.steps[0]) + 1} steps (less than {pct(ctx.thresholds.plateau_progress)} progress). "
            "Tobin: error plateaus -> learning rate too low, gradients not flowing, too much regularization, "
            "wrong input to the loss, or corrupted data"
        ),
        first_step=int(c.steps[0]),
        interventions=[intervention("lr_find", "Run the LR finder"), intervention("scale_lr", "Raise the learning rate 10x", factor=10.0)],
        data={"head": c.head, "best": c.best},
    )


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
    explodes, warning otherwise."""
    th = ctx.thresholds
    _, u = scalar(h, "update_ratio_total")
    ur = _recent(u, 10)
    if not (ur >= th.update_high):
        return None
    st = curve_state(h, ctx)
    c = st.curve
    _, lv = scalar(h, "loss")
    nonfinite = bool(len(lv) and not np.isfinite(lv[-1]))
    bad = [n for n, f in (("rising", st.diverging), ("exploding", st.exploding), ("oscillating", st.oscillating),
                          ("not improving", st.plateau), ("non-finite", nonfinite)) if f]
    if not bad or (bad == ["not improving"] and ur < th.update_high_plateau):
        return None  # a plateau has many causes: blame the lr only for clearly excessive updates
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


@rule("lr_too_low", checklist=("tobin.tune_lr", "karpathy.decreasing_loss"), finite=True)
def lr_too_low(h: History, ctx: Context) -> Finding | None:
    """Even the fastest-moving layer changes by less than ``update_low`` (1e-4) of its norm per
    step (median of the last 10 records), with a non-zero gradient and no warm-up in progress, and
    after ``min_steps_plateau`` steps the training loss is still above ``lr_low_progress`` (half)
    of its initial value.  Warning."""
    th = ctx.thresholds
    c = loss_curve(h, ctx)
    if c is None or int(c.steps[-1] - c.steps[0]) + 1 < th.min_steps_plateau:
        return None
    if c.head <= 0 or c.tail < th.lr_low_progress * c.head:
        return None
    steps, ur = series(h, ctx, "update_ratio")
    if len(steps) < th.persist_need:
        return None
    fin = np.where(np.isfinite(ur), ur, -np.inf)
    fastest = fin.max(axis=1) if ur.shape[1] else np.full(len(steps), -np.inf)
    fastest = np.where(np.isfinite(fastest), fastest, np.nan)
    u = _recent(fastest, 10)
    _, g = scalar(h, "grad_norm_total")
    gr = _recent(g, 10)
    _, lr = scalar(h, "lr")
    lr = lr[np.isfinite(lr)]
    warming = len(lr) >= 4 and lr[-1] > 1.5 * lr[len(lr) // 2]
    if not (u < th.update_low) or not (gr > 0) or warming:
        return None
    lr_now = float(lr[-1]) if len(lr) else math.nan
    factor = float(min(max(10.0 ** round(math.log10(1e-3 / max(u, 1e-12))), 10.0), 1e3))  # toward ~1e-3
    fixes = [intervention("lr_find", "Run the LR finder"), intervention("scale_lr", f"Scale the learning rate by {fmt(factor)}", factor=factor)]
    if np.isfinite(lr_now) and lr_now > 0:
        fixes.append(intervention("set_lr", f"Set the learning rate to {fmt(lr_now * factor)}", lr=float(lr_now * factor)))
    return Finding(
        label="lr_too_low",
        severity="warning",
        title="Learning rate too low (weights barely move)",
        evidence=(
            f"the fastest-moving layer changes by {fmt(u)} of its norm per step (rule of thumb ~1e-3)"
            + (f" at lr {fmt(lr_now)}" if np.isfinite(lr_now) else "")
            + f"; after {int(c.steps[-1] - c.steps[0]) + 1} steps the loss went only from {fmt(c.head)} to {fmt(c.tail)}"
        ),
        interventions=fixes,
        data={"update_ratio": u, "lr": lr_now},
    )


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

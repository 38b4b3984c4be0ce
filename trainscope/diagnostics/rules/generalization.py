"""Rules comparing validation with training: overfitting and labels unrelated to the inputs."""

from __future__ import annotations

import math

import numpy as np

from ...history import History
from .._series import fmt, loss_curve, param_layers, pct, scalar
from ..context import Context
from ..finding import Finding, intervention
from ..registry import rule
from .curves import chance_loss


def val_series(h: History) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Validation as "lower is better": ``val_loss``, else ``1 - val_acc`` (or ``val_accuracy``)."""
    for name, flip in (("val_loss", False), ("val_acc", True), ("val_accuracy", True)):
        s, v = scalar(h, name)
        ok = np.isfinite(v)
        if ok.sum():
            return s[ok], (1.0 - v[ok]) if flip else v[ok], name
    return None


def _dropout_targets(h: History, ctx: Context) -> list[str]:
    """Hidden activation modules (else hidden linear layers): where dropout would go."""
    pl = param_layers(h, ctx)
    if len(pl) < 2:
        return []
    last = h.forward_order.index(pl[-1]) if pl[-1] in h.forward_order else len(h.forward_order)
    acts = [h.layers[i].name for i in h.forward_order[:last] if h.layers[i].kind == "activation"]
    return acts or [h.layers[i].name for i in pl[:-1]]


@rule("overfitting", checklist=("tobin.bias_variance", "karpathy.overfit_then_regularize"), finite=True)
def overfitting(h: History, ctx: Context) -> Finding | None:
    """Validation worsens while training improves: at each of the last ``overfit_patience`` (3)
    evaluations the validation loss (or error ``1 - val_acc``) is more than ``overfit_rise`` (10%)
    above its best, the training loss fell by more than ``memorize_progress`` (5%) since the
    best evaluation, and the best validation value was at least ``chance_margin`` (5%) better than
    chance (or than the first evaluation) -- otherwise it is ``label_noise``.  The early-stopping
    point is the step of the best evaluation.  Warning."""
    th = ctx.thresholds
    vs_ = val_series(h)
    c = loss_curve(h, ctx)
    if vs_ is None or c is None:
        return None
    vs, vv, name = vs_
    if len(vv) < th.min_val_points:
        return None
    b = int(np.argmin(vv))
    if len(vv) - 1 - b < th.overfit_patience:
        return None
    best = float(vv[b])
    last = vv[-th.overfit_patience :]
    ref = chance_loss(h, ctx) if name == "val_loss" else None
    ref = float(vv[0]) if ref is None else ref
    if not np.all(last > best + max(th.overfit_rise * abs(best), th.overfit_floor * abs(ref), 1e-12)):
        return None
    if best > (1 - th.chance_margin) * ref:
        return None
    before = c.values[c.steps <= vs[b]]
    if len(before) == 0:
        return None
    t_best = float(np.median(before[-c.w :]))
    if not c.tail < (1 - th.memorize_progress) * t_best:
        return None
    what = "validation loss" if name == "val_loss" else "validation error (1 - accuracy)"
    fixes = [
        intervention("early_stopping", "Early stopping (restore the best weights)", monitor=name,
                     mode="min" if name == "val_loss" else "max", patience=th.overfit_patience),
        intervention("rollback", "Roll back to the best snapshot", to="best"),
        intervention("weight_decay", "Add weight decay", value=1e-4),
    ]
    targets = _dropout_targets(h, ctx)
    if any(x.kind == "dropout" for x in h.layers):
        fixes.append(intervention("set_dropout", "Raise dropout to 0.5", p=0.5))
    elif targets:
        fixes.append(intervention("add_dropout", "Add dropout (p=0.3) after the hidden layers", after=targets, p=0.3))
    return Finding(
        label="overfitting",
        severity="warning",
        title=f"Overfitting since step {int(vs[b])} (early-stopping point)",
        evidence=(
            f"{what} was best at step {int(vs[b])} ({fmt(best)}) and is now {fmt(float(vv[-1]))} "
            f"(+{pct(float(vv[-1]) / best - 1) if best > 0 else fmt(float(vv[-1]) - best)}), while the training loss "
            f"fell from {fmt(t_best)} to {fmt(c.tail)}: stop at step {int(vs[b])}, or regularize"
        ),
        interventions=fixes,
        first_step=int(vs[b]),
        data={"early_stopping_step": int(vs[b]), "best": best, "now": float(vv[-1])},
    )


def _still_improving(v: np.ndarray) -> bool:
    """Whether a validation series (loss or error) is still setting new bests: its minimum is in the
    last third of the evaluations and below the first one."""
    v = np.asarray(v, dtype=float)
    if len(v) < 2 or not np.isfinite(v).all():
        return False
    return int(np.argmin(v)) >= len(v) - max(1, len(v) // 3) and float(v.min()) < float(v[0])


@rule("label_noise", checklist=("karpathy.input_independent_baseline", "tobin.bias_variance", "karpathy.data"), finite=True)
def label_noise(h: History, ctx: Context) -> Finding | None:
    """Labels unrelated to the inputs: after ``min_steps_plateau`` steps and ``min_val_points``
    evaluations, the validation loss never got ``chance_margin`` (5%) below chance (``ln C``; else
    its first value) while the training loss fell ``memorize_progress`` (5%) *below* chance and
    at least twice as much, relatively, as validation did -- training memorizes, nothing generalizes.
    Only judged when the first validation loss was near chance (not ``bad_loss_at_init``-high).
    With only an accuracy logged (``val_acc``), "at chance" is a best accuracy below ``1/C`` plus
    ``chance_margin`` (5 points).  Not while validation is still improving (its best is in the last
    third of the evaluations and below the first): a slowly generalizing model is not memorizing.
    A failed ``input_baseline`` check (real inputs do no better
    than zeroed ones) raises it too.
    Warning."""
    th = ctx.thresholds
    check = (h.meta.get("checks") or {}).get("input_baseline")
    failed = bool(check and check.get("status") == "fail")
    c = loss_curve(h, ctx)
    vs_ = val_series(h)
    parts = []
    chance = chance_loss(h, ctx)
    if c is not None and vs_ is not None and vs_[2] != "val_loss" and chance is not None:
        # accuracy only: chance accuracy is 1 / C (C from the loss: ln C = chance)
        _, err, name = vs_
        c_acc = math.exp(-chance)
        best_acc = 1.0 - float(err.min())
        steps_run = int(c.steps[-1] - c.steps[0]) + 1
        if (
            len(err) >= th.min_val_points
            and steps_run >= th.min_steps_plateau
            and best_acc < c_acc + th.chance_margin
            and c.tail < (1 - th.memorize_progress) * chance
            and not _still_improving(err)
        ):
            parts.append(
                f"{name} never exceeded {pct(best_acc)} (chance: {pct(c_acc)}) over {len(err)} evaluations, while the "
                f"training loss fell to {fmt(c.tail)} (chance: {fmt(chance)}): the model memorizes the training labels"
            )
    if c is not None and vs_ is not None and vs_[2] == "val_loss":
        _, vv, _ = vs_
        ref = float(vv[0]) if chance is None else chance
        steps_run = int(c.steps[-1] - c.steps[0]) + 1
        train_gain = c.progress
        val_gain = (ref - float(vv.min())) / max(abs(ref), 1e-12)
        started_uninformed = float(vv[0]) <= ref + th.init_loss_excess * max(ref, 1.0)
        if (
            started_uninformed
            and len(vv) >= th.min_val_points
            and steps_run >= th.min_steps_plateau
            and val_gain < th.chance_margin
            and c.tail < (1 - th.memorize_progress) * ref
            and train_gain > 2 * val_gain
            and not _still_improving(vv)
        ):
            parts.append(
                f"validation loss never went below {fmt(float(vv.min()))} (chance: {fmt(ref)}) over {len(vv)} evaluations, "
                f"while the training loss fell {pct(train_gain)} ({fmt(c.head)} -> {fmt(c.tail)}): the model memorizes "
                "the training labels and nothing generalizes"
            )
    if failed:
        parts.append("input-independent baseline: " + str(check.get("evidence", "")))  # type: ignore[union-attr]
    if not parts:
        return None
    bn = [x.name for x in h.layers if x.type.startswith(("BatchNorm", "SyncBatchNorm", "LazyBatchNorm"))]
    if bn and not failed:
        # validation runs in eval mode on running statistics, which can lag far behind the weights
        # early in training: tell that apart from memorization before blaming the labels
        lag = (h.meta.get("checks") or {}).get("bn_lag")
        if lag is None or int(lag.get("step") or -1) < int(c.steps[0] if c is not None else 0):
            return Finding(
                label="label_noise", severity="info", title="Validation stays at chance (label noise or batch-norm lag?)",
                evidence="; ".join(parts) + f". Undecided: the model has batch norm ({', '.join(f'`{n}`' for n in bn[:3])}), "
                "whose running statistics can lag behind the weights so that eval-mode scores stay at chance; the "
                "`bn_lag` check (run automatically) tells the two apart",
                layers=bn, data={"needs": "bn_lag"},
            )
        if lag.get("details", {}).get("lag"):
            return Finding(
                label="label_noise", severity="info", title="Validation lags because batch-norm running statistics lag",
                evidence="; ".join(parts) + ". But not label noise: " + str(lag.get("evidence", "")) + ". Raise the "
                "batch-norm momentum, train longer, or evaluate after re-estimating the statistics",
                layers=bn, data={"bn_lag": True},
            )
    return Finding(
        label="label_noise",
        severity="warning",
        title="Labels look unrelated to the inputs",
        evidence="; ".join(parts) + ". Check that labels stay aligned with their inputs (shuffling, indexing, augmentation)",
    )


@rule("over_regularization", checklist=("karpathy.simplify", "tobin.error_dynamics"), finite=True)
def over_regularization(h: History, ctx: Context) -> Finding | None:
    """Regularization too strong for the model to fit: weight decay shrinking the weights by
    ``decay_high`` (1%) or more per step (``lr * weight_decay``), or dropout of ``dropout_high``
    (0.7) or more -- while, after ``min_steps_plateau`` steps, the training loss is still above
    ``lr_low_progress`` (half) of its initial value, and so is validation when it is logged (its
    loss or error, which dropout does not inflate), and neither improves any more (training: less
    than ``plateau_progress``, 5%, between the last two windows of ``w`` losses; validation: over
    its last third of evaluations).  Warning.  (Heavy regularization on a run that
    fits is a choice, not a fault.)"""
    th = ctx.thresholds
    reg = ctx.regularization or {}
    decay = float(reg.get("decay_per_step") or 0.0)
    drops = {n: p for n, p in (reg.get("dropout") or {}).items() if p >= th.dropout_high}
    if decay < th.decay_high and not drops:
        return None
    c = loss_curve(h, ctx)
    if c is None or int(c.steps[-1] - c.steps[0]) + 1 < th.min_steps_plateau or c.head <= 0:
        return None
    if c.tail < th.lr_low_progress * c.head:
        return None
    vs_ = val_series(h)
    if vs_ is not None and len(vs_[1]) >= 2 and float(vs_[1].min()) < th.lr_low_progress * float(vs_[1][0]):
        return None  # validation (no dropout) halved its loss / error: the model does fit
    if vs_ is not None and len(vs_[1]) >= 3:
        vv = vs_[1]
        earlier = float(vv[-min(len(vv), max(3, len(vv) // 3))])  # at least two evaluation intervals back
        if earlier > 0 and (earlier - float(vv[-1])) / earlier > th.plateau_progress:
            return None  # validation still improving
    prev = float(np.median(c.values[-2 * c.w : -c.w])) if c.n >= 2 * c.w else c.head
    if prev > 0 and (prev - c.tail) / prev > th.plateau_progress:
        return None  # still improving: heavy regularization slows it down, it does not stop it
    parts, fixes = [], []
    if decay >= th.decay_high:
        parts.append(f"weight decay shrinks the weights by {pct(decay)} per step (lr x weight_decay = {fmt(decay)})")
        _, lr = scalar(h, "lr")
        lr = lr[np.isfinite(lr)]
        if len(lr) and lr[-1] > 0:
            fixes.append(intervention("weight_decay", "Lower the weight decay 100x", value=float(decay / lr[-1] / 100)))
    if drops:
        worst = max(drops, key=lambda n: drops[n])
        parts.append(f"dropout drops {pct(drops[worst])} of the units at `{worst}`"
                     + (f" and {len(drops) - 1} more module(s)" if len(drops) > 1 else ""))
        fixes.append(intervention("set_dropout", "Lower dropout to 0.2", p=0.2))
    known = set(h.layer_names)
    return Finding(
        label="over_regularization",
        severity="warning",
        title="Regularization too strong: the model cannot fit the training data",
        evidence="; ".join(parts) + f", and after {int(c.steps[-1] - c.steps[0]) + 1} steps the training loss went only "
        f"from {fmt(c.head)} to {fmt(c.tail)}. Karpathy: get a model that fits first, then regularize",
        layers=[n for n in drops if n in known],
        interventions=fixes,
        data={"decay_per_step": decay, "dropout": drops},
    )

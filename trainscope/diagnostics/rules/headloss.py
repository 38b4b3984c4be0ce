"""Rules about the model's output layer, the loss and the targets fitting one another, read from
the first batch the probe saw (step 0, before any update) and the latest sampled one:
``head_loss_mismatch``, ``unscaled_targets`` and ``class_imbalance``.

The output activation is identified, not guessed: the last module of the forward pass is taken as
the model's head only when its output range on that batch is exactly the range of what the loss
received (a ReLU followed by a pool and a flatten, as in SqueezeNet, is not the head)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...history import History, StepRecord
from ...layers import LayerInfo
from .._series import fmt, loss_curve, scalar
from ..assess import REGRESSION_LOSSES
from ..context import Context
from ..finding import Finding, intervention
from ..registry import rule

BINARY_LOSSES = ("BCELoss", "BCEWithLogitsLoss")
CLASS_LOSSES = ("CrossEntropyLoss", "NLLLoss", "BCELoss", "BCEWithLogitsLoss", "MultiLabelSoftMarginLoss")


def _records(h: History) -> list[StepRecord]:
    """The first sampled record and the latest one (once each), oldest first."""
    out = [r for r in (h.first_record, h.latest) if r is not None and r.loss_inputs]
    if len(out) == 2 and out[0].step == out[1].step:
        out = out[:1]
    return out


def _close(a: float, b: float) -> bool:
    return bool(math.isfinite(a) and math.isfinite(b) and abs(a - b) <= 1e-5 * max(abs(a), abs(b), 1.0))


def head_of(h: History, rec: StepRecord) -> tuple[int, LayerInfo] | None:
    """The tracked module whose output the loss received at ``rec``: the last module of the forward
    pass, when its output's min and max are exactly the loss input's."""
    li = rec.loss_inputs
    if not rec.forward_order or "act_min" not in rec.metrics:
        return None
    i = int(rec.forward_order[-1])
    lo, hi = float(rec.metrics["act_min"][i]), float(rec.metrics["act_max"][i])
    if _close(lo, float(li.get("pred_min", math.nan))) and _close(hi, float(li.get("pred_max", math.nan))):
        return i, h.layers[i]
    return None


def _constant_output(li: dict[str, Any], head: LayerInfo | None, later_constant: bool) -> str | None:
    lo, hi = li.get("pred_min", math.nan), li.get("pred_max", math.nan)
    n = int(np.prod(li.get("pred_shape") or (0,)))
    if n < 2 or lo != hi or lo not in (0.0, 1.0):
        return None
    kind = head.type if head is not None else None
    if kind not in ("Softmax", "LogSoftmax", "Softmin") and not later_constant:
        return None  # a zero-initialized head is constant at step 0 only; a softmax over one unit stays
    what = "1.0 (a softmax over a dimension of size 1)" if lo == 1.0 else "0.0 (a log_softmax over a dimension of size 1)"
    where = f"`{head.name}` ({kind})" if head is not None else "the model"
    return (
        f"{where} outputs exactly {what} for all {n} values the loss {li.get('loss')} receives "
        f"(prediction shape {tuple(li.get('pred_shape') or ())}): the output is a constant, so the loss has no gradient "
        "and nothing upstream learns. For one output use a sigmoid (or none, with BCEWithLogitsLoss / a regression "
        "loss); for C classes give the last layer C outputs and apply the softmax over dim=1 (or leave it to "
        "CrossEntropyLoss)"
    )


def _batch_axis(li: dict[str, Any]) -> str | None:
    ps = tuple(li.get("pred_shape") or ())
    if len(ps) < 2 or ps[0] < 2:
        return None
    lo, hi = li.get("pred_min", math.nan), li.get("pred_max", math.nan)
    rowdev, coldev, col_lse = li.get("pred_rowsum_dev", math.nan), li.get("pred_colsum_dev", math.nan), li.get("pred_col_lse", math.nan)
    rows_ok = bool(ps[1] >= 2 and rowdev < 1e-3)
    if lo >= 0 and hi <= 1 and coldev < 1e-3 and not rows_ok:
        return (
            f"the loss {li.get('loss')} receives values whose columns sum to 1 over the batch dimension (deviation "
            f"{fmt(coldev)}, prediction {ps}) while the rows do not: a softmax over dim=0, the batch, so every example's "
            "output depends on the rest of its batch. Use softmax(dim=1) (or dim=-1), or no softmax before CrossEntropyLoss"
        )
    if hi <= 0 and col_lse < 1e-3 and not (ps[1] >= 2 and rowdev < 1e-3):
        return (
            f"the loss {li.get('loss')} receives log-probabilities normalized over the batch dimension (logsumexp over "
            f"dim 0 is {fmt(col_lse)}, prediction {ps}): a log_softmax over dim=0, the batch. Use log_softmax(dim=1)"
        )
    return None


def _range_mismatch(li: dict[str, Any], head: LayerInfo, th: Any) -> str | None:
    """A bounded or one-sided output activation whose range cannot cover the targets."""
    if li.get("loss") not in REGRESSION_LOSSES or "target_min" not in li:
        return None
    if head.bounds is not None:
        lo, hi = head.bounds
    elif head.nonneg or head.type in ("Softplus", "Softmax", "ReLU6"):
        lo, hi = 0.0, (1.0 if head.type == "Softmax" else math.inf)
    else:
        return None
    tlo, thi = float(li["target_min"]), float(li["target_max"])
    span = thi - tlo
    if not (math.isfinite(span) and span > 0):
        return None
    out = max(lo - tlo, 0.0) + max(thi - hi, 0.0)
    if out < th.head_range_miss * span:
        return None
    rng = f"[{fmt(lo)}, {fmt(hi)}]"
    return (
        f"the output activation `{head.name}` ({head.type}) can only produce values in {rng}, but the "
        f"{li.get('loss')} targets span {fmt(tlo)} to {fmt(thi)}: {fmt(100 * out / span)}% of the targets' range is out "
        f"of its reach, so those targets can never be fitted. Remove the output activation (a linear output for "
        "regression), or use one whose range covers the targets (tanh for [-1, 1]), or rescale the targets into its range"
    )


def _head_into_class_loss(li: dict[str, Any], head: LayerInfo, rec: StepRecord, idx: int, th: Any) -> str | None:
    name = li.get("loss")
    ps = tuple(li.get("pred_shape") or ())
    if name == "CrossEntropyLoss" and head.bounds == (0.0, 1.0):
        return (
            f"CrossEntropyLoss receives the output of `{head.name}` ({head.type}), confined to [0, 1]: cross-entropy "
            "applies its own softmax to raw logits, and logits squeezed into [0, 1] can never make one class much more "
            "likely than another (the loss cannot approach 0). Remove the sigmoid and pass the raw outputs"
        )
    if name == "CrossEntropyLoss" and head.nonneg and "act_frac_zero" in rec.metrics:
        fz = float(rec.metrics["act_frac_zero"][idx])
        if math.isfinite(fz) and fz >= th.head_relu_zero:
            return (
                f"CrossEntropyLoss receives the output of `{head.name}` ({head.type}) directly: {fmt(100 * fz)}% of the "
                "logits are cut to exactly 0, so the model cannot express 'less likely than average' and those logits pass "
                "no gradient. Remove the ReLU after the last layer: cross-entropy takes raw logits"
            )
    if name == "BCELoss" and len(ps) >= 2 and ps[1] >= 2 and li.get("pred_rowsum_dev", math.nan) < 1e-3:
        return (
            f"BCELoss receives probabilities whose rows sum to 1 (a softmax over the {ps[1]} outputs): binary "
            "cross-entropy judges each output on its own, so with several true labels per example they compete for one "
            "unit of probability, and with one true label per example the softmax + BCE pair is categorical "
            "cross-entropy done the hard way. Several labels per example: sigmoid outputs (or BCEWithLogitsLoss on "
            "logits); one label: CrossEntropyLoss on the logits"
        )
    return None


def _structural(h: History, rec: StepRecord, th: Any) -> str | None:
    """Tests (c)-(e) of :func:`head_loss_mismatch` on one record (``None``: the head is not
    identified there, or fits)."""
    hd = head_of(h, rec)
    if hd is None:
        return None
    return _range_mismatch(rec.loss_inputs, hd[1], th) or _head_into_class_loss(rec.loss_inputs, hd[1], rec, hd[0], th)


@rule("head_loss_mismatch", checklist=("tobin.bug_loss_input", "tobin.bug_shapes"))
def head_loss_mismatch(h: History, ctx: Context) -> Finding | None:
    """The output layer, the loss and the targets do not fit one another, judged on the first batch
    the probe saw (step 0) and confirmed on the latest one: (a) a softmax / log_softmax over a
    dimension of size 1 -- the prediction is exactly 1.0 (0.0) for every example, so the loss has no
    gradient (error); (b) a softmax / log_softmax over the batch dimension (columns sum to 1, rows do
    not; error); (c) a bounded or one-sided output activation (sigmoid, tanh, ReLU, softmax...) whose
    range leaves ``head_range_miss`` (25%) or more of a regression target's range out of reach
    (warning); (d) cross-entropy on a sigmoid output, or on a ReLU output with ``head_relu_zero``
    (25%) or more of the logits at exactly 0 (warning); (e) ``BCELoss`` on a softmax over several
    outputs (warning); (f) a loss with ``reduction='sum'``: the gradient, and so the effective learning
    rate, grows with the batch size (warning).  The output activation counts only when it is the
    forward pass's last module and its output range is exactly what the loss received (a ReLU
    before a pool, as in SqueezeNet, is not the head)."""
    th = ctx.thresholds
    recs = _records(h)
    if not recs:
        return _sum_reduction(h, ctx)
    first, last = recs[0], recs[-1]
    li = first.loss_inputs
    hd = head_of(h, first)
    head = hd[1] if hd is not None else None
    later_constant = len(recs) == 2 and last.loss_inputs.get("pred_min") == last.loss_inputs.get("pred_max") == li.get("pred_min")
    sev, msg = "error", _constant_output(li, head, later_constant)
    constant = msg is not None
    if msg is None:
        msg = _batch_axis(li)
        if msg is not None and len(recs) == 2 and _batch_axis(last.loss_inputs) is None:
            msg = None  # not the structure of the model: gone at the latest batch
    test = "constant" if constant else "batch"
    if msg is None and hd is not None:
        sev, test = "warning", "structural"
        msg = _structural(h, first, th)
        if msg is not None and len(recs) == 2 and _structural(h, last, th) is None:
            msg = None  # gone at the latest batch: not how the model is built
    if msg is None:
        return _sum_reduction(h, ctx)
    layers = [head.name] if head is not None else []
    fixes, note = without_live(h, head_fixes(li, head, test))
    return Finding(
        label="head_loss_mismatch",
        severity=sev,
        title=f"The output layer does not fit {li.get('loss', 'the loss')}",
        evidence=msg + f" (first batch, step {first.step})" + note,
        layers=layers,
        interventions=fixes,
        first_step=int(first.step),
        data={"loss_inputs": dict(li), "head": head.type if head is not None else None},
    )


LIVE_FIXES = ("set_output_activation", "set_loss", "standardize_targets", "standardize_inputs", "rescale_targets")


def without_live(h: History, fixes: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """``fixes`` less those already applied live and not undone (the same action -- on the same
    layer for ``set_output_activation``), and a sentence saying which is applied: the code still
    has the fault (the finding stays true of it), but the fix need not be offered twice."""
    events = list(h.events)
    undone = {str(e.data.get("undid")) for e in events if e.kind == "undo"}
    live = [e for e in events if e.kind == "intervention" and e.data.get("action") in LIVE_FIXES
            and str(e.data.get("ticket")) not in undone]
    if not live:
        return fixes, ""

    def same(fix: dict[str, Any], e: Any) -> bool:
        if fix["action"] != e.data.get("action"):
            return False
        if fix["action"] == "set_output_activation":
            return bool(fix["params"].get("layer") == (e.data.get("params") or {}).get("layer"))
        return True

    hit = [e for e in live if any(same(f, e) for f in fixes)]
    if not hit:
        return fixes, ""
    e = hit[-1]
    return ([f for f in fixes if not any(same(f, x) for x in hit)],
            f". Live fix applied at step {e.step}: {e.data.get('action')} (the code still has the fault; undo it to see)")


def affine_head_ok(h: History, rec: StepRecord | None) -> bool:
    """Whether ``standardize_targets``' output affine (``out * std + mean``) keeps what the model can
    reach: not when its output goes through an identified bounded or one-sided activation (a ReLU
    head on positive targets would then stop at the targets' mean)."""
    hd = head_of(h, rec) if rec is not None else None
    return hd is None or (hd[1].bounds is None and not hd[1].nonneg and hd[1].type not in ("Softplus", "Softmax", "ReLU6"))


def head_fixes(li: dict[str, Any], head: LayerInfo | None, test: str) -> list[dict[str, Any]]:
    """The one-click fix of a head / loss mismatch found by ``test`` (``constant``: an output fixed
    at 1.0 / 0.0; ``batch``: a softmax over the batch; ``structural``: tests (c)-(e)), as a live
    ``set_output_activation`` on the identified output activation module.  Empty when the head is
    not a module of its own (a functional softmax in ``forward``: only the code can change)."""
    if head is None:
        return []
    loss, kind, name = li.get("loss"), head.type, head.name
    tlo, thi = li.get("target_min", math.nan), li.get("target_max", math.nan)
    in_unit = bool(tlo >= 0 and thi <= 1)
    if test == "constant":
        if kind not in ("Softmax", "LogSoftmax", "Softmin"):
            return []
        if loss == "BCELoss" or (loss in REGRESSION_LOSSES and in_unit):
            return [intervention("set_output_activation", f"Use a sigmoid instead of the {kind} at `{name}`", layer=name, to="sigmoid")]
        if loss == "BCEWithLogitsLoss" or loss in REGRESSION_LOSSES:
            return [intervention("set_output_activation", f"Remove the {kind} at `{name}`", layer=name, to="identity")]
        return []
    if test == "batch":
        if kind == "Softmax" and loss == "CrossEntropyLoss":
            return [intervention("set_output_activation", f"Remove the softmax at `{name}` (CrossEntropyLoss takes logits)",
                                 layer=name, to="identity")]
        if kind in ("Softmax", "LogSoftmax"):
            to = "softmax" if kind == "Softmax" else "log_softmax"
            return [intervention("set_output_activation", f"Apply the {to} at `{name}` over dim=1", layer=name, to=to, dim=1)]
        return []
    if loss == "BCELoss":  # (e) a softmax into BCE: each output its own sigmoid
        return [intervention("set_output_activation", f"Use a sigmoid instead of the {kind} at `{name}`", layer=name, to="sigmoid")]
    return [intervention("set_output_activation", f"Remove the output activation `{name}` ({kind})", layer=name, to="identity")]


def _sum_reduction(h: History, ctx: Context) -> Finding | None:
    red = h.meta.get("loss_reduction")
    if red != "sum":
        return None
    rec = h.first_record or h.latest
    ps = tuple(rec.loss_inputs.get("pred_shape") or ()) if rec is not None else ()
    n = int(ps[0]) if ps else 0
    if n < ctx.thresholds.sum_reduction_min_batch:
        return None
    return Finding(
        label="head_loss_mismatch",
        severity="warning",
        title=f"{h.meta.get('loss_fn') or 'The loss'} sums over the batch (reduction='sum')",
        evidence=(
            f"the loss is built with reduction='sum': with batches of {n} its gradient is {n}x that of the mean, so the "
            f"effective learning rate is lr x {n} and changes whenever the batch size does. Use reduction='mean' (the "
            f"default), or divide the learning rate by {n}"
        ),
        interventions=[intervention("scale_lr", f"Divide the learning rate by {n}", factor=1.0 / n)],
        first_step=int(rec.step) if rec is not None else 0,
        data={"batch": n},
    )


@rule("unscaled_targets", checklist=("tobin.normalize_inputs",))
def unscaled_targets(h: History, ctx: Context) -> Finding | None:
    """Regression targets (MSE / L1 / Huber, float) far from unit scale: their RMS
    ``sqrt(mean^2 + std^2)`` on the first batch is at least ``target_scale_high`` (10).  The output
    layer must then produce values 10x or more beyond its initial scale and the loss (and its
    gradient) is that scale squared.  Warning when it hurts: the loss went non-finite, or after
    ``min_progress_steps`` (20) steps it is still above half of what predicting the targets' mean
    would score (their variance for MSE, their std for L1 / Huber); info otherwise (a run that
    learns anyway, e.g. with a learning rate tuned to the scale)."""
    th = ctx.thresholds
    recs = _records(h)
    if not recs:
        return None
    li = recs[0].loss_inputs
    if li.get("loss") not in REGRESSION_LOSSES or "target_mean" not in li:
        return None
    if not str(li.get("target_dtype", "")).startswith(("float", "bfloat")):
        return None
    mean, std = float(li["target_mean"]), float(li.get("target_std", 0.0))
    rms = math.hypot(mean, std)
    if not (math.isfinite(rms) and rms >= th.target_scale_high):
        return None
    s, v = scalar(h, "loss")
    hurt = ""
    if len(v) and not np.isfinite(v).all():
        bad = int(s[np.flatnonzero(~np.isfinite(v))[0]])
        hurt = f"; the loss went non-finite at step {bad}"
    else:
        c = loss_curve(h, ctx)
        # what predicting the targets' mean scores: their variance (MSE), about their std (L1 / Huber at this scale)
        base = std * std if li.get("loss") == "MSELoss" else std
        if c is not None and len(s) and int(s[-1]) >= th.min_progress_steps and base > 0 and c.tail > 0.5 * base:
            hurt = (f"; after {int(s[-1])} steps the loss ({fmt(c.tail)}) is still above half of what predicting the "
                    f"targets' mean would score ({fmt(base)})")
    off = abs(mean) > 3 * std
    fixes, note = without_live(h, [intervention("standardize_targets", "Standardize the targets (predictions keep their units)")]
                               if affine_head_ok(h, recs[0]) else [])
    evidence = (
        f"the {li.get('loss')} targets have mean {fmt(mean)} and std {fmt(std)} on the first batch (range "
        f"{fmt(li.get('target_min'))} to {fmt(li.get('target_max'))}): "
        + ("they sit far from 0, " if off else "")
        + f"a scale of {fmt(rms)} that the output layer has to reach from ~1, while the loss and its gradients are "
        f"that scale squared{hurt}. Standardize the targets (y = (y - mean) / std with the training set's statistics) "
        "and map predictions back with y * std + mean" + note
    )
    return Finding(
        label="unscaled_targets",
        severity="warning" if hurt else "info",
        title=f"Regression targets are not scaled (scale {fmt(rms)})",
        evidence=evidence,
        interventions=fixes,
        first_step=int(recs[0].step),
        data={"target_mean": mean, "target_std": std, "rms": rms},
    )


def _prior_only(h: History, ctx: Context, li: dict[str, Any], p: np.ndarray) -> str | None:
    """Evidence that the model learned no more than the class frequencies: after
    ``min_progress_steps`` steps the (cross-entropy / BCE) training loss is still at least
    ``imbalance_prior_loss`` (90%) of the entropy of the class distribution -- the loss of always
    predicting the class frequencies.  ``None`` when it did better, or when this cannot be told."""
    name = li.get("loss")
    if name not in ("CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "BCELoss"):
        return None
    q = p[p > 0]
    ent = float(-(q * np.log(q)).sum())
    s, _ = scalar(h, "loss")
    c = loss_curve(h, ctx)
    if c is None or not len(s) or int(s[-1]) < ctx.thresholds.min_progress_steps or ent <= 0:
        return None
    if c.tail < ctx.thresholds.imbalance_prior_loss * ent:
        return None
    return (f"after {int(s[-1])} steps the loss ({fmt(c.tail)}) is still that of predicting the class frequencies "
            f"({fmt(ent)} nats): the model has learned the imbalance, not the task; ")


@rule("class_imbalance", checklist=("karpathy.visualize_input",))
def class_imbalance(h: History, ctx: Context) -> Finding | None:
    """One class dominates the targets of the batches the probe sampled (at least
    ``imbalance_min_examples`` (64) examples): the largest class is ``imbalance_ratio`` (10x) the
    smallest class present or more, or holds ``imbalance_majority`` (95%) or more of all examples
    -- up to a single class.  A model that always predicts the majority scores that fraction.
    Warning when every target is one class (nothing else can be learned), or when one class holds
    ``imbalance_majority`` or more and after ``min_progress_steps`` steps the cross-entropy / BCE
    training loss is still ``imbalance_prior_loss`` (90%) or more of the class distribution's
    entropy (the model predicts the frequencies, accuracy = the majority share); info otherwise
    (the task may be imbalanced by nature and learned anyway)."""
    th = ctx.thresholds
    counts = h.meta.get("class_counts")
    if not isinstance(counts, list) or len(counts) < 2:
        return None
    c = np.asarray(counts, dtype=np.float64)
    total = float(c.sum())
    rec = h.first_record or h.latest
    li = rec.loss_inputs if rec is not None else {}
    multi = bool(li.get("target_shape") and tuple(li["target_shape"]) == tuple(li.get("pred_shape") or ())
                 and len(counts) > 2)
    if multi:
        return None  # per-label positives of a multi-label task are rarely balanced; not a class balance
    if total < th.imbalance_min_examples:
        return None
    top = int(np.argmax(c))
    share = float(c[top] / total)
    present = c[c > 0]
    ratio = float(c[top] / present.min()) if len(present) >= 2 else math.inf
    if share < th.imbalance_majority and ratio < th.imbalance_ratio:
        return None
    single = len(present) == 1
    prior = _prior_only(h, ctx, li, c / total)
    sev = "warning" if single or (share >= th.imbalance_majority and prior) else "info"
    what = (f"every one of the {int(total)} targets seen is class {top}" if single
            else f"class {top} is {fmt(100 * share)}% of the {int(total)} targets seen ({fmt(ratio)}x the rarest class present)")
    hint = ("the labels were probably overwritten or scaled in preprocessing (e.g. y / 255 cast to integers): check the "
            "label pipeline" if single else
            (prior or "") + "a model that always predicts it scores that accuracy. Weigh the loss by inverse class frequency "
            "(CrossEntropyLoss(weight=...), BCEWithLogitsLoss(pos_weight=...)) or resample the batches "
            "(WeightedRandomSampler)")
    return Finding(
        label="class_imbalance",
        severity=sev,
        title="One class dominates the targets" if not single else "The targets hold a single class",
        evidence=f"{what} in the sampled batches; {hint}",
        first_step=int(h.first_record.step) if h.first_record is not None else -1,
        data={"counts": [float(x) for x in c], "majority_share": share},
    )

"""Rules about how training is set up: loss at init, inputs, the loss's inputs, train / eval mode,
and the batch-mixing test."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...history import History, StepRecord
from .._series import fmt, param_layers, scalar
from ..assess import (
    REGRESSION_LOSSES,
    assess_init_loss,
    assess_inputs,
    assess_loss_inputs,
    expected_init_loss,
)
from ..context import Context
from ..finding import SEVERITIES, Finding, intervention
from ..registry import rule
from .headloss import affine_head_ok, head_fixes, head_of, without_live

MODE_DEPENDENT = (
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LazyBatchNorm1d", "LazyBatchNorm2d",
    "LazyBatchNorm3d", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
    "FeatureAlphaDropout", "RReLU",
)  # fmt: skip
"""Module types that behave differently in train and eval mode."""


@rule("bad_loss_at_init", checklist=("karpathy.loss_at_init", "karpathy.init_well"))
def bad_loss_at_init(h: History, ctx: Context) -> Finding | None:
    """The training loss at step 0 exceeds the loss of an uninformed prediction -- ``ln C`` for
    C-class cross-entropy, ``ln 2`` for binary cross-entropy -- by more than
    ``init_loss_excess * max(ln C, 1)`` nats: the network starts confidently wrong (initial logits
    too large).  Also raised by a failed ``loss_at_init`` check.  Warning."""
    th = ctx.thresholds
    check = (h.meta.get("checks") or {}).get("loss_at_init")
    steps, vals = scalar(h, "loss")
    rec = h.latest
    li = rec.loss_inputs if rec is not None else {}
    exp = expected_init_loss(li.get("loss") or h.meta.get("loss_fn"), li.get("pred_shape"))
    if exp is None and ctx.n_classes:
        exp = expected_init_loss("CrossEntropyLoss", (1, ctx.n_classes))
    evidence = None
    if exp is not None and len(steps) and steps[0] == 0:
        ref, how = exp
        loss0 = float(vals[0])
        status, excess = assess_init_loss(loss0, ref, th)
        if status == "fail" and math.isfinite(loss0):  # a non-finite loss is nan_inf's
            evidence = (
                f"loss at step 0 was {fmt(loss0)}; an uninformed prediction gives {how}: {fmt(excess)} nats too high, "
                "the network starts confidently wrong"
            )
    if evidence is None and check and check.get("status") == "fail":
        evidence = str(check.get("evidence", "the loss_at_init check failed"))
    if evidence is None:
        return None
    pl = param_layers(h, ctx)
    fixes = [intervention("reinit", "Re-initialize with LSUV", layers="all", scheme="lsuv")]
    if pl:
        last = h.layers[pl[-1]].name
        fixes.insert(0, intervention("reinit", f"Re-initialize the output layer `{last}` small", layers=[last], scheme="normal", std=0.01))
    return Finding(
        label="bad_loss_at_init",
        severity="warning",
        title="Loss at initialization is far above chance",
        evidence=evidence,
        layers=[h.layers[pl[-1]].name] if pl else [],
        interventions=fixes,
        first_step=0,
    )


@rule("unnormalized_inputs", checklist=("tobin.normalize_inputs", "karpathy.visualize_input"))
def unnormalized_inputs(h: History, ctx: Context) -> Finding | None:
    """Floating-point model inputs far from zero mean and unit scale (latest sampled batch): RMS
    above ``input_scale_high`` (4) or below ``input_scale_low`` (0.1, data in [0, 1] exempt), the
    median feature's ``|mean|`` above ``input_offset`` (3) stds, or one feature's std
    ``input_spread`` (100x) the median feature's.  Warning."""
    rec = h.latest
    if rec is None or not rec.inputs:
        return None
    status, evidence, nums = assess_inputs(rec.inputs, ctx.thresholds)
    if status != "warn":
        return None
    pl = param_layers(h, ctx)
    first = [h.layers[pl[0]].name] if pl else []
    fixes = [intervention("standardize_inputs", "Standardize the inputs and the regression targets", targets=True)
             if _unscaled_targets(h, ctx) else
             intervention("standardize_inputs", "Standardize the inputs ((x - mean) / std of the recent batches)")]
    fixes += [intervention("reinit", "Re-initialize the first layer for this input scale (LSUV)", layers=first, scheme="lsuv")] if first else []
    fixes, note = without_live(h, fixes)
    return Finding(
        label="unnormalized_inputs",
        severity="warning",
        title="Inputs are not normalized",
        evidence=evidence + ". Standardize them: x = (x - mean) / std, with statistics of the training set" + note,
        layers=first,
        interventions=fixes,
        data=nums,
    )


_ELEMENTWISE = {"MSELoss": "mse", "L1Loss": "l1", "SmoothL1Loss": "smooth_l1"}


def _unscaled_targets(h: History, ctx: Context) -> bool:
    """Floating regression targets whose RMS on the first batch is ``target_scale_high`` or more
    (what ``unscaled_targets`` reads): standardizing the inputs alone would leave the output layer
    to reach that scale from standardized features.  Not when the output goes through a bounded or
    one-sided activation (see :func:`affine_head_ok`)."""
    rec = h.first_record or h.latest
    li = rec.loss_inputs if rec is not None else {}
    if li.get("loss") not in REGRESSION_LOSSES or "target_mean" not in li:
        return False
    if not str(li.get("target_dtype", "")).startswith(("float", "bfloat")):
        return False
    rms = math.hypot(float(li["target_mean"]), float(li.get("target_std", 0.0)))
    return bool(math.isfinite(rms) and rms >= ctx.thresholds.target_scale_high) and affine_head_ok(h, rec)


def _loss_fixes(h: History, rec: StepRecord, label: str) -> list[dict[str, Any]]:
    """Live one-click fixes (``set_loss`` / ``set_output_activation``, see
    :mod:`trainscope.interventions.head_fix`) for what :func:`assess_loss_inputs` found, with the
    parameters read from the loss inputs; none where only the code can fix it (class indices
    through one output unit, BCE on targets outside [0, 1])."""
    li = rec.loss_inputs
    name = li.get("loss")
    ps = tuple(li.get("pred_shape") or ())
    lo, hi = li.get("pred_min", math.nan), li.get("pred_max", math.nan)
    tlo, thi = li.get("target_min", math.nan), li.get("target_max", math.nan)
    rows_sum_1 = bool(len(ps) >= 2 and ps[1] >= 2 and li.get("pred_rowsum_dev", math.nan) < 1e-3 and lo >= 0 and hi <= 1)
    out: list[dict[str, Any]] = []
    if label == "probabilities_into_loss":
        if name in ("CrossEntropyLoss", "NLLLoss") and rows_sum_1:
            out.append(intervention("set_loss", "Cross-entropy of the probabilities (-log p of the true class)",
                                    kind="cross_entropy", input="probabilities"))
        elif name in ("BCEWithLogitsLoss", "MultiLabelSoftMarginLoss"):
            out.append(intervention("set_loss", "Binary cross-entropy on the probabilities (BCELoss)", kind="bce", input="probabilities"))
        return out
    if name in ("BCELoss", "NLLLoss") and lo == hi and lo in (0.0, 1.0):
        hd = head_of(h, rec)
        out += head_fixes(li, hd[1] if hd is not None else None, "constant")
    if name == "CrossEntropyLoss" and len(ps) >= 2 and ps[1] == 1 and tlo >= 0 and thi <= 1:
        out.append(intervention("set_loss", "Binary cross-entropy on the one logit (BCEWithLogitsLoss)", kind="bce_with_logits"))
    if name == "NLLLoss" and hi > 0 and len(ps) >= 2 and ps[1] >= 2:
        out.append(intervention("set_loss", "Cross-entropy of the " + ("probabilities" if rows_sum_1 else "raw outputs (logits)"),
                                kind="cross_entropy", input="probabilities" if rows_sum_1 else "logits"))
    out += _bce_target_fixes(h, rec)
    ts = li.get("target_shape")
    if name in _ELEMENTWISE and ts is not None and tuple(ts) != ps and int(np.prod(ts)) == int(np.prod(ps or (0,))) > 0:
        out.append(intervention("set_loss", f"Compare prediction and target element-wise ({_ELEMENTWISE[name]}, no broadcasting)",
                                kind=_ELEMENTWISE[name]))
    return out


def _bce_target_fixes(h: History, rec: StepRecord) -> list[dict[str, Any]]:
    """Binary cross-entropy on targets outside [0, 1]: labels that take exactly two integer values
    (``max - min == 1``: 1 / 2) are mapped to 0 / 1; fractional (continuous, bounded) targets are
    mapped from their observed range onto [0, 1] (``rescale_targets``; the prediction then reads
    back as ``low + (high - low) * sigmoid(output)``).  None for integer targets spanning 2 or more
    (class indices: one output per class and cross-entropy is a change of the model only the code
    can make)."""
    li = rec.loss_inputs
    if li.get("loss") not in ("BCEWithLogitsLoss", "BCELoss") or li.get("target_shape") is None:
        return []
    recs = [r for r in (h.first_record, rec) if r is not None and r.loss_inputs.get("loss") == li.get("loss")]
    lo = min(float(r.loss_inputs.get("target_min", math.nan)) for r in recs)
    hi = max(float(r.loss_inputs.get("target_max", math.nan)) for r in recs)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo) or (lo >= 0 and hi <= 1):
        return []
    integral = all(float(r.loss_inputs.get("target_frac_dev", 1.0)) == 0.0 for r in recs)
    if integral and hi - lo == 1.0:
        return [intervention("rescale_targets", f"Map the labels {lo:g} / {hi:g} to 0 / 1", low=lo, high=hi)]
    if not integral:
        return [intervention("rescale_targets", f"Map the targets from [{lo:g}, {hi:g}] onto [0, 1] (read predictions "
                             f"back as {lo:g} + {hi - lo:g} * sigmoid(output))", low=lo, high=hi)]
    return []


def _loss_problem(h: History, label: str) -> Finding | None:
    rec = h.latest
    if rec is None or not rec.loss_inputs:
        return None
    hits = [(s, e) for lab, s, e in assess_loss_inputs(rec.loss_inputs) if lab == label]
    if not hits:
        return None
    sev = max((s for s, _ in hits), key=SEVERITIES.index)
    name = rec.loss_inputs.get("loss", "the loss")
    title = f"{name} receives probabilities, not logits" if label == "probabilities_into_loss" else f"{name} does not fit its inputs"
    fixes, note = without_live(h, _loss_fixes(h, rec, label))
    return Finding(label=label, severity=sev, title=title, evidence="; ".join(e for _, e in hits) + note,
                   data=dict(rec.loss_inputs), interventions=fixes)


@rule("probabilities_into_loss", checklist=("tobin.bug_loss_input",))
def probabilities_into_loss(h: History, ctx: Context) -> Finding | None:
    """A loss that expects logits (cross-entropy, BCE-with-logits) or log-probabilities (NLL)
    receives values in [0, 1] -- for cross-entropy / NLL with rows summing to 1 (softmax output,
    error); for the element-wise logit losses, all of at least 16 values in [0, 1] (sigmoid output,
    warning).  Read from the loss's inputs at the latest sampled step."""
    return _loss_problem(h, "probabilities_into_loss")


@rule("wrong_loss", checklist=("tobin.bug_shapes", "tobin.bug_loss_input"))
def wrong_loss(h: History, ctx: Context) -> Finding | None:
    """The loss does not fit the prediction / target: a regression loss whose prediction and target
    shapes broadcast to a larger shape (Tobin's bug #1, error); BCE with targets outside [0, 1]
    (error); cross-entropy over one class (error); NLL / KL-div on values > 0 (not
    log-probabilities, warning); a regression loss on integer targets >= 2 (class indices?,
    info)."""
    return _loss_problem(h, "wrong_loss")


@rule("train_eval_mode", checklist=("tobin.bug_train_eval",))
def train_eval_mode(h: History, ctx: Context) -> Finding | None:
    """In a model with modules that depend on the mode (dropout, batch norm): no-grad forward passes
    (validation) ran with the model in train mode, or the training forward passes of the latest
    sampled step -- or of the whole run -- ran in eval mode.  Warning."""
    mods = [x.name for x in h.layers if x.type in MODE_DEPENDENT]
    if not mods:
        return None
    total = ctx.forward_modes or {}
    rec = h.latest
    step_modes = rec.extra.get("forward_modes", {}) if rec is not None else {}
    parts = []
    if total.get("eval_in_train_mode", 0) > 0:
        parts.append(
            f"{total['eval_in_train_mode']} no-grad forward pass(es) (validation?) ran with the model in train mode: "
            "dropout stays active and batch norm updates its running statistics with those batches. "
            "Call model.eval() before validating and model.train() after"
        )
    in_eval = total.get("train_in_eval_mode", 0)
    if in_eval and (total.get("train", 0) == 0 or (step_modes.get("train", 0) == 0 and step_modes.get("train_in_eval_mode", 0) > 0)):
        parts.append(
            f"training forward passes run in eval mode ({in_eval} so far): dropout is off and batch norm uses its "
            "running statistics instead of the batch's. Call model.train() before training (after validating)"
        )
    if not parts:
        return None
    return Finding(
        label="train_eval_mode",
        severity="warning",
        title="Train / eval mode mix-up",
        evidence="; ".join(parts) + f" (mode-dependent modules: {', '.join(f'`{m}`' for m in mods[:5])})",
        layers=mods,
        data={"forward_modes": dict(total)},
    )


@rule("batch_mixing", checklist=("karpathy.backprop_dependencies",))
def batch_mixing(h: History, ctx: Context) -> Finding | None:
    """The batch-mixing check failed: in eval mode, the gradient of one example's output with
    respect to the *other* examples' inputs is not zero (relative size above ``mixing_tolerance``),
    so an example's output depends on the rest of its batch (``view`` instead of ``transpose``,
    a reduction or softmax over the batch dimension...).  Error.  The diagnoser runs that check
    once on a recent training batch (it changes nothing in the model)."""
    check = (h.meta.get("checks") or {}).get("batch_mixing")
    if not check or check.get("status") != "fail":
        return None
    return Finding(
        label="batch_mixing",
        severity="error",
        title="Examples of a batch influence each other's outputs",
        evidence=str(check.get("evidence", "")),
        layers=list(check.get("layers", [])),
        first_step=int(check.get("step", -1)),
    )

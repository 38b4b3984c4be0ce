"""Pure assessments shared by the rules (on what the probe recorded) and the checklist's checks (on
a batch): input normalization, the loss's inputs, the loss at initialization."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .config import Thresholds

__all__ = [
    "LOGIT_LOSSES",
    "LOGPROB_LOSSES",
    "REGRESSION_LOSSES",
    "assess_init_loss",
    "assess_inputs",
    "assess_loss_inputs",
    "expected_init_loss",
    "input_stats",
    "loss_input_stats",
]

LOGIT_LOSSES = ("CrossEntropyLoss", "BCEWithLogitsLoss", "MultiLabelSoftMarginLoss")
ELEMENTWISE_LOGIT_LOSSES = ("BCEWithLogitsLoss", "MultiLabelSoftMarginLoss")
"""Logit losses that read each value on its own (a sigmoid before them squashes every value into
[0, 1]); cross-entropy is judged by its rows instead (logits in [0, 1] are legitimate there, e.g.
out of a ReLU and a global pool, or early in training)."""
LOGPROB_LOSSES = ("NLLLoss", "KLDivLoss")
REGRESSION_LOSSES = ("MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss")
_FLOAT = ("float16", "bfloat16", "float32", "float64")


def _fmt(v: float) -> str:
    from ._series import fmt

    return fmt(v)


# ------------------------------------------------------------------------------------ inputs
@torch.no_grad()
def input_stats(x: torch.Tensor) -> dict[str, Any]:
    """The probe's input summary (``StepRecord.inputs``) computed directly from a batch."""
    out: dict[str, Any] = {"shape": tuple(x.shape), "dtype": str(x.dtype).replace("torch.", ""), "numel": x.numel()}
    if not x.is_floating_point() or x.numel() == 0:
        return out
    xf = x.detach().double()
    out.update(mean=float(xf.mean()), std=float(xf.std(unbiased=False)), min=float(xf.min()), max=float(xf.max()))
    if x.dim() >= 2:
        cdim = 1 if x.dim() >= 3 else x.dim() - 1
        dims = tuple(d for d in range(x.dim()) if d != cdim)
        out["channel_mean"] = xf.mean(dim=dims).cpu().numpy()
        out["channel_std"] = xf.std(dim=dims, unbiased=False).cpu().numpy()
    return out


def assess_inputs(stats: dict[str, Any], th: Thresholds) -> tuple[str, str, dict[str, float]]:
    """``(status, evidence, numbers)``; status ``pass`` / ``warn`` / ``not_run`` (non-float inputs).

    Warn when the inputs' RMS ``sqrt(mean^2 + std^2)`` is above ``input_scale_high`` or below
    ``input_scale_low`` (data in [0, 1] exempt from the low bound), when the median feature has
    ``|mean| > input_offset * std`` (data within [-1, 1] exempt: min-max scaling), or when one
    feature's std is ``input_spread`` times the median feature's.
    """
    if stats.get("dtype") not in _FLOAT or "mean" not in stats:
        return "not_run", f"inputs are {stats.get('dtype', 'not a tensor')}: no normalization to check", {}
    mean, std = float(stats["mean"]), float(stats["std"])
    lo, hi = float(stats.get("min", -math.inf)), float(stats.get("max", math.inf))
    if not all(map(math.isfinite, (mean, std))):
        return "warn", "the inputs contain non-finite values", {}
    rms = math.sqrt(mean * mean + std * std)
    issues: list[str] = []
    nums = {"rms": rms, "mean": mean, "std": std}
    if rms > th.input_scale_high:
        issues.append(f"input RMS is {_fmt(rms)} (mean {_fmt(mean)}, std {_fmt(std)}, range {_fmt(lo)} to {_fmt(hi)})")
    elif rms < th.input_scale_low and not (lo >= 0 and hi <= 1):
        issues.append(f"input RMS is only {_fmt(rms)} (std {_fmt(std)})")
    cm, cs = stats.get("channel_mean"), stats.get("channel_std")
    if cm is not None and cs is not None and len(cs) >= 2:
        cm, cs = np.asarray(cm, dtype=np.float64), np.asarray(cs, dtype=np.float64)
        live = cs > 0
        if live.sum() >= 2:
            off = float(np.median(np.abs(cm[live]) / cs[live]))
            spread = float(cs[live].max() / np.median(cs[live]))
            nums.update(offset=off, spread=spread)
            # data within [-1, 1] (min-max scaled: pixels / 255, (x - max) / max) is at unit scale: an
            # offset there is standard preprocessing, not a fault; only its spread across features matters
            if off > th.input_offset and not (lo >= -1 and hi <= 1):
                issues.append(f"the typical feature's mean is {_fmt(off)} of its std away from zero")
            if spread > th.input_spread:
                j = int(np.argmax(np.where(live, cs, -1)))
                issues.append(
                    f"feature scales differ: feature {j} has std {_fmt(float(cs[j]))}, the median feature {_fmt(float(np.median(cs[live])))}"
                )
    if issues:
        return "warn", "; ".join(issues), nums
    return "pass", f"inputs look standardized (mean {_fmt(mean)}, std {_fmt(std)})", nums


# ------------------------------------------------------------------------------ loss inputs
@torch.no_grad()
def loss_input_stats(loss_name: str, pred: torch.Tensor, target: Any) -> dict[str, Any]:
    """The probe's loss-input summary (``StepRecord.loss_inputs``) computed from tensors."""
    p = pred.detach().float()
    out: dict[str, Any] = {
        "loss": loss_name,
        "pred_shape": tuple(pred.shape),
        "pred_dtype": str(pred.dtype).replace("torch.", ""),
        "pred_min": float(p.min()) if p.numel() else math.nan,
        "pred_max": float(p.max()) if p.numel() else math.nan,
        "pred_rowsum_dev": float((p.sum(dim=1) - 1).abs().mean()) if p.dim() >= 2 else math.nan,
    }
    if isinstance(target, torch.Tensor):
        t = target.detach().float()
        out.update(
            target_shape=tuple(target.shape),
            target_dtype=str(target.dtype).replace("torch.", ""),
            target_min=float(t.min()) if t.numel() else math.nan,
            target_max=float(t.max()) if t.numel() else math.nan,
            target_frac_dev=float((t - t.round()).abs().max()) if t.numel() else 0.0,
        )
    return out


def assess_loss_inputs(li: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Problems with what the loss receives: ``[(label, severity, evidence), ...]`` where label is
    ``probabilities_into_loss`` or ``wrong_loss``; empty when nothing is wrong."""
    name = li.get("loss")
    ps = tuple(li.get("pred_shape") or ())
    ts = li.get("target_shape")
    lo, hi = li.get("pred_min", math.nan), li.get("pred_max", math.nan)
    rowdev = li.get("pred_rowsum_dev", math.nan)
    n = int(np.prod(ps)) if ps else 0
    in_unit = bool(lo >= 0 and hi <= 1)
    rows_sum_1 = bool(len(ps) >= 2 and ps[1] >= 2 and rowdev < 1e-3)
    out: list[tuple[str, str, str]] = []
    if name in ("CrossEntropyLoss", "NLLLoss") and in_unit and rows_sum_1:
        need = "raw logits (it applies log_softmax itself)" if name == "CrossEntropyLoss" else "log-probabilities (log_softmax)"
        out.append((
            "probabilities_into_loss", "error",
            f"{name} receives probabilities: values in [{_fmt(lo)}, {_fmt(hi)}] whose rows sum to 1 "
            f"(mean deviation {_fmt(rowdev)}); it expects {need}. Remove the softmax before the loss",
        ))
    elif name in ELEMENTWISE_LOGIT_LOSSES and in_unit and n >= 16 and hi - lo >= 0.5:
        out.append((
            "probabilities_into_loss", "warning",
            f"{name} expects raw logits but all {n} of its inputs lie in [{_fmt(lo)}, {_fmt(hi)}] while spanning "
            f"{_fmt(hi - lo)} of that interval: a sigmoid was applied before the loss",
        ))
    elif name in LOGPROB_LOSSES and hi > 0:
        out.append((
            "wrong_loss", "warning",
            f"{name} expects log-probabilities (<= 0) but receives values up to {_fmt(hi)}: apply log_softmax, "
            "or use CrossEntropyLoss on the raw logits",
        ))
    if name in ("BCELoss", "NLLLoss") and n >= 2 and lo == hi and lo in (0.0, 1.0):
        out.append((
            "wrong_loss", "error",
            f"{name} receives exactly {_fmt(lo)} for all {n} values (prediction {ps}): a "
            + ("softmax" if lo == 1.0 else "log_softmax") + " over a dimension of size 1 is a constant, so the "
            "model gets no gradient at all. Fix: for one output use a sigmoid + BCELoss (or no activation + "
            "BCEWithLogitsLoss; no activation for a regression), or softmax / log_softmax over the class dimension "
            "of a layer with one output per class",
        ))
    if name == "CrossEntropyLoss" and len(ps) >= 2 and ps[1] == 1:
        out.append(("wrong_loss", "error", f"CrossEntropyLoss over a single class (pred {ps}) is always 0: use BCEWithLogitsLoss"))
    if name in ("BCEWithLogitsLoss", "BCELoss") and ts is not None:
        tlo, thi = li.get("target_min", 0.0), li.get("target_max", 1.0)
        if tlo < 0 or thi > 1:
            out.append((
                "wrong_loss", "error",
                f"{name} needs targets in [0, 1], got {_fmt(tlo)} to {_fmt(thi)}: class indices need CrossEntropyLoss",
            ))
    if name in REGRESSION_LOSSES and ts is not None:
        ts = tuple(ts)
        if ts != ps:
            try:
                b = tuple(np.broadcast_shapes(ps, ts))
            except ValueError:
                b = None
            if b is not None and b != ps:
                out.append((
                    "wrong_loss", "error",
                    f"{name} broadcasts prediction {ps} against target {ts} to {b}: every prediction is compared with "
                    "every target. Make the shapes equal (e.g. pred.squeeze(-1) or target.unsqueeze(-1))",
                ))
            elif b is not None:
                out.append(("wrong_loss", "warning", f"{name}: prediction {ps} and target {ts} differ in shape (broadcast to {b})"))
        integral = li.get("target_frac_dev", 1.0) == 0 and li.get("target_min", -1.0) >= 0
        tmax = li.get("target_max", 0.0)
        if integral and tmax >= 2 and not out:
            one_output = len(ps) <= 1 or int(np.prod(ps[1:])) == 1
            classes = one_output and tmax <= 100 and str(li.get("target_dtype", "")).startswith(("int", "uint"))
            out.append((
                "wrong_loss", "warning" if classes else "info",
                f"{name} on integer targets {_fmt(li['target_min'])}..{_fmt(tmax)}"
                + (f" ({li.get('target_dtype')}) with a single output per example: these look like class indices, "
                   "which a regression loss treats as ordered distances (class 9 is 'far' from class 0). Use "
                   f"CrossEntropyLoss with {int(tmax) + 1} outputs" if classes
                   else ": if these are class indices, use CrossEntropyLoss with one output per class"),
            ))
    return out


# ------------------------------------------------------------------------------- loss @ init
def expected_init_loss(loss_name: str | None, pred_shape: tuple[int, ...] | None) -> tuple[float, str] | None:
    """Loss of an uninformed prediction (all logits equal) and how it is derived."""
    if loss_name in ("CrossEntropyLoss", "NLLLoss") and pred_shape and len(pred_shape) >= 2 and pred_shape[1] >= 2:
        c = int(pred_shape[1])
        return math.log(c), f"ln({c}) = {math.log(c):.3f} for {c} classes"
    if loss_name in ("BCEWithLogitsLoss", "BCELoss"):
        return math.log(2.0), "ln(2) = 0.693 per binary output"
    return None


def assess_init_loss(loss0: float, ref: float, th: Thresholds) -> tuple[str, float]:
    """``(status, excess in nats)``: ``fail`` above ``ref + init_loss_excess * max(ref, 1)``,
    ``warn`` above half of that margin or below half of ``ref`` (suspiciously good), else ``pass``."""
    excess = loss0 - ref
    margin = th.init_loss_excess * max(ref, 1.0)
    if not math.isfinite(loss0) or excess > margin:
        return "fail", excess
    if excess > margin / 2 or loss0 < ref / 2:
        return "warn", excess
    return "pass", excess

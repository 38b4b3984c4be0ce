"""Extra statistics of the loss's inputs on a sampled step, for the head / loss / target rules
(:mod:`trainscope.diagnostics.rules.headloss`): the targets' mean and standard deviation, how the
prediction sums over the batch dimension (a softmax over the wrong axis), and a histogram of the
classes in the batch.

Everything here runs on the device inside the probe's loss pre-hook on sampled steps only, under
``no_grad``, and returns one flat float tensor plus the names of its entries; the host reads it at
the next flush with the rest of the sampled step (no extra synchronization).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["MAX_CLASSES", "loss_extras", "parse_loss_extras"]

MAX_CLASSES = 1000
"""Class histograms are kept for at most this many classes (a language model's vocabulary is not
a class balance worth reporting)."""


@torch.no_grad()
def loss_extras(pred: Tensor, target: Tensor | None) -> tuple[Tensor, dict[str, Any]]:
    """``(values, meta)``: the entries of ``values`` are named by ``meta["extra_fields"]``, followed
    by ``meta["class_counts"]`` class counts when the batch has a class histogram."""
    pf = pred.detach().float()
    names: list[str] = []
    parts: list[Tensor] = []
    nan = pf.new_full((), float("nan"))
    if pf.dim() >= 2 and pf.shape[0] >= 2:
        names.append("pred_colsum_dev")  # |sum over the batch dimension - 1|: softmax over dim 0
        parts.append((pf.sum(dim=0) - 1.0).abs().mean())
        names.append("pred_col_lse")  # |logsumexp over the batch dimension|: log_softmax over dim 0
        parts.append(torch.logsumexp(pf, dim=0).abs().mean())
    names.append("pred_std")
    parts.append(pf.std(unbiased=False) if pf.numel() > 1 else nan)
    names.append("pred_frac_zero")
    parts.append((pf == 0).float().mean())
    meta: dict[str, Any] = {}
    if target is not None and target.numel():
        tf = target.detach().float()
        names += ["target_mean", "target_std"]
        parts += [tf.mean(), tf.std(unbiased=False) if tf.numel() > 1 else nan]
        counts = _class_counts(pred, target)
        if counts is not None:
            meta["class_counts"] = int(counts.numel()) - 1
            parts.append(counts.float())
    meta["extra_fields"] = names
    flat = torch.cat([p.reshape(-1).float() for p in parts]) if parts else pf.new_zeros(0)
    return flat, meta


def _class_counts(pred: Tensor, target: Tensor) -> Tensor | None:
    """Examples per class, followed by a validity flag (1 / 0, computed on the device so that no
    synchronization is needed): class indices (integer targets, one dimension fewer than the
    prediction), one-hot / multi-hot rows (targets shaped like a ``(N, C)`` prediction; valid when
    every value is 0 or 1), or a binary target of one output (two classes; valid when 0 / 1).
    ``None`` when the shapes fit none of these."""
    if not target.is_floating_point() and target.dim() == pred.dim() - 1 and pred.dim() >= 2:
        c = int(pred.shape[1])
        if 2 <= c <= MAX_CLASSES:
            t = target.reshape(-1).long()
            keep = (t >= 0) & (t < c)  # ignore_index (-100) and the like
            counts = torch.zeros(c, device=t.device, dtype=torch.float32)
            counts.index_add_(0, t.clamp(0, c - 1), keep.float())
            return torch.cat([counts, counts.new_ones(1)])
        return None
    tf = target.detach().float()
    binary = ((tf == 0) | (tf == 1)).all().float().reshape(1)
    if target.shape == pred.shape and pred.dim() == 2 and 2 <= pred.shape[1] <= MAX_CLASSES:
        return torch.cat([tf.sum(dim=0), binary])
    if target.numel() == pred.numel() and (pred.dim() <= 1 or pred.shape[-1] == 1):
        pos = tf.sum().reshape(1)
        return torch.cat([tf.numel() - pos, pos, binary])
    return None


def parse_loss_extras(values: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """The named entries (floats) and ``class_counts`` (a list of floats, only when valid) from
    :func:`loss_extras`."""
    out: dict[str, Any] = {}
    names = list(meta.get("extra_fields") or [])
    vals = [float(x) for x in values]
    for n, v in zip(names, vals, strict=False):
        out[n] = v
    c = int(meta.get("class_counts") or 0)
    if c and len(vals) >= len(names) + c + 1 and vals[len(names) + c] == 1.0:
        out["class_counts"] = vals[len(names) : len(names) + c]
    return out

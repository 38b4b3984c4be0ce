"""Regularization: weight decay / L2, an L1 penalty, gradient clipping by norm or by value.

* ``weight_decay_`` sets ``weight_decay`` in the optimizer's param groups: coupled L2 for SGD / Adam /
  RAdam (added to the gradient), decoupled for AdamW.
* ``l1_`` and ``clip_grad_`` act inside ``optimizer.step()`` (a step pre-hook, :mod:`._control`): the L1
  subgradient ``value * sign(w)`` is added to the gradients first, then clipping bounds the result.
  The probe's gradient statistics are taken after ``step()``, so it records the clipped gradients.
  One L1 setting and one clipping setting per optimizer: applying a new one replaces the previous
  one (undo brings it back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._base import Applied, group_value, opt_keys, set_group_value, validate_params
from ._control import GradPart, controller
from ._spec import action, need_optimizer, needs_optimizer

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["clip_grad_", "l1_", "weight_decay_"]

WD_SCHEMA: dict[str, dict[str, Any]] = {
    "value": {"type": "float", "min": 0.0, "max": 1.0, "default": 1e-4, "log": True, "required": True,
              "help": "weight decay coefficient (0 turns it off)"},
}
L1_SCHEMA: dict[str, dict[str, Any]] = {
    "value": {"type": "float", "min": 0.0, "max": 1.0, "default": 1e-5, "log": True, "required": True,
              "help": "L1 coefficient (0 turns it off)"},
    "include_bias": {"type": "bool", "default": False, "help": "also penalize 1-D parameters (biases, norm weights)"},
}
MAX_NORM_TYPE = 100.0
"""Largest finite p of clip_grad's p-norm: beyond ~100 |g|**p overflows float32 (every gradient
then becomes 0) or the norm saturates (no clipping); use ``inf`` for the largest element."""
CLIP_SCHEMA: dict[str, dict[str, Any]] = {
    "mode": {"type": "choice", "choices": ["norm", "value"], "nullable": True, "default": None,
             "help": "clip the total norm or each element (default: whichever of max_norm / value is given)"},
    "max_norm": {"type": "float", "min": 0.0, "min_open": True, "nullable": True, "default": None, "log": True,
                 "help": "norm mode: clip the total gradient norm to this (default 1.0)"},
    "value": {"type": "float", "min": 0.0, "min_open": True, "nullable": True, "default": None, "log": True,
              "help": "value mode: clip every gradient element to [-value, value]"},
    "norm_type": {"type": "float", "min": 1.0, "max": MAX_NORM_TYPE, "default": 2.0,
                  "help": f"p of the norm (2 = Euclidean), 1 to {MAX_NORM_TYPE:g}; or inf (the largest element)"},
}

def _check(optimizer: Any) -> torch.optim.Optimizer:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return optimizer


def weight_decay_(optimizer: torch.optim.Optimizer, value: float, *, probe: RunContext | None = None) -> Applied:
    """Set the weight decay of every param group to ``value``."""
    opt = _check(optimizer)
    prm = validate_params("weight_decay", WD_SCHEMA, {"value": value})
    missing = [i for i, g in enumerate(opt.param_groups) if "weight_decay" not in g]
    if missing:
        raise ValueError(f"weight_decay: {type(opt).__name__} has no weight_decay setting (groups {missing})")
    saved = [(g, group_value(g, "weight_decay")) for g in opt.param_groups]
    raw = [g["weight_decay"] for g in opt.param_groups]  # undo restores the value as it was (0 stays an int)
    for g, _ in saved:
        set_group_value(g, "weight_decay", prm["value"])

    def undo() -> None:
        for (g, v), r in zip(saved, raw, strict=True):
            if isinstance(g["weight_decay"], Tensor) or isinstance(r, Tensor):
                set_group_value(g, "weight_decay", v)
            else:
                g["weight_decay"] = r

    kind = "decoupled" if type(opt).__name__ == "AdamW" or (opt.param_groups[0].get("decoupled_weight_decay")) else "L2, coupled"
    return Applied("weight_decay", prm, undo, message=f"weight decay {saved[0][1]:g} -> {prm['value']:g} ({kind})",
                   details={"before": [v for _, v in saved]}, probe=probe, touches=opt_keys(opt, "weight_decay"))


def _swap_part(opt: torch.optim.Optimizer, kind: str, part: GradPart | None, name: str, prm: dict[str, Any],
               msg: str, probe: RunContext | None) -> Applied:
    ctl = controller(opt)
    assert ctl is not None
    prev = ctl.set_grad_part(part, kind)

    def undo() -> None:
        if ctl.grad_parts.get(kind) is part:
            ctl.set_grad_part(prev, kind)

    applied = Applied(name, prm, undo, message=msg, probe=probe, touches=opt_keys(opt, kind))
    applied.result = part
    return applied


def l1_(optimizer: torch.optim.Optimizer, value: float, *, include_bias: bool = False, probe: RunContext | None = None) -> Applied:
    """Add an L1 penalty ``value * sum|w|`` (its subgradient, inside ``step()``); 0 removes it."""
    opt = _check(optimizer)
    prm = validate_params("l1", L1_SCHEMA, {"value": value, "include_bias": include_bias})
    lam, bias = prm["value"], prm["include_bias"]

    def fn(params: list[Tensor]) -> None:
        ps = [p for p in params if bias or p.dim() >= 2]
        if ps:
            grads = [p.grad for p in ps]
            torch._foreach_add_(grads, torch._foreach_sign([p.detach() for p in ps]), alpha=lam)  # type: ignore[arg-type]

    part = GradPart("l1", fn, probe, priority=0) if lam > 0 else None
    return _swap_part(opt, "l1", part, "l1", prm, f"L1 penalty {lam:g}" if lam > 0 else "L1 penalty off", probe)


def clip_params(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate clipping parameters and settle the mode (exactly one of norm / value)."""
    raw = dict(raw)
    nt = raw.get("norm_type")
    inf_norm = (isinstance(nt, str) and nt.strip().lower() in ("inf", "infinity")) or (
        isinstance(nt, float) and nt == float("inf"))
    if inf_norm:
        raw["norm_type"] = None
    elif isinstance(nt, (int, float)) and not isinstance(nt, bool) and nt > MAX_NORM_TYPE:
        raise ValueError(
            f"clip_grad: norm_type must be between 1 and {MAX_NORM_TYPE:g}, or inf; got {nt:g}: a p-norm with so "
            "large a p overflows (every gradient would become 0) or saturates (nothing would be clipped); "
            "norm_type='inf' clips by the largest element"
        )
    prm = validate_params("clip_grad", CLIP_SCHEMA, raw)
    if inf_norm:
        prm["norm_type"] = float("inf")
    mode = prm["mode"]
    if mode is None:
        if prm["max_norm"] is not None and prm["value"] is not None:
            raise ValueError("clip_grad: give max_norm= (clip the total norm) or value= (clip each element), not both")
        mode = "value" if prm["value"] is not None else "norm"
    if mode == "norm" and prm["max_norm"] is None:
        prm["max_norm"] = 1.0
    if mode == "value" and prm["value"] is None:
        raise ValueError("clip_grad: value mode needs value= (e.g. 0.5: every gradient element is clipped to ±0.5)")
    prm["mode"] = mode
    if mode == "norm":
        prm["value"] = None
    else:
        prm["max_norm"] = None
    return prm


def clip_grad_(optimizer: torch.optim.Optimizer, max_norm: float | None = None, *, value: float | None = None,
               mode: str | None = None, norm_type: float = 2.0, probe: RunContext | None = None) -> Applied:
    """Clip gradients inside every ``step()``: total norm to ``max_norm``, or elements to ``±value``.

    ``applied.result.last`` is the total norm before clipping at the last step (a tensor, no sync).
    """
    opt = _check(optimizer)
    prm = clip_params({"max_norm": max_norm, "value": value, "mode": mode, "norm_type": norm_type})
    if prm["mode"] == "norm":
        mx, nt = prm["max_norm"], prm["norm_type"]

        def fn(params: list[Tensor]) -> Any:
            return torch.nn.utils.clip_grad_norm_(params, mx, norm_type=nt)

        msg = f"gradient norm clipped to {mx:g}"
    else:
        v = prm["value"]

        def fn(params: list[Tensor]) -> Any:
            torch.nn.utils.clip_grad_value_(params, v)

        msg = f"gradients clipped to ±{v:g}"
    return _swap_part(opt, "clip", GradPart("clip", fn, probe, priority=10), "clip_grad", prm, msg, probe)


# ---------------------------------------------------------------------------- the whitelist entries
@action("weight_decay", label="Weight decay", category="regularization", schema=WD_SCHEMA, order=50,
        description="Set weight decay / L2 in every param group.", check=needs_optimizer("weight_decay"))
def _run_weight_decay(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return weight_decay_(need_optimizer(ctx, "weight_decay"), p["value"], probe=ctx)


@action("l1", label="L1 penalty", category="regularization", schema=L1_SCHEMA, order=60,
        description="Add an L1 penalty on the weights (inside optimizer.step()).", check=needs_optimizer("l1"))
def _run_l1(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return l1_(need_optimizer(ctx, "l1"), p["value"], include_bias=p["include_bias"], probe=ctx)


@action("clip_grad", label="Clip gradients", category="regularization", schema=CLIP_SCHEMA, order=70,
        description="Clip gradients by total norm or by value at every step.", check=needs_optimizer("clip_grad"),
        clean=clip_params)
def _run_clip_grad(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return clip_grad_(need_optimizer(ctx, "clip_grad"), p["max_norm"], value=p["value"], mode=p["mode"],
                      norm_type=p["norm_type"], probe=ctx)

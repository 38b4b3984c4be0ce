"""``rescale_targets``: a live, undoable ``(y - low) / (high - low)`` on the targets the loss module
receives -- binary labels stored as two other values (1 / 2) mapped to 0 / 1, or bounded
regression targets (in [0, 10]) mapped into the [0, 1] that binary cross-entropy needs.

A forward pre-hook on the probe's loss module (the ``nn.Module`` the loop calls) replaces its
target by the mapped one, clamped to [0, 1] (a later batch slightly beyond the measured range
stays a valid BCE target), on every call while applied; the probe records the mapped targets.
The model is unchanged: with a sigmoid output (or BCE-with-logits) its prediction estimates the
mapped target, so a regression prediction reads back as ``low + (high - low) * sigmoid(output)``
(the message says so).  ``low`` / ``high`` default to the smallest and largest target of the
probe's recent training batches.  Undo removes the hook.
"""

from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ._base import Applied, owner_alive, report_error, validate_params
from ._data_reg_hooks import OwnedHook
from ._spec import action

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["rescale_targets_"]

BCE_LOSSES = ("BCEWithLogitsLoss", "BCELoss")

RESCALE_SCHEMA: dict[str, dict[str, Any]] = {
    "low": {"type": "float", "nullable": True, "default": None, "min": -1e30, "max": 1e30,
            "help": "the target value that becomes 0 (default: the smallest target of the recent batches)"},
    "high": {"type": "float", "nullable": True, "default": None, "min": -1e30, "max": 1e30,
             "help": "the target value that becomes 1 (default: the largest target of the recent batches)"},
}


class _TargetMap(OwnedHook):
    def __init__(self, loss: nn.Module, owner: RunContext | None, low: float, high: float) -> None:
        super().__init__(owner)
        self.loss = weakref.ref(loss)
        self.low, self.high = low, high
        self.seen: set[str] = set()

    def install(self) -> None:
        m = self.loss()
        if m is not None:
            self._install(m.register_forward_pre_hook, prepend=True)

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> Any:
        if not owner_alive(self.owner):
            self.remove()
            return None
        try:
            if len(args) < 2 or not isinstance(args[1], Tensor):
                return None
            pred, y = args[0], args[1]
            dtype = pred.dtype if isinstance(pred, Tensor) and pred.is_floating_point() else torch.float32
            t = ((y.to(dtype) - self.low) / (self.high - self.low)).clamp(0.0, 1.0)
            return (pred, t, *args[2:])
        except Exception as e:
            report_error(self.owner, "rescale_targets", e, self.seen)
            return None


_MAPS: weakref.WeakKeyDictionary[nn.Module, _TargetMap] = weakref.WeakKeyDictionary()


def _plan(loss_fn: Any, low: float | None, high: float | None, probe: RunContext | None) -> tuple[nn.Module, float, float]:
    if not isinstance(loss_fn, nn.Module):
        raise ValueError("rescale_targets needs the loss module the training loop calls (Probe(..., loss_fn=...)); a loss "
                         "computed with a function cannot be changed live: map the targets in the code")
    if type(loss_fn).__name__ not in BCE_LOSSES:
        raise ValueError(f"rescale_targets is defined for binary cross-entropy ({', '.join(BCE_LOSSES)}), whose targets "
                         f"must lie in [0, 1]; the loss is {type(loss_fn).__name__}")
    active = _MAPS.get(loss_fn)
    if active is not None and active.installed:
        raise ValueError("rescale_targets is already applied to this loss; undo it first")
    if low is None or high is None:
        ts = [b.target for b in (probe.recent_batches if probe is not None else ()) if isinstance(b.target, Tensor)]
        if not ts:
            raise ValueError("rescale_targets: no training batch with targets seen yet (train a step first), or give "
                             "low= and high=")
        y = torch.cat([t.detach().reshape(-1).double().cpu() for t in ts])
        y = y[torch.isfinite(y)]
        if y.numel() == 0:
            raise ValueError("rescale_targets: no finite target seen; give low= and high=")
        low = float(y.min()) if low is None else low
        high = float(y.max()) if high is None else high
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(f"rescale_targets: high must be larger than low (got low {low:g}, high {high:g}); constant "
                         "targets cannot be mapped onto [0, 1]")
    return loss_fn, float(low), float(high)


def rescale_targets_(loss_fn: nn.Module, low: float | None = None, high: float | None = None, *,
                     probe: RunContext | None = None) -> Applied:
    """Make ``loss_fn`` receive ``(y - low) / (high - low)`` (clamped to [0, 1]) as its target (see
    the module docstring).  Undo restores the user's targets."""
    p = validate_params("rescale_targets", RESCALE_SCHEMA, {"low": low, "high": high})
    mod, lo, hi = _plan(loss_fn, p["low"], p["high"], probe)
    fix = _MAPS[mod] = _TargetMap(mod, probe, lo, hi)
    fix.install()
    binary = hi - lo == 1.0 and float(lo).is_integer()
    msg = (f"{type(mod).__name__} now receives the labels {lo:g} / {hi:g} as 0 / 1" if binary else
           f"{type(mod).__name__} now receives the targets mapped from [{lo:g}, {hi:g}] onto [0, 1]: read a prediction "
           f"back as {lo:g} + {hi - lo:g} * sigmoid(output)")
    return Applied("rescale_targets", {"low": lo, "high": hi}, fix.remove, probe=probe, message=msg,
                   details={"low": lo, "high": hi, "loss": type(mod).__name__}, touches={f"targetmap{id(mod)}"})


def _check(ctx: RunContext, p: dict[str, Any]) -> None:
    _plan(ctx.loss_fn, p["low"], p["high"], ctx)


@action("rescale_targets", label="Map the targets onto [0, 1]", category="head", schema=RESCALE_SCHEMA, order=184,
        description="Binary labels stored as two other values (1 / 2), or bounded regression targets, fed to a binary "
                    "cross-entropy: (y - low) / (high - low) before the loss; undo removes it.", check=_check)
def _run_rescale_targets(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return rescale_targets_(ctx.loss_fn, p["low"], p["high"], probe=ctx)

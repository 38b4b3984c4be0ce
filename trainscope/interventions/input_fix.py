"""``standardize_inputs``: a live, undoable ``(x - mean) / std`` on the model's inputs (with
``targets=True`` also :func:`~trainscope.interventions.head_fix.standardize_targets_` in the same
click) -- the fix ``unnormalized_inputs`` offers first.  See :mod:`trainscope.interventions.head_fix`
for the other head / loss / target fixes."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ._base import Applied, opt_state_keys, owner_alive, report_error
from ._data_reg_hooks import OwnedHook, _note
from ._spec import action
from .head_fix import _install_targets, _plan_targets

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["standardize_inputs_"]


# ---------------------------------------------------------------------------- standardize_inputs
INPUTS_SCHEMA: dict[str, dict[str, Any]] = {
    "targets": {"type": "bool", "default": False,
                "help": "also standardize the regression targets (standardize_targets, with the same click)"},
}


class _InputFix(OwnedHook):
    """``x -> (x - mean) / std`` on the model's first floating tensor argument (a forward pre-hook,
    installed while applied), with the statistics measured when it was applied."""

    def __init__(self, model: nn.Module, owner: RunContext | None, mean: Tensor, std: Tensor, shape: tuple[int, ...]) -> None:
        super().__init__(owner)
        self.model = weakref.ref(model)
        self.mean, self.std, self.shape = mean, std, shape
        self.seen: set[str] = set()

    def install(self) -> None:
        m = self.model()
        if m is not None:
            self._install(m.register_forward_pre_hook, with_kwargs=True)

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not owner_alive(self.owner):
            self.remove()
            return None
        try:
            if not args or not isinstance(args[0], Tensor) or not args[0].is_floating_point():
                return None
            x = args[0]
            if tuple(x.shape[1:]) != self.shape:
                _note(self.owner, "standardize_inputs", f"standardize_inputs: an input of shape {tuple(x.shape)} does "
                      f"not match the (N, {', '.join(map(str, self.shape))}) batches it was measured on; left unchanged",
                      self.seen, "shape")
                return None
            m, s = self.mean.to(x.device, x.dtype), self.std.to(x.device, x.dtype)
            return ((x - m) / s, *args[1:]), kwargs
        except Exception as e:
            report_error(self.owner, "standardize_inputs", e, self.seen)
            return None


_INPUT_FIXES: weakref.WeakKeyDictionary[nn.Module, _InputFix] = weakref.WeakKeyDictionary()


def _input_stats(probe: RunContext | None, model: nn.Module) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    active = _INPUT_FIXES.get(model)
    if active is not None and active.installed:
        raise ValueError("standardize_inputs is already applied to this model (its statistics are of the raw inputs); "
                         "undo it first to measure again")
    batches = list(probe.recent_batches if probe is not None else ())
    xs = [b.args[0] for b in batches if b.args and isinstance(b.args[0], Tensor)]
    if not batches:
        raise ValueError("standardize_inputs: no training batch seen yet (train a step first)")
    if not xs:
        raise ValueError("standardize_inputs: the model is not called with a tensor as its first positional argument "
                         "(keyword inputs?); it standardizes that tensor: standardize the inputs in the data pipeline")
    if not all(x.is_floating_point() for x in xs):
        raise ValueError("standardize_inputs: the model's inputs are not floating point (token ids?); it is defined for "
                         "continuous inputs")
    shape = tuple(xs[-1].shape[1:])
    xs = [x for x in xs if tuple(x.shape[1:]) == shape]
    x = torch.cat([v.detach().double().cpu() for v in xs])
    if x.shape[0] < 2 or not bool(torch.isfinite(x).all()):
        raise ValueError("standardize_inputs: fewer than 2 examples, or non-finite inputs, in the recent batches")
    if x.dim() == 2:  # (N, features): per feature
        mean, std = x.mean(0), x.std(0)
    elif x.dim() in (4, 5):  # images / volumes: per channel
        dims = (0, *range(2, x.dim()))
        mean, std = x.mean(dims).view(-1, *[1] * (x.dim() - 2)), x.std(dims).view(-1, *[1] * (x.dim() - 2))
    else:
        mean, std = x.mean(), x.std()
    varies = std > 1e-12 * (1 + mean.abs())
    # a feature constant in the measured batches (an always-zero pixel in a small sample) is scaled
    # like a typical feature (the median std of the others), not by 1: in raw units a value it
    # takes later (validation, a rarer example) would otherwise pass at its raw scale, e.g. 255
    # among standardized features of size ~1
    typical = std[varies].median() if bool(varies.any()) else torch.ones((), dtype=std.dtype)
    std = torch.where(varies, std, typical.expand_as(std))
    return mean.float(), std.float(), shape


def _clear_state(optimizer: Any) -> int:
    """Forget the optimizer's per-parameter state (moments, momentum): it measured gradients of the
    old input scale, and Adam would keep the old scale's step sizes for ~1/(1 - beta2) steps.
    torch's optimizers rebuild it lazily at the next step.  Returns how many parameters had state."""
    if optimizer is None:
        return 0
    n = len(optimizer.state)
    optimizer.state.clear()
    return n


def standardize_inputs_(model: nn.Module, *, targets: bool = False, loss_fn: nn.Module | None = None,
                        probe: RunContext | None = None) -> Applied:
    """Standardize the model's inputs live: ``(x - mean) / std`` per feature (2-D inputs), per
    channel (images) or overall, with the statistics of the probe's recent training batches, on
    every call (training and evaluation: the model's input convention changes, like a fixed
    normalization layer in front).  The optimizer's per-parameter state (moments, momentum) is
    cleared, at apply and at undo: it measured the gradients of the other input scale.  Undo
    removes the hook."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"standardize_inputs needs the model (an nn.Module), got {type(model).__name__}")
    mean, std, shape = _input_stats(probe, model)
    if targets:
        _plan_targets(model, loss_fn, None, None, probe)  # refused before anything changes
    fix = _INPUT_FIXES[model] = _InputFix(model, probe, mean, std, shape)
    opt = probe.optimizer if probe is not None else None
    fix.install()
    tgt: Callable[[], None] | None = None
    extra: dict[str, Any] = {}
    if targets:
        try:
            tmod, power, mu, sd = _plan_targets(model, loss_fn, None, None, probe)
            tgt = _install_targets(model, tmod, power, mu, sd, probe)
            extra = {"targets_mean": mu, "targets_std": sd}
        except BaseException:
            fix.remove()
            raise
    n_state = _clear_state(opt)

    def undo() -> None:
        if tgt is not None:
            tgt()
        fix.remove()
        _clear_state(opt)

    m = mean.reshape(-1)
    return Applied("standardize_inputs", {"targets": targets}, undo, probe=probe,
                   message=(f"the model's inputs are now standardized ({m.numel()} statistic(s); mean "
                            f"{float(m.abs().max()):.4g} at most in size, std {float(std.min()):.4g} to {float(std.max()):.4g})"),
                   details={"features": int(m.numel()), "max_abs_mean": float(m.abs().max()),
                            "std_min": float(std.min()), "std_max": float(std.max()), "optimizer_state_reset": n_state, **extra},
                   touches={f"inputfix{id(model)}", *(opt_state_keys(opt) if opt is not None else ()),
                            *((f"headout{id(model)}", f"lossfix{id(loss_fn)}") if targets else ())})


def _check_inputs(ctx: RunContext, p: dict[str, Any]) -> None:
    if not isinstance(ctx.model, nn.Module):
        raise TypeError("standardize_inputs needs the model (an nn.Module)")
    _input_stats(ctx, ctx.model)
    if p["targets"]:
        _plan_targets(ctx.model, ctx.loss_fn, None, None, ctx)


@action("standardize_inputs", label="Standardize the inputs", category="head", schema=INPUTS_SCHEMA, order=183,
        description="Inputs far from zero mean / unit scale: (x - mean) / std in front of the model (statistics of "
                    "the recent training batches); undo removes it.", check=_check_inputs)
def _run_standardize_inputs(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return standardize_inputs_(ctx.model, targets=p["targets"], loss_fn=ctx.loss_fn, probe=ctx)

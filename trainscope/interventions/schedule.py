"""Learning rate now (``set_lr_``, ``scale_lr_``) and live schedules (``set_schedule_``,
``one_cycle_``).

A live schedule sets each param group's learning rate inside ``optimizer.step()`` (a step
*pre*-hook, see :mod:`._control`): it runs after the user's own ``scheduler.step()`` of the previous
iteration, so **a trainscope schedule takes precedence** over a torch scheduler while it is active.
Time ``t`` counts the optimizer steps taken since the schedule was applied.  Each group keeps its
ratio to the others (discriminative learning rates survive).

Kinds (``lr0`` = the group's learning rate when the schedule is applied, or ``lr=``):

* ``constant``: ``lr0``
* ``step``: ``lr0 * gamma ** (t // step_size)``
* ``exponential``: ``lr0 * gamma ** t``
* ``inverse_time`` (1/t): ``lr0 / (1 + decay * t)``
* ``plateau``: ``lr0`` times ``factor`` each time the monitored metric (running median of
  ``smoothing`` values) has not improved for ``patience`` observations, never below ``min_lr``
* ``cosine_restarts`` (SGDR, Loshchilov & Hutter): cycles of ``T_0, T_0*T_mult, ...`` steps,
  ``eta_min + (lr0 - eta_min) * (1 + cos(pi * t_cur / T_i)) / 2``
* ``one_cycle`` (fastai ``fit_one_cycle``): cosine from ``max_lr/div_factor`` up to ``max_lr`` over
  ``pct_start`` of ``total_steps``, then down to ``max_lr/final_div_factor``; momentum (SGD
  ``momentum`` or Adam ``beta1``) cycles the opposite way between ``max_momentum`` and
  ``base_momentum``.  After ``total_steps`` the final values are held.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ._base import (
    Applied,
    as_choice,
    group_value,
    momentum_key,
    opt_keys,
    set_group_value,
    validate_params,
)
from ._control import controller
from ._schedules import LiveSchedule, sgdr_position
from ._spec import action, need_optimizer, needs_optimizer

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["LiveSchedule", "one_cycle_", "scale_lr_", "set_lr_", "set_schedule_", "sgdr_position"]

KINDS = ("constant", "step", "exponential", "inverse_time", "plateau", "cosine_restarts", "one_cycle")
MAX_STEPS = 10**9
"""Upper bound of step counts (schedule lengths): far beyond any run, well inside float range."""
LR_STATE = ("lr", "momentum", "schedule")
"""What a learning-rate action's undo puts back (its capture restores lr, betas / momentum and the schedule)."""
ALIASES = {"sgdr": "cosine_restarts", "1/t": "inverse_time", "reduce_on_plateau": "plateau", "onecycle": "one_cycle"}

SCHEDULE_SCHEMA: dict[str, dict[str, Any]] = {
    "kind": {"type": "choice", "choices": list(KINDS), "default": "cosine_restarts", "help": "schedule shape"},
    "lr": {"type": "float", "min": 0.0, "min_open": True, "max": 1e3, "log": True, "nullable": True,
           "help": "base learning rate (default: the current one)"},
    "step_size": {"type": "int", "min": 1, "max": MAX_STEPS, "default": 1000, "help": "step: steps between decays"},
    "gamma": {"type": "float", "min": 0.0, "min_open": True, "max": 1.0, "default": 0.1,
              "help": "step: decay factor; exponential: per-step factor (e.g. 0.999)"},
    "decay": {"type": "float", "min": 0.0, "min_open": True, "max": 1e3, "default": 1e-3, "log": True, "help": "inverse_time: lr0/(1+decay*t)"},
    "monitor": {"type": "str", "default": "val_loss", "help": "plateau: scalar to watch (val_loss, loss, ...)"},
    "factor": {"type": "float", "min": 0.0, "min_open": True, "max": 1.0, "max_open": True, "default": 0.1,
               "help": "plateau: multiply the lr by this on a plateau"},
    "patience": {"type": "int", "min": 1, "max": 100_000, "default": 5, "help": "plateau: observations without improvement"},
    "smoothing": {"type": "int", "min": 1, "max": 1000, "default": 3, "help": "plateau: running-median window"},
    "min_delta": {"type": "float", "min": 0.0, "max": 1e6, "default": 1e-4, "help": "plateau: smallest improvement"},
    "cooldown": {"type": "int", "min": 0, "max": 100_000, "default": 0, "help": "plateau: observations to wait after a reduction"},
    "min_lr": {"type": "float", "min": 0.0, "max": 1e3, "default": 0.0,
               "help": "plateau: lower bound (below the learning rate of every param group)"},
    "T_0": {"type": "int", "min": 1, "max": MAX_STEPS, "default": 1000, "help": "cosine_restarts: steps of the first cycle"},
    "T_mult": {"type": "int", "min": 1, "max": 10, "default": 1, "help": "cosine_restarts: cycle length multiplier"},
    "eta_min": {"type": "float", "min": 0.0, "max": 1e3, "default": 0.0,
                "help": "cosine_restarts: lowest lr (below the learning rate of every param group)"},
    "max_lr": {"type": "float", "min": 0.0, "min_open": True, "max": 1e3, "log": True, "nullable": True,
               "help": "one_cycle: peak lr (default: the current lr)"},
    "total_steps": {"type": "int", "min": 2, "max": MAX_STEPS, "default": 1000, "help": "one_cycle: length of the cycle in steps"},
    "pct_start": {"type": "float", "min": 0.0, "max": 1.0, "min_open": True, "max_open": True, "default": 0.25,
                  "help": "one_cycle: fraction of the cycle spent warming up"},
    "div_factor": {"type": "float", "min": 1.0, "max": 1e6, "default": 25.0, "help": "one_cycle: start at max_lr/div_factor"},
    "final_div_factor": {"type": "float", "min": 1.0, "max": 1e12, "default": 1e5, "log": True, "help": "one_cycle: end at max_lr/final_div_factor"},
    "cycle_momentum": {"type": "bool", "default": True, "help": "one_cycle: cycle momentum / beta1 too"},
    "base_momentum": {"type": "float", "min": 0.0, "max": 1.0, "max_open": True, "default": 0.85, "help": "one_cycle: momentum at the peak lr"},
    "max_momentum": {"type": "float", "min": 0.0, "max": 1.0, "max_open": True, "default": 0.95, "help": "one_cycle: momentum at the ends"},
}
ONE_CYCLE_SCHEMA = {k: SCHEDULE_SCHEMA[k] for k in (
    "max_lr", "total_steps", "pct_start", "div_factor", "final_div_factor", "cycle_momentum", "base_momentum", "max_momentum")}
SET_LR_SCHEMA = {"lr": {"type": "float", "min": 0.0, "min_open": True, "max": 1e3, "log": True, "required": True,
                        "default": 1e-3, "help": "new learning rate (other param groups keep their ratio)"}}
SCALE_LR_SCHEMA = {"factor": {"type": "float", "min": 0.0, "min_open": True, "max": 1e3, "log": True, "required": True,
                              "default": 0.5, "help": "multiply every group's learning rate by this"}}


# ---------------------------------------------------------------------------- public functions
def _check_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not all("lr" in g for g in optimizer.param_groups):
        raise ValueError("every param group needs an 'lr' entry to control the learning rate")
    return optimizer


def _lr_capture(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    saved = [(g, group_value(g, "lr"), g.get("betas"), g.get("momentum")) for g in optimizer.param_groups]

    def restore() -> None:
        for g, lr, betas, mom in saved:
            set_group_value(g, "lr", lr)
            if betas is not None:
                g["betas"] = betas
            if mom is not None and not isinstance(mom, torch.Tensor):
                g["momentum"] = mom

    return restore


def set_lr_(optimizer: torch.optim.Optimizer, lr: float, *, probe: RunContext | None = None) -> Applied:
    """Set the learning rate now (group 0 gets ``lr``, other groups keep their ratio to it).

    With an active trainscope schedule the schedule is rescaled so that it continues from ``lr``.
    """
    opt = _check_optimizer(optimizer)
    p = validate_params("set_lr", SET_LR_SCHEMA, {"lr": lr})
    cur0 = group_value(opt.param_groups[0], "lr")
    return _rescale(opt, p["lr"] / cur0 if cur0 > 0 else None, p["lr"], "set_lr", p, probe)


def scale_lr_(optimizer: torch.optim.Optimizer, factor: float, *, probe: RunContext | None = None) -> Applied:
    """Multiply every group's learning rate (and an active schedule) by ``factor``."""
    opt = _check_optimizer(optimizer)
    p = validate_params("scale_lr", SCALE_LR_SCHEMA, {"factor": factor})
    return _rescale(opt, p["factor"], None, "scale_lr", p, probe)


def _rescale(opt: torch.optim.Optimizer, factor: float | None, lr: float | None, name: str,
             params: dict[str, Any], probe: RunContext | None) -> Applied:
    restore = _lr_capture(opt)
    before = [group_value(g, "lr") for g in opt.param_groups]
    ctl = controller(opt, create=False)
    sched = ctl.schedule if ctl is not None else None
    old_scale = sched.scale if sched is not None else None
    try:
        for i, (g, b) in enumerate(zip(opt.param_groups, before, strict=True)):
            if lr is not None and (i == 0 or factor is None):
                set_group_value(g, "lr", lr)
            else:
                set_group_value(g, "lr", b * (factor if factor is not None else 1.0))
        if sched is not None and factor is not None:
            sched.scale *= factor
    except BaseException:
        restore()
        raise
    after = [group_value(g, "lr") for g in opt.param_groups]

    def undo() -> None:
        restore()
        if sched is not None and old_scale is not None:
            sched.scale = old_scale

    msg = f"learning rate {before[0]:.3g} -> {after[0]:.3g}"
    if sched is not None:
        msg += f" (the active {sched.kind} schedule is rescaled)"
    if ctl is not None and ctl.freezes:
        msg += "; note: an early stop holds the learning rate at 0 until it is undone"
    return Applied(name, params, undo, message=msg, details={"lr_before": before, "lr_after": after}, probe=probe,
                   touches=opt_keys(opt, *LR_STATE))


def set_schedule_(optimizer: torch.optim.Optimizer, kind: str, *, probe: RunContext | None = None, **options: Any) -> Applied:
    """Switch the learning-rate schedule live (see the module docstring for the kinds).

    Returns an :class:`Applied` whose ``result`` is the :class:`LiveSchedule`
    (``applied.result.observe(value)`` feeds a ``plateau`` schedule when there is no probe).
    Undo restores the previous schedule (if any) and the learning rates of the moment it was applied.
    """
    opt = _check_optimizer(optimizer)
    kind = ALIASES.get(kind, kind) if isinstance(kind, str) else kind
    as_choice("set_schedule: kind", kind, KINDS)
    p = validate_params("set_schedule", SCHEDULE_SCHEMA, {"kind": kind, **options})
    check_floor(opt, p, "set_schedule")
    return _install(opt, p, probe, "set_schedule")


def start_lrs(opt: torch.optim.Optimizer, lr: float | None) -> list[float]:
    """The learning rate of every param group when a schedule starts (``lr`` for group 0, the
    others keeping their ratio), as :class:`LiveSchedule` computes its base."""
    lrs = [group_value(g, "lr") for g in opt.param_groups]
    if lr is None:
        return lrs
    return [lr * (x / lrs[0]) if lrs[0] > 0 else lr for x in lrs]


def check_floor(opt: torch.optim.Optimizer, p: dict[str, Any], action: str) -> None:
    """``eta_min`` (cosine restarts) / ``min_lr`` (plateau) must stay below the learning rate of
    every param group: above it the "floor" would *raise* the learning rate (a typo such as 1e6 for
    1e-6 took the lr to 2e5).  Raises ``ValueError`` saying so."""
    kind = p.get("kind")
    key = {"cosine_restarts": "eta_min", "plateau": "min_lr"}.get(str(kind))
    floor = p.get(key) if key else None
    if key is None or floor is None or floor <= 0:
        return
    lrs = start_lrs(opt, p.get("lr"))
    low = min(lrs) if lrs else 0.0
    if floor >= low:
        raise ValueError(
            f"{action}: {key} ({floor:g}) must be below the learning rate of every param group (the lowest is "
            f"{low:.3g}): a floor above the learning rate would raise it, not bound it from below; "
            f"e.g. {key}={low / 100:.3g}"
        )


def one_cycle_(optimizer: torch.optim.Optimizer, max_lr: float | None = None, total_steps: int = 1000, *,
               probe: RunContext | None = None, **options: Any) -> Applied:
    """Start a one-cycle schedule (fastai ``fit_one_cycle``: lr and momentum cycling) now."""
    opt = _check_optimizer(optimizer)
    p = validate_params("one_cycle", ONE_CYCLE_SCHEMA, {"max_lr": max_lr, "total_steps": total_steps, **options})
    return _install(opt, {**p, "kind": "one_cycle"}, probe, "one_cycle")


def _install(opt: torch.optim.Optimizer, p: dict[str, Any], probe: RunContext | None, name: str, *,
             record_params: dict[str, Any] | None = None, message: str | None = None) -> Applied:
    kind = p["kind"]
    if kind == "one_cycle":
        if p["base_momentum"] > p["max_momentum"]:
            raise ValueError("one_cycle: base_momentum must be <= max_momentum (momentum is lowest at the peak lr)")
        if p["cycle_momentum"] and not any(momentum_key(g) for g in opt.param_groups):
            p["cycle_momentum"] = False
    check_floor(opt, p, name)
    opts = {k: v for k, v in p.items() if k != "kind"}
    restore = _lr_capture(opt)
    ctl = controller(opt)
    assert ctl is not None
    prev = ctl.schedule
    sched = LiveSchedule(kind, opts, opt, probe)
    try:
        lrs = sched.lrs_at(0)  # computed before anything changes: a schedule that cannot start is refused
        if not all(math.isfinite(x) and x >= 0 for x in lrs):
            raise ValueError(f"{name}: the schedule would start at learning rate(s) {lrs}; check its parameters")
        ctl.set_schedule(sched)
        for g, lr in zip(opt.param_groups, lrs, strict=False):
            set_group_value(g, "lr", lr)  # visible at once; the hook re-applies it at the step
    except BaseException:  # all or nothing: the previous schedule and learning rates come back
        if ctl.schedule is not prev:
            ctl.set_schedule(prev)
        restore()
        sched.detach_owner()
        raise

    def undo() -> None:
        sched.detach_owner()
        if ctl.schedule is sched:
            ctl.set_schedule(prev)
        restore()

    lr0 = sched.lrs_at(0)[0]
    msg = message or f"{kind} schedule from step {probe.step_count if probe else 0} (lr now {lr0:.3g})"
    applied = Applied(name, record_params if record_params is not None else p, undo, message=msg,
                      details={"schedule": kind, "lr_start": lr0}, probe=probe, touches=opt_keys(opt, *LR_STATE))
    applied.result = sched
    return applied


# ---------------------------------------------------------------------------- the whitelist entries
def check_schedule(action: str) -> Callable[[RunContext, dict[str, Any]], None]:
    """The ``check`` of an action that installs a schedule (``snapshot_ensemble`` installs SGDR)."""

    def check(ctx: RunContext, p: dict[str, Any]) -> None:
        opt = need_optimizer(ctx, action)
        check_floor(opt, {"kind": "cosine_restarts", **p} if action == "snapshot_ensemble" else p, action)

    return check


def _check_one_cycle(ctx: RunContext, p: dict[str, Any]) -> None:
    need_optimizer(ctx, "one_cycle")
    if p["base_momentum"] > p["max_momentum"]:
        raise ValueError("one_cycle: base_momentum must be <= max_momentum")


@action("set_lr", label="Set learning rate", category="lr", schema=SET_LR_SCHEMA, order=80,
        description="Set the learning rate now (group ratios kept).", check=needs_optimizer("set_lr"))
def _run_set_lr(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return set_lr_(need_optimizer(ctx, "set_lr"), p["lr"], probe=ctx)


@action("scale_lr", label="Scale learning rate", category="lr", schema=SCALE_LR_SCHEMA, order=90,
        description="Multiply the learning rate (and an active schedule).", check=needs_optimizer("scale_lr"))
def _run_scale_lr(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return scale_lr_(need_optimizer(ctx, "scale_lr"), p["factor"], probe=ctx)


@action("set_schedule", label="LR schedule", category="lr", schema=SCHEDULE_SCHEMA, order=100,
        description=f"Switch the learning-rate schedule live ({', '.join(KINDS)}).", check=check_schedule("set_schedule"))
def _run_set_schedule(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return set_schedule_(need_optimizer(ctx, "set_schedule"), p.pop("kind"), probe=ctx, **p)


@action("one_cycle", label="One-cycle", category="lr", schema=ONE_CYCLE_SCHEMA, order=110,
        description="Start a one-cycle schedule (lr and momentum cycling) now.", check=_check_one_cycle)
def _run_one_cycle(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return one_cycle_(need_optimizer(ctx, "one_cycle"), p.pop("max_lr"), p.pop("total_steps"), probe=ctx, **p)

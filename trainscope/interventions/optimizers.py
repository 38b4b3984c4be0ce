"""Switch the optimizer live (SGD with momentum / Nesterov, Adam, AdamW, RAdam, Lookahead, Ranger),
and trainscope's own :class:`Lookahead` wrapper (it is not in ``torch.optim``).

**The optimizer object stays the same.**  The training loop holds a reference to it and calls
``optimizer.step()`` / ``zero_grad()``; the probe registered its step hooks on it.  So
``switch_optimizer_`` builds the new optimizer on the same parameters, then moves it *into* the
existing object: ``__class__`` and ``__dict__`` are replaced, except the step / state-dict hook
tables (the probe's and trainscope's hooks keep working) and the user's own attributes.  An
active trainscope schedule keeps running within the same family (rescaled to continue from
``lr=`` when given) and is stopped on a family change (its learning rates were meant for the other
family; undo brings it back).  A torch LR
scheduler attached to the optimizer keeps working too (its ``step`` wrapper is re-pointed).

Carried over: each group's learning rate (within the same family; across families the new
family's usual default, 1e-3 for Adam-like and 0.01 for SGD, unless ``lr=`` is given -- group
ratios are kept), weight decay, the user's extra group keys (``initial_lr``, names...), and the
state that has a meaning in the new optimizer: Adam / AdamW / RAdam moments between each other, the
momentum buffer between SGDs, and Adam's bias-corrected first moment as SGD momentum
(``buf = m_hat / (1 - momentum)``, the steady state of SGD's buffer).  SGD -> Adam starts fresh
moments (the second moment cannot be reconstructed).  Undo puts the previous optimizer back as it
was at the switch.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._base import (
    ALL_OPT_SETTINGS,
    Applied,
    as_choice,
    group_value,
    opt_keys,
    opt_state_keys,
    validate_params,
)
from ._control import controller
from ._spec import action, need_optimizer

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["Lookahead", "make_optimizer", "switch_optimizer_"]

NAMES = ("sgd", "adam", "adamw", "radam", "lookahead", "ranger")
_ADAM_LIKE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.RAdam)
_HOOK_KEYS = ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
              "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks",
              "_optimizer_load_state_dict_post_hooks")
_LA_KEYS = ("lookahead_k", "lookahead_alpha", "lookahead_counter")

SWITCH_SCHEMA: dict[str, dict[str, Any]] = {
    "name": {"type": "choice", "choices": list(NAMES), "required": True, "default": "adamw", "help": "optimizer"},
    "lr": {"type": "float", "min": 0.0, "min_open": True, "max": 1e3, "log": True, "nullable": True, "default": None,
           "help": "learning rate (default: carried within a family, else the family's default)"},
    "momentum": {"type": "float", "min": 0.0, "max": 1.0, "max_open": True, "default": 0.9, "help": "sgd: momentum"},
    "nesterov": {"type": "bool", "default": False, "help": "sgd: Nesterov momentum"},
    "beta1": {"type": "float", "min": 0.0, "max": 1.0, "max_open": True, "default": 0.9, "help": "adam family: beta1"},
    "beta2": {"type": "float", "min": 0.0, "max": 1.0, "max_open": True, "default": 0.999, "help": "adam family: beta2"},
    "eps": {"type": "float", "min": 0.0, "min_open": True, "max": 1.0, "default": 1e-8, "log": True, "help": "adam family: eps"},
    "weight_decay": {"type": "float", "min": 0.0, "max": 1.0, "nullable": True, "default": None,
                     "help": "weight decay (default: carried)"},
    "base": {"type": "choice", "choices": ["sgd", "adam", "adamw", "radam"], "default": "adam",
             "help": "lookahead: the inner optimizer (ranger = lookahead over radam)"},
    "k": {"type": "int", "min": 1, "max": 1000, "default": 5, "help": "lookahead: fast steps per sync (ranger: 6)"},
    "alpha": {"type": "float", "min": 0.0, "min_open": True, "max": 1.0, "default": 0.5, "help": "lookahead: slow step size"},
}


class Lookahead(torch.optim.Optimizer):
    """Lookahead (Zhang et al. 2019) around any optimizer: every ``k`` steps the slow weights move
    ``alpha`` of the way to the fast ones and the fast weights restart from there.

    ``param_groups`` and ``state`` are *shared* with the inner optimizer, so ``state_dict()``
    includes the inner state, the slow weights (``state[p]["lookahead_slow"]``) and the step
    counters (``lookahead_*`` group keys).  Lookahead over RAdam is Ranger.

    Examples
    --------
    >>> opt = Lookahead(torch.optim.RAdam(model.parameters(), lr=1e-3), k=6, alpha=0.5)  # doctest: +SKIP
    """

    def __init__(self, base: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5) -> None:
        if not isinstance(base, torch.optim.Optimizer) or isinstance(base, Lookahead):
            raise TypeError(f"Lookahead wraps a torch optimizer (not a Lookahead), got {type(base).__name__}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"Lookahead k must be a positive int, got {k!r}")
        if not 0.0 < float(alpha) <= 1.0:
            raise ValueError(f"Lookahead alpha must be in (0, 1], got {alpha!r}")
        self._ready = False
        defaults = {**base.defaults, "lookahead_k": k, "lookahead_alpha": float(alpha)}
        super().__init__([{"params": list(g["params"])} for g in base.param_groups], defaults)
        self.base = base
        self.param_groups = base.param_groups
        self.state = base.state
        for g in self.param_groups:
            g.setdefault("lookahead_k", k)
            g.setdefault("lookahead_alpha", float(alpha))
            g.setdefault("lookahead_counter", 0)
        self._ready = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not getattr(self, "_ready", False):
            super().add_param_group(param_group)
            return
        self.base.add_param_group(param_group)
        g = self.param_groups[-1]
        g.setdefault("lookahead_k", self.defaults["lookahead_k"])
        g.setdefault("lookahead_alpha", self.defaults["lookahead_alpha"])
        g.setdefault("lookahead_counter", 0)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "base": self.base, "_ready": True}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        base = self.__dict__.get("base")
        if base is not None:  # load_state_dict replaced our groups / state: share them again
            base.param_groups = self.param_groups
            base.state = self.state

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        fresh: dict[Tensor, Tensor] = {}
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    st = self.state.get(p)
                    if st is None or "lookahead_slow" not in st:
                        fresh[p] = p.detach().clone()  # slow weights start where the fast ones were
        loss = self.base.step(closure)  # type: ignore[arg-type]
        with torch.no_grad():
            for p, slow in fresh.items():
                self.state[p]["lookahead_slow"] = slow  # after the inner step: its state exists now
            for g in self.param_groups:
                g["lookahead_counter"] += 1
                if g["lookahead_counter"] % g["lookahead_k"]:
                    continue
                pairs = [(self.state[p]["lookahead_slow"], p) for p in g["params"]
                         if p in self.state and "lookahead_slow" in self.state[p]]
                if pairs:
                    slows = [s for s, _ in pairs]
                    fasts = [p.detach() for _, p in pairs]
                    torch._foreach_lerp_(slows, fasts, g["lookahead_alpha"])
                    torch._foreach_copy_(fasts, slows)
        return loss


def _inner(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return opt.base if isinstance(opt, Lookahead) else opt


def _family(cls: type) -> str:
    return "adam" if issubclass(cls, _ADAM_LIKE) else "sgd" if issubclass(cls, torch.optim.SGD) else "other"


def make_optimizer(name: str, params: Any, **opts: Any) -> torch.optim.Optimizer:
    """Build ``name`` (see :data:`NAMES`) on ``params`` (a list of param-group dicts or tensors)."""
    p = validate_params("switch_optimizer", SWITCH_SCHEMA, {"name": name, **opts})
    return _build(p, params, p["lr"] if p["lr"] is not None else 1e-3)


def _build(p: dict[str, Any], params: Any, lr: float) -> torch.optim.Optimizer:
    name = p["name"]
    wd = p["weight_decay"] if p["weight_decay"] is not None else 0.0
    if name in ("lookahead", "ranger"):
        inner = "radam" if name == "ranger" else p["base"]
        base = _build({**p, "name": inner}, params, lr)
        return Lookahead(base, k=p["k"], alpha=p["alpha"])
    if name == "sgd":
        if p["nesterov"] and p["momentum"] <= 0:
            raise ValueError("switch_optimizer: Nesterov needs momentum > 0")
        return torch.optim.SGD(params, lr=lr, momentum=p["momentum"], nesterov=p["nesterov"], weight_decay=wd)
    cls: Any = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}[name]
    opt: torch.optim.Optimizer = cls(params, lr=lr, betas=(p["beta1"], p["beta2"]), eps=p["eps"], weight_decay=wd)
    return opt


def _carry_state(old: torch.optim.Optimizer, new: torch.optim.Optimizer, momentum: float) -> str:
    src, dst = _inner(old), _inner(new)
    fs, fd = _family(type(src)), _family(type(dst))
    carried = 0
    for g_old in old.param_groups:
        for p in g_old["params"]:
            st = old.state.get(p)
            if not st:
                continue
            ns: dict[str, Any] = {}
            if fs == fd == "adam" and "exp_avg" in st:
                ns = {k: st[k].detach().clone() for k in ("step", "exp_avg", "exp_avg_sq") if k in st}
            elif fs == fd == "sgd" and st.get("momentum_buffer") is not None:
                ns = {"momentum_buffer": st["momentum_buffer"].detach().clone()}
            elif fs == "adam" and fd == "sgd" and momentum > 0 and "exp_avg" in st:
                b1 = g_old["betas"][0] if "betas" in g_old else 0.9
                step = float(st["step"]) if "step" in st else 1.0
                m_hat = st["exp_avg"].detach() / max(1.0 - b1**step, 1e-12)
                ns = {"momentum_buffer": m_hat / (1.0 - momentum)}
            if isinstance(old, Lookahead) and isinstance(new, Lookahead) and "lookahead_slow" in st and ns:
                ns["lookahead_slow"] = st["lookahead_slow"].detach().clone()
            if ns:
                new.state[p] = ns
                carried += 1
    what = {("adam", "adam"): "Adam moments", ("sgd", "sgd"): "momentum buffers",
            ("adam", "sgd"): "first moments as momentum"}.get((fs, fd), "nothing (fresh state)")
    return f"{what} for {carried} tensor(s)" if carried else "nothing (fresh state)"


def _sched_wrapper(opt: torch.optim.Optimizer) -> Callable[..., Any]:
    """Replacement for a torch LR scheduler's ``step`` wrapper that calls the *current* class."""
    ref = weakref.ref(opt)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        o = ref()
        assert o is not None
        o._opt_called = True  # type: ignore[attr-defined]
        return type(o).step(o, *args, **kwargs)

    wrapper._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
    return wrapper


def swap_into(opt: torch.optim.Optimizer, new: torch.optim.Optimizer) -> Callable[[], None]:
    """Make ``opt`` behave as ``new`` (same object); returns a function that reverts it."""
    old_cls, old_dict = type(opt), dict(opt.__dict__)
    merged = dict(new.__dict__)
    for k in _HOOK_KEYS:
        merged[k] = old_dict[k]
    internal = {"base", "_ready"}
    for k, v in old_dict.items():
        if k not in merged and k not in internal:
            merged[k] = v  # the user's attributes, a scheduler's step wrapper / flags
    if getattr(merged.get("step"), "_wrapped_by_lr_sched", False):
        merged["step"] = _sched_wrapper(opt)
    opt.__class__ = type(new)
    opt.__dict__.clear()
    opt.__dict__.update(merged)

    def revert() -> None:
        opt.__class__ = old_cls
        opt.__dict__.clear()
        opt.__dict__.update(old_dict)

    return revert


def after_name(name: str, p: dict[str, Any]) -> str:
    return {"lookahead": f"Lookahead({p['base']})", "ranger": "Ranger"}.get(name, name)


def switch_optimizer_(optimizer: torch.optim.Optimizer, name: str, *, probe: RunContext | None = None, **options: Any) -> Applied:
    """Turn ``optimizer`` (the same object) into ``name``; see the module docstring.

    Options: ``lr``, ``momentum``, ``nesterov``, ``beta1``, ``beta2``, ``eps``, ``weight_decay``,
    ``base`` / ``k`` / ``alpha`` (Lookahead; ``ranger`` is Lookahead over RAdam with k=6).
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"switch_optimizer_ needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
    as_choice("switch_optimizer: name", name, NAMES)
    if name == "ranger" and "k" not in options:
        options = {**options, "k": 6}
    p = validate_params("switch_optimizer", SWITCH_SCHEMA, {"name": name, **options})
    old = optimizer
    old_inner = _inner(old)
    new_family = "sgd" if name == "sgd" or (name == "lookahead" and p["base"] == "sgd") else "adam"
    lrs = [group_value(g, "lr") for g in old.param_groups]
    same_family = _family(type(old_inner)) == new_family
    lr0 = p["lr"] if p["lr"] is not None else lrs[0] if same_family else (0.01 if new_family == "sgd" else 1e-3)
    hyper = set(old.defaults) | set(_LA_KEYS)
    specs = []
    for g, lr in zip(old.param_groups, lrs, strict=True):
        spec = {k: v for k, v in g.items() if k not in hyper}
        spec["lr"] = lr0 * (lr / lrs[0]) if lrs[0] > 0 else lr0
        wd = p["weight_decay"] if p["weight_decay"] is not None else g.get("weight_decay", 0.0)
        spec["weight_decay"] = float(wd) if not isinstance(wd, Tensor) else float(wd.detach().cpu())
        specs.append(spec)
    new = _build(p, specs, lr0)  # raises on bad combinations before anything changed
    carried = _carry_state(old, new, p["momentum"] if new_family == "sgd" else 0.0)
    before = type(old).__name__ if not isinstance(old, Lookahead) else f"Lookahead({type(old_inner).__name__})"
    ctl = controller(old, create=False)
    sched = ctl.schedule if ctl is not None else None
    old_scale = sched.scale if sched is not None else None
    revert = swap_into(old, new)
    sched_note = ""
    if sched is not None and ctl is not None:
        if not same_family:  # its learning rates were meant for the other family
            ctl.set_schedule(None)
            sched_note = f"; the active {sched.kind} schedule was stopped (start a new one for {after_name(name, p)})"
        elif p["lr"] is not None and lrs[0] > 0:
            sched.scale *= lr0 / lrs[0]
            sched_note = f"; the active {sched.kind} schedule continues from lr {lr0:.3g}"
    meta_before = probe.history.meta.get("optimizer") if probe is not None else None
    after = type(old).__name__ if not isinstance(old, Lookahead) else f"Lookahead({type(_inner(old)).__name__})"
    if probe is not None:
        probe.history.meta["optimizer"] = after

    def undo() -> None:
        revert()
        if sched is not None and old_scale is not None and ctl is not None:
            sched.scale = old_scale
            if ctl.schedule is None:
                ctl.set_schedule(sched)
        if probe is not None:
            probe.history.meta["optimizer"] = meta_before

    msg = f"{before} -> {after} (lr {lrs[0]:.3g} -> {lr0:.3g}); carried: {carried}{sched_note}"
    touches = opt_keys(old, *ALL_OPT_SETTINGS) | opt_state_keys(old)
    return Applied("switch_optimizer", p, undo, message=msg,
                   details={"from": before, "to": after, "carried": carried, "lr": lr0}, probe=probe,
                   touches=touches, heavy=True)


# ---------------------------------------------------------------------------- the whitelist entry
def _check_switch(ctx: RunContext, p: dict[str, Any]) -> None:
    need_optimizer(ctx, "switch_optimizer")
    if p["name"] == "sgd" and p["nesterov"] and p["momentum"] <= 0:
        raise ValueError("switch_optimizer: Nesterov needs momentum > 0")


@action("switch_optimizer", label="Switch optimizer", category="optimizer", schema=SWITCH_SCHEMA, order=130,
        description="Switch to SGD / Adam / AdamW / RAdam / Lookahead / Ranger, carrying over what state can be carried.",
        check=_check_switch)
def _run_switch_optimizer(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return switch_optimizer_(need_optimizer(ctx, "switch_optimizer"), p.pop("name"), probe=ctx, **p)

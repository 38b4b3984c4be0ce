"""Live learning-rate schedules: the pure schedule shapes and :class:`LiveSchedule`, which applies
one inside ``optimizer.step()`` (see :mod:`.schedule` for the kinds and the public functions)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ._base import group_value, momentum_key, report_error, set_group_value
from ._monitor import Monitor, ScalarFeed

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["LiveSchedule", "one_cycle_value", "sgdr_position"]


def sgdr_position(t: int, T_0: int, T_mult: int) -> tuple[int, int, int]:
    """``(cycle index, steps into the cycle, cycle length)`` at step ``t`` of SGDR."""
    if T_mult == 1:
        return t // T_0, t % T_0, T_0
    n = int(math.log(t / T_0 * (T_mult - 1) + 1, T_mult))
    start = T_0 * (T_mult**n - 1) // (T_mult - 1)
    if start > t:  # float rounding at a boundary
        n -= 1
        start = T_0 * (T_mult**n - 1) // (T_mult - 1)
    length = T_0 * T_mult**n
    if t - start >= length:
        n, start, length = n + 1, start + length, length * T_mult
    return n, t - start, length


def _cos(a: float, b: float, pos: float) -> float:
    """fastai ``sched_cos``: from ``a`` at ``pos=0`` to ``b`` at ``pos=1``."""
    return a + (1 + math.cos(math.pi * (1 - pos))) * (b - a) / 2


def one_cycle_value(t: int, total: int, pct: float, start: float, peak: float, end: float) -> float:
    """fastai ``combined_cos(pct, start, peak, end)`` at step ``t`` of ``total``."""
    pos = min(t / max(total - 1, 1), 1.0)
    if pos < pct:
        return _cos(start, peak, pos / pct)
    return _cos(peak, end, (pos - pct) / (1 - pct))


class LiveSchedule:
    """A schedule being applied to an optimizer (see the module docstring)."""

    def __init__(self, kind: str, opts: dict[str, Any], optimizer: torch.optim.Optimizer, owner: RunContext | None) -> None:
        self.kind = kind
        self.opts = opts
        self.owner = owner
        lrs = [group_value(g, "lr") for g in optimizer.param_groups]
        if kind == "one_cycle" and opts.get("max_lr") is not None:
            base0 = float(opts["max_lr"])
        elif opts.get("lr") is not None:
            base0 = float(opts["lr"])
        else:
            base0 = lrs[0]
        self.base = [base0 * (lr / lrs[0]) if lrs[0] > 0 else base0 for lr in lrs]
        self.t = 0
        self.scale = 1.0
        self.factor = 1.0  # plateau reductions so far
        self.cooldown = 0
        self.on_cycle_end: list[Callable[[int], None]] = []
        self._seen: set[str] = set()
        self.monitor: Monitor | None = None
        self._feed: ScalarFeed | None = None
        self._handle: Any = None
        if kind == "plateau":
            self.monitor = Monitor(patience=opts["patience"], smoothing=opts["smoothing"], min_delta=opts["min_delta"])
            if owner is not None:
                self._feed = ScalarFeed(owner, opts["monitor"])
                self._handle = owner.on_step(self._poll)

    # -------------------------------------------------------------- values
    def lr_factor(self, t: int) -> float:
        """Multiplier of the base learning rate at step ``t`` (before ``scale``)."""
        k, o = self.kind, self.opts
        if k == "constant":
            return 1.0
        if k == "step":
            return float(o["gamma"] ** (t // o["step_size"]))
        if k == "exponential":
            return float(o["gamma"] ** t)
        if k == "inverse_time":
            return 1.0 / (1.0 + float(o["decay"]) * t)
        if k == "plateau":
            return self.factor
        if k == "cosine_restarts":
            _, cur, length = sgdr_position(t, o["T_0"], o["T_mult"])
            return (1 + math.cos(math.pi * cur / length)) / 2  # eta_min is added in lrs_at
        if k == "one_cycle":
            return one_cycle_value(t, o["total_steps"], o["pct_start"], 1 / o["div_factor"], 1.0, 1 / o["final_div_factor"])
        raise ValueError(k)

    def lrs_at(self, t: int) -> list[float]:
        f = self.lr_factor(t)
        if self.kind == "cosine_restarts":
            eta = self.opts["eta_min"]
            return [eta + (b * self.scale - eta) * f for b in self.base]
        lrs = [b * self.scale * f for b in self.base]
        if self.kind == "plateau":
            lrs = [max(lr, self.opts["min_lr"]) for lr in lrs]
        return lrs

    def momentum_at(self, t: int) -> float | None:
        o = self.opts
        if self.kind != "one_cycle" or not o.get("cycle_momentum", False):
            return None
        return one_cycle_value(t, o["total_steps"], o["pct_start"], o["max_momentum"], o["base_momentum"], o["max_momentum"])

    # -------------------------------------------------------------- live
    def apply(self, optimizer: torch.optim.Optimizer) -> None:
        t = self.t
        if self.kind == "cosine_restarts" and t > 0:
            cycle, cur, _ = sgdr_position(t, self.opts["T_0"], self.opts["T_mult"])
            if cur == 0:  # the weights now are the end of cycle ``cycle - 1``
                for cb in list(self.on_cycle_end):
                    try:
                        cb(cycle - 1)
                    except Exception as e:  # a listener's failure must not stop the schedule
                        report_error(self.owner, "cycle-end listener", e, self._seen)
        for g, lr in zip(optimizer.param_groups, self.lrs_at(t), strict=False):
            set_group_value(g, "lr", lr)
        mom = self.momentum_at(t)
        if mom is not None:
            for g in optimizer.param_groups:
                key = momentum_key(g)
                if key == "betas":
                    g["betas"] = (mom, *tuple(g["betas"])[1:])
                elif key == "momentum" and group_value(g, "momentum") > 0:
                    set_group_value(g, "momentum", mom)
        self.t = t + 1

    def observe(self, value: float, step: int | None = None) -> None:
        """Feed one value of the monitored metric (``plateau``; done by the probe when it has one)."""
        if self.monitor is None:
            raise RuntimeError(f"a {self.kind} schedule does not watch a metric")
        self.monitor.observe(value, step)
        if self.cooldown > 0:
            self.cooldown -= 1
            self.monitor.reset_wait()
        elif self.monitor.exhausted:
            self.factor *= self.opts["factor"]
            self.cooldown = self.opts["cooldown"]
            self.monitor.reset_wait()

    def _poll(self, probe: RunContext) -> None:
        if self._feed is not None:
            for step, v in self._feed.new():
                self.observe(v, step)

    def detach_owner(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

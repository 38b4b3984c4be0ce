"""One step pre-hook per optimizer that carries out the live interventions inside ``step()``.

``optimizer.step()`` runs its pre-hooks first.  Ours does, in this order:

1. gradient transforms: the L1 penalty (adds ``value * sign(w)`` to the gradients), then gradient
   clipping (by total norm or by value) -- so clipping bounds the gradient actually used;
2. the learning rate: held at 0 while an early stop is in force, otherwise set by the active
   trainscope schedule.  This runs *inside* ``optimizer.step()``, i.e. after the user's own
   ``scheduler.step()`` of the previous iteration, so a trainscope schedule takes precedence.

Each part belongs to an applied intervention; a part added through a probe disappears when that
probe is detached.  The hook itself is removed when no part is left.  Nothing raised here reaches
the training loop (errors go to the owner probe's ``errors`` and a one-time warning).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ._base import owner_alive, report_error, set_group_value

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["Controller", "GradPart", "controller", "suspended"]

_CONTROLLERS: weakref.WeakKeyDictionary[torch.optim.Optimizer, Controller] = weakref.WeakKeyDictionary()


class GradPart:
    """A gradient transform (``fn(params_with_grad)``), ordered by ``priority`` (low first)."""

    def __init__(self, kind: str, fn: Callable[[list[torch.Tensor]], Any], owner: RunContext | None, priority: int) -> None:
        self.kind = kind
        self.fn = fn
        self.owner = owner
        self.priority = priority
        self.last: Any = None


class Controller:
    """The live interventions of one optimizer (see the module docstring)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self._opt = weakref.ref(optimizer)
        self.grad_parts: dict[str, GradPart] = {}
        self.schedule: Any = None  # a schedule.LiveSchedule
        self.freezes: list[tuple[object, RunContext | None]] = []
        self.suspended = 0
        self._seen: set[str] = set()
        self._handle: Any = None

    # ------------------------------------------------------------------ parts
    def set_grad_part(self, part: GradPart | None, kind: str) -> GradPart | None:
        """Install (or with ``None`` remove) the part of this kind; returns the previous one."""
        prev = self.grad_parts.pop(kind, None)
        if part is not None:
            self.grad_parts[kind] = part
        self._sync()
        return prev

    def set_schedule(self, schedule: Any) -> Any:
        prev, self.schedule = self.schedule, schedule
        self._sync()
        return prev

    def freeze(self, token: object, owner: RunContext | None) -> None:
        self.freezes.append((token, owner))
        self._sync()

    def unfreeze(self, token: object) -> None:
        self.freezes = [(t, o) for t, o in self.freezes if t is not token]
        self._sync()

    @property
    def empty(self) -> bool:
        return not self.grad_parts and self.schedule is None and not self.freezes

    def _sync(self) -> None:
        opt = self._opt()
        if opt is None:
            return
        if self.empty:
            if self._handle is not None:
                self._handle.remove()
                self._handle = None
        elif self._handle is None:
            self._handle = opt.register_step_pre_hook(self._pre_hook)

    # ------------------------------------------------------------------ the hook
    def _prune(self) -> None:
        changed = False
        for kind, part in list(self.grad_parts.items()):
            if not owner_alive(part.owner):
                del self.grad_parts[kind]
                changed = True
        if self.schedule is not None and not owner_alive(self.schedule.owner):
            self.schedule.detach_owner()
            self.schedule = None
            changed = True
        alive = [(t, o) for t, o in self.freezes if owner_alive(o)]
        if len(alive) != len(self.freezes):
            self.freezes = alive
            changed = True
        if changed:
            self._sync()

    def _pre_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._prune()
        if self.grad_parts:
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            for part in sorted(self.grad_parts.values(), key=lambda q: q.priority):
                try:
                    if params:
                        part.last = part.fn(params)
                except Exception as e:
                    report_error(part.owner, part.kind, e, self._seen)
        if self.suspended:
            return
        if self.freezes:
            for g in optimizer.param_groups:
                set_group_value(g, "lr", 0.0)
        elif self.schedule is not None:
            try:
                self.schedule.apply(optimizer)
            except Exception as e:
                report_error(self.schedule.owner, "schedule", e, self._seen)


def controller(optimizer: torch.optim.Optimizer, *, create: bool = True) -> Controller | None:
    """The controller of ``optimizer`` (created on first use when ``create``)."""
    c = _CONTROLLERS.get(optimizer)
    if c is None and create:
        c = _CONTROLLERS[optimizer] = Controller(optimizer)
    return c


class suspended:
    """Inside the block the learning-rate part of the controller does nothing (the LR finder's
    sweep owns the learning rate); gradient transforms still apply."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.c = controller(optimizer)

    def __enter__(self) -> None:
        assert self.c is not None
        self.c.suspended += 1

    def __exit__(self, *exc: object) -> None:
        assert self.c is not None
        self.c.suspended -= 1

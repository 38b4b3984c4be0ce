"""What every automated check works with: the environment it runs in (:class:`CheckEnv`), what it
returns (:class:`CheckResult`), its registration (:class:`CheckSpec`, :data:`CHECKS`) and the batch
helpers shared by the checks and the batch-mixing test (so neither imports the other)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..actions import Cancelled, cancel_requested
from ..actions import progress as action_progress
from ..run import Batch

__all__ = ["CHECKS", "CheckEnv", "CheckResult", "CheckSpec", "batch_size", "forward", "primary", "take"]


@dataclass
class CheckResult:
    """The outcome of one check: ``status`` is ``pass`` / ``warn`` / ``fail`` / ``not_run`` / ``manual``."""

    name: str
    status: str
    evidence: str
    layers: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    step: int | None = None
    seconds: float = 0.0
    time: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "status": self.status,
            "evidence": self.evidence,
            "layers": list(self.layers),
            "details": dict(self.details),
            "step": self.step,
            "seconds": round(self.seconds, 4),
            "time": self.time,
        }


@dataclass
class CheckEnv:
    """What a check works on (filled by ``run_check``)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None = None
    loss_fn: Callable[..., Tensor] | None = None
    batch: Batch | None = None
    probe: Any = None
    title: str = "check"
    progress: Callable[[int, int], None] | None = None
    """``progress(done, total)`` during a long check; ``None``: the running action's (if any)."""
    cancel: Callable[[], bool] | None = None
    """``cancel() -> bool`` polled by a long check; ``None``: the running action's cancel flag."""

    def tick(self, done: int, total: int) -> None:
        """A long check reports ``done`` of ``total`` iterations, and stops (raising
        :class:`~trainscope.actions.Cancelled`; the runner restores everything) when cancelled."""
        if self.cancel() if self.cancel is not None else cancel_requested():
            raise Cancelled(f"{self.title} cancelled at {done:,}/{total:,}: everything it changed is put back, no "
                            "result recorded")
        if self.progress is not None:
            self.progress(done, total)
        else:
            action_progress(done, total, self.title)

    @property
    def history(self) -> Any:
        return None if self.probe is None else self.probe.history


@dataclass(frozen=True)
class CheckSpec:
    name: str
    title: str
    fn: Callable[..., CheckResult]
    needs_batch: bool
    needs_loss: bool
    needs_target: bool
    trains: bool  # writes parameters (the runner then snapshots their values)


CHECKS: dict[str, CheckSpec] = {}


def _check(name: str, title: str, *, batch: bool = True, loss: bool = False, target: bool = False, trains: bool = False) -> Callable[[Callable[..., CheckResult]], Callable[..., CheckResult]]:
    def deco(fn: Callable[..., CheckResult]) -> Callable[..., CheckResult]:
        CHECKS[name] = CheckSpec(name, title, fn, batch, loss, target, trains)
        return fn

    return deco


def primary(out: Any) -> Tensor | None:
    """The first floating-point tensor of a model output (tensor, tuple, list or dict)."""
    if isinstance(out, Tensor):
        return out if out.is_floating_point() else None
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else ()
    for o in items:
        t = primary(o)
        if t is not None:
            return t
    return None


def forward(model: nn.Module, batch: Batch, args: tuple[Any, ...] | None = None) -> Tensor:
    out = model(*(batch.args if args is None else args), **batch.kwargs)
    t = primary(out)
    if t is None:
        raise TypeError(f"the model's output ({type(out).__name__}) holds no floating-point tensor")
    return t


def batch_size(batch: Batch) -> int:
    for a in (*batch.args, *batch.kwargs.values()):
        if isinstance(a, Tensor) and a.dim() >= 1:
            return int(a.shape[0])
    raise ValueError("the batch holds no tensor with a batch dimension")


def take(batch: Batch, idx: slice) -> Batch:
    """The examples ``idx`` of a batch (every tensor whose first dim is the batch size)."""
    n = batch_size(batch)

    def cut(v: Any) -> Any:
        return v[idx] if isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] == n else v

    return Batch(batch.step, tuple(cut(a) for a in batch.args), {k: cut(v) for k, v in batch.kwargs.items()}, cut(batch.target))

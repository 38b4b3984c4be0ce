"""Run code against a user's model and leave *everything* as it was, bit for bit.

:func:`isolated` snapshots, and restores in a ``finally`` (so also when the code raises):

* every parameter's value, ``requires_grad`` flag, ``.grad`` (the same tensor object, same values,
  or ``None``), and which Parameter object each module holds;
* every buffer (BatchNorm running statistics and counters included), and which object each module
  holds;
* every module's ``training`` flag;
* the optimizer's state (per-parameter tensors and values) and its param groups' hyperparameters;
* the RNG states: torch CPU, every initialized CUDA device, numpy's global generator, ``random``;
* the autograd grad mode.

The restore cannot be interrupted half-way: a Ctrl-C (SIGINT, on the main thread) that arrives
while it runs is held until everything is back, then raised as ``KeyboardInterrupt``.

Restoring writes back only what differs, so a check that only reads (a forward pass, or gradients
taken with ``torch.autograd.grad``) bumps no tensor's version counter.  Such checks skip copying
parameter, gradient and optimizer values (``values=False``): only the two checks that train
(``overfit_batch``, ``input_baseline``) hold a second copy of the parameters while they run.
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..interventions._state import interrupts_deferred

__all__ = ["StateSnapshot", "isolated", "same_bits"]


def same_bits(a: Tensor, b: Tensor) -> bool:
    """Exact equality, NaNs included (compares the raw bytes)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.numel() == 0:
        return True
    if a.is_floating_point() or a.is_complex():
        return bool(torch.equal(a.detach().reshape(-1).contiguous().view(torch.uint8), b.detach().reshape(-1).contiguous().view(torch.uint8)))
    return bool(torch.equal(a, b))


def _clone(v: Any) -> Any:
    return v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v)


class StateSnapshot:
    """Everything :func:`isolated` restores (see the module docstring)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, values: bool = True) -> None:
        self.model = model
        self.optimizer = optimizer if values else None
        self.copies_values = values
        self.modules = list(model.modules())
        self.training = [m.training for m in self.modules]
        self.param_slots: list[dict[str, Any]] = [dict(m._parameters) for m in self.modules]
        self.buffer_slots: list[dict[str, Any]] = [dict(m._buffers) for m in self.modules]
        params: dict[int, Tensor] = {}
        for m in self.modules:
            for p in m._parameters.values():
                if p is not None:
                    params.setdefault(id(p), p)
        if optimizer is not None:
            for g in optimizer.param_groups:
                for p in g["params"]:
                    params.setdefault(id(p), p)
        self.params: list[Tensor] = list(params.values())
        with torch.no_grad():
            self.grads: list[Tensor | None] = [p.grad for p in self.params]
            self.values = [p.detach().clone() if values else None for p in self.params]
            self.grad_values = [g.detach().clone() if g is not None and values else None for g in self.grads]
            self.buffers = {
                (k, name): b.detach().clone()
                for k, slots in enumerate(self.buffer_slots)
                for name, b in slots.items()
                if b is not None
            }
        self.requires_grad = [p.requires_grad for p in self.params]
        # optimizer: per-parameter state (the dict objects and copies of their values), groups
        self.opt_state: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.opt_groups: list[tuple[dict[str, Any], list[Any]]] = []
        if self.optimizer is not None:
            for param, st in self.optimizer.state.items():
                self.opt_state[id(param)] = (dict(st), {k: _clone(v) for k, v in st.items()})
            self.opt_groups = [
                ({k: _clone(v) for k, v in g.items() if k != "params"}, list(g["params"]))
                for g in self.optimizer.param_groups
            ]
        self.rng_cpu = torch.get_rng_state()
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
        self.rng_cuda = torch.cuda.get_rng_state_all() if cuda else None
        self.rng_np = np.random.get_state()
        self.rng_py = random.getstate()
        self.grad_enabled = torch.is_grad_enabled()

    def restore(self) -> None:
        """Put everything back (only what differs is written); grad mode and RNG states last."""
        with torch.no_grad():
            self._restore_tensors()
        torch.set_grad_enabled(self.grad_enabled)
        torch.set_rng_state(self.rng_cpu)
        if self.rng_cuda is not None:
            torch.cuda.set_rng_state_all(self.rng_cuda)
        np.random.set_state(self.rng_np)
        random.setstate(self.rng_py)

    def _restore_tensors(self) -> None:
        for m, pslots in zip(self.modules, self.param_slots, strict=True):
            if set(m._parameters) != set(pslots) or any(m._parameters.get(k) is not v for k, v in pslots.items()):
                m._parameters.clear()
                m._parameters.update(pslots)
        for k, (m, bslots) in enumerate(zip(self.modules, self.buffer_slots, strict=True)):
            if set(m._buffers) != set(bslots) or any(m._buffers.get(n) is not b for n, b in bslots.items()):
                m._buffers.clear()
                m._buffers.update(bslots)
            for n, b in bslots.items():
                if b is not None and not same_bits(b, self.buffers[(k, n)]):
                    b.copy_(self.buffers[(k, n)])
        for m, t in zip(self.modules, self.training, strict=True):
            if m.training != t:
                m.training = t
        for p, v, g, gv, rg in zip(self.params, self.values, self.grads, self.grad_values, self.requires_grad, strict=True):
            if v is not None and not same_bits(p, v):
                p.copy_(v)
            if p.requires_grad != rg:
                p.requires_grad_(rg)
            if p.grad is not g:
                p.grad = g
            if g is not None and gv is not None and not same_bits(g, gv):
                g.copy_(gv)
        if self.optimizer is not None:
            self._restore_optimizer(self.optimizer)

    def _restore_optimizer(self, opt: torch.optim.Optimizer) -> None:
        by_id = {id(p): p for p in self.params}
        for p in list(opt.state.keys()):
            if id(p) not in self.opt_state:
                del opt.state[p]
        for pid, (objects, values) in self.opt_state.items():
            param = by_id.get(pid)
            if param is None:
                continue
            state = opt.state[param]
            for key in [key for key in state if key not in objects]:
                del state[key]
            for key, obj in objects.items():
                if state.get(key) is not obj:
                    state[key] = obj
                if isinstance(obj, Tensor):
                    if not same_bits(obj, values[key]):
                        obj.copy_(values[key])
                elif obj != values[key]:
                    state[key] = copy.deepcopy(values[key])
        for group, (hyper, plist) in zip(opt.param_groups, self.opt_groups, strict=False):
            for key in [key for key in group if key != "params" and key not in hyper]:
                del group[key]
            for key, val in hyper.items():
                cur = group.get(key)
                if isinstance(val, Tensor) and isinstance(cur, Tensor):
                    if not same_bits(cur, val):
                        cur.copy_(val)
                elif cur is not val and cur != val:
                    group[key] = copy.deepcopy(val)
            params = group["params"]
            if len(params) != len(plist) or any(a is not b for a, b in zip(params, plist, strict=True)):
                params[:] = plist


@contextlib.contextmanager
def isolated(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None, probe: Any = None, *, values: bool = True
) -> Iterator[StateSnapshot]:
    """Snapshot ``model`` / ``optimizer`` / RNG; restore them on exit, whatever happens inside.

    ``values=False`` for code that never writes parameters, gradients or the optimizer (forward
    passes, ``torch.autograd.grad``): their values are then not copied (no memory for a second
    model), while buffers, modes, parameter / gradient identity and RNG states still are.  With a
    ``probe``, its recording is paused meanwhile (the check's passes are not training).
    """
    snap = StateSnapshot(model, optimizer, values=values)
    pause = probe.paused() if probe is not None else contextlib.nullcontext()
    try:
        with pause:
            yield snap
    finally:
        with interrupts_deferred():  # a Ctrl-C during the restore waits until everything is back
            snap.restore()

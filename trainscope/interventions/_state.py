"""Exact captures of model / optimizer / RNG state (undo, snapshots, the LR finder) and batches."""

from __future__ import annotations

import contextlib
import copy
import random
import signal
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ..run import as_batch, context_batch, first_batch, split_batch

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["ModelCapture", "OptimizerCapture", "RNGCapture", "as_batch", "first_batch", "interrupts_deferred",
           "optimizer_params", "probe_batch", "split_batch"]


# ---------------------------------------------------------------------------- uninterruptible restores
@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then deliver it (``KeyboardInterrupt``).

    Restores run inside it: a second Ctrl-C while a sweep or a check puts the model back cannot
    leave it half-restored.  Only the main thread receives signals, so elsewhere (and where the
    handler cannot be changed) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    try:
        old = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    except (ValueError, TypeError, OSError):  # pragma: no cover - not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if got and old is not signal.SIG_IGN:
            if callable(old):
                old(signal.SIGINT, None)
            else:
                raise KeyboardInterrupt


# ---------------------------------------------------------------------------- exact captures
_ATOMS = (int, float, bool, str, bytes, type(None))


def _immutable(v: Any) -> bool:
    return isinstance(v, _ATOMS) or (isinstance(v, tuple) and all(isinstance(x, _ATOMS) for x in v))


def _clone(v: Any, device: torch.device | str | None) -> Any:
    if isinstance(v, Tensor):
        with torch.no_grad():
            return v.detach().to(device, copy=True) if device is not None else v.detach().clone()
    return v if _immutable(v) else copy.deepcopy(v)


class ModelCapture:
    """Exact copy of a model's parameters, buffers (BatchNorm statistics included), gradients and
    train / eval flags.  :meth:`restore` writes the values back *into the same tensor objects*.

    The model and its sub-modules are held weakly (a capture kept in a store keyed weakly by the
    model must not keep the model alive); the tensors themselves are held, so a rebinding is undone.
    ``model`` is ``None`` once the model has been freed.
    """

    def __init__(self, model: nn.Module, *, grads: bool = True, device: torch.device | str | None = None,
                 extra: Iterable[Tensor] = ()) -> None:
        self._model = weakref.ref(model)
        self.tensors: list[tuple[weakref.ref[nn.Module], str, Tensor, Tensor]] = []
        seen: set[int] = set()
        for mod in model.modules():
            ref = weakref.ref(mod)
            for name, t in list(mod._parameters.items()) + list(mod._buffers.items()):
                if t is not None:
                    self.tensors.append((ref, name, t, _clone(t, device)))
                    seen.add(id(t))
        # tensors outside the model (an optimizer also training a loss temperature, a head...)
        self.extra: list[tuple[Tensor, Tensor]] = []
        for t in extra:
            if id(t) not in seen:
                seen.add(id(t))
                self.extra.append((t, _clone(t, device)))
        self.grads: list[tuple[Tensor, Tensor | None, Tensor | None]] = []
        if grads:
            for p in list(model.parameters()) + [t for t, _ in self.extra]:
                g = p.grad
                self.grads.append((p, g, None if g is None else _clone(g, device)))
        self.training = [(weakref.ref(m), m.training) for m in model.modules()]

    @property
    def model(self) -> nn.Module | None:
        """The captured model (``None`` once it has been freed)."""
        return self._model()

    @property
    def nbytes(self) -> int:
        return sum(c.numel() * c.element_size() for *_, c in self.tensors) + sum(
            c.numel() * c.element_size() for _, c in self.extra)

    @torch.no_grad()
    def restore(self, *, grads: bool = True, modes: bool = True) -> None:
        for ref, name, orig, saved in self.tensors:
            mod = ref()
            if mod is not None:
                store: dict[str, Any] = mod._parameters if name in mod._parameters else mod._buffers
                if store.get(name) is not orig:
                    store[name] = orig  # a rebinding (rare) is undone too
            orig.copy_(saved)
        for t, saved in self.extra:
            t.copy_(saved)
        if grads:
            for p, g, gsaved in self.grads:
                if g is None:
                    p.grad = None
                else:
                    assert gsaved is not None
                    g.copy_(gsaved)
                    p.grad = g
        if modes:
            for ref, flag in self.training:
                m = ref()
                if m is not None:
                    m.training = flag

    def values(self) -> dict[str, Tensor]:
        """``{qualified name: saved tensor}`` of parameters and buffers (for ensembles)."""
        model = self.model
        if model is None:
            return {}
        names = {id(m): n for n, m in model.named_modules()}
        out: dict[str, Tensor] = {}
        for ref, k, _, c in self.tensors:
            m = ref()
            if m is not None and id(m) in names:
                out[f"{names[id(m)]}.{k}".lstrip(".")] = c
        return out


class OptimizerCapture:
    """Exact copy of an optimizer: class, hyper-parameters of every param group and the state of
    every parameter.  :meth:`restore` puts the saved values back into the *same* group dicts and
    state tensors (no ``load_state_dict``: references held by schedulers or wrappers stay valid).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, device: torch.device | str | None = None) -> None:
        self.optimizer = optimizer
        self.cls = type(optimizer)
        self.group_list = optimizer.param_groups
        self.groups: list[tuple[dict[str, Any], dict[str, tuple[Any, Any]], list[Any]]] = [
            (g, {k: (v, _clone(v, None)) for k, v in g.items() if k != "params"}, list(g["params"]))
            for g in optimizer.param_groups
        ]
        self.state_obj = optimizer.state
        self.state: list[tuple[Tensor, dict[str, Any], list[tuple[str, Any, Any]]]] = []
        for p, st in optimizer.state.items():
            entries = [(k, v, _clone(v, device)) for k, v in st.items()]
            self.state.append((p, st, entries))

    def compatible(self) -> str | None:
        """Why :meth:`restore` would not be exact any more (``None`` if it would be)."""
        opt = self.optimizer
        if type(opt) is not self.cls:
            return f"the optimizer is now {type(opt).__name__} (was {self.cls.__name__})"
        if len(opt.param_groups) != len(self.groups):
            return "the optimizer's parameter groups changed"
        return None

    @torch.no_grad()
    def restore(self) -> None:
        opt = self.optimizer
        if opt.param_groups is not self.group_list:
            opt.param_groups = self.group_list
        opt.param_groups[:] = [g for g, _, _ in self.groups]
        for g, vals, params in self.groups:
            for k in [k for k in g if k != "params" and k not in vals]:
                del g[k]
            for k, (orig, v) in vals.items():
                if isinstance(orig, Tensor):
                    orig.copy_(v)  # a tensor hyper-parameter (capturable / fused): same object back
                    g[k] = orig
                else:
                    g[k] = v if _immutable(v) else copy.deepcopy(v)
            g["params"] = params
        if opt.state is not self.state_obj:
            opt.state = self.state_obj
        saved = {id(p) for p, _, _ in self.state}
        for p in [p for p in opt.state if id(p) not in saved]:
            del opt.state[p]
        for p, st, entries in self.state:
            keys = {k for k, _, _ in entries}
            for k in [k for k in st if k not in keys]:
                del st[k]
            for k, orig, val in entries:
                if isinstance(orig, Tensor) and isinstance(val, Tensor):
                    orig.copy_(val)
                    st[k] = orig
                else:
                    st[k] = val if _immutable(val) else copy.deepcopy(val)
            opt.state[p] = st
        base = getattr(opt, "base", None)  # a Lookahead shares groups / state with its base
        if isinstance(base, torch.optim.Optimizer):
            base.param_groups = opt.param_groups
            base.state = opt.state


class RNGCapture:
    """Python, numpy, torch CPU and (initialized) CUDA random states."""

    def __init__(self) -> None:
        self.py = random.getstate()
        self.np = np.random.get_state()
        self.torch = torch.get_rng_state()
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
        self.cuda = torch.cuda.get_rng_state_all() if cuda else None

    def restore(self) -> None:
        random.setstate(self.py)
        np.random.set_state(self.np)
        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def optimizer_params(optimizer: torch.optim.Optimizer | None) -> list[Tensor]:
    """Every tensor the optimizer trains (some may live outside the model)."""
    if optimizer is None:
        return []
    return [p for g in optimizer.param_groups for p in g["params"] if isinstance(p, Tensor)]


def probe_batch(probe: RunContext) -> Any:
    """A real batch for data-driven interventions: from ``probe.data`` when the user gave it, else
    the most recent training batch the probe kept a reference to (``None`` if neither exists)."""
    return context_batch(probe, prefer="data")

"""The hooks behind :mod:`trainscope.interventions.data_reg` (mixup, input noise, label smoothing).

One :class:`InputSide` per model (a forward *pre*-hook: mixes and / or adds noise to the inputs of
training calls, and remembers the mixing of the batch) and one :class:`LossSide` per loss module (a
forward hook: mixup's loss half, paired with the model's last training forward, and the hooked
label smoothing), each installed only while something is on, and kept per module in weak
registries.  The semantics are documented in :mod:`~trainscope.interventions.data_reg`, which
validates the requests and switches these on and off.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ._base import owner_alive, report_error

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["SMOOTH_KINDS", "InputSide", "LossSide", "OwnedHook", "smoothing_kind", "state"]


_SALT = {"mixup": 0x6D69787570, "input_noise": 0x6E6F697365}
_MAX_UNPAIRED = 2
"""Training forwards in a row without a call of the loss module, before mixup stops mixing."""


# ---------------------------------------------------------------------------- helpers
def _seed(name: str, seed: int | None) -> int:
    base = int(seed) if seed is not None else int(torch.initial_seed())
    return (base * 1_000_003 + _SALT[name]) % (2**63 - 1)


def _paused(owner: RunContext | None) -> bool:
    return owner is not None and bool(getattr(owner, "_paused", 0))


def _primary(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    for v in (*args, *kwargs.values()):
        if isinstance(v, Tensor):
            return v
    return None


def _map_tensors(args: tuple[Any, ...], kwargs: dict[str, Any], fn: Callable[[Tensor], Tensor | None]) -> tuple[tuple[Any, ...], dict[str, Any], bool]:
    changed = False

    def one(v: Any) -> Any:
        nonlocal changed
        if isinstance(v, Tensor):
            out = fn(v)
            if out is not None:
                changed = True
                return out
        return v

    new_args = tuple(one(a) for a in args)
    new_kwargs = {k: one(v) for k, v in kwargs.items()}
    return new_args, new_kwargs, changed


def _note(owner: RunContext | None, where: str, msg: str, seen: set[str], key: str) -> None:
    """Say once (probe.errors and a warning) that a regularization was skipped, and why."""
    if key in seen:
        return
    seen.add(key)
    if owner is not None and len(owner.errors) < 1000:
        from ..run import ProbeError

        owner.errors.append(ProbeError(f"intervention {where}", owner.step_count, msg, ""))
    warnings.warn(f"trainscope: {msg}", RuntimeWarning, stacklevel=4)


class _Detach:
    """Goes in the probe's hook handles: ``probe.detach()`` removes the hook at once."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def remove(self) -> None:
        self.fn()


def _register_detach(owner: RunContext | None, fn: Callable[[], None]) -> _Detach | None:
    if owner is None:
        return None
    handles = getattr(owner, "_handles", None)
    if not isinstance(handles, list):
        return None
    d = _Detach(fn)
    handles.append(d)
    return d


def _unregister_detach(owner: RunContext | None, d: _Detach | None) -> None:
    handles = getattr(owner, "_handles", None) if owner is not None else None
    if d is not None and isinstance(handles, list):
        with contextlib.suppress(ValueError):
            handles.remove(d)


class OwnedHook:
    """One hook of an intervention on one module: installed once (:meth:`_install`), removed by
    :meth:`remove` or by the owning probe's ``detach()`` (a token in its hook handles).  The base
    of every hook the live fixes put on a model or a loss module (mixup / noise / smoothing, the
    head and loss fixes, standardized inputs, rescaled targets)."""

    owner: RunContext | None

    def __init__(self, owner: RunContext | None = None) -> None:
        self.owner = owner
        self._handle: Any = None
        self._detach: _Detach | None = None

    @property
    def installed(self) -> bool:
        return self._handle is not None

    def _install(self, register: Callable[..., Any], **kwargs: Any) -> None:
        """``register(self, **kwargs)`` (e.g. ``module.register_forward_hook``) unless installed."""
        if self._handle is None:
            self._handle = register(self, **kwargs)
            self._detach = _register_detach(self.owner, self.remove)

    def remove(self) -> None:
        h, self._handle = self._handle, None
        if h is not None:
            h.remove()
        d, self._detach = self._detach, None
        _unregister_detach(self.owner, d)


# ---------------------------------------------------------------------------- the input side
class InputSide(OwnedHook):
    """Mixup's input half and the input noise of one model (a forward pre-hook while on)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = weakref.ref(model)
        self.alpha = 0.0
        self.std = 0.0
        self.loss: weakref.ref[nn.Module] | None = None
        self.pending: tuple[float, Tensor, int] | None = None
        self.unpaired = 0
        self.paired = 0
        self.blocked = False
        self.mix_rng: np.random.Generator | None = None
        self.perm_gen: torch.Generator | None = None
        self.noise_seed = 0
        self.noise_gens: dict[str, torch.Generator] = {}
        self.seen: set[str] = set()

    def seed_mixup(self, seed: int | None) -> None:
        s = _seed("mixup", seed)
        self.mix_rng = np.random.default_rng(s)
        self.perm_gen = torch.Generator().manual_seed(s)

    def seed_noise(self, seed: int | None) -> None:
        self.noise_seed = _seed("input_noise", seed)
        self.noise_gens = {}

    def sync(self) -> None:
        m = self.model()
        on = self.alpha > 0 or self.std > 0
        if on and m is not None:
            self._install(m.register_forward_pre_hook, with_kwargs=True)  # after the probe's: it records the user's batch
        elif not on:
            self.remove()
        if self.alpha <= 0:
            self.pending = None

    def remove(self) -> None:
        super().remove()
        self.pending = None

    def _noise_gen(self, device: torch.device) -> torch.Generator:
        key = str(device)
        g = self.noise_gens.get(key)
        if g is None:
            g = self.noise_gens[key] = torch.Generator(device=device).manual_seed(self.noise_seed)
        return g

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not owner_alive(self.owner):
            self.remove()
            return None
        try:
            return self._apply(module, args, kwargs)
        except Exception as e:
            self.pending = None
            report_error(self.owner, "mixup / input_noise", e, self.seen)
            return None

    def _apply(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not module.training or not torch.is_grad_enabled() or _paused(self.owner):
            self.pending = None  # an evaluation forward: its loss is left alone
            return None
        changed = False
        if self.alpha > 0 and not self.blocked:
            if self.pending is not None:
                self.unpaired += 1
                if self.unpaired >= _MAX_UNPAIRED and self.paired == 0:
                    self.blocked = True
                    self.pending = None
                    _note(self.owner, "mixup",
                          "mixup: the model ran in training mode several times without its loss module being called "
                          "in between (is the loss computed with a function such as F.cross_entropy, or with another "
                          "module than the probe's loss_fn?); mixup stopped mixing the inputs. Compute the loss with "
                          "the loss module given to the probe, then request mixup again", self.seen, "unpaired")
            if not self.blocked:
                args, kwargs, changed = self._mix(args, kwargs)
        if self.std > 0:
            std = self.std

            def noisy(t: Tensor) -> Tensor | None:
                if not t.is_floating_point() or t.dim() == 0:
                    return None
                g = self._noise_gen(t.device)
                return t + std * torch.randn(t.shape, generator=g, device=t.device, dtype=t.dtype)

            args, kwargs, ch = _map_tensors(args, kwargs, noisy)
            changed = changed or ch
            if not ch:
                _note(self.owner, "input_noise", "input_noise: the model's inputs hold no floating tensor; no noise "
                      "was added (noise on token ids is not defined: remove input_noise)", self.seen, "no-float")
        return (args, kwargs) if changed else None

    def _mix(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any], bool]:
        x = _primary(args, kwargs)
        if x is not None and x.is_floating_point() and x.dim() >= 1 and x.shape[0] < 2:
            self.pending = None  # one example (a last batch): mixing it with itself changes nothing
            return args, kwargs, False
        if x is None or not x.is_floating_point() or x.dim() == 0:
            what = "no tensor" if x is None else f"a {x.dtype} tensor of shape {tuple(x.shape)}"
            _note(self.owner, "mixup", f"mixup: the model's first input is {what}, not a floating batch; this batch "
                  "was not mixed", self.seen, "not-float")
            self.pending = None
            return args, kwargs, False
        assert self.mix_rng is not None and self.perm_gen is not None
        n = int(x.shape[0])
        lam = float(self.mix_rng.beta(self.alpha, self.alpha))
        perm = torch.randperm(n, generator=self.perm_gen).to(x.device, non_blocking=True)

        def mix(t: Tensor) -> Tensor | None:
            if not t.is_floating_point() or t.dim() == 0 or t.shape[0] != n:
                return None
            return lam * t + (1.0 - lam) * t.index_select(0, perm.to(t.device))

        args, kwargs, changed = _map_tensors(args, kwargs, mix)
        self.pending = (lam, perm, n)
        return args, kwargs, changed

    def take_pending(self) -> tuple[float, Tensor, int] | None:
        p, self.pending = self.pending, None
        if p is not None:
            self.paired += 1
            self.unpaired = 0
        return p


# ---------------------------------------------------------------------------- the loss side
SMOOTH_KINDS: dict[type[nn.Module], str] = {
    nn.CrossEntropyLoss: "attribute",
    nn.NLLLoss: "nll",
    nn.BCELoss: "binary",
    nn.BCEWithLogitsLoss: "binary",
}


def smoothing_kind(loss_fn: Any) -> str:
    """How label smoothing is applied to ``loss_fn``; raises ``ValueError`` where it is not defined."""
    if not isinstance(loss_fn, nn.Module):
        raise TypeError(
            "label_smoothing needs the loss module (e.g. nn.CrossEntropyLoss()) the loop calls, so it can be changed "
            f"or hooked; got {type(loss_fn).__name__}. Create the probe with loss_fn=... and compute the loss with it")
    for cls, kind in SMOOTH_KINDS.items():
        if type(loss_fn) is cls:
            if kind == "nll" and getattr(loss_fn, "weight", None) is not None:
                raise ValueError("label_smoothing: NLLLoss with class weights is not supported; use "
                                 "nn.CrossEntropyLoss(weight=..., label_smoothing=...) on the logits")
            return kind
    raise ValueError(
        f"label_smoothing is defined for classification losses (CrossEntropyLoss, NLLLoss, BCELoss, "
        f"BCEWithLogitsLoss); the loss is {type(loss_fn).__name__}")


class LossSide(OwnedHook):
    """Mixup's loss half and the hooked label smoothing of one loss module (a forward hook)."""

    def __init__(self, loss_fn: nn.Module) -> None:
        super().__init__()
        self.loss = weakref.ref(loss_fn)
        self.mix: weakref.ref[InputSide] | None = None
        self.eps = 0.0  # hooked smoothing (nll / binary); CrossEntropyLoss uses its attribute
        self.kind = ""
        self.seen: set[str] = set()

    def sync(self) -> None:
        m = self.loss()
        on = self.mix is not None or self.eps > 0
        if on and m is not None:
            self._install(m.register_forward_hook, prepend=True)  # before the probe's: it records this loss
        elif not on:
            self.remove()

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if not owner_alive(self.owner):
            self.remove()
            return None
        try:
            return self._apply(module, args, output)
        except Exception as e:
            report_error(self.owner, "mixup / label_smoothing", e, self.seen)
            return None

    def _apply(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        side = self.mix() if self.mix is not None else None
        training_call = side is not None and torch.is_grad_enabled() and not _paused(side.owner)
        pend = side.take_pending() if side is not None and training_call else None
        if pend is None and self.eps <= 0:
            return None
        if len(args) < 2 or not isinstance(args[0], Tensor) or not isinstance(args[1], Tensor):
            _note(self.owner, "mixup", f"mixup / label_smoothing: {type(module).__name__} was called without "
                  "(prediction, target) tensors; its loss was left unchanged", self.seen, "args")
            return None
        out, y, extra = args[0], args[1], args[2:]

        def loss(target: Tensor) -> Tensor:
            t = target
            if self.eps > 0 and self.kind == "binary" and t.is_floating_point():
                t = t * (1.0 - self.eps) + self.eps / 2
            v: Tensor = module.forward(out, t, *extra)  # forward(): the hooks (ours, the probe's) run once, outside
            if self.eps > 0 and self.kind == "nll":
                v = (1.0 - self.eps) * v + self.eps * _uniform_nll(module, out, target)
            return v

        if pend is None:
            return loss(y)
        lam, perm, n = pend
        if out.dim() == 0 or y.dim() == 0 or out.shape[0] != n or y.shape[0] != n:
            _note(self.owner, "mixup", f"mixup: the loss got a prediction of shape {tuple(out.shape)} and a target of "
                  f"shape {tuple(y.shape)} for a mixed batch of {n} examples (batch not first?); that batch's loss "
                  "was not mixed", self.seen, "shape")
            return loss(y) if self.eps > 0 else None
        p = perm.to(y.device)
        if y.is_floating_point():
            return loss(lam * y + (1.0 - lam) * y.index_select(0, p))
        return lam * loss(y) + (1.0 - lam) * loss(y.index_select(0, p))


def _uniform_nll(module: nn.Module, logp: Tensor, target: Tensor) -> Tensor:
    """``mean_c(-logp_c)`` reduced as ``module`` reduces (ignored targets left out)."""
    u = -logp.mean(dim=1) if logp.dim() >= 2 else -logp.mean().expand(target.shape)
    ignore = getattr(module, "ignore_index", -100)
    keep = (target != ignore).to(u.dtype)
    u = u * keep
    red = getattr(module, "reduction", "mean")
    if red == "none":
        return u
    if red == "sum":
        return u.sum()
    return u.sum() / keep.sum().clamp_min(1.0)


# ---------------------------------------------------------------------------- registries
_INPUTS: weakref.WeakKeyDictionary[nn.Module, InputSide] = weakref.WeakKeyDictionary()
_LOSSES: weakref.WeakKeyDictionary[nn.Module, LossSide] = weakref.WeakKeyDictionary()


def _input_side(model: nn.Module) -> InputSide:
    s = _INPUTS.get(model)
    if s is None:
        s = _INPUTS[model] = InputSide(model)
    return s


def _loss_side(loss_fn: nn.Module) -> LossSide:
    s = _LOSSES.get(loss_fn)
    if s is None:
        s = _LOSSES[loss_fn] = LossSide(loss_fn)
    return s


def state(model: nn.Module | None = None, loss_fn: nn.Module | None = None) -> dict[str, Any]:
    """What is on: ``{"mixup": alpha, "input_noise": std, "label_smoothing": eps}`` (0 when off)."""
    i = _INPUTS.get(model) if model is not None else None
    ls = _LOSSES.get(loss_fn) if loss_fn is not None else None
    eps = ls.eps if ls is not None else 0.0
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        eps = float(loss_fn.label_smoothing)
    return {"mixup": i.alpha if i is not None and not i.blocked else 0.0, "input_noise": i.std if i is not None else 0.0,
            "label_smoothing": eps}

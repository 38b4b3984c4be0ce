"""Data-level regularization switched on and off live on the user's own loop: mixup, Gaussian input
noise, label smoothing.

* **mixup** (Zhang, Cisse, Dauphin & Lopez-Paz 2017, *mixup: Beyond Empirical Risk
  Minimization*): for each training batch, ``lam ~ Beta(alpha, alpha)`` and a permutation ``perm``
  of the batch; the model sees ``lam * x + (1 - lam) * x[perm]`` (every floating tensor input whose
  first dimension is the batch), and the loss of that batch becomes
  ``lam * L(out, y) + (1 - lam) * L(out, y[perm])`` for class-index targets (the paper's form,
  equal to the cross-entropy with mixed one-hot targets) or ``L(out, lam * y + (1 - lam) * y[perm])``
  for floating targets (one-hot / soft labels, regression).
* **input noise**: ``x + std * N(0, 1)`` on every floating tensor input (``std`` absolute: the
  inputs' own units; standardized inputs have std 1).
* **label smoothing** (Szegedy et al. 2016; Müller, Kornblith & Hinton 2019): for
  ``nn.CrossEntropyLoss`` its own ``label_smoothing`` is set (undo restores it); for ``nn.NLLLoss``
  (log-probabilities, no class weights) the loss becomes ``(1 - eps) * NLL + eps * mean_c(-logp_c)``;
  for ``nn.BCELoss`` / ``nn.BCEWithLogitsLoss`` the targets become ``y (1 - eps) + eps / 2``.  Other
  losses are refused (smoothing is defined for classification).

How: the model gets a forward *pre*-hook (mixup, noise) and the loss module a forward hook
(mixup's loss, the hooked smoothing), installed only while one of them is on -- nothing is
installed, and nothing costs, when they are off.  Mixup and noise act only on *training* calls
(the model in training mode, gradients enabled, the owning probe not paused): evaluation,
validation, the LR finder and the checks see the data unchanged.  The probe's own hooks run
first, so what it records as the batch (``recent_batches``, the input statistics) is the user's
data; the loss it records is the regularized one (what is backpropagated).  Label smoothing is
part of the loss definition: every call of the loss module includes it, a validation loss
computed with the same module too (compare accuracies, or use a second loss module for
validation).

Mixup pairs each training forward of the model with the *next* call of the loss module (the same
batch); the loss module must be an ``nn.Module`` the probe knows (``Probe(..., loss_fn=...)``).  A
loss computed with ``F.cross_entropy`` cannot be hooked: the request is refused when the probe
has seen steps whose batch never reached its loss module, and if training forwards repeatedly
go unpaired mixup stops mixing and says so (``probe.errors`` and a warning).  Inputs must be a
floating tensor batch (token ids cannot be mixed: refused).

Randomness: each intervention draws from its own generators -- a ``numpy.random.Generator`` for
``lam`` and a ``torch.Generator`` (one per device) for permutations and noise -- seeded once when
switched on, from ``seed=`` or else from ``torch.initial_seed()`` (read, not drawn: the user's
global torch / numpy / ``random`` streams are never advanced; the same ``torch.manual_seed``
gives the same mixing).  So switching them on and off changes no RNG state of the user's.
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

from ._base import Applied, owner_alive, report_error, validate_params
from ._spec import action

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["input_noise_", "label_smoothing_", "mixup_"]

MIXUP_SCHEMA: dict[str, dict[str, Any]] = {
    "alpha": {"type": "float", "min": 0.0, "max": 100.0, "default": 0.2, "required": True,
              "help": "Beta(alpha, alpha) of the mixing weight (0.1-0.4 in the paper; 0 = off)"},
    "seed": {"type": "int", "min": 0, "max": 2**62, "nullable": True, "default": None,
             "help": "seed of mixup's own generator (default: from torch.initial_seed())"},
}
NOISE_SCHEMA: dict[str, dict[str, Any]] = {
    "std": {"type": "float", "min": 0.0, "max": 1e6, "default": 0.1, "required": True,
            "help": "standard deviation of the Gaussian noise added to the inputs, in their units (0 = off)"},
    "seed": {"type": "int", "min": 0, "max": 2**62, "nullable": True, "default": None,
             "help": "seed of the noise's own generator (default: from torch.initial_seed())"},
}
SMOOTH_SCHEMA: dict[str, dict[str, Any]] = {
    "eps": {"type": "float", "min": 0.0, "max": 1.0, "max_open": True, "default": 0.1, "required": True,
            "help": "probability mass spread uniformly over the classes (0 = off)"},
}
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


# ---------------------------------------------------------------------------- the input side
class InputSide:
    """Mixup's input half and the input noise of one model (a forward pre-hook while on)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = weakref.ref(model)
        self.alpha = 0.0
        self.std = 0.0
        self.owner: RunContext | None = None
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
        self._handle: Any = None
        self._detach: _Detach | None = None

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
        if on and self._handle is None and m is not None:
            self._handle = m.register_forward_pre_hook(self, with_kwargs=True)  # after the probe's: it records the user's batch
            self._detach = _register_detach(self.owner, self._remove)
        elif not on:
            self._remove()
        if self.alpha <= 0:
            self.pending = None

    def _remove(self) -> None:
        h, self._handle = self._handle, None
        if h is not None:
            h.remove()
        d, self._detach = self._detach, None
        _unregister_detach(self.owner, d)
        self.pending = None

    def _noise_gen(self, device: torch.device) -> torch.Generator:
        key = str(device)
        g = self.noise_gens.get(key)
        if g is None:
            g = self.noise_gens[key] = torch.Generator(device=device).manual_seed(self.noise_seed)
        return g

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not owner_alive(self.owner):
            self._remove()
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


class LossSide:
    """Mixup's loss half and the hooked label smoothing of one loss module (a forward hook)."""

    def __init__(self, loss_fn: nn.Module) -> None:
        self.loss = weakref.ref(loss_fn)
        self.mix: weakref.ref[InputSide] | None = None
        self.eps = 0.0  # hooked smoothing (nll / binary); CrossEntropyLoss uses its attribute
        self.kind = ""
        self.owner: RunContext | None = None
        self.seen: set[str] = set()
        self._handle: Any = None
        self._detach: _Detach | None = None

    def sync(self) -> None:
        m = self.loss()
        on = self.mix is not None or self.eps > 0
        if on and self._handle is None and m is not None:
            self._handle = m.register_forward_hook(self, prepend=True)  # before the probe's: it records this loss
            self._detach = _register_detach(self.owner, self._remove)
        elif not on:
            self._remove()

    def _remove(self) -> None:
        h, self._handle = self._handle, None
        if h is not None:
            h.remove()
        d, self._detach = self._detach, None
        _unregister_detach(self.owner, d)

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if not owner_alive(self.owner):
            self._remove()
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


def _check_model(model: Any, name: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} needs the model (an nn.Module), got {type(model).__name__}")
    return model


def _check_batch(probe: RunContext | None, name: str) -> None:
    """With a probe that has seen batches: refuse what cannot work on them (before anything changes)."""
    if probe is None:
        return
    batches = list(getattr(probe, "recent_batches", ()))
    if not batches:
        return
    b = batches[-1]
    x = _primary(tuple(b.args), dict(b.kwargs))
    if x is None or not x.is_floating_point():
        what = "no tensor" if x is None else f"{x.dtype} tensors"
        raise ValueError(f"{name}: the model's inputs are {what}, not a floating batch; {name} is defined on "
                         "continuous inputs (for token ids, regularize the embeddings instead, e.g. add_dropout after them)")
    if name == "mixup" and probe.step_count >= 1 and all(bb.target is None for bb in batches):
        raise ValueError(
            "mixup: the probe's loss module has not been called on the recent training batches (is the loss computed "
            "with a function such as F.cross_entropy?); mixup mixes the targets through the loss module: compute the "
            "loss with the module given to Probe(..., loss_fn=...)")


# ---------------------------------------------------------------------------- public functions
def mixup_(model: nn.Module, loss_fn: nn.Module, alpha: float = 0.2, *, probe: RunContext | None = None,
           seed: int | None = None) -> Applied:
    """Switch mixup on for the training calls of ``model`` / ``loss_fn`` (``alpha=0``: off).

    See the module docstring.  Undo restores the previous setting (off, or the previous alpha).
    """
    model = _check_model(model, "mixup")
    if not isinstance(loss_fn, nn.Module):
        raise TypeError(
            "mixup needs the loss module the training loop calls (e.g. nn.CrossEntropyLoss()): its targets are mixed "
            f"through a hook on it; got {type(loss_fn).__name__}. A loss computed with F.cross_entropy cannot be hooked: "
            "use the module, and give it to the probe (loss_fn=...)")
    p = validate_params("mixup", MIXUP_SCHEMA, {"alpha": alpha, "seed": seed})
    if p["alpha"] > 0:
        _check_batch(probe, "mixup")
    side, lside = _input_side(model), _loss_side(loss_fn)
    before = (side.alpha, side.owner, side.loss, side.blocked, side.unpaired, side.paired, side.mix_rng, side.perm_gen)
    lbefore = (lside.mix, lside.owner)
    try:
        side.alpha = p["alpha"]
        side.blocked, side.unpaired, side.paired = False, 0, 0
        if p["alpha"] > 0:
            side.owner, side.loss = probe, weakref.ref(loss_fn)
            side.seed_mixup(p["seed"])
            lside.mix = weakref.ref(side)
            lside.owner = probe if lside.owner is None or not owner_alive(lside.owner) else lside.owner
        else:
            lside.mix = None
        side.sync()
        lside.sync()
    except BaseException:
        _restore_mix(side, lside, before, lbefore)
        raise

    def undo() -> None:
        _restore_mix(side, lside, before, lbefore)

    msg = (f"mixup on (alpha {p['alpha']:g}): training batches mixed with lam ~ Beta({p['alpha']:g}, {p['alpha']:g})"
           if p["alpha"] > 0 else "mixup off")
    return Applied("mixup", p, undo, message=msg, probe=probe, details={"alpha_before": before[0], "loss": type(loss_fn).__name__},
                   touches={f"mixup{id(model)}"})


def _restore_mix(side: InputSide, lside: LossSide, before: tuple[Any, ...], lbefore: tuple[Any, ...]) -> None:
    (side.alpha, side.owner, side.loss, side.blocked, side.unpaired, side.paired, side.mix_rng, side.perm_gen) = before
    lside.mix, lside.owner = lbefore
    side.pending = None
    side.sync()
    lside.sync()


def input_noise_(model: nn.Module, std: float = 0.1, *, probe: RunContext | None = None, seed: int | None = None) -> Applied:
    """Add Gaussian noise of standard deviation ``std`` to the floating inputs of the training calls
    of ``model`` (``std=0``: off).  Undo restores the previous setting."""
    model = _check_model(model, "input_noise")
    p = validate_params("input_noise", NOISE_SCHEMA, {"std": std, "seed": seed})
    if p["std"] > 0:
        _check_batch(probe, "input_noise")
    side = _input_side(model)
    before = (side.std, side.noise_seed, side.noise_gens, side.owner)
    try:
        side.std = p["std"]
        if p["std"] > 0:
            if probe is not None or not owner_alive(side.owner):
                side.owner = probe
            side.seed_noise(p["seed"])
        side.sync()
    except BaseException:
        side.std, side.noise_seed, side.noise_gens, side.owner = before
        side.sync()
        raise

    def undo() -> None:
        side.std, side.noise_seed, side.noise_gens, side.owner = before
        side.sync()

    msg = f"input noise on (std {p['std']:g})" if p["std"] > 0 else "input noise off"
    return Applied("input_noise", p, undo, message=msg, probe=probe, details={"std_before": before[0]},
                   touches={f"noise{id(model)}"})


def label_smoothing_(loss_fn: nn.Module, eps: float = 0.1, *, probe: RunContext | None = None) -> Applied:
    """Label smoothing ``eps`` on ``loss_fn`` (``eps=0``: off); see the module docstring for the
    losses it is defined on.  Undo restores the previous value."""
    kind = smoothing_kind(loss_fn)
    p = validate_params("label_smoothing", SMOOTH_SCHEMA, {"eps": eps})
    if kind == "attribute":
        ce: Any = loss_fn
        old = float(ce.label_smoothing)
        ce.label_smoothing = p["eps"]

        def undo() -> None:
            ce.label_smoothing = old
    else:
        lside = _loss_side(loss_fn)
        lbefore = (lside.eps, lside.kind, lside.owner)
        old = lbefore[0]
        try:
            lside.eps, lside.kind = p["eps"], kind
            if lside.owner is None or not owner_alive(lside.owner):
                lside.owner = probe
            lside.sync()
        except BaseException:
            lside.eps, lside.kind, lside.owner = lbefore
            lside.sync()
            raise

        def undo() -> None:
            lside.eps, lside.kind, lside.owner = lbefore
            lside.sync()

    how = {"attribute": "CrossEntropyLoss.label_smoothing", "nll": "NLL + uniform term", "binary": "targets y(1-eps)+eps/2"}[kind]
    msg = f"label smoothing {old:g} -> {p['eps']:g} ({how})"
    return Applied("label_smoothing", p, undo, message=msg, probe=probe,
                   details={"eps_before": old, "how": how, "loss": type(loss_fn).__name__}, touches={f"smooth{id(loss_fn)}"})


# ---------------------------------------------------------------------------- actions
def _needs_loss(name: str) -> Callable[[RunContext, dict[str, Any]], None]:
    def check(ctx: RunContext, p: dict[str, Any]) -> None:
        if ctx.loss_fn is None:
            raise ValueError(
                f"{name} needs the probe to know the loss module: trainscope.watch(model, optimizer, "
                "loss_fn=nn.CrossEntropyLoss()) and compute the loss with that module (F.cross_entropy cannot be hooked)")
        if name == "label_smoothing":
            smoothing_kind(ctx.loss_fn)
        elif not isinstance(ctx.loss_fn, nn.Module):
            raise ValueError(f"{name} needs a loss module (nn.Module), the probe has {type(ctx.loss_fn).__name__}")
        value = p.get("alpha", p.get("eps", 0.0))
        if name == "mixup" and value > 0:
            _check_batch(ctx, name)
    return check


def _check_noise(ctx: RunContext, p: dict[str, Any]) -> None:
    if p["std"] > 0:
        _check_batch(ctx, "input_noise")


@action("mixup", label="Mixup", category="regularization", schema=MIXUP_SCHEMA,
        description="Mix training batches with a permutation of themselves, lam ~ Beta(alpha, alpha), inputs and "
                    "targets (Zhang et al. 2017); 0 = off.",
        check=_needs_loss("mixup"), order=1200)
def _run_mixup(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return mixup_(ctx.model, ctx.loss_fn, p["alpha"], seed=p["seed"], probe=ctx)  # type: ignore[arg-type]


@action("input_noise", label="Input noise", category="regularization", schema=NOISE_SCHEMA,
        description="Add Gaussian noise N(0, std^2) to the floating inputs of training batches; 0 = off.",
        check=_check_noise, order=1201)
def _run_noise(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return input_noise_(ctx.model, p["std"], seed=p["seed"], probe=ctx)


@action("label_smoothing", label="Label smoothing", category="regularization", schema=SMOOTH_SCHEMA,
        description="Spread eps of the target probability uniformly over the classes (CrossEntropyLoss's own "
                    "label_smoothing; NLLLoss and BCE through a hook); 0 = off.",
        check=_needs_loss("label_smoothing"), order=1202)
def _run_smoothing(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return label_smoothing_(ctx.loss_fn, p["eps"], probe=ctx)  # type: ignore[arg-type]

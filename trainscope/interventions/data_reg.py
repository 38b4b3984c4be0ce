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
(mixup's loss, the hooked smoothing; both in :mod:`._data_reg_hooks`), installed only while one
of them is on -- nothing is installed, and nothing costs, when they are off.  Mixup and noise act
only on *training* calls (the model in training mode, gradients enabled, the owning probe not
paused): evaluation, validation, the LR finder and the checks see the data unchanged.  The probe's own hooks run
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

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from ._base import Applied, owner_alive, validate_params
from ._data_reg_hooks import SMOOTH_KINDS as SMOOTH_KINDS  # re-exported (the names this module had)
from ._data_reg_hooks import InputSide, LossSide, _input_side, _loss_side, _primary, smoothing_kind
from ._data_reg_hooks import _seed as _seed  # re-exported
from ._data_reg_hooks import state as state  # re-exported
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

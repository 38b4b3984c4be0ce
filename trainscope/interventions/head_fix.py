"""Live, undoable fixes of the output layer, the loss and the targets -- the faults that otherwise
need a code change (a softmax over one unit, a sigmoid before cross-entropy, a regression loss on
class labels, raw regression targets in the thousands).

* ``set_output_activation(layer, to, dim)``: a forward hook on the named module (the model's output
  activation) replaces its output by ``to`` applied to its *input*: ``identity`` removes it (a
  softmax over one unit, a ReLU / sigmoid before cross-entropy, a bounded output on a regression),
  ``sigmoid`` / ``tanh`` / ``softmax`` / ``log_softmax`` (over ``dim``) swap it.  The module must
  be called with one tensor and return one of the same shape (an activation); a call that does not
  is left unchanged and said once (``probe.errors``).
* ``set_loss(kind, input, reduction)``: a forward hook on the probe's loss module (the
  ``nn.Module`` the loop calls, ``Probe(..., loss_fn=...)``) returns the chosen loss of the same
  ``(prediction, target)``: ``cross_entropy`` (``input`` says what the prediction is: ``logits``,
  ``probabilities`` -- then ``-log p`` of the true class, the cross-entropy of the logits that made
  them, or ``log_probabilities``), ``bce_with_logits``, ``bce`` (on probabilities), ``mse``, ``l1``,
  ``smooth_l1``.  Targets are converted where that is defined: one-hot / soft rows -> the soft
  cross-entropy, integral float class indices -> long, class indices -> one-hot floats for BCE / MSE
  over C outputs, a ``(N,)`` target for a ``(N, 1)`` prediction -> ``(N, 1)`` (no broadcasting).
  Refused, with the reason, where the conversion is undefined (cross-entropy over one output, BCE on
  targets outside [0, 1]...), judged on the latest loss inputs the probe recorded.
* ``standardize_targets(mean, std)``: regression targets far from unit scale.  Standardizing the
  targets alone would leave the model predicting in standardized units (the user's metric and
  predictions would be wrong); so instead the model's output becomes ``head(x) * std + mean`` (a
  forward hook on the model) -- the predictions keep the targets' units everywhere, in evaluation
  too -- and the loss is divided by ``std ** 2`` (MSE, Huber) or ``std`` (L1, SmoothL1).  For MSE /
  L1 that is exactly the loss and the gradients of training the same network on standardized
  targets, ``(y - mean) / std``, and reading its output back with ``* std + mean``.  ``mean`` /
  ``std`` default to the statistics of the targets in the probe's recent training batches.  The
  loss the probe records is in standardized units from then on (a drop at the intervention), and
  the optimizer state that follows the gradients' scale (Adam's moments, RMSprop's average, SGD's
  momentum) is rescaled with the loss (undo scales it back), or Adam would take ~1/(1 - beta2)
  steps to notice the smaller gradients.

(``standardize_inputs`` lives in :mod:`trainscope.interventions.input_fix`.)  All three act on every call (training and evaluation) while applied; undo removes the hook (when
nothing else of this module uses it), so the program is exactly the user's again.  Nothing is
installed, and nothing costs, while none is applied.  An error inside a hook is recorded in
``probe.errors`` and that call keeps its original output: training never sees it.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import Applied, opt_state_keys, owner_alive, report_error, resolve_modules
from ._data_reg_hooks import OwnedHook, _note
from ._spec import action

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["ACTIVATIONS", "LOSS_KINDS", "set_loss_", "set_output_activation_", "standardize_targets_"]

ACTIVATIONS = ("identity", "sigmoid", "tanh", "softmax", "log_softmax")
LOSS_KINDS = ("cross_entropy", "bce_with_logits", "bce", "mse", "l1", "smooth_l1")
LOSS_INPUTS = ("logits", "probabilities", "log_probabilities")
REGRESSION = {"MSELoss": 2, "HuberLoss": 2, "L1Loss": 1, "SmoothL1Loss": 1}
"""Regression losses standardize_targets supports, and the power of ``std`` their loss scales with."""

ACT_SCHEMA: dict[str, dict[str, Any]] = {
    "layer": {"type": "layer", "required": True, "help": "the output activation module (e.g. 'head')"},
    "to": {"type": "choice", "choices": list(ACTIVATIONS), "default": "identity", "required": True,
           "help": "what the module computes from its input instead (identity: no activation)"},
    "dim": {"type": "int", "min": -8, "max": 8, "default": 1, "help": "the class dimension of softmax / log_softmax"},
}
LOSS_SCHEMA: dict[str, dict[str, Any]] = {
    "kind": {"type": "choice", "choices": list(LOSS_KINDS), "required": True, "help": "the loss to compute instead"},
    "input": {"type": "choice", "choices": list(LOSS_INPUTS), "default": "logits",
              "help": "what the prediction is (cross_entropy: logits, probabilities or log-probabilities)"},
    "reduction": {"type": "choice", "choices": ["mean", "sum"], "default": "mean", "help": "how the batch is reduced"},
}
TARGETS_SCHEMA: dict[str, dict[str, Any]] = {
    "mean": {"type": "float", "nullable": True, "default": None, "min": -1e30, "max": 1e30,
             "help": "the targets' mean (default: measured on the recent training batches)"},
    "std": {"type": "float", "nullable": True, "default": None, "min": 0.0, "min_open": True, "max": 1e30,
            "help": "the targets' standard deviation (default: measured on the recent training batches)"},
}


# ---------------------------------------------------------------------------- one hook per module
class _Fixes(OwnedHook):
    """The fixes applied to one module, composed by a single forward hook (installed while any is on).

    On a model / activation module: ``("act", fn)`` entries (the latest wins: output = fn(input))
    then ``("affine", std, mean)`` entries in order.  On a loss module: ``("loss", fn)`` entries (the
    latest wins: output = fn(prediction, target)) then ``("scale", factor)`` entries in order."""

    def __init__(self, module: nn.Module, owner: RunContext | None) -> None:
        super().__init__(owner)
        self.module = weakref.ref(module)
        self.entries: list[tuple[Any, ...]] = []
        self.seen: set[str] = set()

    def add(self, entry: tuple[Any, ...]) -> None:
        self.entries.append(entry)
        self.sync()

    def drop(self, entry: tuple[Any, ...]) -> None:
        self.entries = [e for e in self.entries if e is not entry]
        self.sync()

    def sync(self) -> None:
        m = self.module()
        if self.entries and m is not None:
            self._install(m.register_forward_hook, prepend=True)  # before the probe's: it records the fixed values
        elif not self.entries:
            self.remove()

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if not owner_alive(self.owner):
            self.remove()
            return None
        try:
            return self._apply(module, args, output)
        except Exception as e:
            report_error(self.owner, "head_fix", e, self.seen)
            return None

    def _apply(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        out, changed = output, False
        acts = [e for e in self.entries if e[0] in ("act", "loss")]
        if acts:
            kind, fn = acts[-1][0], acts[-1][1]
            if kind == "act":
                x = args[0] if args else None
                if len(args) != 1 or not isinstance(x, Tensor) or not isinstance(output, Tensor) or x.shape != output.shape:
                    _note(self.owner, "set_output_activation", f"set_output_activation: `{type(module).__name__}` was called "
                          "without one tensor of its output's shape (not an activation?); its output was left unchanged",
                          self.seen, "act-args")
                    return None
                out, changed = fn(x), True
            else:
                if len(args) < 2 or not isinstance(args[0], Tensor) or not isinstance(args[1], Tensor):
                    _note(self.owner, "set_loss", f"set_loss: {type(module).__name__} was called without (prediction, "
                          "target) tensors; its loss was left unchanged", self.seen, "loss-args")
                    return None
                out, changed = fn(args[0], args[1]), True
        for e in self.entries:
            if e[0] == "affine" and not (isinstance(out, Tensor) and out.is_floating_point()):
                _note(self.owner, "standardize_targets", f"standardize_targets: the model returned "
                      f"{type(out).__name__}, not a floating tensor, so its output could not be mapped back to the "
                      "targets' units while the loss is still divided by std^p: undo standardize_targets (it needs "
                      "a model that returns its prediction as one tensor)", self.seen, "affine-output")
            elif e[0] == "affine":
                out, changed = out * e[1] + e[2], True
            elif e[0] == "scale" and isinstance(out, Tensor):
                out, changed = out * e[1], True
        return out if changed else None


_REG: weakref.WeakKeyDictionary[nn.Module, _Fixes] = weakref.WeakKeyDictionary()


def _fixes(module: nn.Module, owner: RunContext | None) -> _Fixes:
    f = _REG.get(module)
    if f is None:
        f = _REG[module] = _Fixes(module, owner)
    elif owner is not None and not owner_alive(f.owner):
        f.owner = owner
    return f


def _applied(name: str, p: dict[str, Any], fx: _Fixes, entry: tuple[Any, ...], key: str, msg: str,
             probe: RunContext | None, details: dict[str, Any]) -> Applied:
    fx.add(entry)

    def undo() -> None:
        fx.drop(entry)

    return Applied(name, p, undo, message=msg, probe=probe, details=details, touches={key})


# ---------------------------------------------------------------------------- set_output_activation
def _act_fn(to: str, dim: int) -> Callable[[Tensor], Tensor]:
    if to == "identity":
        return lambda x: x
    if to == "sigmoid":
        return torch.sigmoid
    if to == "tanh":
        return torch.tanh
    if to == "softmax":
        return lambda x: torch.softmax(x, dim=dim if x.dim() > dim >= -x.dim() else -1)
    return lambda x: torch.log_softmax(x, dim=dim if x.dim() > dim >= -x.dim() else -1)


def _check_layer(model: nn.Module, layer: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"set_output_activation needs the model (an nn.Module), got {type(model).__name__}")
    if layer == "":
        raise ValueError("set_output_activation: layer must name the output activation module, not the whole model")
    (_, mod), = resolve_modules(model, [layer], "set_output_activation: layer")
    names = [n for n, m in model.named_modules(remove_duplicate=False) if m is mod]
    if len(names) > 1:
        raise ValueError(f"set_output_activation: `{layer}` is the same module as {', '.join(repr(n) for n in names if n != layer)}; "
                         "changing it would change every place it is used. Give the output its own activation module")
    if any(True for _ in mod.children()):
        raise ValueError(f"set_output_activation: `{layer}` ({type(mod).__name__}) contains other modules; name the "
                         "activation module itself (a leaf such as Softmax, Sigmoid, ReLU)")
    return mod


def set_output_activation_(model: nn.Module, layer: str, to: str = "identity", dim: int = 1, *,
                           probe: RunContext | None = None) -> Applied:
    """Make module ``layer`` compute ``to(input)`` instead of its own function (see the module
    docstring).  Undo restores it."""
    from ._base import validate_params

    p = validate_params("set_output_activation", ACT_SCHEMA, {"layer": layer, "to": to, "dim": dim})
    mod = _check_layer(model, p["layer"])
    fx = _fixes(mod, probe)
    what = "no activation" if p["to"] == "identity" else (f"{p['to']}(dim={p['dim']})" if "softmax" in p["to"] else p["to"])
    return _applied("set_output_activation", p, fx, ("act", _act_fn(p["to"], p["dim"])), f"headact{id(mod)}",
                    f"`{p['layer']}` ({type(mod).__name__}) now outputs {what} of its input", probe,
                    {"layer": p["layer"], "module": type(mod).__name__, "to": p["to"]})


def _check_act(ctx: RunContext, p: dict[str, Any]) -> None:
    _check_layer(ctx.model, p["layer"])


@action("set_output_activation", label="Change the output activation", category="head", schema=ACT_SCHEMA, order=180,
        description="Replace the output activation (e.g. remove a softmax over one unit or a sigmoid before "
                    "cross-entropy) by a forward hook; undo removes it.", check=_check_act)
def _run_set_output_activation(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return set_output_activation_(ctx.model, p["layer"], p["to"], p["dim"], probe=ctx)


# ---------------------------------------------------------------------------- set_loss
def _latest_loss_inputs(probe: RunContext | None) -> dict[str, Any]:
    if probe is None:
        return {}
    h = probe.history
    for rec in (h.latest, h.first_record):
        if rec is not None and rec.loss_inputs:
            return dict(rec.loss_inputs)
    return {}


def _plan_loss(kind: str, inp: str, li: dict[str, Any]) -> None:
    """Refuse, with the reason, a loss whose target conversion is undefined on what the loss last
    received (``li``: the probe's summary of the latest loss inputs; nothing to judge when empty)."""
    if not li:
        return
    ps = tuple(li.get("pred_shape") or ())
    ts = tuple(li.get("target_shape") or ()) if li.get("target_shape") is not None else None
    tlo, thi = float(li.get("target_min", math.nan)), float(li.get("target_max", math.nan))
    integral = float(li.get("target_frac_dev", 1.0)) == 0.0
    same = ts is not None and ts == ps
    if kind == "cross_entropy":
        if len(ps) < 2 or ps[1] < 2:
            raise ValueError(f"set_loss: cross_entropy needs one output per class (prediction {ps}); over one output it "
                             "is always 0. For a binary task use bce_with_logits (or bce on probabilities)")
        if ts is not None and not same and not (integral and tlo >= 0 and thi < ps[1]):
            raise ValueError(f"set_loss: cross_entropy needs class indices in 0..{ps[1] - 1} or one row per example "
                             f"(target {ts}, values {tlo:g} to {thi:g}, prediction {ps})")
        if same and (tlo < 0 or thi > 1):
            raise ValueError(f"set_loss: cross_entropy on targets of the prediction's shape needs one-hot / probability "
                             f"rows in [0, 1]; got {tlo:g} to {thi:g}")
    elif kind in ("bce", "bce_with_logits"):
        classes = ts is not None and len(ps) >= 2 and ps[1] >= 2 and len(ts) == len(ps) - 1 and integral and tlo >= 0 and thi < ps[1]
        if not classes and (tlo < 0 or thi > 1):
            raise ValueError(f"set_loss: {kind} needs targets in [0, 1] (got {tlo:g} to {thi:g}): class indices need "
                             "cross_entropy over one output per class, regression targets a regression loss (mse)")
    if kind == "bce" and inp == "logits" and (float(li.get("pred_min", 0.0)) < 0 or float(li.get("pred_max", 0.0)) > 1):
        raise ValueError("set_loss: bce takes probabilities in [0, 1] but the prediction goes outside; use "
                         "bce_with_logits on the raw outputs")


def _targets_like(y: Tensor, pred: Tensor) -> Tensor:
    """``y`` shaped / typed for an element-wise loss on ``pred`` (``want``: float)."""
    if not y.is_floating_point() and pred.dim() >= 2 and y.dim() == pred.dim() - 1 and pred.shape[1] >= 2:
        return F.one_hot(y.long(), pred.shape[1]).movedim(-1, 1).to(pred.dtype)  # class indices -> one-hot
    t = y.to(pred.dtype)
    if t.shape != pred.shape and t.numel() == pred.numel():
        t = t.reshape(pred.shape)  # (N,) for (N, 1): no broadcasting
    return t


def _loss_fn(kind: str, inp: str, reduction: str) -> Callable[[Tensor, Tensor], Tensor]:
    def red(v: Tensor) -> Tensor:
        return v.mean() if reduction == "mean" else v.sum()

    def ce(pred: Tensor, y: Tensor) -> Tensor:
        logp = (pred if inp == "log_probabilities" else
                torch.log(pred.clamp_min(torch.finfo(pred.dtype).tiny)) if inp == "probabilities" else
                torch.log_softmax(pred, dim=1))
        if y.shape == pred.shape and y.is_floating_point():
            return red(-(y.to(logp.dtype) * logp).sum(dim=1))  # one-hot / soft rows
        idx = y.long()
        if idx.dim() == logp.dim() and idx.shape[1] == 1:
            idx = idx.squeeze(1)
        return F.nll_loss(logp, idx, reduction=reduction)

    def bce(pred: Tensor, y: Tensor) -> Tensor:
        t = _targets_like(y, pred)
        if kind == "bce_with_logits":
            return F.binary_cross_entropy_with_logits(pred, t, reduction=reduction)
        p = pred.exp() if inp == "log_probabilities" else pred
        return F.binary_cross_entropy(p.clamp(0.0, 1.0), t, reduction=reduction)

    def reg(pred: Tensor, y: Tensor) -> Tensor:
        t = _targets_like(y, pred)
        f = {"mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}[kind]
        return f(pred, t, reduction=reduction)

    return ce if kind == "cross_entropy" else bce if kind.startswith("bce") else reg


def _check_loss_module(loss_fn: Any, name: str) -> nn.Module:
    if not isinstance(loss_fn, nn.Module):
        raise ValueError(f"{name} needs the loss module the training loop calls (e.g. nn.MSELoss(), given to "
                         f"Probe(..., loss_fn=...)); got {type(loss_fn).__name__}. A loss computed with a function "
                         "(F.mse_loss) cannot be changed live: change it in the code")
    return loss_fn


def set_loss_(loss_fn: nn.Module, kind: str, input: str = "logits", reduction: str = "mean", *,
              probe: RunContext | None = None) -> Applied:
    """Make ``loss_fn`` compute the ``kind`` loss of its ``(prediction, target)`` (see the module
    docstring).  Undo restores the user's loss."""
    from ._base import validate_params

    p = validate_params("set_loss", LOSS_SCHEMA, {"kind": kind, "input": input, "reduction": reduction})
    mod = _check_loss_module(loss_fn, "set_loss")
    _plan_loss(p["kind"], p["input"], _latest_loss_inputs(probe))
    fx = _fixes(mod, probe)
    before = type(mod).__name__
    return _applied("set_loss", p, fx, ("loss", _loss_fn(p["kind"], p["input"], p["reduction"])), f"lossfix{id(mod)}",
                    f"{before} now computes {p['kind']} ({p['reduction']}) of its {p['input']}" if p["kind"] == "cross_entropy"
                    else f"{before} now computes {p['kind']} ({p['reduction']})", probe, {"loss_before": before, "loss_kind": p["kind"], "loss_input": p["input"], "loss_reduction": p["reduction"]})


def _check_set_loss(ctx: RunContext, p: dict[str, Any]) -> None:
    _check_loss_module(ctx.loss_fn, "set_loss")
    _plan_loss(p["kind"], p["input"], _latest_loss_inputs(ctx))


@action("set_loss", label="Change the loss", category="head", schema=LOSS_SCHEMA, order=181,
        description="Compute another loss of the same (prediction, target) -- e.g. cross-entropy instead of MSE "
                    "on class labels, BCE on one output -- by a hook on the loss module; undo removes it.",
        check=_check_set_loss)
def _run_set_loss(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return set_loss_(ctx.loss_fn, p["kind"], p["input"], p["reduction"], probe=ctx)


# ---------------------------------------------------------------------------- standardize_targets
def _target_stats(probe: RunContext | None) -> tuple[float, float]:
    ts = [b.target for b in (probe.recent_batches if probe is not None else ()) if isinstance(b.target, Tensor)]
    if not ts:
        raise ValueError("standardize_targets: no training batch with targets seen yet (train a step first), "
                         "or give mean= and std=")
    if not all(t.is_floating_point() for t in ts):
        raise ValueError("standardize_targets: the targets are not floating point (class labels?); it is defined for "
                         "regression targets")
    y = torch.cat([t.detach().reshape(-1).double().cpu() for t in ts])
    y = y[torch.isfinite(y)]
    if y.numel() < 2:
        raise ValueError("standardize_targets: fewer than 2 finite target values seen; give mean= and std=")
    return float(y.mean()), float(y.std())


def _plan_targets(model: Any, loss_fn: Any, mean: float | None, std: float | None,
                  probe: RunContext | None) -> tuple[nn.Module, int, float, float]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"standardize_targets needs the model (an nn.Module), got {type(model).__name__}")
    mod = _check_loss_module(loss_fn, "standardize_targets")
    power = REGRESSION.get(type(mod).__name__)
    if power is None:
        raise ValueError(f"standardize_targets is defined for regression losses ({', '.join(REGRESSION)}); the loss is "
                         f"{type(mod).__name__}")
    if mean is None or std is None:
        m, s = _target_stats(probe)
        mean = m if mean is None else mean
        std = s if std is None else std
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"standardize_targets: the targets' std must be finite and > 0 (mean {mean}, std {std}): "
                         "constant targets cannot be standardized")
    return mod, power, float(mean), float(std)


_STATE_SCALE = {"exp_avg": 1, "grad_avg": 1, "exp_inf": 1, "exp_avg_sq": 2, "max_exp_avg_sq": 2, "square_avg": 2, "sum": 2}
"""Optimizer state that follows the gradient's scale (Adam / AdamW / Adamax / RMSprop / Adagrad...), and
its power; SGD's ``momentum_buffer`` is a gradient too (power 1)."""


def _rescale_state(optimizer: Any, c: float) -> int:
    """Scale the gradient-following optimizer state by ``c`` (the change of the loss's scale), so an
    adaptive optimizer's step size is not stuck at the old gradients' scale.  Returns the tensors changed."""
    if optimizer is None:
        return 0
    n = 0
    sgd = isinstance(optimizer, torch.optim.SGD)
    with torch.no_grad():
        for st in optimizer.state.values():
            for k, v in st.items():
                power = _STATE_SCALE.get(k, 1 if (sgd and k == "momentum_buffer") else 0)
                if power and isinstance(v, Tensor) and v.is_floating_point():
                    v.mul_(c**power)
                    n += 1
    return n


def standardize_targets_(model: nn.Module, loss_fn: nn.Module, mean: float | None = None, std: float | None = None, *,
                         probe: RunContext | None = None) -> Applied:
    """Train as on standardized targets while the model's predictions keep the targets' units (see
    the module docstring).  Undo restores the model's output and the loss."""
    from ._base import validate_params

    p = validate_params("standardize_targets", TARGETS_SCHEMA, {"mean": mean, "std": std})
    mod, power, mu, sd = _plan_targets(model, loss_fn, p["mean"], p["std"], probe)
    undo = _install_targets(model, mod, power, mu, sd, probe)
    opt = probe.optimizer if probe is not None else None
    return Applied("standardize_targets", {"mean": mu, "std": sd}, undo, probe=probe,
                   message=(f"the model's output is now out * {sd:.4g} + {mu:.4g} and the {type(mod).__name__} is divided by "
                            f"{sd:.4g}^{power}: training as on standardized targets, predictions in the targets' units"),
                   details={"mean": mu, "std": sd, "loss": type(mod).__name__, "power": power},
                   touches={f"headout{id(model)}", f"lossfix{id(mod)}", *(opt_state_keys(opt) if opt is not None else ())})


def _install_targets(model: nn.Module, mod: nn.Module, power: int, mu: float, sd: float,
                     probe: RunContext | None) -> Callable[[], None]:
    out_fx, loss_fx = _fixes(model, probe), _fixes(mod, probe)
    aff, scale = ("affine", sd, mu), ("scale", 1.0 / sd**power)
    opt = probe.optimizer if probe is not None else None
    out_fx.add(aff)
    loss_fx.add(scale)
    _rescale_state(opt, scale[1])  # Adam's second moments of the raw loss would shrink its steps for ~1/(1-beta2) steps

    def undo() -> None:
        out_fx.drop(aff)
        loss_fx.drop(scale)
        _rescale_state(opt, 1.0 / scale[1])

    return undo


def _check_targets(ctx: RunContext, p: dict[str, Any]) -> None:
    _plan_targets(ctx.model, ctx.loss_fn, p["mean"], p["std"], ctx)


@action("standardize_targets", label="Standardize the targets", category="head", schema=TARGETS_SCHEMA, order=182,
        description="Regression targets far from unit scale: train as on (y - mean) / std while the model's "
                    "predictions keep the targets' units (output * std + mean, loss / std^2); undo removes it.",
        check=_check_targets)
def _run_standardize_targets(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return standardize_targets_(ctx.model, ctx.loss_fn, p["mean"], p["std"], probe=ctx)

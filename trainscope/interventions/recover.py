"""``recover``: bring back finite weights after a blow-up, and apply the fix for its cause in the
same undoable click.

A fix for the cause of a blow-up (a lower learning rate, standardized inputs) applied to weights
that are already NaN / Inf -- or finite but blown up by orders of magnitude, every ReLU dead --
changes nothing: NaN stays NaN, and a dead layer stays dead.  :func:`recover_` first restores
usable weights, then applies the follow-up fix ``then`` (any whitelisted action, with
``then_params``), all or nothing, as one entry on the timeline that one undo reverts:

* **what is damaged** (:func:`damage`): a parameter or buffer with a non-finite value; a weight
  matrix (2-D or more) whose RMS is at least :data:`DAMAGE_RATIO` (1000x) the RMS its module's own
  ``reset_parameters()`` gives (a fresh default init; no sane training moves a layer that far);
  optimizer state (moments, momentum) with a non-finite value;
* **restored from a snapshot** when the model's snapshot store (``snapshots(model)``: the
  ``snapshot`` action, early stopping's ``best``) holds one, taken with the same tensors, whose
  damaged tensors were all finite and not blown up: the latest such one is rolled back (weights,
  and the optimizer when the snapshot has it and it is still compatible);
* **otherwise re-initialized**: every module owning a damaged tensor gets its default init
  (``reset_parameters()``; a module without one: PyTorch's Linear default -- Kaiming-uniform with
  ``a=sqrt(5)`` -- for matrices, 0 for biases, 1 for other vectors), drawn on a forked random
  stream (the run's random state is left as it was); the optimizer state of every re-initialized
  or non-finite-state parameter is cleared (torch's optimizers rebuild it at the next step);
* **then** ``then`` is validated and applied as the action itself would be (``lr_find`` with
  ``apply="set_lr"`` measures the learning rate on the restored weights; when it gives no
  suggestion, ``fallback_factor`` scales the learning rate instead).

Undo reverts the follow-up fix, then puts back the damaged values and the optimizer state.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ._base import (
    Applied,
    absorb,
    action_context,
    opt_state_keys,
    resolve_modules,
    tensor_keys,
    validate_params,
)
from ._spec import action

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["DAMAGE_RATIO", "FOLLOW_UPS", "Damage", "damage", "recover_"]

DAMAGE_RATIO = 1e3
"""A weight matrix whose RMS is this many times its module's fresh default init is blown up."""
_PREFILTER_RMS = 1.0
"""Only weight matrices with an RMS above this are compared with a fresh init (default inits keep
the RMS at or below 1: Linear / Conv ~1/sqrt(3 fan_in), Embedding 1)."""

FOLLOW_UPS = ("none", "scale_lr", "set_lr", "lr_find", "standardize_inputs", "standardize_targets", "clip_grad",
              "switch_optimizer", "set_loss", "set_output_activation")
"""The fixes ``recover`` can apply after restoring the weights."""

RECOVER_SCHEMA: dict[str, dict[str, Any]] = {
    "then": {"type": "choice", "choices": list(FOLLOW_UPS), "default": "none",
             "help": "the fix for the cause, applied on the restored weights in the same click"},
    "then_params": {"type": "str", "default": "",
                    "help": "the follow-up fix's parameters (a dict, or JSON text such as {\"factor\": 0.1})"},
    "layers": {"type": "layers", "nullable": True, "default": None,
               "help": "also re-initialize these layers (default init), e.g. ones whose units died after too "
                       "large updates: a lower learning rate alone does not revive them"},
    "fallback_factor": {"type": "float", "nullable": True, "default": None, "min": 0.0, "min_open": True, "max": 1.0,
                        "log": True, "help": "when the follow-up changes nothing (the LR finder without a suggestion): "
                                             "scale the learning rate by this instead"},
}


class Damage:
    """What :func:`damage` found: parameter / buffer names and why, and the modules to restore."""

    def __init__(self) -> None:
        self.nonfinite: list[str] = []
        self.blown: list[tuple[str, float]] = []  # (name, RMS / fresh-init RMS)
        self.state: list[str] = []  # parameters whose optimizer state is non-finite
        self.modules: list[tuple[str, nn.Module]] = []
        self.state_params: list[Tensor] = []
        self.asked: list[str] = []  # layers the request names (units that died): always re-initialized

    def __bool__(self) -> bool:
        return bool(self.nonfinite or self.blown or self.state or self.asked)

    def ask(self, modules: list[tuple[str, nn.Module]]) -> None:
        """Add layers the request names (:data:`RECOVER_SCHEMA` ``layers``) to what is restored."""
        have = {id(m) for _, m in self.modules}
        for name, mod in modules:
            self.asked.append(name)
            if id(mod) not in have:
                have.add(id(mod))
                self.modules.append((name, mod))

    def describe(self) -> str:
        parts: list[str] = []
        if self.nonfinite:
            parts.append(f"{_names(self.nonfinite)} non-finite (NaN/Inf)")
        if self.blown:
            worst = max(r for _, r in self.blown)
            parts.append(f"{_names([n for n, _ in self.blown])} blown up ({worst:.3g}x the RMS of a fresh init)"
                         if math.isfinite(worst) else f"{_names([n for n, _ in self.blown])} blown up (RMS overflows)")
        if self.state:
            parts.append(f"the optimizer state of {_names(self.state)} non-finite")
        if self.asked:
            parts.append(f"{_names(self.asked)} to re-initialize (asked for)")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"nonfinite": list(self.nonfinite), "blown": [n for n, _ in self.blown], "state": list(self.state),
                "asked": list(self.asked), "modules": [n for n, _ in self.modules]}


def _names(names: list[str], k: int = 4) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:k])
    return shown + (f" and {len(names) - k} more" if len(names) > k else "")


@contextlib.contextmanager
def _forked_rng(like: Sequence[Tensor]) -> Iterator[None]:
    devices = sorted({t.device.index or 0 for t in like if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        yield


_FRESH: weakref.WeakKeyDictionary[nn.Module, dict[str, float]] = weakref.WeakKeyDictionary()


def _fresh_rms(mod: nn.Module) -> dict[str, float]:
    """RMS of each direct weight matrix of a fresh default init of ``mod`` (a copy; the model and
    the run's random state are untouched; remembered per module).  Empty when the module has no
    ``reset_parameters``."""
    known = _FRESH.get(mod)
    if known is not None:
        return known
    out: dict[str, float] = {}
    if callable(getattr(mod, "reset_parameters", None)):
        own = list(mod.parameters(recurse=False))
        try:
            with torch.no_grad(), _forked_rng(own):
                twin = copy.deepcopy(mod)
                twin.reset_parameters()  # type: ignore[operator]
                out = {n: float(p.detach().double().pow(2).mean().sqrt()) for n, p in twin.named_parameters(recurse=False)
                       if p.dim() >= 2}
        except Exception:  # a module whose copy or reset fails: judged on non-finite values only
            out = {}
    _FRESH[mod] = out
    return out


def damage(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Damage:
    """The damaged parameters, buffers and optimizer state of ``model`` (see the module docstring).
    Reads only; one pass over the tensors, plus a fresh init of the modules whose weight matrices
    are suspiciously large."""
    d = Damage()
    owners: dict[int, tuple[str, nn.Module]] = {}
    checks: list[tuple[str, str, nn.Module, str, Tensor]] = []  # (kind, full name, module, local name, tensor)
    seen: set[int] = set()
    for mname, mod in model.named_modules():
        for local, t in list(mod._parameters.items()) + list(mod._buffers.items()):
            if t is None or id(t) in seen or not t.is_floating_point():
                continue
            seen.add(id(t))
            checks.append(("param" if local in mod._parameters else "buffer", f"{mname}.{local}".lstrip("."), mod, local, t))
    if not checks:
        return d
    with torch.no_grad():
        fin = torch.stack([torch.isfinite(t).all() for *_, t in checks]).cpu().tolist()
        rms = torch.stack([t.detach().float().pow(2).mean().sqrt() if t.dim() >= 2 and t.numel() else
                           torch.zeros((), device=t.device) for *_, t in checks]).cpu().tolist()
    fresh: dict[int, dict[str, float]] = {}
    for (kind, full, mod, local, t), ok, r in zip(checks, fin, rms, strict=True):
        if not ok:
            d.nonfinite.append(full)
            owners.setdefault(id(mod), (full.rsplit(".", 1)[0] if "." in full else "", mod))
            continue
        if kind == "param" and t.dim() >= 2 and not (r <= _PREFILTER_RMS):
            ref = fresh.setdefault(id(mod), _fresh_rms(mod)).get(local)
            if ref is not None and ref > 0 and not (r < DAMAGE_RATIO * ref):
                d.blown.append((full, r / ref if math.isfinite(r) else math.inf))
                owners.setdefault(id(mod), (full.rsplit(".", 1)[0] if "." in full else "", mod))
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        owned: list[Tensor] = []
        flags: list[Tensor] = []
        with torch.no_grad():
            for p, st in list(optimizer.state.items()):
                vals = [v for v in st.values() if isinstance(v, Tensor) and v.is_floating_point() and v.numel()]
                if vals:
                    owned.append(p)
                    flags.append(torch.stack([torch.isfinite(v).all().to(p.device) for v in vals]).all())
            # one transfer for the whole optimizer state (no host sync per parameter)
            ok = torch.stack([f.cpu() for f in flags]).tolist() if len({f.device for f in flags}) > 1 else (
                torch.stack(flags).cpu().tolist() if flags else [])
        bad: list[Tensor] = [p for p, good in zip(owned, ok, strict=True) if not good]
        d.state_params = bad
        d.state = [names.get(id(p), "(a parameter outside the model)") for p in bad]
    d.modules = list(owners.values())
    return d


# ---------------------------------------------------------------------------- restoring
def _default_init(mod: nn.Module) -> None:
    """PyTorch's Linear default for a module without ``reset_parameters``."""
    for name, p in mod.named_parameters(recurse=False):
        if p.dim() >= 2:
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        elif "bias" in name:
            nn.init.zeros_(p)
        else:
            nn.init.ones_(p)
    for name, b in mod.named_buffers(recurse=False):
        if b is not None and b.is_floating_point() and not bool(torch.isfinite(b).all()):
            b.zero_() if "mean" in name or "bias" in name else b.fill_(1.0)


def _clean_snapshot(model: nn.Module, optimizer: Any, d: Damage) -> Any:
    """The latest snapshot that can be written back and whose damaged tensors were sound."""
    from .snapshots import check_rollback, snapshots

    store = snapshots(model)
    bad = set(d.nonfinite) | {n for n, _ in d.blown}
    full = {id(t): f"{m}.{n}".lstrip(".") for m, mod in model.named_modules()
            for n, t in list(mod._parameters.items()) + list(mod._buffers.items()) if t is not None}
    for snap in [*reversed(store.items), *([store.best] if store.best is not None else [])]:
        try:
            check_rollback(model, optimizer, snap.id if snap is not store.best else "best", True)
        except ValueError:
            continue
        sound = True
        for _ref, _name, orig, saved in snap.model.tensors:
            if full.get(id(orig)) in bad and saved.is_floating_point():
                if not bool(torch.isfinite(saved).all()) or (saved.dim() >= 2 and float(saved.float().pow(2).mean().sqrt()) > 1e6):
                    sound = False
                    break
        if sound:
            return snap
    return None


def _restore(model: nn.Module, optimizer: Any, d: Damage, probe: RunContext | None) -> tuple[Callable[[], None], str, set[str], dict[str, Any]]:
    """Bring back usable weights; returns ``(undo, message, touches, details)``."""
    from .snapshots import rollback_, snapshots

    # layers asked for by name (units that died) are re-initialized: a snapshot's copy of them may be dead too
    snap = None if d.asked else _clean_snapshot(model, optimizer, d)
    if snap is not None:
        to = "best" if snap is snapshots(model).best else snap.id
        weights_only = snap.optimizer is None
        if not weights_only:
            try:
                from .snapshots import check_rollback
                check_rollback(model, optimizer, to, False)
            except ValueError:
                weights_only = True
        with action_context():
            rb = rollback_(model, optimizer, to, weights_only=weights_only, probe=probe)
        undo_rb = absorb(rb)
        cleared: dict[Tensor, Any] = {}
        if weights_only and optimizer is not None:  # the kept state followed the blow-up
            cleared = {p: optimizer.state.pop(p) for p in list(optimizer.state)}

        def undo_snapshot() -> None:
            if optimizer is not None:
                for p, st in cleared.items():
                    optimizer.state[p] = st
            undo_rb()

        msg = (f"rolled back to snapshot {snap.id} (step {snap.step}): its weights are sound"
               + ("" if not cleared else f"; optimizer state cleared for {len(cleared)} tensor(s)"))
        return undo_snapshot, msg, set(rb.touches) | (opt_state_keys(optimizer) if optimizer is not None else set()), {
            "restored_from": snap.id, "snapshot_step": snap.step}
    # re-initialize the damaged modules with their default init
    saved: list[tuple[Tensor, Tensor]] = []
    touched: list[Tensor] = []
    defaults: list[str] = []
    ids: set[int] = set()
    for _, mod in d.modules:  # the whole subtree: a module's reset_parameters may reset its children too
        for t in list(mod.parameters()) + list(mod.buffers()):
            if id(t) not in ids:
                ids.add(id(t))
                saved.append((t, t.detach().clone()))
                touched.append(t)
    state_of = {id(p) for p in d.state_params}
    for t in touched:
        if isinstance(t, nn.Parameter):
            state_of.add(id(t))
    popped: dict[Tensor, Any] = {}
    try:
        with torch.no_grad(), _forked_rng(touched):
            for name, mod in d.modules:
                before = dict(mod._parameters.items())
                reset = getattr(mod, "reset_parameters", None)
                if callable(reset):
                    reset()
                else:
                    _default_init(mod)
                    defaults.append(name or type(mod).__name__)
                if any(mod._parameters.get(k) is not v for k, v in before.items()):
                    raise RuntimeError(f"recover: `{name}`.reset_parameters() replaced its parameters instead of "
                                       "re-initializing them in place; roll back to a snapshot instead")
                bad = [k for k, v in mod._parameters.items() if v is not None and not bool(torch.isfinite(v).all())]
                if bad:
                    raise RuntimeError(f"recover: `{name}` is still non-finite after its default init ({bad})")
        if optimizer is not None:
            for p in list(optimizer.state):
                if id(p) in state_of:
                    popped[p] = optimizer.state.pop(p)
    except BaseException:
        with torch.no_grad():
            for t, old in saved:
                t.copy_(old)
        if optimizer is not None:
            for p, st in popped.items():
                optimizer.state[p] = st
        raise

    def undo() -> None:
        with torch.no_grad():
            for t, old in saved:
                t.copy_(old)
        if optimizer is not None:
            for p, st in popped.items():
                optimizer.state[p] = st

    names = [n or type(m).__name__ for n, m in d.modules]
    msg = (f"re-initialized {_names(names)} with {'their' if len(names) > 1 else 'its'} default init"
           + (f" (no reset_parameters: PyTorch's Linear default for {_names(defaults)})" if defaults else ""))
    if optimizer is not None:
        msg += f"; optimizer state cleared for {len(popped)} tensor(s)"
    touches = tensor_keys(touched) | (opt_state_keys(optimizer, list(popped)) if optimizer is not None else set())
    return undo, msg, touches, {"reinitialized": names}


# ---------------------------------------------------------------------------- the follow-up fix
def _parse_then(then: str, then_params: Any) -> dict[str, Any]:
    if then_params is None or then_params == "":
        return {}
    if isinstance(then_params, str):
        try:
            then_params = json.loads(then_params)
        except ValueError as e:
            raise ValueError(f"recover: then_params must be a dict or JSON text such as {{\"factor\": 0.1}}; {e}") from None
    if not isinstance(then_params, dict):
        raise TypeError(f"recover: then_params must be a dict of {then}'s parameters, got {type(then_params).__name__}")
    if then == "none" and then_params:
        raise ValueError("recover: then_params given without a follow-up action (then=...)")
    return dict(then_params)


def _clean(params: dict[str, Any]) -> dict[str, Any]:
    raw = dict(params)
    lay = raw.get("layers")
    if lay == "all" or (isinstance(lay, (list, tuple)) and "all" in lay):
        raise ValueError("recover: layers='all' would re-initialize the whole model; use reinit for that")
    if isinstance(lay, (list, tuple)) and not lay:
        raw["layers"] = None
    tp = raw.pop("then_params", None)
    p = validate_params("recover", {k: v for k, v in RECOVER_SCHEMA.items() if k != "then_params"}, raw)
    p["then_params"] = _parse_then(p["then"], tp)
    return p


def _then_spec(then: str) -> Any:
    from ..actions import REGISTRY

    spec = REGISTRY.get(then)
    if spec is None:
        raise ValueError(f"recover: the follow-up action {then!r} is not registered")
    return spec


def recover_(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, then: str = "none",
             then_params: dict[str, Any] | str | None = None, fallback_factor: float | None = None,
             layers: Sequence[str] | str | None = (), probe: RunContext | None = None) -> Applied:
    """Restore usable weights (a sound snapshot, else the damaged modules' default init; the
    optimizer state that followed the blow-up cleared), then apply ``then(**then_params)`` -- one
    undoable action (see the module docstring).  Refused, changing nothing, when nothing is damaged
    or when the follow-up is refused."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"recover needs the model (an nn.Module), got {type(model).__name__}")
    p = _clean({"then": then, "then_params": then_params, "fallback_factor": fallback_factor,
                "layers": [layers] if isinstance(layers, str) else list(layers or ())})
    if optimizer is None and probe is not None:
        optimizer = probe.optimizer
    if p["then"] != "none" and probe is None:
        raise ValueError("recover: a follow-up fix (then=...) needs the probe (recover_(..., probe=probe))")
    d = damage(model, optimizer)
    d.ask(_asked(model, p["layers"]))
    if not d:
        raise ValueError("recover: no parameter, buffer or optimizer state is non-finite or blown up "
                         f"(>= {DAMAGE_RATIO:g}x a fresh init) and no layers were named: nothing to recover"
                         + (f"; apply {p['then']} directly" if p["then"] != "none" else ""))
    spec = None
    sub_params: dict[str, Any] = {}
    if p["then"] != "none":
        spec = _then_spec(p["then"])
        sub_params = spec.validate(probe, dict(p["then_params"]))  # refused before anything changes
    what = d.describe()
    undo_w, msg, touches, details = _restore(model, optimizer, d, probe)
    undo_then: Callable[[], None] | None = None
    then_msg = ""
    try:
        if spec is not None:
            sub_params = spec.validate(probe, dict(p["then_params"]))  # on the restored weights
            with action_context():
                out = spec.apply(probe, sub_params)
            sub, sub_details = out if isinstance(out, tuple) else (out, {})
            if isinstance(sub, Applied):
                undo_then = absorb(sub)
                touches |= set(sub.touches)
                then_msg = str(sub_details.get("message") or sub.message or p["then"])
            elif sub is not None and hasattr(sub, "undo"):
                undo_then = sub.undo
                then_msg = str(sub_details.get("message") or p["then"])
            else:
                then_msg = str(sub_details.get("message") or f"{p['then']} changed nothing")
            details["then"] = {"action": p["then"], "params": sub_params,
                               **{k: v for k, v in sub_details.items() if k != "message"}}
        if undo_then is None and p["fallback_factor"] is not None and optimizer is not None:
            from .schedule import scale_lr_

            with action_context():
                fb = scale_lr_(optimizer, p["fallback_factor"], probe=probe)
            undo_then = absorb(fb)
            touches |= set(fb.touches)
            then_msg += f"; so the learning rate was scaled by {p['fallback_factor']:g} instead"
            details["fallback"] = {"action": "scale_lr", "factor": p["fallback_factor"]}
    except BaseException:
        undo_w()
        raise

    def undo() -> None:
        if undo_then is not None:
            undo_then()
        undo_w()

    message = f"{what}: {msg}" + (f"; then {then_msg}" if then_msg else "")
    details.update(damage=d.as_dict())
    return Applied("recover", {**p, "then_params": sub_params if spec is not None else {}}, undo, message=message,
                   details=details, probe=probe, touches=touches, heavy=True)


def _check(ctx: RunContext, p: dict[str, Any]) -> None:
    if not isinstance(ctx.model, nn.Module):
        raise TypeError("recover needs the model (an nn.Module)")
    d = damage(ctx.model, ctx.optimizer)
    d.ask(_asked(ctx.model, p["layers"]))
    if not d:
        raise ValueError("recover: no parameter, buffer or optimizer state is non-finite or blown up "
                         f"(>= {DAMAGE_RATIO:g}x a fresh init) and no layers were named: nothing to recover")
    if p["then"] != "none":
        _then_spec(p["then"]).validate(ctx, dict(p["then_params"]))


def _asked(model: nn.Module, layers: Any) -> list[tuple[str, nn.Module]]:
    """The named layers to re-initialize: modules with parameters ("all" is refused: that is a re-init,
    not a recovery)."""
    names = list(layers) if isinstance(layers, (list, tuple)) else [] if layers in (None, "") else [layers]
    out = resolve_modules(model, names, "recover layers")
    for name, mod in out:
        if not any(True for _ in mod.parameters()):
            raise ValueError(f"recover: layer {name!r} has no parameters to re-initialize (name the layer before "
                             "the activation whose units died)")
    return out


def _clean_and_check(params: dict[str, Any]) -> dict[str, Any]:
    return _clean(params)


@action("recover", label="Recover the weights", category="run", schema=RECOVER_SCHEMA, order=155,
        description="After a blow-up (NaN/Inf or exploded weights): restore usable weights (a sound snapshot, "
                    "else the damaged layers' default init; their optimizer state cleared), then apply the fix "
                    "for the cause in the same click; undo reverts both.", check=_check, clean=_clean_and_check)
def _run_recover(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return recover_(ctx.model, ctx.optimizer, then=p["then"], then_params=p["then_params"],
                    fallback_factor=p["fallback_factor"], layers=p["layers"], probe=ctx)

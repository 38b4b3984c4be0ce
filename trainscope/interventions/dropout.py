"""Dropout: add it after chosen layers or activations, change ``p``, remove it.

**The module tree is not changed.**  Inserting an ``nn.Dropout`` into the model would shift
``nn.Sequential`` indices, rename parameters in ``state_dict`` (breaking checkpoints and the
user's attribute access) and leave the probe tracking stale modules.  Instead ``add_dropout_``
attaches a forward hook to each chosen module that applies ``F.dropout(output, p)`` while that
module is in training mode (``model.eval()`` switches it off as usual).  Consequences:

* ``state_dict`` keys, ``model.fc1`` and every ``Parameter`` stay the same; the probe keeps working;
* the hook runs *first* among the module's forward hooks, so the probe's statistics for that module
  describe its output after dropout -- what the next layer receives;
* only module outputs can be targeted (an activation written as ``F.relu`` inside ``forward`` has no
  module: target the layer before it).

``set_dropout_`` changes ``p`` of the trainscope dropouts *and* of the model's own ``nn.Dropout``
modules (all, or those inside ``layers``).  ``remove_dropout_`` removes trainscope dropouts and
sets ``p = 0`` on the model's own dropout modules (same objects, same tree).  All three are
undoable.  Dropouts added through a probe disappear when the probe is detached (at once).

For a module that returns a tuple (``nn.LSTM``: ``(output, (h, c))``, attention, transformer
blocks) the dropout applies to the first element, the output the next layer reads; the recurrent
state is left alone.  A copy of the model (``copy.deepcopy``, pickle, ``torch.save(model)``)
keeps the same dropout, owned by no probe, and loads where no probe exists.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ._base import Applied, owner_alive, resolve_modules, validate_params
from ._spec import action

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["add_dropout_", "remove_dropout_", "set_dropout_"]

_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_P = {"type": "float", "min": 0.0, "max": 1.0, "max_open": True, "default": 0.2, "help": "drop probability"}
ADD_SCHEMA: dict[str, dict[str, Any]] = {
    "after": {"type": "layers", "required": True, "default": None, "help": "modules whose output gets dropout"},
    "p": _P,
}
SET_SCHEMA: dict[str, dict[str, Any]] = {
    "p": {**_P, "required": True},
    "layers": {"type": "layers", "default": "all", "help": "where (default: every dropout in the model)"},
}
REMOVE_SCHEMA: dict[str, dict[str, Any]] = {
    "layers": {"type": "layers", "default": "all", "help": "where (default: every dropout in the model)"},
}


class DropoutHook:
    """``F.dropout`` on a module's output, while the module is training.

    A tensor output is dropped; for a tuple / list output (``nn.LSTM`` returns
    ``(output, (h, c))``, ``nn.MultiheadAttention`` ``(output, weights)``, transformer blocks
    ``(hidden, ...)``) the first element is -- the sequence / hidden output the next layer reads,
    never recurrent state or attention weights; a ``PackedSequence`` has its ``data`` dropped.
    Any other output (a dict, a model-output object) is left unchanged, and the owner probe
    records once that nothing was dropped there.

    Copies of the model (``copy.deepcopy``, pickling, ``torch.save(model)``) get their own hook
    with the same ``p``, owned by no probe: a copy behaves like the original and loads in a
    process without the probe (``set_dropout_`` / ``remove_dropout_`` act on it as on any model).
    """

    def __init__(self, module: nn.Module | None, p: float, owner: RunContext | None) -> None:
        self.p = p
        self.owner = owner
        self.module: weakref.ref[nn.Module] | None = weakref.ref(module) if module is not None else None
        self._detach: _DetachHandle | None = None
        self._seen: set[str] = set()

    # -------------------------------------------------------------- copies
    def __deepcopy__(self, memo: dict[int, Any]) -> DropoutHook:
        m = self.module() if self.module is not None else None
        new_module = memo.get(id(m)) if m is not None else None
        h = DropoutHook(new_module if isinstance(new_module, nn.Module) else None, self.p, None)
        if h.module is not None:
            _ADDED[h.module()] = h  # type: ignore[index]
        return h

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restored_hook, (self.p,))

    # -------------------------------------------------------------- life
    def install(self) -> None:
        m = self.module() if self.module is not None else None
        if m is None or self._installed(m):
            return
        m.register_forward_hook(self, prepend=True)
        _ADDED[m] = self
        if self.owner is not None and self._detach is None:
            # removed eagerly when the probe is detached (not at the next forward)
            self._detach = _DetachHandle(self)
            handles = getattr(self.owner, "_handles", None)
            if isinstance(handles, list):
                handles.append(self._detach)

    def _installed(self, m: nn.Module) -> bool:
        return any(v is self for v in m._forward_hooks.values())

    def remove(self) -> None:
        m = self.module() if self.module is not None else None
        if m is not None:
            for key in [k for k, v in m._forward_hooks.items() if v is self]:
                del m._forward_hooks[key]
                m._forward_hooks_with_kwargs.pop(key, None)
                m._forward_hooks_always_called.pop(key, None)
            if _ADDED.get(m) is self:
                del _ADDED[m]
        d, self._detach = self._detach, None
        if d is not None and self.owner is not None:
            handles = getattr(self.owner, "_handles", None)
            if isinstance(handles, list):
                with contextlib.suppress(ValueError):
                    handles.remove(d)

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        if not owner_alive(self.owner):
            self.remove()
            return None
        if self.module is None:  # a copy made by pickling: bind to the module it runs on
            self.module = weakref.ref(module)
            _ADDED.setdefault(module, self)
        if self.p <= 0.0 or not module.training:
            return None
        dropped = _drop(output, self.p)
        if dropped is _NOTHING:
            if "output" not in self._seen:
                self._seen.add("output")
                self._say_nothing_dropped(module, output)
            return None
        return dropped

    def _say_nothing_dropped(self, module: nn.Module, output: Any) -> None:
        why = (f"add_dropout: the output of {type(module).__name__} is a {type(output).__name__}, not a floating "
               "tensor or a tuple starting with one, so nothing was dropped there; target the module that produces "
               "the tensor, or remove this dropout")
        owner = self.owner
        if owner is not None and len(owner.errors) < 1000:
            from ..run import ProbeError

            owner.errors.append(ProbeError("intervention add_dropout", owner.step_count, why, ""))
        warnings.warn(f"trainscope: {why}", RuntimeWarning, stacklevel=3)


class _DetachHandle:
    """Goes in the probe's hook handles: ``probe.detach()`` removes the dropout at once."""

    def __init__(self, hook: DropoutHook) -> None:
        self.hook = weakref.ref(hook)

    def remove(self) -> None:
        h = self.hook()
        if h is not None:
            h._detach = None
            h.remove()


def _restored_hook(p: float) -> DropoutHook:
    """Unpickling: the same dropout, owned by no probe; bound to its module at the first forward."""
    return DropoutHook(None, p, None)


_NOTHING = object()


def _drop(output: Any, p: float) -> Any:
    if isinstance(output, Tensor):
        return F.dropout(output, p, training=True) if output.is_floating_point() else _NOTHING
    if isinstance(output, PackedSequence):
        if not output.data.is_floating_point():
            return _NOTHING
        return output._replace(data=F.dropout(output.data, p, training=True))
    if isinstance(output, (tuple, list)) and output:
        first = _drop(output[0], p)
        if first is _NOTHING:
            return _NOTHING
        rest = list(output[1:])
        if isinstance(output, list):
            return [first, *rest]
        if type(output) is tuple:
            return (first, *rest)
        try:  # a named tuple or another tuple type
            return type(output)(first, *rest)
        except Exception:
            return _NOTHING
    return _NOTHING


_ADDED: weakref.WeakKeyDictionary[nn.Module, DropoutHook] = weakref.WeakKeyDictionary()


def added_dropouts(model: nn.Module) -> dict[str, DropoutHook]:
    """``{module name: hook}`` of the trainscope dropouts currently on ``model``."""
    return {n: _ADDED[m] for n, m in model.named_modules() if m in _ADDED and owner_alive(_ADDED[m].owner)}


def add_dropout_(model: nn.Module, after: list[str] | str, p: float = 0.2, *, probe: RunContext | None = None) -> Applied:
    """Apply dropout with probability ``p`` to the output of each module named in ``after``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"add_dropout_ needs an nn.Module, got {type(model).__name__}")
    prm = validate_params("add_dropout", ADD_SCHEMA, {"after": after, "p": p})
    if prm["after"] is None:
        raise ValueError("add_dropout: name the modules to follow with dropout (after=[...]); 'all' is not allowed")
    targets = resolve_modules(model, prm["after"], "add_dropout: after")
    for name, mod in targets:  # plan: refuse before changing anything
        if mod is model:
            raise ValueError("add_dropout: name a submodule, not the whole model")
        if isinstance(mod, _DROPOUT_TYPES):
            raise ValueError(f"add_dropout: {name!r} is already a dropout module; use set_dropout to change its p")
        if mod in _ADDED and owner_alive(_ADDED[mod].owner):
            raise ValueError(f"add_dropout: {name!r} already has a trainscope dropout; use set_dropout to change p")
    hooks = [DropoutHook(mod, prm["p"], probe) for _, mod in targets]
    try:
        for h in hooks:
            h.install()
    except BaseException:
        for h in hooks:
            h.remove()
        raise

    def undo() -> None:
        for h in hooks:
            h.remove()

    names = [n for n, _ in targets]
    return Applied("add_dropout", prm, undo, message=f"dropout p={prm['p']:g} after {', '.join(names)}",
                   details={"after": names}, probe=probe, touches=_keys(m for _, m in targets))


def _keys(modules: Any) -> set[str]:
    """State keys of the dropout at these modules (see ``Applied.touches``)."""
    return {f"d{id(m)}" for m in modules if m is not None}


def _dropouts_in(model: nn.Module, layers: list[str] | None, action: str) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, DropoutHook]]]:
    roots = [("", model)] if layers is None else resolve_modules(model, layers, f"{action}: layers")
    mods: dict[int, tuple[str, nn.Module]] = {}
    hooks: dict[int, tuple[str, DropoutHook]] = {}
    for root, r in roots:
        for n, m in r.named_modules():
            full = f"{root}.{n}".strip(".")
            if isinstance(m, _DROPOUT_TYPES):
                mods.setdefault(id(m), (full, m))
            h = _ADDED.get(m)
            if h is not None and owner_alive(h.owner):
                hooks.setdefault(id(m), (full, h))
    if not mods and not hooks:
        where = "the model" if layers is None else ", ".join(layers)
        raise ValueError(f"{action}: no dropout in {where}; add one with add_dropout(after=[...])")
    return list(mods.values()), list(hooks.values())


def set_dropout_(model: nn.Module, p: float, layers: list[str] | str | None = None, *, probe: RunContext | None = None) -> Applied:
    """Set ``p`` of every dropout (the model's own and trainscope's) in ``layers`` (default: all)."""
    prm = validate_params("set_dropout", SET_SCHEMA, {"p": p, "layers": layers})
    mods, hooks = _dropouts_in(model, prm["layers"], "set_dropout")
    saved_m: list[tuple[Any, float]] = [(m, float(m.p)) for _, m in mods]  # type: ignore[arg-type]
    saved_h = [(h, h.p) for _, h in hooks]
    for m, _ in saved_m:
        m.p = prm["p"]
    for h, _ in saved_h:
        h.p = prm["p"]

    def undo() -> None:
        for m, v in saved_m:
            m.p = v
        for h, v in saved_h:
            h.p = v

    names = [n for n, _ in mods] + [f"{n} (trainscope)" for n, _ in hooks]
    return Applied("set_dropout", prm, undo, message=f"dropout p={prm['p']:g} in {len(names)} place(s)",
                   details={"changed": names, "before": [v for _, v in saved_m] + [v for _, v in saved_h]}, probe=probe,
                   touches=_keys([m for _, m in mods] + [h.module() for _, h in hooks if h.module is not None]))


def remove_dropout_(model: nn.Module, layers: list[str] | str | None = None, *, probe: RunContext | None = None) -> Applied:
    """Remove trainscope dropouts and set ``p = 0`` on the model's own dropout modules."""
    prm = validate_params("remove_dropout", REMOVE_SCHEMA, {"layers": layers})
    mods, hooks = _dropouts_in(model, prm["layers"], "remove_dropout")
    saved_m: list[tuple[Any, float]] = [(m, float(m.p)) for _, m in mods]  # type: ignore[arg-type]
    removed = [h for _, h in hooks]
    for m, _ in saved_m:
        m.p = 0.0
    for h in removed:
        h.remove()

    def undo() -> None:
        for m, v in saved_m:
            m.p = v
        for h in removed:
            h.install()

    names = [n for n, _ in mods] + [f"{n} (trainscope)" for n, _ in hooks]
    return Applied("remove_dropout", prm, undo, message=f"dropout removed in {len(names)} place(s)",
                   details={"removed": names}, probe=probe,
                   touches=_keys([m for _, m in mods] + [h.module() for _, h in hooks if h.module is not None]))


# ---------------------------------------------------------------------------- the whitelist entries
def _check_add_dropout(ctx: RunContext, p: dict[str, Any]) -> None:
    if p["after"] is None:
        raise ValueError("add_dropout: name the modules to follow with dropout (after=[...])")
    for n, m in resolve_modules(ctx.model, p["after"], "add_dropout: after"):
        if m is ctx.model:
            raise ValueError("add_dropout: name a submodule, not the whole model")
        if isinstance(m, _DROPOUT_TYPES) or (m in _ADDED and owner_alive(_ADDED[m].owner)):
            raise ValueError(f"add_dropout: {n!r} already has dropout; use set_dropout to change p")


def _check_dropouts(action: str) -> Callable[[RunContext, dict[str, Any]], None]:
    def check(ctx: RunContext, p: dict[str, Any]) -> None:
        _dropouts_in(ctx.model, p["layers"], action)

    return check


@action("add_dropout", label="Add dropout", category="regularization", schema=ADD_SCHEMA, order=20,
        description="Apply dropout to the output of chosen modules.", check=_check_add_dropout)
def _run_add_dropout(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return add_dropout_(ctx.model, p["after"], p["p"], probe=ctx)


@action("set_dropout", label="Set dropout p", category="regularization", schema=SET_SCHEMA, order=30,
        description="Change p of the dropouts (all or in chosen layers).", check=_check_dropouts("set_dropout"))
def _run_set_dropout(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return set_dropout_(ctx.model, p["p"], p["layers"], probe=ctx)


@action("remove_dropout", label="Remove dropout", category="regularization", schema=REMOVE_SCHEMA, order=40,
        description="Remove trainscope dropouts; set p=0 on the model's own.", check=_check_dropouts("remove_dropout"))
def _run_remove_dropout(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return remove_dropout_(ctx.model, p["layers"], probe=ctx)

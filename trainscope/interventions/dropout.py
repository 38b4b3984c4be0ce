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
undoable.  Dropouts added through a probe disappear when the probe is detached.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import Tensor, nn

from ._base import Applied, owner_alive, resolve_modules, validate_params

if TYPE_CHECKING:
    from ..probe import Probe

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
    """``F.dropout`` on a module's output, while the module is training."""

    def __init__(self, module: nn.Module, p: float, owner: Probe | None) -> None:
        self.p = p
        self.owner = owner
        self.module = weakref.ref(module)
        self.handle: Any = None

    def install(self) -> None:
        m = self.module()
        if m is not None and self.handle is None:
            self.handle = m.register_forward_hook(self, prepend=True)
            _ADDED[m] = self

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        m = self.module()
        if m is not None and _ADDED.get(m) is self:
            del _ADDED[m]

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        if not owner_alive(self.owner):
            self.remove()
            return None
        if self.p <= 0.0 or not module.training or not isinstance(output, Tensor) or not output.is_floating_point():
            return None
        return F.dropout(output, self.p, training=True)


_ADDED: weakref.WeakKeyDictionary[nn.Module, DropoutHook] = weakref.WeakKeyDictionary()


def added_dropouts(model: nn.Module) -> dict[str, DropoutHook]:
    """``{module name: hook}`` of the trainscope dropouts currently on ``model``."""
    return {n: _ADDED[m] for n, m in model.named_modules() if m in _ADDED and owner_alive(_ADDED[m].owner)}


def add_dropout_(model: nn.Module, after: list[str] | str, p: float = 0.2, *, probe: Probe | None = None) -> Applied:
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
                   details={"after": names}, probe=probe)


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


def set_dropout_(model: nn.Module, p: float, layers: list[str] | str | None = None, *, probe: Probe | None = None) -> Applied:
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
                   details={"changed": names, "before": [v for _, v in saved_m] + [v for _, v in saved_h]}, probe=probe)


def remove_dropout_(model: nn.Module, layers: list[str] | str | None = None, *, probe: Probe | None = None) -> Applied:
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
                   details={"removed": names}, probe=probe)

"""What the rules may know beyond the history: facts read from the model at diagnosis time.

:class:`Context` is plain data.  :func:`context_from_probe` fills it from a probe -- the only place
in the diagnosis engine that touches the model, and it only *reads* it (weight rows for
``symmetric_init``, ``requires_grad`` flags, forward-pass counters).  The cost is one matrix-vector
product per linear / conv layer, paid at diagnosis time, never per training step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from .config import Thresholds

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["Context", "context_from_probe", "tied_layers", "weight_symmetry"]

T = TypeVar("T")


@dataclass
class Context:
    """Inputs of the rules besides the :class:`~trainscope.history.History`.

    Attributes
    ----------
    forward_modes
        Cumulative forward-pass counts by mode (``Probe.forward_modes``): ``train``,
        ``eval_in_train_mode`` (no-grad forward with the model in train mode),
        ``train_in_eval_mode`` (grad-enabled forward in eval mode), ``eval``.
    symmetry
        Per linear / conv layer name: ``(units, largest group of identical units)``.
    requires_grad
        Per parameter name: its ``requires_grad`` flag.
    tied
        Per tracked layer whose trainable parameters all belong to another module as well (weight
        tying, e.g. an LM head sharing the embedding matrix): the name of that other module.  The
        probe measures a shared parameter once, under its first owner.
    regularization
        ``{"decay_per_step": max over parameter groups of lr * weight_decay, "dropout": {module: p}}``
        read from the optimizer and the model.
    n_classes
        Number of classes, when it cannot be read from the loss inputs.
    thresholds
        The rules' thresholds.
    """

    forward_modes: dict[str, int] | None = None
    symmetry: dict[str, tuple[int, int]] | None = None
    requires_grad: dict[str, bool] | None = None
    tied: dict[str, str] | None = None
    regularization: dict[str, Any] | None = None
    n_classes: int | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        """Compute a derived quantity once per diagnosis (several rules share it)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]  # type: ignore[no-any-return]


_PROJ_SEED = 0x5EED_D1A6


@torch.no_grad()
def weight_symmetry(module: torch.nn.Module) -> tuple[int, int] | None:
    """``(units, size of the largest group of identical units)`` of a linear / conv layer.

    A unit is a row of the weight (an output feature or filter) together with its bias.  Rows are
    compared through one random projection (a fixed private generator, so no user RNG is touched):
    identical rows project to identical values; distinct random rows collide with probability ~0.
    """
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() < 2 or w.shape[0] < 2:
        return None
    rows = w.detach().reshape(w.shape[0], -1).float()
    gen = torch.Generator(device="cpu").manual_seed(_PROJ_SEED)
    r = torch.rand(rows.shape[1] + 1, generator=gen, dtype=torch.float32).add_(0.5).to(rows.device)
    proj = rows @ r[:-1]
    b = getattr(module, "bias", None)
    if isinstance(b, torch.Tensor) and b.shape == (rows.shape[0],):
        proj = proj + b.detach().float() * r[-1]
    p = np.sort(proj.cpu().numpy().astype(np.float64))
    if not np.all(np.isfinite(p)):
        return None
    # longest run of equal projections (relative to the pair's own magnitude)
    tol = 1e-6 * np.maximum(np.abs(p[1:]), np.abs(p[:-1]))
    breaks = np.flatnonzero(np.diff(p) > tol)
    edges = np.concatenate([[-1], breaks, [len(p) - 1]])
    return len(p), int(np.diff(edges).max())


def tied_layers(model: torch.nn.Module, layer_names: list[str]) -> dict[str, str]:
    """Tracked layers whose own trainable parameters are all owned by another module too
    (weight tying): ``{layer: other module}``.  Reads the model; changes nothing."""
    owners: dict[int, list[str]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for p in mod.parameters(recurse=False):
            names = owners.setdefault(id(p), [])
            if (mname or "model") not in names:
                names.append(mname or "model")
    out: dict[str, str] = {}
    for name in layer_names:
        mod = _module(model, name)
        if mod is None:
            continue
        own = [p for p in mod.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        others = [next((n for n in owners.get(id(p), []) if n != name), None) for p in own]
        if all(o is not None for o in others):
            out[name] = str(others[0])
    return out


def regularization(model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
    """How strongly the set-up regularizes: the weight decay per step (``lr * weight_decay``,
    largest over the parameter groups) and the dropout probability of every dropout module."""
    decay = 0.0
    for g in getattr(optimizer, "param_groups", None) or []:
        lr, wd = g.get("lr"), g.get("weight_decay")
        if isinstance(lr, (int, float)) and isinstance(wd, (int, float)) and wd > 0:
            decay = max(decay, float(lr) * float(wd))
    drop = {n or "model": float(m.p) for n, m in model.named_modules()
            if isinstance(m, torch.nn.modules.dropout._DropoutNd) and isinstance(getattr(m, "p", None), (int, float))}
    return {"decay_per_step": decay, "dropout": drop}


def context_from_probe(probe: RunContext, **overrides: Any) -> Context:
    """Build the :class:`Context` of a probe (reads the model; changes nothing)."""
    symmetry: dict[str, tuple[int, int]] = {}
    model = probe.model
    for info in probe.layers:
        if info.kind not in ("linear", "conv") or info.n_trainable == 0:
            continue
        try:
            mod = _module(model, info.name)
            s = weight_symmetry(mod) if mod is not None else None
        except Exception:
            continue
        if s is not None:
            symmetry[info.name] = s
    overrides.setdefault("tied", tied_layers(model, [x.name for x in probe.layers]))
    overrides.setdefault("regularization", regularization(model, probe.optimizer))
    return Context(
        forward_modes=dict(probe.forward_modes),
        symmetry=symmetry,
        requires_grad={n: bool(p.requires_grad) for n, p in model.named_parameters()},
        **overrides,
    )


def _module(model: torch.nn.Module, name: str) -> torch.nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return model if name == "model" else None

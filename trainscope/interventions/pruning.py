"""Magnitude pruning with rewinding: the lottery-ticket procedure, live and undoable (``prune_``).

Frankle & Carbin (2019), "The Lottery Ticket Hypothesis": train, remove the weights of smallest
magnitude, reset the survivors to their initial values θ₀ and train again; repeat (iterative
pruning).  Frankle et al. (2020), "Linear Mode Connectivity and the Lottery Ticket Hypothesis":
for larger networks rewind to the weights of an early step *k* instead of θ₀.

``prune_(model, amount=0.8, layers="all", scope="global", rewind="init")``:

* **which weights**: the weight matrices of the chosen ``Linear`` / ``Conv`` / ``ConvTranspose`` /
  ``Bilinear`` layers (``layers="all"``: every one; a container means the layers inside it).
  ``amount`` is the fraction of the weights *still alive* that this round removes: one round at
  0.8 leaves 20 %, five rounds at 0.2 leave 0.8⁵ = 33 % (the masks are cumulative);
  ``scope="global"`` ranks |w| over all chosen layers together (Frankle & Carbin's choice for
  deep convnets), ``"layer"`` removes that fraction in each layer;
* **rewind**: ``"init"`` writes θ₀ back into every parameter that has one (the pruned weights'
  survivors, and the biases and other layers too: the whole network restarts from θ₀, as in the
  paper); ``"none"`` keeps the trained values (plain magnitude pruning / fine-tuning); a step
  number (``rewind=200``) or a snapshot id / label takes the values of a snapshot taken at that
  step (``probe.request("snapshot")`` then, or ``snapshot_(model)``).  θ₀ is the probe's copy of
  the parameters when it attached (``Probe(track_init=True)``, the default), or ``init=`` (a
  ``state_dict`` saved before training) in a plain call;
* **the masks are enforced through training** by a parametrization
  (:func:`torch.nn.utils.parametrize.register_parametrization`): the layer computes with
  ``weight = original * mask``.  Chosen over :mod:`torch.nn.utils.prune` because the trained
  ``Parameter`` object stays the same (``parametrizations.weight.original`` *is* the old
  ``weight``: the optimizer, the probe and the user's references stay valid), a later round
  updates the one mask in place instead of stacking pruning containers, the mask is a buffer
  (saved with ``state_dict``), and undo (``remove_parametrizations(..., leave_parametrized=False)``)
  puts that same object back as ``weight``.  Pruned entries of ``original`` are set to zero and
  their gradient is zero through the mask, so SGD (with momentum / weight decay), Adam and AdamW
  leave them at zero;
* **the optimizer**: the state (momentum, Adam moments) of rewound parameters is reset, as for a
  re-initialization (the retraining starts fresh from θ₀); with ``rewind="none"`` the state
  entries of the pruned weights are zeroed;
* **recorded**: the round, the sparsity of each layer and overall, and the latest metrics at the
  moment of pruning (the result of the round that ends: ``val_acc``, ``val_loss``...) go on the
  timeline; ``sparsity`` is logged as a scalar of the run, so the dashboard plots it.

``undo()`` restores the values, the masks (the previous round's, or none) and the optimizer state
exactly.  The layer's ``state_dict`` keys are ``parametrizations.weight.original`` / ``.mask``
while a mask is applied; they are ``weight`` again after undo.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._base import Applied, opt_state_keys, resolve_modules, tensor_keys, validate_params
from ._spec import action

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["PRUNE_SCHEMA", "PruneMask", "masks", "prune_", "sparsity"]

PRUNE_SCHEMA: dict[str, dict[str, Any]] = {
    "amount": {"type": "float", "min": 0.0, "max": 1.0, "min_open": True, "max_open": True, "default": 0.8,
               "help": "fraction of the surviving weights removed in this round"},
    "layers": {"type": "layers", "default": "all", "help": "layers to prune (all: every Linear / Conv)"},
    "scope": {"type": "choice", "choices": ["global", "layer"], "default": "global",
              "help": "global: rank |w| over all chosen layers; layer: that fraction in each layer"},
    "rewind": {"type": "str", "default": "init",
               "help": "init (θ₀), none (keep the trained values), or a step / snapshot id to rewind to"},
}
_PRUNABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)
_METRICS = ("val_acc", "acc", "accuracy", "val_loss", "loss")


class PruneMask(nn.Module):
    """The parametrization ``weight = original * mask`` (``mask`` is a 0/1 buffer)."""

    mask: Tensor

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.rounds = 1

    def forward(self, w: Tensor) -> Tensor:
        return w * self.mask


def _mask_of(module: nn.Module) -> PruneMask | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for pz in module.parametrizations.weight:  # type: ignore[union-attr]
        if isinstance(pz, PruneMask):
            return pz
    return None


def _weight(module: nn.Module) -> Tensor:
    """The trained weight ``Parameter`` (``original`` under a mask)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original  # type: ignore[union-attr,return-value]
    return module._parameters["weight"]  # type: ignore[return-value]


def masks(model: nn.Module) -> dict[str, Tensor]:
    """``{layer name: 0/1 mask}`` of the layers pruned by :func:`prune_`."""
    return {n: pm.mask for n, m in model.named_modules() if (pm := _mask_of(m)) is not None}


def sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of pruned weights per pruned layer, and ``"total"`` over them."""
    out: dict[str, float] = {}
    zeros = total = 0
    for n, mk in masks(model).items():
        z = int((mk == 0).sum())
        out[n] = z / max(mk.numel(), 1)
        zeros, total = zeros + z, total + mk.numel()
    if total:
        out["total"] = zeros / total
    return out


# ---------------------------------------------------------------------------- checking
def clean_prune(params: dict[str, Any]) -> dict[str, Any]:
    """Validate against :data:`PRUNE_SCHEMA`; ``rewind`` becomes ``"init"``, ``"none"``, a step
    (``int``) or a snapshot id / label (``str``)."""
    raw = dict(params)
    rw = raw.get("rewind")
    if isinstance(rw, (int, float)) and not isinstance(rw, bool):
        if isinstance(rw, float) and not rw.is_integer():
            raise ValueError(f"prune: rewind must be 'init', 'none', a step number or a snapshot id; got {rw!r}")
        raw["rewind"] = str(int(rw))
    p = validate_params("prune", PRUNE_SCHEMA, raw)
    r = p["rewind"].strip()
    if not r:
        raise ValueError("prune: rewind is empty; use 'init', 'none', a step number or a snapshot id")
    if r.lstrip("-").isdigit():
        step = int(r)
        if step < 0:
            raise ValueError(f"prune: rewind step must be >= 0, got {step}")
        p["rewind"] = step
    else:
        p["rewind"] = r
    return p


def _foreign(m: nn.Module) -> bool:
    """Is the weight re-parametrized by something other than a pruning mask (weight norm)?"""
    return parametrize.is_parametrized(m, "weight") and _mask_of(m) is None


def _targets(model: nn.Module, layers: list[str] | None) -> list[tuple[str, nn.Module]]:
    if layers is None:
        roots: list[tuple[str, nn.Module]] = [("", model)]
    else:
        roots = resolve_modules(model, layers, "prune: layers")
    out: dict[int, tuple[str, nn.Module]] = {}
    for root, r in roots:
        inside = [(f"{root}.{n}".strip("."), m) for n, m in r.named_modules() if isinstance(m, _PRUNABLE)]
        if not inside and layers is not None:
            raise ValueError(f"prune: {root!r} ({type(r).__name__}) holds no Linear / Conv layer to prune")
        for n, m in inside:
            if layers is None and _foreign(m):
                continue  # "all": a layer re-parametrized by something else is left out (said in the message)
            out.setdefault(id(m), (n, m))
    if not out:
        raise ValueError("prune: the model has no Linear / Conv layer to prune")
    owners: dict[int, dict[int, str]] = {}  # weight tensor -> {module holding it: a name}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for pname, q in mod.named_parameters(recurse=False):
            if pname == "weight" or (pname == "original" and mname.endswith(".parametrizations.weight")):
                holder = model.get_submodule(mname.replace(".parametrizations.weight", "")) if pname == "original" else mod
                owners.setdefault(id(q), {}).setdefault(id(holder), mname.replace(".parametrizations.weight", ""))
    for n, m in out.values():
        if _foreign(m):
            raise ValueError(f"prune: the weight of {n!r} is re-parametrized by something else (weight norm?); "
                             "undo that first or leave the layer out")
        shared = sorted(v or "(model)" for k, v in owners.get(id(_weight(m)), {}).items() if k != id(m))
        if shared:
            raise ValueError(f"prune: the weight of {n!r} is one tensor with {', '.join(shared)} (tied weights); the "
                             "mask would not hold there, so it is not pruned: leave it out")
        w = _weight(m)
        if not isinstance(w, Tensor) or not w.is_floating_point():
            raise ValueError(f"prune: {n!r} has no floating-point weight")
    return list(out.values())


def _reference(model: nn.Module, rewind: Any, probe: RunContext | None, init: Any) -> tuple[dict[int, Tensor], str]:
    """``{id(parameter): values to rewind to}`` and where they come from."""
    if rewind == "none":
        return {}, "none"
    if rewind == "init":
        if init is not None:
            return _from_state_dict(model, init), "init= (given)"
        tracker = getattr(probe, "_ptrack", None) if probe is not None else None
        saved = getattr(tracker, "init", None)
        if tracker is None or saved is None:
            if probe is None:
                raise ValueError("prune: rewind='init' needs θ₀: pass init=<a state_dict saved before training> "
                                 "(or a probe= created with track_init=True), or use rewind='none'")
            raise ValueError("prune: rewind='init' needs θ₀, which this probe did not keep (track_init=False); "
                             "use rewind='none', or rewind to a snapshot step")
        return {id(q): t for q, t in zip(tracker.params, saved, strict=False)}, "θ₀ (kept by the probe when it attached)"
    from .snapshots import snapshots

    store = snapshots(model)
    snap = None
    if isinstance(rewind, int):
        at = [s for s in store.items if s.step == rewind]
        snap = at[-1] if at else None
        if snap is None:
            have = ", ".join(f"{s.id} (step {s.step})" for s in store.items) or "none"
            raise ValueError(f"prune: no snapshot taken at step {rewind} to rewind to (snapshots: {have}); take one "
                             "at that step with probe.request('snapshot') or use rewind='init'")
    else:
        snap = next((s for s in store.items if s.id == rewind or (s.label and s.label == rewind)), None)
        if snap is None:
            have = ", ".join(s.id + (f" ({s.label})" if s.label else "") for s in store.items) or "none"
            raise ValueError(f"prune: rewind must be 'init', 'none', a step or a snapshot id; no snapshot {rewind!r} "
                             f"(snapshots: {have})")
    return {id(orig): saved for _, _, orig, saved in snap.model.tensors}, f"snapshot {snap.id} (step {snap.step})"


def _from_state_dict(model: nn.Module, init: Any) -> dict[int, Tensor]:
    """θ₀ from a ``state_dict`` saved before training (``fc.weight`` also names a masked layer's
    ``fc.parametrizations.weight.original``)."""
    if not hasattr(init, "items") or not hasattr(init, "get"):
        raise TypeError(f"prune: init must be a state_dict (name -> tensor), got {type(init).__name__}")
    out: dict[int, Tensor] = {}
    suffix = ".parametrizations.weight"
    for mname, m in model.named_modules():
        for pname, q in m.named_parameters(recurse=False):
            full = f"{mname}.{pname}".lstrip(".")
            if mname.endswith(suffix) and pname == "original":
                full = mname[: -len(suffix)] + ".weight"
            t = init.get(full)
            if isinstance(t, Tensor):
                if t.shape != q.shape:
                    raise ValueError(f"prune: init[{full!r}] has shape {tuple(t.shape)}, the model's is {tuple(q.shape)}")
                out[id(q)] = t
    if not out:
        raise ValueError("prune: init= matches no parameter of the model (expected model.state_dict() keys)")
    return out


def _latest_metrics(probe: RunContext | None) -> dict[str, float]:
    if probe is None:
        return {}
    flush = getattr(probe, "flush", None)
    if callable(flush):  # values logged since the last transfer (the epoch that just ended)
        try:
            flush()
        except Exception:
            pass
    out: dict[str, float] = {}
    names = set(probe.history.scalar_names())
    for n in _METRICS:
        if n in names:
            v = probe.history.scalar(n)["mean"]
            if len(v):
                out[n] = float(v[-1])
    return out


# ---------------------------------------------------------------------------- plan + apply
def _new_masks(weights: list[Tensor], olds: list[Tensor], amount: float, scope: str) -> list[Tensor]:
    news = [o.clone() for o in olds]
    with torch.no_grad():
        if scope == "layer":
            for w, new in zip(weights, news, strict=True):
                alive = new.flatten().nonzero().flatten()
                k = round(amount * alive.numel())
                if k:
                    score = w.detach().flatten()[alive].abs().float()
                    drop = alive[torch.argsort(score, stable=True)[:k]]
                    new.view(-1)[drop] = 0
            return news
        alives = [n.flatten().nonzero().flatten() for n in news]
        scores = torch.cat([w.detach().flatten()[a].abs().float().cpu() for w, a in zip(weights, alives, strict=True)])
        k = round(amount * scores.numel())
        if k:
            order = torch.argsort(scores, stable=True)[:k]
            owner = torch.repeat_interleave(torch.arange(len(alives)), torch.tensor([a.numel() for a in alives]))
            starts = torch.cumsum(torch.tensor([0] + [a.numel() for a in alives]), 0)
            for i, (a, new) in enumerate(zip(alives, news, strict=True)):
                pos = order[owner[order] == i] - starts[i]
                if pos.numel():
                    new.view(-1)[a[pos.to(a.device)]] = 0
    return news


def prune_(model: nn.Module, amount: float = 0.8, layers: list[str] | str | None = "all", *, scope: str = "global",
           rewind: str | int = "init", optimizer: torch.optim.Optimizer | None = None, probe: RunContext | None = None,
           init: Any = None) -> Applied:
    """One round of magnitude pruning (masks cumulative over rounds), then rewind.

    Parameters
    ----------
    amount
        Fraction of the weights still alive in the chosen layers that this round removes.
    layers
        ``"all"`` (every Linear / Conv) or module names (a container: the layers inside it).
    scope
        ``"global"`` (rank |w| over all chosen layers) or ``"layer"``.
    rewind
        ``"init"`` (θ₀), ``"none"``, a step with a snapshot, or a snapshot id / label.
    optimizer
        Its state is reset for rewound parameters, zeroed at pruned entries (default: the probe's).
    probe
        Records the round on its timeline; supplies θ₀ (``track_init``) and the metrics.
    init
        θ₀ as a ``state_dict`` saved before training (plain calls without a probe).

    Returns
    -------
    Applied
        ``details``: ``round``, ``sparsity`` (overall), ``layers`` (per-layer sparsity), ``rewind``,
        ``metrics``; ``undo()`` restores weights, masks and optimizer state exactly.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prune_ needs an nn.Module, got {type(model).__name__}")
    p = clean_prune({"amount": amount, "layers": layers, "scope": scope, "rewind": rewind})
    if optimizer is None and probe is not None:
        optimizer = probe.optimizer
    targets = _targets(model, p["layers"])
    ref, source = _reference(model, p["rewind"], probe, init)
    weights = [_weight(m) for _, m in targets]
    old_masks = [pm.mask if (pm := _mask_of(m)) is not None else torch.ones_like(w)
                 for (_, m), w in zip(targets, weights, strict=True)]
    missing = [n for (n, _), w in zip(targets, weights, strict=True) if ref and id(w) not in ref]
    if missing:
        raise ValueError(f"prune: no {source} values for the weight of {', '.join(missing)} (the probe tracks "
                         "only its selected layers); pass init= or leave these layers out")
    news = _new_masks(weights, old_masks, p["amount"], p["scope"])

    # what changes: pruned weights, rewound parameters, their optimizer state
    rewound = [q for q in _all_params(model) if id(q) in ref] if ref else []
    changed: dict[int, Tensor] = {id(q): q for q in rewound}
    for w in weights:
        changed.setdefault(id(w), w)
    with torch.no_grad():
        saved = [(q, q.detach().clone()) for q in changed.values()]
    opt_saved: dict[int, tuple[Tensor, dict[str, Any] | None]] = {}
    if optimizer is not None:
        for q in changed.values():
            st = optimizer.state.get(q)
            opt_saved[id(q)] = (q, _copy_state(st) if st is not None else None)
    mask_saved: list[tuple[nn.Module, PruneMask | None, Tensor | None, int, list[str]]] = []
    for (_, m), _old in zip(targets, old_masks, strict=True):
        pm = _mask_of(m)
        mask_saved.append((m, pm, pm.mask.clone() if pm is not None else None, pm.rounds if pm is not None else 0,
                           list(m._parameters)))

    def restore() -> None:
        with torch.no_grad():
            for m, pm, old_mask, rounds, order in mask_saved:
                now = _mask_of(m)
                if pm is None:
                    if now is not None:
                        parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
                        params = m._parameters
                        moved = [(k, params.pop(k)) for k in order if k in params]
                        params.update(moved)
                elif old_mask is not None:
                    pm.mask.copy_(old_mask)
                    pm.rounds = rounds
            for q, v in saved:
                q.copy_(v)
        if optimizer is not None:
            for q, st in opt_saved.values():
                if st is None:
                    optimizer.state.pop(q, None)
                else:
                    cur = optimizer.state.get(q)
                    if isinstance(cur, dict):
                        _restore_state(cur, st)
                        optimizer.state[q] = cur
                    else:
                        optimizer.state[q] = st

    rnd = 1 + max((pm.rounds for _, pm, _, _, _ in mask_saved if pm is not None), default=0)
    try:
        with torch.no_grad():
            for q in rewound:
                q.copy_(ref[id(q)].to(device=q.device, dtype=q.dtype))
            for (_, m), w, new in zip(targets, weights, news, strict=True):
                w.mul_(new)
                pm = _mask_of(m)
                if pm is None:
                    pm = PruneMask(new)
                    parametrize.register_parametrization(m, "weight", pm)
                else:
                    pm.mask.copy_(new)
                pm.rounds = rnd
        if optimizer is not None:
            for q in rewound:
                optimizer.state.pop(q, None)
            for w, new in zip(weights, news, strict=True):
                st = optimizer.state.get(w)
                if isinstance(st, dict):
                    for v in st.values():
                        if isinstance(v, Tensor) and v.shape == w.shape:
                            v.mul_(new.to(v.dtype))
    except BaseException:
        restore()
        raise

    per_layer: list[dict[str, Any]] = []
    zeros = total = 0
    for (n, _), new, old in zip(targets, news, old_masks, strict=True):
        z = int((new == 0).sum())
        per_layer.append({"layer": n, "sparsity": round(z / max(new.numel(), 1), 4),
                          "pruned_now": z - int((old == 0).sum()), "alive": new.numel() - z})
        zeros, total = zeros + z, total + new.numel()
    overall = zeros / max(total, 1)
    metrics = _latest_metrics(probe)
    empty = [str(e["layer"]) for e in per_layer if e["alive"] == 0]
    msg = (f"round {rnd}: pruned {p['amount']:.0%} of the surviving weights ({p['scope']}); sparsity "
           f"{overall:.1%} over {len(targets)} layer(s); " + (f"rewound to {source}" if ref else "trained values kept"))
    if rewound and len(rewound) < len(list(_all_params(model))):
        msg += f" ({len(rewound)} of {len(list(_all_params(model)))} parameter tensors had values to rewind to)"
    skipped = [n for n, m in model.named_modules() if isinstance(m, _PRUNABLE) and _foreign(m)] if p["layers"] is None else []
    if skipped:
        msg += f"; left out (weight re-parametrized by something else): {', '.join(skipped)}"
    if empty:
        msg += f". Warning: {', '.join(empty)} lost every weight (layer collapse); prune per layer or less"
    if probe is not None:
        _log(probe, overall)

    def undo() -> None:
        restore()
        if probe is not None:
            left = sparsity(model).get("total", 0.0)
            _log(probe, left)

    details = {"round": rnd, "sparsity": round(overall, 4), "layers": per_layer, "rewind": source,
               "rewound": len(rewound), "metrics": metrics}
    touches = tensor_keys(changed.values()) | {f"m{id(m)}" for _, m in targets}
    if optimizer is not None:
        touches |= opt_state_keys(optimizer, changed.values())
    return Applied("prune", p, undo, message=msg, details=details, probe=probe, touches=touches, heavy=True)


def _log(probe: RunContext, value: float) -> None:
    log = getattr(probe, "log", None)  # Probe.log (not part of the RunContext protocol)
    if not callable(log):
        return
    try:
        log(sparsity=float(value))
    except Exception:  # a detached probe: the event on the timeline is enough
        pass


def _all_params(model: nn.Module) -> list[Tensor]:
    return list(model.parameters())


def _copy_state(st: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v)) for k, v in st.items()}


def _restore_state(cur: dict[str, Any], saved: dict[str, Any]) -> None:
    for k in [k for k in cur if k not in saved]:
        del cur[k]
    for k, v in saved.items():
        old = cur.get(k)
        if isinstance(old, Tensor) and isinstance(v, Tensor) and old.shape == v.shape:
            old.copy_(v)
        else:
            cur[k] = v


# ---------------------------------------------------------------------------- the action
def _check(ctx: Any, p: dict[str, Any]) -> None:
    targets = _targets(ctx.model, p["layers"])
    ref, source = _reference(ctx.model, p["rewind"], ctx, None)
    if ref:
        missing = [n for n, m in targets if id(_weight(m)) not in ref]
        if missing:
            raise ValueError(f"prune: no {source} values for the weight of {', '.join(missing)}; leave these "
                             "layers out or use rewind='none'")


@action("prune", label="Prune (lottery ticket)", category="pruning", schema=PRUNE_SCHEMA, clean=clean_prune,
        check=_check,
        description="Magnitude pruning (global or per layer) with masks kept through training, then rewind of "
                    "the survivors to θ₀ or an early snapshot (Frankle & Carbin 2019); iterative rounds.")
def _run_prune(ctx: Any, p: dict[str, Any]) -> Applied:
    return prune_(ctx.model, p["amount"], p["layers"], scope=p["scope"], rewind=p["rewind"],
                  optimizer=ctx.optimizer, probe=ctx)

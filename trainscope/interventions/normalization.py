"""Normalization inserted into a running model: BatchNorm, LayerNorm, weight normalization.

``insert_norm_(model, after=[...], kind=...)`` (``probe.request("insert_norm", ...)``):

* ``kind="batch"`` -- batch normalization (Ioffe & Szegedy 2015) of the chosen module's output:
  per feature, over the batch (and the positions of a sequence / the pixels of a feature map);
  running statistics in eval mode;
* ``kind="layer"`` -- layer normalization (Ba et al. 2016): per example, over the features (a
  conv output ``(N, C, H, W)`` is normalized over ``C, H, W`` with a per-channel scale and
  shift, i.e. ``GroupNorm(1, C)``);
* ``kind="weight"`` -- weight normalization (Salimans & Kingma 2016) of the module's weight,
  ``w = g v / ||v||`` with :func:`torch.nn.utils.parametrizations.weight_norm`.

**The module tree is not changed for batch / layer norm.**  Like ``add_dropout``, the norm is
applied to the module's output by a forward hook (the first of its forward hooks, so the probe's
statistics of that module describe the normalized output, what the next layer receives).  Its
scale / shift and running statistics live in a small norm module held by the hook, not in the
model: ``state_dict`` keys, ``model.fc1`` and every ``Parameter`` stay the same.  The norm is in
training mode exactly when the module it follows is (``model.eval()`` switches BatchNorm to its
running statistics).  The new scale / shift go into the optimizer as a new param group with the
hyper-parameters of the group that trains the layer; undo removes the hook and that group.

Where the features are: ``Linear`` / ``Embedding`` outputs ``(N, F)`` or ``(N, T, F)`` have them
last; ``Conv`` / ``ConvTranspose`` outputs ``(N, C, ...)`` at dim 1.  For another module (an
activation, a container) the output is measured once on a real batch (``batch=``, the probe's
data or most recent batch; eval mode, no gradient, RNG restored) and its layout taken from the
nearest weight layer before it.

**Weight normalization** re-parametrizes the weight (the layer's ``state_dict`` keys become
``parametrizations.weight.original0`` / ``original1`` while it is applied); in the optimizer the
weight is replaced, in its own group and position, by ``g`` and ``v``.  Undo removes the
parametrization leaving the same effective weight ``g v / ||v||`` in the *original* ``Parameter``
object, puts it back in the optimizer where it was, and restores its optimizer state.

Refused, with the reason, before anything changes: a module not found, the whole model, a module
that returns a tuple (RNNs, attention), one that already is or is already followed by a
normalization layer or already has one of ours, a weight already re-parametrized, no optimizer.
A normalization stays when the probe is detached (the network was trained with it); ``undo()``
removes it.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._base import (
    Applied,
    opt_keys,
    opt_state_keys,
    report_error,
    resolve_modules,
    tensor_keys,
    validate_params,
)
from ._spec import action

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["INSERT_NORM_SCHEMA", "KINDS", "NormHook", "added_norms", "insert_norm_"]

KINDS = ("batch", "layer", "weight")
INSERT_NORM_SCHEMA: dict[str, dict[str, Any]] = {
    "after": {"type": "layers", "required": True, "default": None, "help": "modules whose output is normalized"},
    "kind": {"type": "choice", "choices": list(KINDS), "default": "batch",
             "help": "batch: BatchNorm; layer: LayerNorm; weight: weight normalization of the layer"},
    "eps": {"type": "float", "min": 0.0, "min_open": True, "max": 1.0, "default": 1e-5, "log": True,
            "help": "batch / layer: added to the variance"},
    "momentum": {"type": "float", "min": 0.0, "min_open": True, "max": 1.0, "default": 0.1,
                 "help": "batch: running-statistics momentum"},
}

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm, nn.RMSNorm,
)
_TUPLE_TYPES: tuple[type[nn.Module], ...] = (nn.RNNBase, nn.MultiheadAttention)
_LAST: tuple[type[nn.Module], ...] = (nn.Linear, nn.Bilinear, nn.Embedding, nn.EmbeddingBag)
_FIRST: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd,)


# ---------------------------------------------------------------------------- the hook
class NormHook:
    """Batch / layer normalization of a module's output (a forward hook).

    ``norm`` holds the scale, shift and (batch) running statistics; ``channel_first`` says
    whether the features are at dim 1 (conv outputs) or last (linear / sequence outputs).
    Copies of the model (``copy.deepcopy``, pickling) keep the same normalization, owned by no
    probe.
    """

    def __init__(self, kind: str, norm: nn.Module, channel_first: bool, owner: RunContext | None) -> None:
        self.kind = kind
        self.norm = norm
        self.channel_first = channel_first
        self._owner: weakref.ref[RunContext] | None = weakref.ref(owner) if owner is not None else None
        self._seen: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {"kind": self.kind, "norm": self.norm, "channel_first": self.channel_first}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["kind"], state["norm"], state["channel_first"], None)  # type: ignore[misc]

    @property
    def owner(self) -> RunContext | None:
        return self._owner() if self._owner is not None else None

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        try:
            if not isinstance(output, Tensor) or not output.is_floating_point():
                raise TypeError(f"the output of {type(module).__name__} is a {type(output).__name__}, not a floating "
                                "tensor: nothing was normalized")
            return self.apply(output, module.training)
        except Exception as e:  # never break the user's forward
            report_error(self.owner, f"insert_norm ({self.kind})", e, self._seen)
            return None

    def apply(self, x: Tensor, training: bool) -> Tensor:
        n = self.norm
        if self.kind == "batch":
            assert isinstance(n, nn.modules.batchnorm._BatchNorm)
            moved = not self.channel_first and x.dim() > 2
            xin = x.movedim(-1, 1) if moved else x
            if training and n.num_batches_tracked is not None:
                with torch.no_grad():
                    n.num_batches_tracked.add_(1)
            y = F.batch_norm(xin, n.running_mean, n.running_var, n.weight, n.bias, training, n.momentum or 0.1, n.eps)
            return y.movedim(1, -1) if moved else y
        if self.channel_first and x.dim() > 2:
            assert isinstance(n, nn.GroupNorm)
            return F.group_norm(x, 1, n.weight, n.bias, n.eps)
        if isinstance(n, nn.GroupNorm):  # a (N, C) output of a conv-style module: per example over C
            return F.layer_norm(x, (x.shape[-1],), n.weight, n.bias, n.eps)
        assert isinstance(n, nn.LayerNorm)
        return F.layer_norm(x, n.normalized_shape, n.weight, n.bias, n.eps)

    def install(self, module: nn.Module) -> None:
        module.register_forward_hook(self, prepend=True)
        _ADDED[module] = self

    def remove(self, module: nn.Module) -> None:
        for key in [k for k, v in module._forward_hooks.items() if v is self]:
            del module._forward_hooks[key]
            module._forward_hooks_with_kwargs.pop(key, None)
            module._forward_hooks_always_called.pop(key, None)
        if _ADDED.get(module) is self:
            del _ADDED[module]


_ADDED: weakref.WeakKeyDictionary[nn.Module, NormHook] = weakref.WeakKeyDictionary()


def added_norms(model: nn.Module) -> dict[str, NormHook]:
    """``{module name: hook}`` of the batch / layer normalizations trainscope inserted in ``model``."""
    out: dict[str, NormHook] = {}
    for n, m in model.named_modules():
        for h in m._forward_hooks.values():
            if isinstance(h, NormHook):
                out[n] = h
    return out


# ---------------------------------------------------------------------------- planning
def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if not list(m.children())]


def _next_leaf(model: nn.Module, module: nn.Module) -> tuple[str, nn.Module] | None:
    """The first leaf registered after ``module``'s subtree (what usually reads its output)."""
    inside = {id(m) for m in module.modules()}
    seen = False
    for n, m in _leaves(model):
        if id(m) in inside:
            seen = True
        elif seen:
            return n, m
    return None


def _layout_before(model: nn.Module, module: nn.Module) -> bool | None:
    """channel_first of the nearest weight layer at or before the end of ``module``'s subtree."""
    order = list(model.modules())
    i = next((k for k, m in enumerate(order) if m is module), len(order))
    last: bool | None = None
    for m in order[: i + len(list(module.modules()))]:
        if isinstance(m, _FIRST):
            last = True
        elif isinstance(m, _LAST):
            last = False
    return last


def _known_layout(module: nn.Module) -> tuple[int, bool] | None:
    if isinstance(module, (nn.Linear, nn.Bilinear)):
        return int(module.out_features), False
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return int(module.embedding_dim), False
    if isinstance(module, nn.modules.conv._ConvNd):
        return int(module.out_channels), True
    return None


def _measure(model: nn.Module, modules: list[nn.Module], batch: Any, probe: RunContext | None) -> dict[int, Any]:
    """Each module's output on one batch: eval mode, no gradient, RNG and modes restored."""
    from ._state import RNGCapture, as_batch

    b = as_batch(batch)
    outs: dict[int, Any] = {}
    handles = []

    def grab(m: nn.Module, a: Any, out: Any) -> None:
        outs.setdefault(id(m), out)

    modes = [(m, m.training) for m in model.modules()]
    rng = RNGCapture()
    quiet = probe.paused() if probe is not None else contextlib.nullcontext()
    try:
        for m in modules:
            handles.append(m.register_forward_hook(grab))
        model.eval()
        with torch.no_grad(), quiet:
            model(*b.args, **b.kwargs)
    finally:
        for h in handles:
            h.remove()
        for m, flag in modes:
            m.training = flag
        rng.restore()
    return outs


def _group_of(optimizer: torch.optim.Optimizer, module: nn.Module) -> dict[str, Any]:
    mine = {id(p) for p in module.parameters()}
    for g in optimizer.param_groups:
        if any(id(p) in mine for p in g["params"]):
            return g
    return optimizer.param_groups[0]


def _batch_for(probe: RunContext | None, batch: Any) -> Any:
    if batch is not None:
        return batch
    if probe is not None:
        from ._state import probe_batch

        return probe_batch(probe)
    return None


def plan_insert_norm(model: nn.Module, p: dict[str, Any], *, optimizer: Any, probe: RunContext | None = None,
                     batch: Any = None, measure: bool = True) -> list[dict[str, Any]]:
    """Check everything and return what to do per module (raises ``ValueError`` saying why not).

    ``measure=False`` (the request's check, from any thread): the output sizes that need a
    forward are not measured -- only that a batch will be there; the model runs only at the
    step boundary, on the training thread."""
    if p["after"] is None:
        raise ValueError("insert_norm: name the modules to normalize after (after=[...]); 'all' is not allowed")
    if optimizer is None:
        raise ValueError("insert_norm needs the optimizer, so that the new scale / shift are trained: "
                         "Probe(model, optimizer, ...) or insert_norm_(..., optimizer=opt)")
    kind = p["kind"]
    targets = resolve_modules(model, p["after"], "insert_norm: after")
    plans: list[dict[str, Any]] = []
    unknown: list[tuple[str, nn.Module]] = []
    in_opt = {id(q) for g in optimizer.param_groups for q in g["params"]}
    for name, mod in targets:
        if mod is model:
            raise ValueError("insert_norm: name a submodule, not the whole model")
        if isinstance(mod, _NORM_TYPES):
            raise ValueError(f"insert_norm: {name!r} is already a normalization layer ({type(mod).__name__})")
        if mod in _ADDED and any(h is _ADDED[mod] for h in mod._forward_hooks.values()):
            raise ValueError(f"insert_norm: {name!r} is already normalized by trainscope ({_ADDED[mod].kind} norm); "
                             "undo that first")
        if kind == "weight":
            w = mod._parameters.get("weight")
            if parametrize.is_parametrized(mod, "weight"):
                raise ValueError(f"insert_norm: the weight of {name!r} is already re-parametrized "
                                 "(weight norm, pruning mask...); undo that first")
            if hasattr(mod, "weight_g") or hasattr(mod, "weight_v"):
                raise ValueError(f"insert_norm: {name!r} already has weight normalization (torch.nn.utils.weight_norm)")
            if not isinstance(w, nn.Parameter) or w.dim() < 2:
                raise ValueError(f"insert_norm: weight normalization needs a layer with a weight matrix "
                                 f"(Linear / Conv); {name!r} is {type(mod).__name__}")
            if id(w) not in in_opt:
                raise ValueError(f"insert_norm: the optimizer does not train the weight of {name!r}; weight "
                                 "normalization would freeze it")
            plans.append({"name": name, "module": mod, "weight": w})
            continue
        if isinstance(mod, _TUPLE_TYPES):
            raise ValueError(f"insert_norm: {name!r} ({type(mod).__name__}) returns a tuple; normalize the layer "
                             "that reads its output instead")
        nxt = _next_leaf(model, mod)
        if nxt is not None and isinstance(nxt[1], _NORM_TYPES):
            raise ValueError(f"insert_norm: {name!r} is already followed by a normalization layer "
                             f"({nxt[0]!r}, {type(nxt[1]).__name__})")
        known = _known_layout(mod)
        if known is None:
            unknown.append((name, mod))
            plans.append({"name": name, "module": mod, "features": None, "channel_first": None})
        else:
            plans.append({"name": name, "module": mod, "features": known[0], "channel_first": known[1]})
    if unknown:
        b = _batch_for(probe, batch)
        if b is None:
            raise ValueError(
                f"insert_norm: the output size of {', '.join(repr(n) for n, _ in unknown)} is not known from its "
                "type (Linear / Conv / Embedding are); it is measured on a real batch: give batch=, the Probe "
                "data=loader, or let training run one step first")
        if not measure:
            return plans
        outs = _measure(model, [m for _, m in unknown], b, probe)
        for pl in plans:
            if pl.get("features") is not None or "weight" in pl:
                continue
            name, mod = pl["name"], pl["module"]
            out = outs.get(id(mod))
            if out is None:
                raise ValueError(f"insert_norm: {name!r} did not run in the model's forward on the batch")
            if isinstance(out, (tuple, list)):
                raise ValueError(f"insert_norm: {name!r} returns a {type(out).__name__}; normalize a module "
                                 "that returns a tensor")
            if not isinstance(out, Tensor) or not out.is_floating_point() or out.dim() < 2:
                raise ValueError(f"insert_norm: {name!r} returns {type(out).__name__} "
                                 f"{tuple(out.shape) if isinstance(out, Tensor) else ''}; need a floating (N, F, ...) tensor")
            if out.dim() == 2:
                pl["features"], pl["channel_first"] = int(out.shape[1]), True
            else:
                cf = _layout_before(model, mod)
                if cf is None:
                    raise ValueError(f"insert_norm: cannot tell where the features are in the {tuple(out.shape)} "
                                     f"output of {name!r} (no Linear / Conv layer before it)")
                pl["features"], pl["channel_first"] = int(out.shape[1] if cf else out.shape[-1]), cf
            pl["device"], pl["dtype"] = out.device, out.dtype
    for pl in plans:
        if "weight" in pl:
            continue
        prm = next(iter(pl["module"].parameters()), None)
        pl.setdefault("device", prm.device if prm is not None else torch.device("cpu"))
        pl.setdefault("dtype", prm.dtype if prm is not None and prm.is_floating_point() else torch.float32)
        pl["group"] = _group_of(optimizer, pl["module"])
    return plans


def _make_norm(kind: str, pl: dict[str, Any], eps: float, momentum: float) -> nn.Module:
    f = pl["features"]
    n: nn.Module
    if kind == "batch":
        n = nn.BatchNorm1d(f, eps=eps, momentum=momentum)
    elif pl["channel_first"]:
        n = nn.GroupNorm(1, f, eps=eps)
    else:
        n = nn.LayerNorm(f, eps=eps)
    return n.to(device=pl["device"], dtype=pl["dtype"])


# ---------------------------------------------------------------------------- apply
def insert_norm_(model: nn.Module, after: list[str] | str, kind: str = "batch", *,
                 optimizer: torch.optim.Optimizer | None = None, probe: RunContext | None = None, batch: Any = None,
                 eps: float = 1e-5, momentum: float = 0.1) -> Applied:
    """Normalize the output (``kind="batch"`` / ``"layer"``) or the weight (``"weight"``) of each
    module named in ``after``; the new parameters join ``optimizer`` (default: the probe's).

    Returns an :class:`Applied` whose ``undo()`` removes the normalization and the new parameters
    from the optimizer (see the module docstring for what weight-norm undo keeps).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"insert_norm_ needs an nn.Module, got {type(model).__name__}")
    p = validate_params("insert_norm", INSERT_NORM_SCHEMA,
                        {"after": after, "kind": kind, "eps": eps, "momentum": momentum})
    if optimizer is None and probe is not None:
        optimizer = probe.optimizer
    plans = plan_insert_norm(model, p, optimizer=optimizer, probe=probe, batch=batch)
    assert optimizer is not None
    if p["kind"] == "weight":
        return _weight_norm(model, plans, optimizer, p, probe)

    hooks: list[tuple[nn.Module, NormHook]] = []
    groups: list[dict[str, Any]] = []
    try:
        for pl in plans:
            norm = _make_norm(p["kind"], pl, p["eps"], p["momentum"])
            norm.train(pl["module"].training)
            hp = {k: v for k, v in pl["group"].items() if k != "params"}
            optimizer.add_param_group({**hp, "params": list(norm.parameters())})
            groups.append(optimizer.param_groups[-1])
            h = NormHook(p["kind"], norm, bool(pl["channel_first"]), probe)
            h.install(pl["module"])
            hooks.append((pl["module"], h))
    except BaseException:
        _remove(optimizer, hooks, groups)
        raise

    def undo() -> None:
        _remove(optimizer, hooks, groups)

    names = [pl["name"] for pl in plans]
    info = [{"layer": pl["name"], "features": pl["features"],
             "axis": "channels (dim 1)" if pl["channel_first"] else "last dim"} for pl in plans]
    what = "BatchNorm" if p["kind"] == "batch" else "LayerNorm"
    return Applied("insert_norm", p, undo, message=f"{what} after {', '.join(names)} "
                   f"({sum(f['features'] for f in info) * 2} new parameters in {len(groups)} new param group(s))",
                   details={"layers": info}, probe=probe,
                   touches={f"n{id(pl['module'])}" for pl in plans} | opt_keys(optimizer, "groups"))


def _remove(optimizer: torch.optim.Optimizer, hooks: list[tuple[nn.Module, NormHook]],
            groups: list[dict[str, Any]]) -> None:
    for m, h in hooks:
        h.remove(m)
    ids = {id(g) for g in groups}
    for g in groups:
        for q in g["params"]:
            optimizer.state.pop(q, None)
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if id(g) not in ids]


def _weight_norm(model: nn.Module, plans: list[dict[str, Any]], optimizer: torch.optim.Optimizer,
                 p: dict[str, Any], probe: RunContext | None) -> Applied:
    from torch.nn.utils.parametrizations import weight_norm

    done: list[dict[str, Any]] = []

    def revert(entry: dict[str, Any]) -> None:
        mod, w = entry["module"], entry["weight"]
        g, v = entry["g"], entry["v"]
        with torch.no_grad():
            # untouched since applied: the exact old values (g v / ||v|| may differ in the last bit)
            same = torch.equal(g, entry["g0"]) and torch.equal(v, entry["v0"])
            eff = entry["w0"] if same else mod.weight.detach().clone()
        parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)
        with torch.no_grad():
            w.copy_(eff)
        params = mod._parameters
        params["weight"] = w
        moved = [(k, params.pop(k)) for k in entry["order"] if k in params]  # the original key order
        params.update(moved)
        for grp in optimizer.param_groups:
            ps = grp["params"]
            if any(q is g for q in ps) or any(q is v for q in ps):
                rest = [q for q in ps if q is not g and q is not v]
                pos = min(entry["pos"], len(rest)) if grp is entry["group"] else len(rest)
                rest.insert(pos, w)
                grp["params"] = rest
                break
        optimizer.state.pop(g, None)
        optimizer.state.pop(v, None)
        if entry["state"] is not None:
            optimizer.state[w] = entry["state"]

    try:
        for pl in plans:
            mod, w = pl["module"], pl["weight"]
            grp = next(g for g in optimizer.param_groups if any(q is w for q in g["params"]))
            pos = next(i for i, q in enumerate(grp["params"]) if q is w)
            order = list(mod._parameters)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                weight_norm(mod, "weight", dim=0)
            pz = mod.parametrizations.weight
            g, v = pz.original0, pz.original1
            with torch.no_grad():
                copies = {"w0": w.detach().clone(), "g0": g.detach().clone(), "v0": v.detach().clone()}
            entry = {**copies, "module": mod, "weight": w, "g": g, "v": v, "group": grp, "pos": pos, "order": order,
                     "state": optimizer.state.pop(w, None)}
            done.append(entry)
            grp["params"] = [*grp["params"][:pos], g, v, *grp["params"][pos + 1:]]
    except BaseException:
        for e in reversed(done):
            revert(e)
        raise

    def undo() -> None:
        for e in reversed(done):
            revert(e)

    names = [pl["name"] for pl in plans]
    ws = [pl["weight"] for pl in plans]
    return Applied("insert_norm", p, undo, message=f"weight normalization of {', '.join(names)} (w = g v / ||v||)",
                   details={"layers": [{"layer": n, "kind": "weight"} for n in names]}, probe=probe,
                   touches={f"n{id(pl['module'])}" for pl in plans} | opt_keys(optimizer, "groups")
                   | tensor_keys(ws) | opt_state_keys(optimizer, ws))


# ---------------------------------------------------------------------------- the action
def _check(ctx: Any, p: dict[str, Any]) -> None:
    plan_insert_norm(ctx.model, p, optimizer=ctx.optimizer, probe=ctx, measure=False)


@action("insert_norm", label="Insert normalization", category="normalization", schema=INSERT_NORM_SCHEMA,
        description="BatchNorm / LayerNorm on the output of chosen layers (hooks: the module tree is unchanged), "
                    "or weight normalization of their weights; undo removes it.",
        check=_check)
def _run_insert_norm(ctx: Any, p: dict[str, Any]) -> Applied:
    return insert_norm_(ctx.model, p["after"], p["kind"], optimizer=ctx.optimizer, probe=ctx,
                        eps=p["eps"], momentum=p["momentum"])

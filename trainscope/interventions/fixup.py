"""Fixup initialization (Zhang, Dauphin & Ma 2019, "Fixup Initialization: Residual Learning
Without Normalization"), as ``reinit(scheme="fixup")``.

For a residual network without normalization, with ``L`` residual branches of ``m`` weight
layers each:

1. the classification layer (the last weight layer outside every branch) and the last layer of
   each residual branch are set to 0;
2. the other layers get He initialization (``kaiming_normal``, fan_in), and the layers inside
   the residual branches are scaled by ``L^(-1/(2m-2))`` (``m`` counted per branch);
3. a scalar multiplier (1) on each branch's output and scalar biases (0) before each weight
   layer and after each weight layer of the branch (i.e. before its activation), trained with
   the rest.

**Finding the residual branches** in an arbitrary model: the model is traced with
:func:`torch.fx.symbolic_trace` (if it does not trace, each sub-module is tried, from the top
down, so that one untraceable wrapper does not hide traceable blocks); every addition of two
tensors whose two operands depend on different weight layers is a residual join: the operand
that goes through >= 2 weight layers the other does not is the branch, the other (identity or a
1-layer projection) the shortcut.  Where nothing traces, the torchvision convention is used: a
module whose class name ends in ``Block`` / ``Bottleneck`` with children ``conv1``, ``conv2``
(``conv3``) is a branch of those layers.  When no branch is found, or a branch holds a
normalization layer (Fixup is for networks *without* normalization), it is refused, saying so.

The scalars are applied by forward hooks held by the branch's layers (the module tree and
``state_dict`` keys are unchanged; the scalars are not in ``model.parameters()``), and join the
optimizer as one new param group with the hyper-parameters of the group that trains the first
branch.  ``undo()`` restores every weight, the optimizer state and removes the hooks and that
group.  The paper's 10x smaller learning rate for the scalars is not applied.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ._base import Applied, opt_keys, opt_state_keys, tensor_keys

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["Branch", "find_branches", "fixup_"]

_WEIGHT: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)
_NORM: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
                                      nn.modules.instancenorm._InstanceNorm)
_ADDS = {operator.add, operator.iadd, torch.add}
_ALL = "reinit fixup initializes the whole network (L counts every residual branch): leave layers at 'all' (the default)"


@dataclass
class Branch:
    """One residual branch: its weight layers in forward order (qualified names) and how found."""

    layers: list[str]
    shortcut: list[str] = field(default_factory=list)
    how: str = "fx"


# ---------------------------------------------------------------------------- detection
def _fx_branches(module: nn.Module, prefix: str) -> list[Branch] | None:
    """Branches of a module that traces with torch.fx (``None`` if it does not trace)."""
    import torch.fx

    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception:
        return None
    nodes = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}

    def qual(target: str) -> str:
        return f"{prefix}.{target}".strip(".")

    weight_nodes = {n for n in nodes if n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), _WEIGHT)}
    anc: dict[Any, frozenset[Any]] = {}
    for n in nodes:  # topological order: ancestors of the inputs are known
        s: set[Any] = set()
        for a in n.all_input_nodes:
            s.add(a)
            s |= anc[a]
        anc[n] = frozenset(s)
    out: list[Branch] = []
    for n in nodes:
        is_add = (n.op == "call_function" and n.target in _ADDS) or (n.op == "call_method" and n.target in ("add", "add_"))
        if not is_add or len(n.args) < 2:
            continue
        a, b = n.args[0], n.args[1]
        if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)):
            continue
        sa, sb = anc[a] | {a}, anc[b] | {b}
        wa = sorted((x for x in sa - sb if x in weight_nodes), key=pos.__getitem__)
        wb = sorted((x for x in sb - sa if x in weight_nodes), key=pos.__getitem__)
        if len(wa) >= 2 and len(wb) <= 1:
            br, sc = wa, wb
        elif len(wb) >= 2 and len(wa) <= 1:
            br, sc = wb, wa
        else:
            continue
        out.append(Branch([qual(str(x.target)) for x in br], [qual(str(x.target)) for x in sc], "fx"))
    return out


def _convention(name: str, module: nn.Module) -> Branch | None:
    cls = type(module).__name__
    if not (cls.endswith("Block") or cls.endswith("Bottleneck")):
        return None
    kids = dict(module.named_children())
    convs = [f"conv{i}" for i in (1, 2, 3) if isinstance(kids.get(f"conv{i}"), _WEIGHT)]
    if len(convs) < 2 or convs[:2] != ["conv1", "conv2"]:
        return None
    sc = [f"{name}.{k}".strip(".") for k in ("downsample", "shortcut") if k in kids
          for n, m in kids[k].named_modules() if isinstance(m, _WEIGHT)][:1]
    return Branch([f"{name}.{c}".strip(".") for c in convs], sc, "convention (torchvision-style block)")


def find_branches(model: nn.Module) -> list[Branch]:
    """The residual branches of ``model`` (see the module docstring); ``[]`` when none is found."""
    found = _fx_branches(model, "")
    if found is not None:
        return _dedupe(found)
    branches: list[Branch] = []

    def visit(name: str, mod: nn.Module) -> None:
        if not any(isinstance(m, _WEIGHT) for m in mod.modules()):
            return
        conv = _convention(name, mod)
        if conv is None and list(mod.children()):
            got = _fx_branches(mod, name)
            if got is not None:
                branches.extend(got)
                return
        if conv is not None:
            branches.append(conv)
            return
        for n, c in mod.named_children():
            visit(f"{name}.{n}".strip("."), c)

    for n, c in model.named_children():
        visit(n, c)
    return _dedupe(branches)


def _dedupe(branches: list[Branch]) -> list[Branch]:
    seen: set[str] = set()
    out = []
    for b in branches:
        if any(x in seen for x in b.layers):
            continue
        seen.update(b.layers)
        out.append(b)
    return out


# ---------------------------------------------------------------------------- hooks
class FixupBias:
    """Forward pre-hook: a scalar bias added to the layer's input."""

    def __init__(self, bias: nn.Parameter) -> None:
        self.bias = bias

    def __call__(self, module: nn.Module, args: Any) -> Any:
        if args and isinstance(args[0], Tensor):
            return (args[0] + self.bias, *args[1:])
        return None


class FixupAfter:
    """Forward hook: ``output * scale + bias`` (``scale`` only on a branch's last layer)."""

    def __init__(self, bias: nn.Parameter, scale: nn.Parameter | None) -> None:
        self.bias = bias
        self.scale = scale

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        if not isinstance(output, Tensor):
            return None
        return (output * self.scale if self.scale is not None else output) + self.bias


def _has_fixup(m: nn.Module) -> bool:
    return any(isinstance(h, FixupBias) for h in m._forward_pre_hooks.values()) or any(
        isinstance(h, FixupAfter) for h in m._forward_hooks.values())


def _remove_hooks(m: nn.Module) -> None:
    for table, extra in ((m._forward_pre_hooks, (m._forward_pre_hooks_with_kwargs,)),
                         (m._forward_hooks, (m._forward_hooks_with_kwargs, m._forward_hooks_always_called))):
        for k in [k for k, h in table.items() if isinstance(h, (FixupBias, FixupAfter))]:
            del table[k]
            for e in extra:
                e.pop(k, None)


# ---------------------------------------------------------------------------- apply
def plan_fixup(model: nn.Module) -> tuple[list[Branch], list[tuple[str, nn.Module]], str | None]:
    """``(branches, every weight layer in order, classifier name)``; raises ``ValueError`` saying why not."""
    branches = find_branches(model)
    if not branches:
        raise ValueError(
            "reinit fixup: no residual branch found. Fixup needs blocks whose forward adds the input to the output "
            "of >= 2 Linear / Conv layers (found by tracing the model with torch.fx, or torchvision-style "
            "BasicBlock / Bottleneck modules with conv1, conv2[, conv3]); use another scheme for this model")
    table = dict(model.named_modules())
    for b in branches:
        for n in b.layers:
            if n not in table:
                raise ValueError(f"reinit fixup: branch layer {n!r} is not a module of the model")
    inside = {n for b in branches for n in b.layers}
    # normalization inside a branch: Fixup is for networks without it
    for b in branches:
        prefix = _common_prefix(b.layers)
        root = table.get(prefix) if prefix else None
        if root is not None and root is not model:
            for n, m in root.named_modules():
                if isinstance(m, _NORM):
                    raise ValueError(f"reinit fixup: the residual branch {prefix!r} holds a normalization layer "
                                     f"({type(m).__name__} {f'{prefix}.{n}'.strip('.')!r}); Fixup is for residual "
                                     "networks without normalization")
    for n in inside:
        if _has_fixup(table[n]):
            raise ValueError("reinit fixup: Fixup is already applied to this model; undo it first")
    weights = [(n, m) for n, m in model.named_modules() if isinstance(m, _WEIGHT)]
    outside = [n for n, _ in weights if n not in inside and not any(n in b.shortcut for b in branches)]
    classifier = outside[-1] if outside and weights and outside[-1] == weights[-1][0] else None
    return branches, weights, classifier


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    out: list[str] = []
    for level in zip(*parts, strict=False):
        if all(x == level[0] for x in level):
            out.append(level[0])
        else:
            break
    return ".".join(out)


def fixup_(model: nn.Module, params: dict[str, Any], *, optimizer: torch.optim.Optimizer | None = None,
           probe: RunContext | None = None) -> Applied:
    """Apply Fixup to ``model`` (``params``: the validated ``reinit`` parameters; ``layers`` must
    be all).  Returns the ``reinit`` :class:`Applied` record."""
    if params.get("layers") is not None:
        raise ValueError(_ALL)
    branches, weights, classifier = plan_fixup(model)
    table = dict(model.named_modules())
    L = len(branches)
    plan: list[tuple[Tensor, Tensor]] = []
    info: list[dict[str, Any]] = []
    in_branch: dict[str, tuple[int, int, float]] = {}
    for b in branches:
        size = len(b.layers)
        scale = L ** (-1.0 / (2 * size - 2))
        for i, n in enumerate(b.layers):
            in_branch[n] = (i, size, scale)
    with torch.no_grad():
        for n, mod in weights:
            w: Tensor = mod.weight  # type: ignore[assignment]
            new = torch.empty_like(w)
            if n == classifier:
                new.zero_()
                role = "classifier: 0"
            elif n in in_branch:
                i, size, scale = in_branch[n]
                if i == size - 1:
                    new.zero_()
                    role = "branch last layer: 0"
                else:
                    nn.init.kaiming_normal_(new, mode="fan_in", nonlinearity="relu")
                    new.mul_(scale)
                    role = f"branch layer x L^(-1/(2m-2)) = {scale:.4g}"
            else:
                nn.init.kaiming_normal_(new, mode="fan_in", nonlinearity="relu")
                role = "He (fan_in)"
            plan.append((w, new))
            bias = getattr(mod, "bias", None)
            if isinstance(bias, Tensor):
                plan.append((bias, torch.zeros_like(bias)))
            info.append({"layer": n, "type": type(mod).__name__, "init": role})
    # scalars
    first = table[branches[0].layers[0]]
    dev = first.weight.device
    dtype = first.weight.dtype
    scalars: list[nn.Parameter] = []
    hooked: list[tuple[nn.Module, FixupBias, FixupAfter]] = []
    for b in branches:
        for i, n in enumerate(b.layers):
            before = nn.Parameter(torch.zeros((), device=dev, dtype=dtype))
            after = nn.Parameter(torch.zeros((), device=dev, dtype=dtype))
            scale_p = nn.Parameter(torch.ones((), device=dev, dtype=dtype)) if i == len(b.layers) - 1 else None
            scalars += [before, after] + ([scale_p] if scale_p is not None else [])
            hooked.append((table[n], FixupBias(before), FixupAfter(after, scale_p)))

    saved = [(w, w.detach().clone()) for w, _ in plan]
    states: dict[int, tuple[Tensor, Any]] = {}
    group: dict[str, Any] | None = None

    def restore() -> None:
        with torch.no_grad():
            for w, old in saved:
                w.copy_(old)
        for m, _, _ in hooked:
            _remove_hooks(m)
        if optimizer is not None:
            for w, st in states.values():
                optimizer.state[w] = st
            if group is not None:
                for q in group["params"]:
                    optimizer.state.pop(q, None)
                optimizer.param_groups[:] = [g for g in optimizer.param_groups if g is not group]

    try:
        with torch.no_grad():
            for w, new in plan:
                w.copy_(new)
        if optimizer is not None:
            for w, _ in plan:
                if w in optimizer.state:
                    states[id(w)] = (w, optimizer.state.pop(w))
            src = next((g for g in optimizer.param_groups if any(q is first.weight for q in g["params"])),
                       optimizer.param_groups[0])
            optimizer.add_param_group({**{k: v for k, v in src.items() if k != "params"}, "params": scalars})
            group = optimizer.param_groups[-1]
        for m, pre, post in hooked:
            m.register_forward_pre_hook(pre)
            m.register_forward_hook(post)
    except BaseException:
        restore()
        raise

    ms = sorted({len(b.layers) for b in branches})
    msg = (f"Fixup: {L} residual branch(es) of {'/'.join(map(str, ms))} layer(s) "
           f"({branches[0].how}); last layer of each branch and the classifier "
           f"{classifier!r} zeroed, branch layers scaled by L^(-1/(2m-2)); {len(scalars)} scalar biases / multipliers")
    if classifier is None:
        msg += "; no classification layer after the last branch (none zeroed)"
    if optimizer is None:
        msg += "; no optimizer: the scalars are not trained"
    else:
        msg += f"; optimizer state reset for {len(states)} tensor(s), scalars in a new param group"
    touched = [w for w, _ in plan]
    touches = tensor_keys(touched) | {f"n{id(m)}" for m, _, _ in hooked}
    if optimizer is not None:
        touches |= opt_state_keys(optimizer, touched) | opt_keys(optimizer, "groups")
    details = {"layers": info, "branches": [{"layers": b.layers, "shortcut": b.shortcut} for b in branches],
               "L": L, "classifier": classifier, "found_by": branches[0].how,
               "scales": {str(m): round(L ** (-1.0 / (2 * m - 2)), 6) for m in ms}}
    return Applied("reinit", params, restore, message=msg, details=details, probe=probe, touches=touches, heavy=True)


def fixup_check(model: nn.Module, layers: list[str] | None = None) -> None:
    """What can be checked when the request is made, from any thread: ``layers`` and that the
    model has weight layers to form branches.  Finding the branches traces the model with
    torch.fx, which patches ``nn.Module.__call__`` process-wide while it runs, so it happens
    only at the step boundary, on the training thread (a model without branches then fails
    there with the reason, nothing changed)."""
    if layers is not None:
        raise ValueError(_ALL)
    if sum(isinstance(m, _WEIGHT) for m in model.modules()) < 2:
        raise ValueError("reinit fixup: the model has fewer than 2 Linear / Conv layers, so no residual branch")


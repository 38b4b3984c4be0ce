"""Re-initialize the whole model or chosen layers, in place (``reinit_``).

Schemes: ``zeros`` / ``constant`` (to demonstrate the symmetry problem: every unit of a layer then
computes the same thing and receives the same gradient, so they stay identical -- a warning says
so), ``normal`` / ``uniform`` at a given ``std``, ``xavier_uniform`` / ``xavier_normal`` (Glorot),
``kaiming_uniform`` / ``kaiming_normal`` (He; ``mode`` fan_in / fan_out, for the nonlinearity in
use), ``orthogonal``, ``lsuv`` (Mishkin & Matas 2016) and ``data_dependent`` (Krähenbühl et al.
2015: every unit normalized on the batch, then -- ``between_layers`` -- each layer rescaled so that
all layers change at the same relative rate).  The last two need a real batch.

What is re-initialized: in each chosen module (or every module inside a chosen container), the
weight matrices -- direct parameters whose name starts with ``weight`` and that have 2 or more
dimensions (Linear, Conv, Embedding, RNN matrices) -- get the scheme; the biases are set to zero.
Normalization layers (1-D weights) are left alone.  ``Parameter`` objects keep their identity, so
the optimizer stays valid; the optimizer state (momentum, Adam moments) of every re-initialized
parameter is reset.  Undo restores the values and the optimizer state.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ._base import Applied, commit, resolve_modules, validate_params
from ._spec import action

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["SCHEMES", "detect_nonlinearity", "reinit_"]

SCHEMES = ("zeros", "constant", "normal", "uniform", "xavier_uniform", "xavier_normal", "kaiming_uniform",
           "kaiming_normal", "orthogonal", "lsuv", "data_dependent", "fixup")
NONLINEARITIES = ("auto", "relu", "leaky_relu", "tanh", "sigmoid", "selu", "linear")

REINIT_SCHEMA: dict[str, dict[str, Any]] = {
    "layers": {"type": "layers", "default": "all", "help": "module names, or all"},
    "scheme": {"type": "choice", "choices": list(SCHEMES), "default": "kaiming_normal", "help": "initialization"},
    "std": {"type": "float", "min": 0.0, "min_open": True, "max": 100.0, "default": 0.02, "log": True,
            "help": "normal / uniform: standard deviation"},
    "value": {"type": "float", "default": 0.0, "min": -100.0, "max": 100.0, "help": "constant: the value"},
    "mode": {"type": "choice", "choices": ["fan_in", "fan_out"], "default": "fan_in", "help": "kaiming: preserve forward (fan_in) or backward (fan_out) variance"},
    "nonlinearity": {"type": "choice", "choices": list(NONLINEARITIES), "default": "auto",
                     "help": "kaiming: activation after the layer (auto: the next activation module)"},
    "gain": {"type": "float", "min": 0.0, "min_open": True, "max": 100.0, "default": 1.0, "help": "xavier / orthogonal: gain"},
    "tol": {"type": "float", "min": 0.0, "min_open": True, "max": 1.0, "max_open": True, "default": 0.1,
            "help": "lsuv: accept |std - 1| below this"},
    "max_iter": {"type": "int", "min": 1, "max": 100, "default": 10, "help": "lsuv: rescaling passes per layer"},
    "between_layers": {"type": "bool", "default": True,
                       "help": "data_dependent: then equalize how fast the layers learn (the between-layer step)"},
}

_ACT_MAP: list[tuple[type[nn.Module], str]] = [
    (nn.ReLU, "relu"), (nn.ReLU6, "relu"), (nn.Threshold, "relu"), (nn.LeakyReLU, "leaky_relu"),
    (nn.PReLU, "leaky_relu"), (nn.RReLU, "leaky_relu"), (nn.Tanh, "tanh"), (nn.Sigmoid, "sigmoid"),
    (nn.SELU, "selu"), (nn.ELU, "relu"), (nn.GELU, "relu"), (nn.SiLU, "relu"), (nn.Mish, "relu"),
    (nn.CELU, "relu"), (nn.Softplus, "relu"), (nn.Hardswish, "relu"), (nn.Hardtanh, "tanh"),
]
_TRANSPARENT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.Flatten,
                nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
                nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def weight_matrices(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters(recurse=False) if n.startswith("weight") and p.dim() >= 2]


def _biases(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters(recurse=False) if n.startswith("bias")]


def target_modules(model: nn.Module, layers: list[str] | None) -> list[tuple[str, nn.Module]]:
    """Modules whose weight matrices a reinit touches (validated: raises on bad names)."""
    if layers is None:
        found = [(n, m) for n, m in model.named_modules() if weight_matrices(m)]
        if not found:
            raise ValueError("the model has no weight matrices (Linear / Conv / Embedding / RNN) to re-initialize")
        return found
    out: dict[int, tuple[str, nn.Module]] = {}
    for name, mod in resolve_modules(model, layers, "reinit: layers"):
        inside = [(f"{name}.{n}".strip("."), m) for n, m in mod.named_modules() if weight_matrices(m)]
        if not inside:
            raise ValueError(
                f"reinit: {name!r} ({type(mod).__name__}) has no weight matrix to re-initialize; name a "
                "Linear / Conv / Embedding / RNN layer or a container that holds some"
            )
        for n, m in inside:
            out.setdefault(id(m), (n, m))
    return list(out.values())


def detect_nonlinearity(model: nn.Module, module: nn.Module) -> tuple[str, float, str]:
    """``(nonlinearity, negative_slope, how)`` of the activation that follows ``module``: the next
    leaf module in registration order, skipping dropout / normalization / pooling.  Followed
    directly by another weight layer, a functional ReLU is assumed; at the end, ``linear``."""
    leaves = [m for m in model.modules() if not list(m.children())]
    try:
        i = next(k for k, m in enumerate(leaves) if m is module)
    except StopIteration:
        return "relu", 0.0, "assumed (not a leaf)"
    for m in leaves[i + 1:]:
        if isinstance(m, _TRANSPARENT):
            continue
        for cls, name in _ACT_MAP:
            if isinstance(m, cls):
                slope = 0.0
                if isinstance(m, nn.LeakyReLU):
                    slope = float(m.negative_slope)
                elif isinstance(m, nn.PReLU):
                    slope = float(m.weight.detach().mean())
                elif isinstance(m, nn.RReLU):
                    slope = (m.lower + m.upper) / 2
                return name, slope, f"detected {type(m).__name__}"
        if weight_matrices(m):
            return "relu", 0.0, "assumed (no activation module before the next layer)"
        return "relu", 0.0, f"assumed (followed by {type(m).__name__})"
    return "linear", 0.0, "last layer"


def _static_init(w: Tensor, scheme: str, p: dict[str, Any], nl: str, slope: float) -> None:
    init = nn.init
    if scheme == "zeros":
        init.zeros_(w)
    elif scheme == "constant":
        init.constant_(w, p["value"])
    elif scheme == "normal":
        init.normal_(w, 0.0, p["std"])
    elif scheme == "uniform":
        b = p["std"] * math.sqrt(3.0)
        init.uniform_(w, -b, b)
    elif scheme == "xavier_uniform":
        init.xavier_uniform_(w, gain=p["gain"])
    elif scheme == "xavier_normal":
        init.xavier_normal_(w, gain=p["gain"])
    elif scheme == "kaiming_uniform":
        init.kaiming_uniform_(w, a=slope, mode=p["mode"], nonlinearity=nl)  # type: ignore[arg-type]
    elif scheme == "kaiming_normal":
        init.kaiming_normal_(w, a=slope, mode=p["mode"], nonlinearity=nl)  # type: ignore[arg-type]
    elif scheme == "orthogonal":
        init.orthogonal_(w, gain=p["gain"])
    else:  # pragma: no cover - validated before
        raise ValueError(scheme)


def reinit_(
    model: nn.Module,
    scheme: str = "kaiming_normal",
    layers: list[str] | str | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    probe: RunContext | None = None,
    batch: Any = None,
    **options: Any,
) -> Applied:
    """Re-initialize ``layers`` (module names; ``None`` / ``"all"``: every weight layer) in place.

    Parameters
    ----------
    model
        The model (its ``Parameter`` objects are kept; values are copied in).
    scheme
        One of :data:`SCHEMES`.
    layers
        Module names from ``model.named_modules()`` (containers include what they hold).
    optimizer
        Its state for the re-initialized parameters is reset (default: the probe's optimizer).
    probe
        Record the change on this probe's timeline (and use its optimizer / recent batch).
    batch
        Inputs for ``lsuv`` / ``data_dependent`` (a tensor, an ``(inputs, target)`` pair...).
    **options
        ``std``, ``value``, ``mode``, ``nonlinearity``, ``gain``, ``tol``, ``max_iter``
        (see :data:`REINIT_SCHEMA`).

    Returns
    -------
    Applied
        ``details["layers"]`` lists what changed; ``undo()`` restores values and optimizer state.

    Examples
    --------
    >>> applied = reinit_(model, "kaiming_normal", ["features.0"], optimizer=opt)  # doctest: +SKIP
    >>> applied.undo()  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"reinit_ needs an nn.Module, got {type(model).__name__}")
    p = validate_params("reinit", REINIT_SCHEMA, {"scheme": scheme, "layers": layers, **options})
    if optimizer is None and probe is not None:
        optimizer = probe.optimizer
    if p["scheme"] == "fixup":
        from .fixup import fixup_
        return fixup_(model, p, optimizer=optimizer, probe=probe)
    targets = target_modules(model, p["layers"])
    scheme = p["scheme"]
    tied = tied_note(model, targets)
    if scheme in ("lsuv", "data_dependent"):
        from ._datainit import data_init

        applied = data_init(model, targets, p, optimizer=optimizer, probe=probe, batch=batch)
        if tied:
            applied.message += f"; note: {tied}"
            applied.details["tied"] = tied
        return applied

    # plan: every new tensor is computed before anything changes
    plan: list[tuple[Tensor, Tensor]] = []
    info: list[dict[str, Any]] = []
    with torch.no_grad():
        for name, mod in targets:
            nl, slope, how = ("linear", 0.0, "")
            if scheme.startswith("kaiming"):
                if p["nonlinearity"] == "auto":
                    nl, slope, how = detect_nonlinearity(model, mod)
                else:
                    nl, slope, how = p["nonlinearity"], 0.01 if p["nonlinearity"] == "leaky_relu" else 0.0, "given"
            for _, w in weight_matrices(mod):
                new = torch.empty_like(w)
                _static_init(new, scheme, p, nl, slope)
                plan.append((w, new))
            for _, b in _biases(mod):
                if b is not None:
                    plan.append((b, torch.zeros_like(b)))
            entry: dict[str, Any] = {"layer": name, "type": type(mod).__name__}
            if scheme.startswith("kaiming"):
                entry["nonlinearity"] = nl if nl != "leaky_relu" else f"leaky_relu({slope:g})"
                entry["nonlinearity_source"] = how
            info.append(entry)
    return commit(model, plan, optimizer, "reinit", p, info, probe, warn_symmetry=scheme in ("zeros", "constant"),
                  extra={"tied": tied} if tied else None, note=tied)


def tied_note(model: nn.Module, targets: list[tuple[str, nn.Module]]) -> str:
    """Say which re-initialized parameters other modules share (tied weights: GPT-2's ``lm_head``
    and its input embedding are one tensor), naming those modules; ``""`` when none is shared."""
    chosen = {id(m) for _, m in targets}
    where: dict[int, list[tuple[str, nn.Module]]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for pname, prm in mod._parameters.items():
            if prm is not None:
                where.setdefault(id(prm), []).append((f"{mname}.{pname}".lstrip("."), mod))
    parts: list[str] = []
    seen: set[int] = set()
    last: dict[int, str] = {}  # the chosen module whose init a shared tensor ends with
    for tname, mod in targets:
        for pname, prm in weight_matrices(mod) + _biases(mod):
            last[id(prm)] = f"{tname}.{pname}".lstrip(".")
    for tname, mod in targets:
        for pname, prm in weight_matrices(mod) + _biases(mod):
            if id(prm) in seen:
                continue
            seen.add(id(prm))
            label = f"{tname}.{pname}".lstrip(".")
            names = [n for n, _ in where.get(id(prm), [])]
            others = sorted({n for n, m in where.get(id(prm), []) if id(m) not in chosen})
            if others:
                owners = sorted({n.rsplit(".", 1)[0] or n for n in others})
                parts.append(f"{label} is tied to {', '.join(others)} (the same tensor): re-initializing it "
                             f"also re-initializes {', '.join(owners)}")
            elif len(set(names)) > 1:
                parts.append(f"{', '.join(sorted(set(names)))} are one tensor (tied): it ends with the "
                             f"initialization of {last[id(prm)]}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------- the whitelist entry
def _check_reinit(ctx: RunContext, p: dict[str, Any]) -> None:
    from ..actions import note

    if p["scheme"] == "fixup":  # Zhang et al. 2019 (fixup.py); its branches are traced at the boundary
        from .fixup import fixup_check
        return fixup_check(ctx.model, p["layers"])
    tied = tied_note(ctx.model, target_modules(ctx.model, p["layers"]))
    if tied:
        note(f"note: {tied}")
    if p["scheme"] in ("lsuv", "data_dependent") and ctx.data is None and not ctx.recent_batches:
        raise ValueError(f"{p['scheme']} needs a real batch: give the Probe data=loader, or let training run one step first")


@action("reinit", label="Re-initialize", category="init", schema=REINIT_SCHEMA, order=10,
        description="Re-initialize the whole model or chosen layers (He, Xavier, orthogonal, LSUV, data-dependent...).",
        check=_check_reinit)
def _run_reinit(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return reinit_(ctx.model, p.pop("scheme"), p.pop("layers"), optimizer=ctx.optimizer, probe=ctx, **p)

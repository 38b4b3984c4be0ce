"""Which modules the probe tracks, and what it needs to know about each (kind, units, bounds)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from torch import nn

__all__ = ["LayerInfo", "Selector", "classify", "select_layers"]

_RELU_FAMILY: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.Threshold)
_CONV = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
_NORM = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LocalResponseNorm,
)
_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.Threshold,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Softmax,
    nn.LogSoftmax,
)
_POOL = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_CHANNEL_FIRST = (*_CONV, *_POOL, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)

#: Fraction of the output range, next to a bound, in which a bounded activation counts as saturated
#: (tanh: |y| >= 0.98, where tanh' <= 0.04; sigmoid: y <= 0.01 or y >= 0.99, where sigmoid' < 0.01).
SATURATION_MARGIN = 0.01


@dataclass(frozen=True)
class LayerInfo:
    """A tracked module: its ``named_modules()`` name and static facts the statistics need."""

    name: str
    type: str
    kind: str  # linear | conv | norm | activation | dropout | embedding | attention | pool | rnn | other
    n_params: int
    n_trainable: int
    relu_family: bool
    bounds: tuple[float, float] | None  # (low, high) output range of a bounded activation
    channel_first: bool  # units along dim 1 (conv-style) rather than the last dim
    nonneg: bool = False  # outputs are never negative (ReLU, ReLU6)

    @property
    def saturation(self) -> tuple[float, float, float] | None:
        """``(center, half_range, threshold)`` for :func:`trainscope.stats.summarize`."""
        if self.bounds is None:
            return None
        lo, hi = self.bounds
        half = (hi - lo) / 2.0
        return ((lo + hi) / 2.0, half, half * (1.0 - 2.0 * SATURATION_MARGIN))


def _bounds(module: nn.Module) -> tuple[float, float] | None:
    if isinstance(module, (nn.Tanh, nn.Softsign)):
        return (-1.0, 1.0)
    if isinstance(module, (nn.Sigmoid, nn.Hardsigmoid)):
        return (0.0, 1.0)
    if isinstance(module, nn.ReLU6):
        return (0.0, 6.0)
    if isinstance(module, nn.Hardtanh):
        return (float(module.min_val), float(module.max_val))
    return None


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear | nn.Bilinear):
        return "linear"
    if isinstance(module, _CONV):
        return "conv"
    if isinstance(module, _NORM):
        return "norm"
    if isinstance(module, _ACTIVATIONS):
        return "activation"
    if isinstance(
        module, nn.Dropout | nn.Dropout1d | nn.Dropout2d | nn.Dropout3d | nn.AlphaDropout
    ):
        return "dropout"
    if isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return "embedding"
    if isinstance(module, nn.MultiheadAttention):
        return "attention"
    if isinstance(module, _POOL):
        return "pool"
    if isinstance(module, nn.RNNBase):
        return "rnn"
    return "other"


def classify(name: str, module: nn.Module) -> LayerInfo:
    """Static description of one module."""
    own = list(module.parameters(recurse=False))
    return LayerInfo(
        name=name or "model",
        type=type(module).__name__,
        kind=_kind(module),
        n_params=sum(p.numel() for p in own),
        n_trainable=sum(p.numel() for p in own if p.requires_grad),
        relu_family=isinstance(module, _RELU_FAMILY),
        nonneg=isinstance(module, nn.ReLU | nn.ReLU6),
        bounds=_bounds(module),
        channel_first=isinstance(module, _CHANNEL_FIRST),
    )


Selector = str | type | Callable[[str, nn.Module], bool]
"""A name pattern (glob, or ``re:<regex>``), a module type, or a ``(name, module) -> bool`` test."""


def _matcher(sel: Selector) -> Callable[[str, nn.Module], bool]:
    if isinstance(sel, type):
        if not issubclass(sel, nn.Module):
            raise TypeError(f"include/exclude type {sel!r} is not an nn.Module subclass")
        return lambda _n, m: isinstance(m, sel)
    if isinstance(sel, str):
        if sel.startswith("re:"):
            rx = re.compile(sel[3:])
            return lambda n, _m: rx.search(n) is not None
        return lambda n, _m: fnmatch.fnmatchcase(n, sel)
    if callable(sel):
        return sel
    raise TypeError(
        f"include/exclude entries must be name patterns (str), nn.Module types or callables; got {sel!r}"
    )


def _as_list(sel: Selector | Iterable[Selector] | None) -> list[Selector]:
    if sel is None:
        return []
    if isinstance(sel, str | type) or callable(sel):
        return [sel]  # type: ignore[list-item]
    return list(sel)


def select_layers(
    model: nn.Module,
    include: Selector | Sequence[Selector] | None = None,
    exclude: Selector | Sequence[Selector] | None = None,
) -> list[tuple[str, nn.Module]]:
    """The modules to track, in registration order.

    By default: every leaf module (no children) and every module that owns parameters directly
    (e.g. ``nn.MultiheadAttention``, whose ``in_proj_weight`` belongs to no child).  ``include``
    replaces the default set with the modules that match any selector (at any depth); ``exclude``
    removes the matches.  Patterns that match nothing raise ``ValueError`` with the names there are.
    """
    named = [(n, m) for n, m in model.named_modules(remove_duplicate=True)]
    inc = [_matcher(s) for s in _as_list(include)]
    exc = [_matcher(s) for s in _as_list(exclude)]
    names = [n or "model" for n, _ in named]
    for label, sels, raw in (
        ("include", inc, _as_list(include)),
        ("exclude", exc, _as_list(exclude)),
    ):
        for sel, fn in zip(raw, sels, strict=True):
            if not any(fn(n or "model", m) for n, m in named):
                shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
                raise ValueError(
                    f"{label} selector {sel!r} matches no module of this model. "
                    f"Module names are named_modules() names, e.g.: {shown}. "
                    f"Use a glob such as 'encoder.*', 're:<regex>', or an nn.Module type."
                )
    if inc:
        chosen = [(n, m) for n, m in named if any(f(n or "model", m) for f in inc)]
    else:
        chosen = [
            (n, m)
            for n, m in named
            if not any(True for _ in m.children()) or any(True for _ in m.parameters(recurse=False))
        ]
    chosen = [(n, m) for n, m in chosen if not any(f(n or "model", m) for f in exc)]
    if not chosen:
        raise ValueError(
            "include/exclude leave no module to track; loosen the patterns "
            f"(the model has {len(named)} modules)."
        )
    return chosen

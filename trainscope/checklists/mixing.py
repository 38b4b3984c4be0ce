"""Karpathy's "use backprop to chart dependencies": does an example's output depend on the other
examples of its batch?  Read-only: gradients are taken with ``torch.autograd.grad`` (no ``.grad`` is
touched) in eval mode (so batch norm uses its running statistics and mixes nothing legitimately)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..layers import select_layers
from ..run import Batch
from .base import CheckEnv, CheckResult, forward, primary

_SEED = 0xB47C


def _per_example(g: Tensor | None, dim: int, n: int) -> Tensor | None:
    if g is None or g.dim() <= dim or g.shape[dim] != n:
        return None
    return g.detach().movedim(dim, 0).reshape(n, -1).abs().amax(dim=1).float()


def _leak(g: Tensor | None, dim: int, n: int, i: int) -> float:
    """Largest |gradient| on another example relative to the largest on example ``i``."""
    per = _per_example(g, dim, n)
    if per is None:
        return math.nan
    own = float(per[i])
    other = float(torch.cat([per[:i], per[i + 1 :]]).max()) if n > 1 else 0.0
    if own == 0.0:
        return math.inf if other > 0 else math.nan
    return other / own


_SEQ_FIRST = (nn.RNNBase, nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.Transformer)
"""Modules whose default layout puts the sequence first: ``(T, B, F)`` unless ``batch_first=True``."""


def infer_batch_dim(model: nn.Module, batch: Any, pos: int) -> tuple[int | None, str]:
    """The batch dimension of input ``pos``: 0, unless the model runs sequence-first modules
    (``nn.LSTM`` / ``GRU`` / ``RNN``, ``nn.MultiheadAttention``, ``nn.Transformer*`` with
    ``batch_first=False``, their default) on inputs laid out ``(T, B, ...)``.  One no-grad forward
    pass reads the shape such a module receives; ``None`` (with the reason) when the layout cannot
    be told apart (sequence length equal to the batch size)."""
    seq_first = [m for m in model.modules() if isinstance(m, _SEQ_FIRST) and not getattr(m, "batch_first", False)]
    x = batch.args[pos]
    if not seq_first or x.dim() < 2:
        return 0, ""
    seen: list[tuple[int, ...]] = []

    def pre(_m: Any, inp: Any) -> None:
        if not seen and inp and isinstance(inp[0], Tensor) and inp[0].dim() >= 2:
            seen.append(tuple(inp[0].shape))

    handles = [m.register_forward_pre_hook(pre) for m in seq_first]
    try:
        with torch.no_grad():
            forward(model, batch)
    finally:
        for hd in handles:
            hd.remove()
    if not seen:
        return 0, ""
    t, b = seen[0][0], seen[0][1]
    kind = type(seq_first[0]).__name__
    if t == b:
        if x.shape[0] == x.shape[1] == b:
            return None, (f"`{kind}` runs sequence-first (batch_first=False) and the sequence length equals the batch "
                          f"size ({b}): the batch dimension of the input {tuple(x.shape)} cannot be told apart; "
                          "pass batch_dim=0 or 1")
        return 0, ""
    if x.shape[0] == t and x.shape[1] == b:
        return 1, f" (sequence-first layout: `{kind}` with batch_first=False, batch dimension 1)"
    return 0, ""


class _ByKeyword(nn.Module):
    """Calls ``model(**{key: x}, **rest)``: a keyword-only input (``input_ids=...``) as positional."""

    def __init__(self, model: nn.Module, key: str, rest: dict[str, Any]) -> None:
        super().__init__()
        self.inner, self.key, self.rest = model, key, rest

    def forward(self, x: Tensor) -> Any:
        return self.inner(**{self.key: x}, **self.rest)


_PREFERRED = ("input_ids", "pixel_values", "inputs_embeds", "input_values", "x", "input", "inputs")


def mixing_test(env: CheckEnv, *, batch_dim: int | None = None, tolerance: float = 1e-5) -> CheckResult:
    batch = env.batch
    assert batch is not None
    model = env.model
    if not any(isinstance(a, Tensor) and a.dim() >= 1 for a in batch.args):
        keys = [k for k, v in batch.kwargs.items() if isinstance(v, Tensor) and v.dim() >= 1]
        if keys:  # keyword inputs (HF models called with input_ids=...): test the main one
            key = next((k for k in _PREFERRED if k in keys), keys[0])
            rest = {k: v for k, v in batch.kwargs.items() if k != key}
            model = _ByKeyword(model, key, rest)
            batch = Batch(batch.step, (batch.kwargs[key],), {}, batch.target)
    args = list(batch.args)
    layout = ""
    if batch_dim is None:
        pos0 = next((k for k, a in enumerate(args) if isinstance(a, Tensor) and a.dim() >= 1), None)
        if pos0 is None:
            return CheckResult("batch_mixing", "not_run", "the batch has no tensor input with a batch dimension")
        model.eval()
        inferred, layout = infer_batch_dim(model, batch, pos0)
        if inferred is None:
            return CheckResult("batch_mixing", "not_run", layout)
        batch_dim = inferred
    pos = next((k for k, a in enumerate(args) if isinstance(a, Tensor) and a.dim() > batch_dim), None)
    if pos is None:
        return CheckResult("batch_mixing", "not_run", "the batch has no tensor input with a batch dimension")
    n = int(args[pos].shape[batch_dim])
    if n < 2:
        return CheckResult("batch_mixing", "not_run", f"needs at least 2 examples in the batch, got {n}")
    names = [x.name for x in env.probe.layers] if env.probe is not None else None
    chosen = [(nm or "model", m) for nm, m in select_layers(env.model)]
    if names is not None:
        chosen = [(nm, m) for nm, m in chosen if nm in set(names)] or chosen
    captured: list[tuple[str, Tensor]] = []

    def hook_for(name: str) -> Any:
        def hook(_m: Any, _inp: Any, out: Any) -> None:
            t = primary(out)
            if t is not None and t.requires_grad and t.dim() > batch_dim and t.shape[batch_dim] == n:
                captured.append((name, t))

        return hook

    x = args[pos]
    leaf: Tensor | None = None
    if x.is_floating_point():
        leaf = x.detach().clone().requires_grad_(True)
        args[pos] = leaf
    handles = [m.register_forward_hook(hook_for(nm)) for nm, m in chosen]
    model.eval()
    try:
        with torch.enable_grad():
            out = forward(model, batch, tuple(args))
    finally:
        for hd in handles:
            hd.remove()
    if out.dim() <= batch_dim or out.shape[batch_dim] != n:
        return CheckResult("batch_mixing", "not_run", f"the output {tuple(out.shape)} has no batch dimension of size {n} at dim {batch_dim}")
    if not out.requires_grad:
        return CheckResult("batch_mixing", "not_run", "the output does not depend on anything differentiable")
    ref_name = "the input"
    if leaf is None:
        if not captured:
            return CheckResult("batch_mixing", "not_run", "integer inputs and no differentiable intermediate output to test")
        ref_name, leaf = f"the output of `{captured[0][0]}`", captured[0][1]
        captured = captured[1:]
    gen = torch.Generator().manual_seed(_SEED)
    worst = 0.0
    leaks: list[float] = [0.0] * len(captured)
    inconclusive = True
    # examples 0 and n-1; while none of them has a gradient to test (a ReLU output that is 0 for
    # them, as SqueezeNet's can be), a few more spread over the batch
    extra = [int(v) for v in np.linspace(0, n - 1, min(n, 10))[1:-1]]
    order = list(dict.fromkeys([0, n - 1, *extra]))
    tested: list[int] = []
    for i in order:
        if len(tested) >= 2 and not inconclusive:
            break
        tested.append(i)
        o = out.select(batch_dim, i)
        r = torch.randn(o.shape, generator=gen).to(device=o.device, dtype=o.dtype)
        grads = torch.autograd.grad((o * r).sum(), [leaf, *(t for _, t in captured)], allow_unused=True, retain_graph=True)
        lk = _leak(grads[0], batch_dim, n, i)
        if not math.isnan(lk):
            inconclusive = False
            worst = max(worst, lk)
        for k, g in enumerate(grads[1:]):
            v = _leak(g, batch_dim, n, i)
            if not math.isnan(v):
                leaks[k] = max(leaks[k], v)
    upto = ""
    if inconclusive:
        # the model's output has no gradient for these examples (every unit of an output ReLU at 0
        # in eval mode, as a young BatchNorm network's can be): test the deepest intermediate
        # output that has one -- no mixing up to there
        for name, t in reversed(captured):
            for i in order[:4]:
                o = t.select(batch_dim, i)
                r = torch.randn(o.shape, generator=gen).to(device=o.device, dtype=o.dtype)
                (g,) = torch.autograd.grad((o * r).sum(), [leaf], allow_unused=True, retain_graph=True)
                lk = _leak(g, batch_dim, n, i)
                if not math.isnan(lk):
                    inconclusive = False
                    worst = max(worst, lk)
            if not inconclusive:
                upto = f" (up to the output of `{name}`: the model's output has zero gradient for these examples)"
                tested = order[:4]
                leaks = [0.0] * len(captured)
                break
    if inconclusive:
        return CheckResult("batch_mixing", "not_run", f"the outputs have zero gradient with respect to {ref_name}: nothing to test")
    if worst <= tolerance:
        return CheckResult("batch_mixing", "pass",
                           f"the outputs of examples {', '.join(map(str, tested))} have exactly zero gradient with respect to the other {n - 1} "
                           f"examples' {ref_name.replace('the ', '', 1)} (eval mode){upto}{layout}",
                           details={"leak": worst, "batch_dim": batch_dim})
    # localize: the last captured output that still leaks, and the first one after it that does not
    mixed = [k for k, v in enumerate(leaks) if v > tolerance]
    layers: list[str] = []
    if mixed and mixed[-1] + 1 < len(captured):
        a, b = captured[mixed[-1]][0], captured[mixed[-1] + 1][0]
        where = f"between the output of `{a}` and the output of `{b}`" if a != b else f"inside `{b}`"
        layers = [b] if a == b else [b, a]
    elif mixed:
        a = captured[mixed[-1]][0]
        where, layers = f"after the output of `{a}`", [a]
    elif captured:
        b = captured[0][0]
        where, layers = f"between {ref_name} and the output of `{b}` (in or before it)", [b]
    else:
        where = "in the model"
    return CheckResult("batch_mixing", "fail",
                       f"example 0's output depends on other examples of the batch: its gradient with respect to them is "
                       f"{worst:.3g}x the one with respect to its own {ref_name.replace('the ', '', 1)} (eval mode, exact 0 expected); "
                       f"the mixing happens {where}{layout}", layers=layers, details={"leak": worst, "batch_dim": batch_dim})

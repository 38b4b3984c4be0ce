"""Data-driven re-initialization: LSUV (Mishkin & Matas 2016) and the data-dependent init of
Krähenbühl et al. (2015).  Both run forward passes on one real batch in eval mode under
``no_grad`` (the probe, if any, is paused), layer by layer in forward order; each forward stops
right after the layer being calibrated.  The between-layer step of Krähenbühl et al. then
backpropagates random Gaussian output gradients (``torch.autograd.grad``: no ``.grad`` is
touched) to equalize ||dL/dW_k|| / ||W_k|| over the layers."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._hooks import primary_tensor
from ._base import Applied, commit
from ._state import probe_batch, split_batch

if TYPE_CHECKING:
    from ..run import RunContext

_CALIBRATED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _Stop(Exception):
    pass


def _wb(m: nn.Module) -> tuple[Tensor, Tensor | None]:
    w, b = m.weight, getattr(m, "bias", None)
    assert isinstance(w, Tensor)
    return w, b if isinstance(b, Tensor) else None


@contextlib.contextmanager
def _hooked(modules: list[nn.Module], fn: Any, *, pre: bool = False) -> Iterator[None]:
    """``fn`` as a forward (or forward pre-) hook of every module, removed however the block ends."""
    hs = [m.register_forward_pre_hook(fn) if pre else m.register_forward_hook(fn) for m in modules]
    try:
        yield
    finally:
        for h in hs:
            h.remove()


def _output_of(model: nn.Module, layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """Run the model until ``layer`` has produced its (first) output, and return that output."""
    got: list[Tensor] = []

    def hook(m: nn.Module, a: Any, out: Any) -> None:
        if isinstance(out, Tensor):
            got.append(out.detach())
        raise _Stop

    with _hooked([layer], hook), contextlib.suppress(_Stop):
        model(*args, **kwargs)
    if not got:
        raise ValueError(f"{type(layer).__name__} layer was not called by model(batch) (or did not return a tensor)")
    return got[0].float()


def _forward_order(model: nn.Module, layers: list[nn.Module], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[nn.Module]:
    seen: list[nn.Module] = []
    ids = {id(m) for m in layers}

    def hook(m: nn.Module, a: Any, out: Any) -> None:
        if id(m) in ids and m not in seen:
            seen.append(m)

    with _hooked(layers, hook):
        model(*args, **kwargs)
    return seen


def _orthonormal_(w: Tensor) -> None:
    """Anchors §2.2 step 1: SVD of A ~ N(0, 1) of shape (out, prod(in)); keep the factor that fits."""
    rows = w.shape[0]
    a = torch.randn(rows, w[0].numel(), device=w.device, dtype=torch.float32)
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    q = u if u.shape == a.shape else vh
    w.copy_(q.reshape(w.shape).to(w.dtype))


def data_init(model: nn.Module, targets: list[tuple[str, nn.Module]], p: dict[str, Any], *,
              optimizer: torch.optim.Optimizer | None, probe: RunContext | None, batch: Any) -> Applied:
    scheme = p["scheme"]
    if batch is None and probe is not None:
        batch = probe_batch(probe)
    if batch is None:
        raise ValueError(
            f"{scheme} needs a real batch: call reinit_(..., batch=inputs), give the Probe data=loader, "
            "or let the training run one step first so the probe has a recent batch"
        )
    args, kwargs, _ = split_batch(batch)
    layers = [(n, m) for n, m in targets if isinstance(m, _CALIBRATED)]
    skipped = [n for n, m in targets if not isinstance(m, _CALIBRATED)]
    if not layers:
        raise ValueError(f"{scheme} calibrates Linear / Conv layers; none among the chosen layers")
    params = [t for _, m in layers for t in _wb(m) if t is not None]
    saved = [(t, t.detach().clone()) for t in params]
    modes = [(m, m.training) for m in model.modules()]
    names = {id(m): n for n, m in layers}
    report: list[dict[str, Any]] = []
    between: dict[str, Any] | None = None
    pause = probe.paused() if probe is not None else contextlib.nullcontext()
    try:
        with pause, torch.no_grad():
            model.eval()
            order = _forward_order(model, [m for _, m in layers], args, kwargs)
            missing = [names[id(m)] for _, m in layers if m not in order]
            if missing:
                raise ValueError(f"{scheme}: layer(s) {', '.join(missing)} are not used by model(batch)")
            if scheme == "lsuv":
                for m in order:
                    w, b = _wb(m)
                    _orthonormal_(w)
                    if b is not None:
                        b.zero_()
            for m in order:
                entry: dict[str, Any] = {"layer": names[id(m)], "type": type(m).__name__}
                if scheme == "lsuv":
                    entry.update(_lsuv_layer(model, m, args, kwargs, p["tol"], p["max_iter"]))
                else:
                    entry.update(_krahenbuhl_layer(model, m, args, kwargs))
                report.append(entry)
            if scheme == "data_dependent" and p.get("between_layers", True):
                between = _between_layers(model, order, names, args, kwargs)
            for entry, m in zip(report, order, strict=True):  # final check, with every layer in place
                entry["std_after"] = round(float(_output_of(model, m, args, kwargs).std()), 4)
    except BaseException:
        with torch.no_grad():
            for t, old in saved:
                t.copy_(old)
        raise
    finally:
        for m, flag in modes:
            m.training = flag
    plan = [(t, t.detach().clone()) for t in params]
    extra: dict[str, Any] = {"skipped": skipped} if skipped else {}
    if between is not None:
        extra["between_layers"] = between
    return commit(model, plan, optimizer, "reinit", p, report, probe, saved=saved, extra=extra or None)


def _lsuv_layer(model: nn.Module, m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                tol: float, max_iter: int) -> dict[str, Any]:
    """Anchors §2.2 step 2: rescale W by 1/std of the layer's output until |std - 1| < tol."""
    w, _ = _wb(m)
    it = 0
    std = float(_output_of(model, m, args, kwargs).std())
    first = std
    while abs(std - 1.0) >= tol and it < max_iter:
        if not std > 1e-8:
            break  # a constant output cannot be rescaled to unit variance
        w.mul_(1.0 / (std + 1e-8))
        it += 1
        std = float(_output_of(model, m, args, kwargs).std())
    return {"std_before": round(first, 4), "iterations": it}


def _krahenbuhl_layer(model: nn.Module, m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Random Gaussian weights, then per output unit: W_k /= sigma_k, b_k = -mu_k / sigma_k, so
    that on this batch every unit's pre-activation has zero mean and unit variance."""
    w, b = _wb(m)
    w.normal_(0.0, 1.0 / max(w[0].numel(), 1) ** 0.5)
    if b is not None:
        b.zero_()
    out = _output_of(model, m, args, kwargs)
    cdim = 1 if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else out.dim() - 1
    dims = [d for d in range(out.dim()) if d != cdim]
    mu = out.mean(dim=dims)
    sigma = out.std(dim=dims, unbiased=False).clamp_min(1e-8)
    w.div_(sigma.to(w.dtype).reshape(-1, *([1] * (w.dim() - 1))))
    if b is not None:
        b.copy_((-mu / sigma).to(b.dtype))
    return {"std_before": round(float(sigma.mean()), 4)}


def _measurable(ratios: list[float]) -> bool:
    return all(math.isfinite(r) and r > 0 for r in ratios)


def _between_layers(model: nn.Module, order: list[nn.Module], names: dict[int, str], args: tuple[Any, ...],
                    kwargs: dict[str, Any], max_iter: int = 10, tol: float = 0.05) -> dict[str, Any]:
    """Krähenbühl et al. (2015), between-layer normalization: make the rate of change
    ``r_k = rms(dL/dW_k) / rms(W_k)`` (L: the outputs times random Gaussian gradients) the same for
    every layer, and the output std about 1.

    Each pass scales layer k by ``sqrt(r_k / target)`` with ``target`` the geometric mean of the
    ratios times ``output_std ** (1/K)``; a bias is also scaled by how much the layer's input scale
    (mean |x|) moved since the last pass, so that in a positively homogeneous network (ReLU,
    Linear / Conv, pooling) every pre-activation is only rescaled.  When the network is not
    homogeneous (normalization layers, tanh...) and the ratios end further apart than they
    started, the step is undone and the report says so.
    """
    layers = [m for m in order if _wb(m)[0].requires_grad]
    if len(layers) < 2:
        return {"applied": False, "reason": "fewer than two trainable Linear / Conv layers"}
    weights = [_wb(m)[0] for m in layers]
    before = [(t, t.detach().clone()) for m in layers for t in _wb(m) if t is not None]

    def measure() -> tuple[list[float], float, dict[int, float]]:
        scales: dict[int, float] = {}

        def pre(m: nn.Module, inp: tuple[Any, ...]) -> None:
            x = primary_tensor(inp)
            if id(m) not in scales and x is not None:
                scales[id(m)] = float(x.detach().abs().float().mean())

        with _hooked(layers, pre, pre=True), torch.enable_grad():
            out = primary_tensor(model(*args, **kwargs))
            if out is None or not out.requires_grad:
                raise ValueError("data_dependent: the model's output does not depend on the chosen layers")
            grads = torch.autograd.grad(out, weights, grad_outputs=torch.randn_like(out), allow_unused=True)
        ratios = []
        for w, g in zip(weights, grads, strict=True):
            if g is None:
                raise ValueError("data_dependent: a chosen layer gets no gradient from the output")
            ratios.append(float((g.float().square().mean() / w.float().square().mean().clamp_min(1e-30)).sqrt()))
        flat = out.detach().float().reshape(out.shape[0], -1) if out.dim() > 1 else out.detach().float()[:, None]
        return ratios, float(flat.std(dim=0, unbiased=False).mean()), scales

    def spread(r: list[float]) -> float:
        logs = torch.tensor(r, dtype=torch.float64).log10()
        return float(logs.max() - logs.min())

    ratios, out_std, bottom = measure()
    first, first_spread, first_std = ratios, spread(ratios), out_std
    it = 0
    while it < max_iter:
        if not _measurable(ratios) or not (math.isfinite(out_std) and out_std > 0):
            break
        logs = [math.log(r) for r in ratios]
        target = math.exp(sum(logs) / len(logs)) * out_std ** (1.0 / len(ratios))
        if max(abs(lr - math.log(target)) for lr in logs) < tol and abs(math.log(out_std)) < 0.1:
            break
        factor = {id(m): math.sqrt(r / target) for m, r in zip(layers, ratios, strict=True)}
        done: set[int] = set()

        def rescale(m: nn.Module, inp: tuple[Any, ...], done: set[int] = done,
                    factor: dict[int, float] = factor) -> None:
            if id(m) in done:
                return
            done.add(id(m))
            w, b = _wb(m)
            x = primary_tensor(inp)
            if b is not None and x is not None and bottom.get(id(m), 0.0) > 0:
                cur = float(x.detach().abs().float().mean())
                b.mul_(cur / bottom[id(m)])
                bottom[id(m)] = cur
            w.mul_(factor[id(m)])
            if b is not None:
                b.mul_(factor[id(m)])

        with _hooked(layers, rescale, pre=True):
            model(*args, **kwargs)
        it += 1
        ratios, out_std, _ = measure()
    final_spread = spread(ratios) if _measurable(ratios) else float("inf")
    info: dict[str, Any] = {
        "iterations": it,
        "ratio_spread_decades": [round(first_spread, 3), round(final_spread, 3)],
        "output_std": [round(first_std, 4), round(out_std, 4)],
        "ratios": {names[id(m)]: [float(f"{a:.3g}"), float(f"{b:.3g}")] for m, a, b in zip(layers, first, ratios, strict=True)},
    }
    if it == 0:
        measurable = math.isfinite(first_spread)
        info.update(applied=False, reason="the layers already change at the same rate" if measurable else
                    "the rates could not be measured (zero or non-finite gradients)")
        return info
    moved = out_std / first_std if first_std > 0 else float("nan")
    if not final_spread <= first_spread or not (0.5 <= moved <= 2.0):
        for t, old in before:
            t.copy_(old)
        why = ("the layers' rates of change ended further apart" if not final_spread <= first_spread
               else f"the output's scale moved x{moved:.3g}")
        info.update(applied=False, reason=f"undone: {why} (the network is not positively homogeneous)")
        return info
    info["applied"] = True
    return info

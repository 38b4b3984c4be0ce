"""Loss-landscape slices around the current weights (Li et al. 2018), model and RNG left untouched.

``trainscope.loss_landscape(model, loss_fn, batch, dims=1, points=21)`` evaluates the loss of one
held batch at ``θ + α·d₁`` (1-D) or ``θ + α·d₁ + β·d₂`` (2-D) on a grid of ``α, β ∈ [−span, span]``,
where ``d`` are random Gaussian directions, **filter-normalized** as in Li, Xu, Taylor, Studer &
Goldstein, *Visualizing the Loss Landscape of Neural Nets* (NeurIPS 2018): for every parameter with
two or more dimensions, each filter ``d[i]`` (a slice along dimension 0: a row of a ``Linear``
weight, an output channel of a convolution) is rescaled to the norm of the same filter of the
weight, ``d[i] ← d[i] / ‖d[i]‖ · ‖θ[i]‖``; one-dimensional parameters (biases, BatchNorm /
LayerNorm scales and shifts) get a zero direction (their ``ignore='biasbn'`` default).  With this
normalization ``α = 1`` moves every filter by its own norm, so slices of differently scaled
networks are comparable.

What is guaranteed
------------------
* The model is evaluated in **eval mode** by default (``mode="eval"``: BatchNorm uses its running
  statistics, dropout is off) under ``torch.no_grad``.  ``mode="train"`` evaluates in train mode
  (batch statistics, dropout) and reseeds torch's RNG with ``seed`` before every point, so every
  point sees the same dropout masks.
* Afterwards the parameters (values, ``requires_grad``, ``.grad``), buffers (BatchNorm running
  statistics), every module's train / eval flag, the grad mode and the global RNGs (torch CPU and
  CUDA, numpy, ``random``) are **bit-identical** to before -- also when a forward raises or the
  evaluation is interrupted (Ctrl-C); a Ctrl-C during the restore waits until everything is back.
  The capture is the one the one-click checks use (:func:`trainscope.checklists.isolation.isolated`).
* The random directions come from a private ``torch.Generator`` seeded with ``seed`` (on the CPU,
  then moved to each parameter's device): the same seed gives the same directions on any device.
* A probe attached to the model is paused meanwhile: the slice's forwards are not recorded as
  training or validation losses.

``directions=`` takes your own directions instead (e.g. the difference to another checkpoint,
Goodfellow et al. 2015's linear interpolation): one or two ``{parameter name: tensor}`` dicts (or
lists of tensors in ``model.named_parameters()`` order, trainable ones only), used as given.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .checklists.isolation import isolated
from .interventions._base import as_choice, as_float, as_int
from .interventions._state import split_batch

__all__ = ["LandscapeResult", "filter_normalize", "loss_landscape", "random_directions"]

MAX_POINTS_1D = 1001
MAX_POINTS_2D = 101
CENTRAL_FRACTION = 0.5
"""The curvature is the second coefficient of a least-squares quadratic fit over the grid points
with ``|α| ≤ CENTRAL_FRACTION · span`` (at least 3 of them)."""


@dataclass
class LandscapeResult:
    """A 1-D or 2-D loss slice.  ``losses[i]`` is at ``alphas[i]`` (1-D); ``losses[i, j]`` at
    ``(alphas[i], betas[j])`` (2-D).  Non-finite losses are kept as they are (NaN / inf)."""

    dims: int
    alphas: np.ndarray
    betas: np.ndarray | None
    losses: np.ndarray
    center_loss: float
    sharpness: dict[str, Any]
    mode: str = "eval"
    norm: str = "filter"
    seed: int = 0
    span: float = 1.0
    n_params: int = 0
    direction_cosine: float | None = None
    elapsed: float = 0.0
    names: list[str] = field(default_factory=list)

    @property
    def argmin(self) -> tuple[float, ...]:
        """The grid point with the lowest finite loss: ``(alpha,)`` or ``(alpha, beta)``."""
        return tuple(self.sharpness["argmin"])

    def as_event(self) -> dict[str, Any]:
        """JSON-able data for the timeline (the dashboard panel reads it back from the event)."""
        return {
            "dims": self.dims,
            "alphas": [float(a) for a in self.alphas],
            "betas": None if self.betas is None else [float(b) for b in self.betas],
            "losses": self.losses.astype(float).tolist(),
            "center_loss": self.center_loss,
            "sharpness": dict(self.sharpness),
            "mode": self.mode,
            "norm": self.norm,
            "seed": self.seed,
            "span": self.span,
            "n_params": self.n_params,
            "direction_cosine": self.direction_cosine,
            "elapsed": self.elapsed,
        }

    def summary(self) -> str:
        s = self.sharpness
        where = ", ".join(f"{v:+.3g}" for v in s["argmin"])
        curv = ", ".join(f"{c:.3g}" for c in s["curvature"])
        return (f"{self.dims}-D slice ({self.norm}-normalized, {self.mode} mode): loss {self.center_loss:.4g} at the "
                f"weights, lowest {s['min_loss']:.4g} at ({where}); max increase {s['max_increase']:.4g} "
                f"(Keskar sharpness {s['keskar']:.3g}); curvature {curv}")


# ---------------------------------------------------------------------------- directions
def _trainable(model: nn.Module) -> list[tuple[str, Tensor]]:
    seen: set[int] = set()
    out: list[tuple[str, Tensor]] = []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


@torch.no_grad()
def filter_normalize(direction: Sequence[Tensor], weights: Sequence[Tensor], *, ignore_1d: bool = True) -> list[Tensor]:
    """Li et al.'s filter normalization: each filter ``d[i]`` (dimension 0) rescaled to ``‖θ[i]‖``;
    one-dimensional parameters zeroed (``ignore_1d``) or rescaled as a single filter."""
    out: list[Tensor] = []
    for d, w in zip(direction, weights, strict=True):
        d = d.detach().clone()
        if d.dim() <= 1:
            if ignore_1d:
                d.zero_()
            else:
                d.mul_(w.detach().norm() / (d.norm() + 1e-10))
            out.append(d)
            continue
        dn = d.reshape(d.shape[0], -1).norm(dim=1)
        wn = w.detach().reshape(w.shape[0], -1).norm(dim=1).to(d.dtype)
        scale = (wn / (dn + 1e-10)).reshape((-1,) + (1,) * (d.dim() - 1))
        out.append(d.mul_(scale))
    return out


def random_directions(weights: Sequence[Tensor], seed: int, count: int, *, norm: str = "filter",
                      ignore_1d: bool = True) -> list[list[Tensor]]:
    """``count`` Gaussian directions drawn from a private generator (the global RNG is not used)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    dirs: list[list[Tensor]] = []
    for _ in range(count):
        raw = [torch.randn(w.shape, generator=gen, dtype=torch.float32).to(device=w.device, dtype=w.dtype)
               for w in weights]
        if norm == "filter":
            raw = filter_normalize(raw, weights, ignore_1d=ignore_1d)
        elif norm == "layer":  # whole tensor rescaled to the parameter's norm
            raw = [(d * (w.detach().norm() / (d.norm() + 1e-10))) if (d.dim() > 1 or not ignore_1d) else d.zero_()
                   for d, w in zip(raw, weights, strict=True)]
        dirs.append(raw)
    return dirs


def _user_direction(model_params: list[tuple[str, Tensor]], given: Any, k: int) -> list[Tensor]:
    names = [n for n, _ in model_params]
    if isinstance(given, Mapping):
        unknown = [n for n in given if n not in names]
        if unknown:
            raise ValueError(f"directions[{k}] names parameters the model does not train: {unknown[:5]}; "
                             f"trainable parameters are {names[:8]}{'...' if len(names) > 8 else ''}")
        out = []
        for n, p in model_params:
            t = given.get(n)
            out.append(torch.zeros_like(p) if t is None else _as_dir(t, p, f"directions[{k}][{n!r}]"))
        return out
    if isinstance(given, (list, tuple)):
        if len(given) != len(model_params):
            raise ValueError(f"directions[{k}] has {len(given)} tensors; the model trains {len(model_params)} "
                             "parameters (pass one per trainable parameter, in named_parameters() order, or a dict)")
        return [_as_dir(t, p, f"directions[{k}][{i}] ({n})") for i, ((n, p), t) in enumerate(zip(model_params, given, strict=True))]
    raise TypeError(f"directions[{k}] must be a dict {{parameter name: tensor}} or a list of tensors, "
                    f"got {type(given).__name__}")


def _as_dir(t: Any, p: Tensor, label: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{label} must be a tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(p.shape):
        raise ValueError(f"{label} has shape {tuple(t.shape)}; the parameter has shape {tuple(p.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{label} holds NaN or inf")
    return t.detach().to(device=p.device, dtype=p.dtype).clone()


# ---------------------------------------------------------------------------- summaries
def _quad_curvature(x: np.ndarray, y: np.ndarray, span: float) -> float:
    keep = (np.abs(x) <= CENTRAL_FRACTION * span + 1e-12) & np.isfinite(y)
    if keep.sum() < 3:
        keep = np.isfinite(y)
    if keep.sum() < 3:
        return math.nan
    c = np.polyfit(x[keep], y[keep], 2)
    return float(2.0 * c[0])


def _summaries(alphas: np.ndarray, betas: np.ndarray | None, losses: np.ndarray, center: float,
               span: float) -> dict[str, Any]:
    fin = np.isfinite(losses)
    out: dict[str, Any] = {"nonfinite_points": int((~fin).sum())}
    if not fin.any():
        out.update(min_loss=math.nan, argmin=[math.nan] * (1 if betas is None else 2), max_increase=math.nan,
                   mean_increase=math.nan, keskar=math.nan, curvature=[math.nan] * (1 if betas is None else 2))
        return out
    masked = np.where(fin, losses, np.inf)
    idx = np.unravel_index(int(np.argmin(masked)), losses.shape)
    argmin = [float(alphas[idx[0]])] if betas is None else [float(alphas[idx[0]]), float(betas[idx[1]])]
    mx = float(np.max(losses[fin]))
    out.update(
        min_loss=float(losses[idx]),
        argmin=argmin,
        max_increase=mx - center,
        mean_increase=float(np.mean(losses[fin])) - center,
        # Keskar et al. (2017)'s epsilon-sharpness, here over the slice's grid (not the full box)
        keskar=100.0 * (mx - center) / (1.0 + center),
    )
    if betas is None:
        out["curvature"] = [_quad_curvature(alphas, losses, span)]
    else:  # along each axis, through the grid line nearest the center
        j0, i0 = int(np.argmin(np.abs(betas))), int(np.argmin(np.abs(alphas)))
        out["curvature"] = [_quad_curvature(alphas, losses[:, j0], span), _quad_curvature(betas, losses[i0, :], span)]
    return out


# ---------------------------------------------------------------------------- the slice
def _attached_probe(model: nn.Module) -> Any:
    from .recorder import ATTACHED  # model -> its attached probe

    try:
        return ATTACHED.get(model)
    except TypeError:
        return None


def loss_landscape(
    model: nn.Module,
    loss_fn: Callable[..., Tensor] | None,
    batch: Any,
    dims: int = 1,
    points: int = 21,
    span: float = 1.0,
    seed: int = 0,
    directions: Sequence[Any] | None = None,
    *,
    mode: str = "eval",
    norm: str = "filter",
    ignore_1d: bool = True,
    step_fn: Callable[[nn.Module, Any], Tensor] | None = None,
    probe: Any = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> LandscapeResult:
    """Evaluate the loss on a 1-D or 2-D slice around the current weights (see the module docstring).

    Parameters
    ----------
    model, loss_fn, batch
        The model, its loss (``loss_fn(model(inputs), target)``) and one held batch: ``(inputs,
        target)`` with inputs a tensor, a tuple of positional inputs or a dict of keyword inputs.
        ``step_fn(model, batch) -> loss`` replaces ``loss_fn`` for anything else.
    dims, points, span
        1 or 2 directions; ``points`` grid points per direction (``linspace(-span, span, points)``;
        odd counts include the weights themselves); ``span`` in units of the directions.
    seed
        Seeds the private generator of the random directions (and, in train mode, the forwards).
    directions
        Your own directions instead of random ones (``dims`` of them), used as given.
    mode
        ``"eval"`` (default) or ``"train"``: the mode of the model during the evaluation.
    norm, ignore_1d
        ``"filter"`` (default, Li et al.), ``"layer"`` (whole tensor to the parameter's norm) or
        ``"none"``; ``ignore_1d`` zeroes the direction of 1-D parameters (biases, norm layers).
    probe
        The probe to pause meanwhile (default: the probe attached to ``model``, if any).
    progress, cancel
        ``progress(done, total)`` after every point; ``cancel() -> bool`` before every point: when
        it returns true the evaluation stops, everything is restored exactly, and
        :class:`trainscope.actions.Cancelled` is raised.  Run as an action
        (``probe.request("loss_landscape")``) both default to the action's own, so the dashboard
        shows "Training paused: Loss landscape 37/441" with a Cancel button.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"loss_landscape needs an nn.Module, got {type(model).__name__}")
    dims = as_int("dims", dims, lo=1, hi=2)
    points = as_int("points", points, lo=3, hi=MAX_POINTS_1D if dims == 1 else MAX_POINTS_2D)
    span = as_float("span", span, lo=0.0, hi=1e6, lo_open=True)
    seed = as_int("seed", seed, lo=0, hi=2**63 - 1)
    mode = as_choice("mode", mode, ("eval", "train"))
    norm = as_choice("norm", norm, ("filter", "layer", "none"))
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a function progress(done, total), got {type(progress).__name__}")
    if cancel is not None and not callable(cancel):
        raise TypeError(f"cancel must be a function cancel() -> bool, got {type(cancel).__name__}")
    if step_fn is None and not callable(loss_fn):
        raise TypeError("loss_landscape needs loss_fn(outputs, target) (e.g. nn.CrossEntropyLoss()) or "
                        "step_fn(model, batch) -> loss")
    if step_fn is None:
        args, kwargs, target = split_batch(batch)
        if target is None:
            raise ValueError("the batch has no target: pass (inputs, target), or a step_fn(model, batch) -> loss")
    params = _trainable(model)
    if not params:
        raise ValueError("the model has no trainable parameter (requires_grad=True) to move along")
    weights = [p for _, p in params]
    if directions is not None:
        if not isinstance(directions, (list, tuple)) or len(directions) != dims:
            raise ValueError(f"directions must be a list of {dims} direction(s) (dims={dims}), "
                             f"got {type(directions).__name__}"
                             f"{' of length ' + str(len(directions)) if isinstance(directions, (list, tuple)) else ''}")
        dirs = [_user_direction(params, d, k) for k, d in enumerate(directions)]
        norm = "given"
    else:
        dirs = random_directions(weights, seed, dims, norm=norm, ignore_1d=ignore_1d)
    if all(float(d.abs().sum()) == 0.0 for d in dirs[0]):
        raise ValueError("the direction is zero everywhere (only 1-D parameters are trained and ignore_1d=True?): "
                         "pass ignore_1d=False or your own directions")
    cosine = None
    if dims == 2:
        a = torch.cat([d.reshape(-1).double().cpu() for d in dirs[0]])
        b = torch.cat([d.reshape(-1).double().cpu() for d in dirs[1]])
        cosine = float((a @ b) / (a.norm() * b.norm() + 1e-300))
    alphas = np.linspace(-span, span, points)
    betas = np.linspace(-span, span, points) if dims == 2 else None
    if probe is None:
        probe = _attached_probe(model)
    from . import actions

    total = points ** dims + 1
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)
        else:
            actions.progress(done, total, "Loss landscape")

    def check_cancel() -> None:
        if cancel() if cancel is not None else actions.cancel_requested():
            raise actions.Cancelled(f"cancelled at {done}/{total}; the model and the random state are back "
                                    "exactly as before")

    t0 = time.perf_counter()

    def evaluate() -> float:
        check_cancel()
        if mode == "train":
            torch.manual_seed(seed)
        if step_fn is not None:
            loss = step_fn(model, batch)
        else:
            loss = loss_fn(model(*args, **kwargs), target)  # type: ignore[misc]
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError("the loss must be a scalar tensor (one element); got "
                             f"{type(loss).__name__}{' of shape ' + str(tuple(loss.shape)) if isinstance(loss, Tensor) else ''}")
        value = float(loss.detach().double())
        tick()
        return value

    with isolated(model, None, probe, values=True) as snap:
        saved = {id(p): v for p, v in zip(snap.params, snap.values, strict=True)}
        base: list[Tensor] = []
        for p in weights:  # the capture's copies (no second copy of the model)
            w0 = saved[id(p)]
            assert w0 is not None  # values=True copies every parameter
            base.append(w0)
        with torch.no_grad():
            model.train(mode == "train")
            center = evaluate()
            if dims == 1:
                grid = np.empty(points)
                for i, a in enumerate(alphas):
                    for p, w0, d in zip(weights, base, dirs[0], strict=True):
                        p.copy_(w0).add_(d, alpha=float(a))
                    grid[i] = evaluate()
            else:
                assert betas is not None
                grid = np.empty((points, points))
                for i, a in enumerate(alphas):
                    for j, b in enumerate(betas):
                        for p, w0, d1, d2 in zip(weights, base, dirs[0], dirs[1], strict=True):
                            p.copy_(w0).add_(d1, alpha=float(a)).add_(d2, alpha=float(b))
                        grid[i, j] = evaluate()
    sharp = _summaries(alphas, betas, grid, center, span)
    return LandscapeResult(dims=dims, alphas=alphas, betas=betas, losses=grid, center_loss=center, sharpness=sharp,
                           mode=mode, norm=norm, seed=seed, span=span, n_params=sum(p.numel() for p in weights),
                           direction_cosine=cosine, elapsed=time.perf_counter() - t0, names=[n for n, _ in params])

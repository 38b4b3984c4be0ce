"""Parameter statistics: norms of weights, gradients, updates and distance from init.

All device work goes through the fused ``torch._foreach_*`` kernels and produces one ``(4, P)``
tensor per step (no sync); the host side turns stacked rows of several steps into per-layer
metrics in one vectorized pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import stats as S
from .history import PARAM_METRICS

__all__ = ["ParamTracker"]


class ParamTracker:
    """The parameters a probe tracks, grouped by the tracked module that owns them directly.

    Rows of :meth:`row`: weight norm, gradient norm, update norm (since :meth:`take_snapshot`),
    distance from the initial parameters.  ``-1`` marks what was not measured (no gradient, no
    snapshot, ``init`` not requested); NaN / Inf are real non-finite measurements.
    """

    def __init__(self, model: nn.Module, layer_of_module: dict[int, int], nlayers: int) -> None:
        self.params: list[nn.Parameter] = []
        self.layer: list[int] = []
        self.names: list[str] = []
        seen: set[int] = set()
        for name, p in model.named_parameters():
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            mod = model.get_submodule(owner) if owner else model
            i = layer_of_module.get(id(mod))
            if i is None or id(p) in seen:
                continue
            seen.add(id(p))
            self.params.append(p)
            self.layer.append(i)
            self.names.append(name)
        self.nlayers = nlayers
        self.layer_arr = np.asarray(self.layer, dtype=np.int64)
        self.init: list[Tensor] | None = None  # θ₀ (one model's worth of memory)
        self.snap: list[Tensor] | None = None  # θ before the step (one more, allocated lazily)
        self.snap_valid = False
        self._grad_index: dict[tuple[int, ...], Tensor] = {}

    def __len__(self) -> int:
        return len(self.params)

    # ------------------------------------------------------------------ device side (no sync)
    @torch.no_grad()
    def keep_init(self) -> None:
        if self.init is None:
            self.init = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def take_snapshot(self) -> None:
        """Remember θ now; the next :meth:`row` measures the update from here."""
        if not self.params:
            return
        if self.snap is None:
            self.snap = [p.detach().clone() for p in self.params]
        else:
            torch._foreach_copy_(self.snap, [p.detach() for p in self.params])
        self.snap_valid = True

    def release(self) -> None:
        self.snap = None
        self.snap_valid = False

    @torch.no_grad()
    def row(self, *, init: bool) -> Tensor | None:
        """Norms of every tracked parameter as one ``(4, P)`` device tensor."""
        if not self.params:
            return None
        params = [p.detach() for p in self.params]
        dev = params[0].device
        row = torch.full((4, len(params)), -1.0, device=dev)
        row[0] = S.norms(params)
        with_grad = [j for j, p in enumerate(self.params) if p.grad is not None]
        if with_grad:
            gn = S.norms([self.params[j].grad.detach() for j in with_grad])  # type: ignore[union-attr]
            if len(with_grad) == len(params):
                row[1] = gn
            else:  # cached: building an index tensor on the device each step would copy (sync)
                key = tuple(with_grad)
                idx = self._grad_index.get(key)
                if idx is None:
                    idx = self._grad_index[key] = torch.tensor(with_grad, device=dev)
                row[1, idx] = gn
        if self.snap is not None and self.snap_valid:
            torch._foreach_sub_(self.snap, params)
            row[2] = S.norms(self.snap)
            self.snap_valid = False
        if init and self.init is not None:
            if self.snap is None:
                self.snap = [p.clone() for p in params]
            torch._foreach_copy_(self.snap, params)
            torch._foreach_sub_(self.snap, self.init)
            row[3] = S.norms(self.snap)
        return row

    def grads(self) -> list[Tensor]:
        return [p.grad for p in self.params if p.grad is not None]

    def grad_norm(self, device: torch.device, held: dict[str, bool]) -> Tensor:
        """Norm of the gradients the optimizer would apply, held right now (0 when none)."""
        grads = [
            p.grad
            for p, n in zip(self.params, self.names, strict=True)
            if p.grad is not None and held.get(n, True)
        ]
        return S.norms(grads).norm() if grads else torch.zeros((), device=device)

    # ------------------------------------------------------------------ host side
    def metrics(self, rows: np.ndarray) -> np.ndarray:
        """``(K, 4, P)`` rows -> ``(K, L, len(PARAM_METRICS))`` per-layer metrics."""
        K = rows.shape[0]
        L = self.nlayers
        layer = self.layer_arr
        out = np.full((K, L, len(PARAM_METRICS)), np.nan)
        has = np.bincount(layer, minlength=L) > 0
        norms = []
        for r in range(4):
            v = rows[:, r, :].astype(np.float64)
            present = ~(v < 0)  # NaN (non-finite) counts as measured
            sq = np.zeros((K, L))
            cnt = np.zeros((K, L))
            np.add.at(sq.T, layer, np.where(present, v * v, 0.0).T)  # NaN-safe group sums
            np.add.at(cnt.T, layer, present.T.astype(np.float64))
            with np.errstate(invalid="ignore"):
                norms.append(np.where(cnt > 0, np.sqrt(sq), np.nan))
        weight, grad, upd, dist = norms
        out[:, :, 0] = np.where(has, weight, np.nan)
        out[:, :, 1] = grad
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, :, 2] = upd / weight
        out[:, :, 3] = dist
        g = rows[:, 1, :].astype(np.float64)
        bad = (~np.isfinite(g)) & ~(g < 0)
        nf = np.zeros((K, L))
        np.add.at(nf.T, layer, bad.T.astype(np.float64))
        out[:, :, 4] = np.where(np.isnan(grad), np.nan, np.where(nf > 0, -1.0, 0.0))
        return out

    @staticmethod
    def totals(rows: np.ndarray) -> dict[str, np.ndarray]:
        """Whole-model norms per step from ``(K, 4, P)`` rows."""
        out = {}
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            w = rows[:, 0, :].astype(np.float64)
            g = rows[:, 1, :].astype(np.float64)
            u = rows[:, 2, :].astype(np.float64)
            wt = np.sqrt(np.sum(np.where(w < 0, 0, w * w), axis=1))
            out["grad_norm_total"] = np.where(
                (g >= 0).any(axis=1) | np.isnan(g).any(axis=1),
                np.sqrt(np.sum(np.where(g < 0, 0, g * g), axis=1)),
                np.nan,
            )
            has_u = (u >= 0).any(axis=1) | np.isnan(u).any(axis=1)
            out["update_ratio_total"] = np.where(
                has_u, np.sqrt(np.sum(np.where(u < 0, 0, u * u), axis=1)) / wt, np.nan
            )
        return out

    def count_nonfinite_grads(self, prow: np.ndarray, metrics: dict[str, Any]) -> None:
        """Exact non-finite gradient counts where the gradients are still there (CPU, in-step)."""
        bad = np.flatnonzero(~np.isfinite(prow[1]))
        if not len(bad):
            return
        counts = np.zeros(self.nlayers)
        for j in bad:
            grad = self.params[int(j)].grad
            if grad is None or grad.is_cuda:
                return  # processed after the step (async copy): keep "-1 = at least one"
            with torch.no_grad():
                counts[self.layer[int(j)]] += float((~torch.isfinite(grad)).sum())
        metrics["grad_nonfinite"] = np.where(counts > 0, counts, metrics["grad_nonfinite"])

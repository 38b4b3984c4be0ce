"""Parameter statistics: norms of weights, gradients, updates and distance from init.

All device work goes through the fused ``torch._foreach_*`` kernels and produces one ``(4, P)``
tensor per step (no sync); the host side turns stacked rows of several steps into per-layer
metrics in one vectorized pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

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

    def __init__(
        self,
        model: nn.Module,
        layer_of_module: dict[int, int],
        nlayers: int,
        on_unmeasured: Callable[[str, str, BaseException | None], None] | None = None,
    ) -> None:
        self.params: list[Tensor] = []  # nn.Parameter objects (typed as Tensor for the foreach ops)
        self.layer: list[int] = []  # the first owning layer of each parameter
        self.names: list[str] = []  # the first name of each parameter
        # a parameter shared by several modules (tied weights: an LM head and its embedding) is
        # measured once, and shown under every tracked module that owns it, by every name
        self.aliases: list[tuple[str, int]] = []  # (name, index into params), all names
        self.layers_of: list[list[int]] = []
        index: dict[int, int] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            mod = model.get_submodule(owner) if owner else model
            i = layer_of_module.get(id(mod))
            if i is None:
                continue
            j = index.get(id(p))
            if j is None:
                j = index[id(p)] = len(self.params)
                self.params.append(p)
                self.layer.append(i)
                self.names.append(name)
                self.layers_of.append([])
            self.aliases.append((name, j))
            if i not in self.layers_of[j]:
                self.layers_of[j].append(i)
        self.nlayers = nlayers
        self.on_unmeasured = on_unmeasured
        self.layer_arr = np.asarray(self.layer, dtype=np.int64)
        # host-side grouping by layer: (parameter, owning layer) pairs sorted by layer, one segment
        # per owning layer (a tied parameter sits in the segment of each of its layers)
        pair_param = np.asarray(
            [j for j, ls in enumerate(self.layers_of) for _ in ls], dtype=np.int64
        )
        pair_layer = np.asarray([i for ls in self.layers_of for i in ls], dtype=np.int64)
        by_layer = np.argsort(pair_layer, kind="stable")
        self._order = pair_param[by_layer]
        sorted_layers = pair_layer[by_layer]
        starts = np.flatnonzero(np.r_[True, sorted_layers[1:] != sorted_layers[:-1]])
        self._seg_starts = starts if len(sorted_layers) else np.zeros(0, dtype=np.int64)
        self._seg_layer = sorted_layers[self._seg_starts] if len(sorted_layers) else self._seg_starts
        self.init: list[Tensor] | None = None  # θ₀ (one model's worth of memory)
        self.snap: list[Tensor] | None = None  # θ before the step (one more, allocated lazily)
        self.snap_valid = False

    def __len__(self) -> int:
        return len(self.params)

    # ------------------------------------------------------------------ device side (no sync)
    @torch.no_grad()
    def keep_init(self) -> None:
        if self.init is None:
            self.init = [p.detach().clone() for p in self.params]

    @S.without_grad  # the parameters go in as they are: a detach() each costs more
    def take_snapshot(self) -> None:
        """Remember θ now; the next :meth:`row` measures the update from here."""
        if not self.params:
            return
        if self.snap is None:
            self.snap = [p.detach().clone() for p in self.params]
        else:
            torch._foreach_copy_(self.snap, self.params)
        self.snap_valid = True

    def release(self) -> None:
        self.snap = None
        self.snap_valid = False

    @S.without_grad
    def row(self, *, init: bool) -> Tensor | None:
        """Norms of every tracked parameter as one ``(4, P)`` fp32 device tensor.

        One fused ``_foreach_norm`` over weights, gradients and updates together and one
        ``stack``: on a small model the per-op dispatch, not the arithmetic, is the cost (so the
        parameters go in as they are, under ``no_grad``, without a ``detach`` each).
        """
        params = self.params
        if not params:
            return None
        P = len(params)
        grads = [p.grad for p in params]
        with_grad: list[int] | None = None
        if any(g is None for g in grads):
            with_grad = [j for j, g in enumerate(grads) if g is not None]
            tensors = params + [g for g in grads if g is not None]
        else:
            tensors = params + cast("list[Tensor]", grads)
        ng = P if with_grad is None else len(with_grad)
        update = self.snap is not None and self.snap_valid
        dist = init and self.init is not None
        upd_norms: list[Tensor] = []
        if update:
            assert self.snap is not None
            torch._foreach_sub_(self.snap, params)  # θ_before - θ_now (its norm is the update's)
            if dist:  # the buffer is reused for θ - θ₀ below: take the update's norms now
                upd_failed: list[int] = []
                upd_norms = list(S.foreach_norms(self.snap, upd_failed))
                for j in upd_failed:
                    self._unmeasured(j, "update")
            else:
                tensors += self.snap
            self.snap_valid = False
        if dist:  # full samples only; one buffer serves both (no second copy of the model)
            assert self.init is not None
            if self.snap is None:
                self.snap = [p.detach().clone() for p in params]
            else:
                torch._foreach_copy_(self.snap, params)
            torch._foreach_sub_(self.snap, self.init)
            tensors += self.snap
        failed: list[int] = []
        res = list(S.foreach_norms(tensors, failed))
        if failed:
            self._report_unmeasured(failed, P, ng, with_grad, update and not dist, upd_norms)
        missing = S._minus_one(params[0].device)
        vals = res[:P]
        at = P
        if with_grad is None:
            vals += res[at : at + P]
        else:
            g: list[Tensor] = [missing] * P
            for j, r in zip(with_grad, res[at : at + ng], strict=True):
                g[j] = r
            vals += g
        at += ng
        if upd_norms:
            vals += upd_norms
        elif update:
            vals += res[at : at + P]
            at += P
        else:
            vals += [missing] * P
        vals += res[at : at + P] if dist else [missing] * P
        return torch.stack(vals).view(4, P)

    def _unmeasured(self, j: int, what: str, exc: BaseException | None = None) -> None:
        if self.on_unmeasured is not None:
            self.on_unmeasured(self.names[j], what, exc)

    def _report_unmeasured(
        self,
        failed: list[int],
        P: int,
        ng: int,
        with_grad: list[int] | None,
        update_in_list: bool,
        upd_norms: list[Tensor],
    ) -> None:
        """Name the parameters behind the failed positions of :meth:`row`'s tensor list
        (weights, then gradients, then updates or distances from init)."""
        for pos in failed:
            if pos < P:
                self._unmeasured(pos, "weight")
            elif pos < P + ng:
                k = pos - P
                self._unmeasured(k if with_grad is None else with_grad[k], "gradient")
            else:
                k = pos - P - ng
                if update_in_list and k < P:
                    self._unmeasured(k, "update")
                else:
                    self._unmeasured(k % P, "distance from init")

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
        out = np.full((K, L, len(PARAM_METRICS)), np.nan)
        has = np.zeros(L, dtype=bool)
        has[self._seg_layer] = True
        v = rows.astype(np.float64)[:, :, self._order]  # (K, 4, P), parameters grouped by layer
        present = ~(v < 0)  # NaN (non-finite) counts as measured
        sq = np.zeros((K, 4, L))
        cnt = np.zeros((K, 4, L))
        if v.shape[2]:
            # segment sums: a NaN stays inside its own layer's sum (a matrix product would not)
            sq[:, :, self._seg_layer] = np.add.reduceat(np.where(present, v * v, 0.0), self._seg_starts, axis=2)
            cnt[:, :, self._seg_layer] = np.add.reduceat(present.astype(np.float64), self._seg_starts, axis=2)
        with np.errstate(invalid="ignore"):
            norm = np.where(cnt > 0, np.sqrt(sq), np.nan)
        weight, grad, upd, dist = (norm[:, r, :] for r in range(4))
        out[:, :, 0] = np.where(has, weight, np.nan)
        out[:, :, 1] = grad
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, :, 2] = upd / weight
        out[:, :, 3] = dist
        g = v[:, 1, :]
        bad = (~np.isfinite(g)) & ~(g < 0)
        nf = np.zeros((K, L))
        if g.shape[1]:
            nf[:, self._seg_layer] = np.add.reduceat(bad.astype(np.float64), self._seg_starts, axis=1)
        # -1 = "some non-finite" (count unknown here), 0 = none, NaN = no gradient at all
        out[:, :, 4] = np.where(cnt[:, 1, :] > 0, np.where(nf > 0, -1.0, 0.0), np.nan)
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
                if grad.layout == torch.sparse_coo:
                    grad = grad.coalesce().values()
                elif grad.layout != torch.strided:
                    return
                n = float((~torch.isfinite(grad)).sum())
            for i in self.layers_of[int(j)]:
                counts[i] += n
        metrics["grad_nonfinite"] = np.where(counts > 0, counts, metrics["grad_nonfinite"])

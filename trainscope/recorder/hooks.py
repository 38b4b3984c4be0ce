"""The recorder's hooks and the per-step device buffers they fill.

Every hook closure is bound to the one recorder object that also holds the buffers, so a hook
call costs one attribute lookup per value, as it did when all of this lived in ``Probe``.
Nothing here calls ``.item()``: rows, histograms and masks stay on the tensor's device until
the step boundary collects them into one :class:`~trainscope.recorder.payload.StepPayload`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .. import stats as S
from .._hooks import primary_tensor as _primary_tensor
from .._lossextra import loss_extras
from .._params import ParamTracker
from ..layers import LayerInfo
from .payload import Batch, StepPayload

_MAX_UNITS = 1 << 16  # per-unit masks are kept for layers with at most this many units


class Hooks:
    """Root / forward / output-gradient / loss hooks and the buffers of the step in progress."""

    if TYPE_CHECKING:  # state and failure handling of the Recorder these methods belong to
        model: nn.Module
        layers: list[LayerInfo]
        histograms: bool
        auto_val_loss: bool
        step_count: int
        forward_modes: dict[str, int]
        aborted_forwards: int
        recent_batches: deque[Batch]
        param_in_optimizer: dict[str, bool]
        _ptrack: ParamTracker
        _paused: int
        _enabled: dict[str, bool]
        _sampling: bool
        _root_exit_on: bool
        _exact_nonfinite: bool
        _forward_since_boundary: bool
        _t_first_fwd: float | None
        _batch_open: Batch | None
        _scalar_buf: dict[str, tuple[list[int], list[Any]]]
        _eval_losses: list[Tensor]
        _unit_dim_cache: dict[int, int]
        _mask_order: list[int]
        _mask_skip: set[int]
        _last_channel_first: bool
        _grad_hooks: list[Callable[[Tensor], None]]

        @property
        def current_step(self) -> int: ...
        def _fail(self, where: str, exc: BaseException) -> None: ...
        def _note(
            self, key: str, where: str, msg: str, exc: BaseException | None = None
        ) -> None: ...

    # ------------------------------------------------------------------ per-step buffers
    def _close_batch(self) -> None:
        b, self._batch_open = self._batch_open, None
        if b is not None:
            self.recent_batches.append(b)

    def _reset_step_buffers(self) -> None:
        self._act_rows: list[Tensor] = []
        self._act_meta: list[tuple[int, int]] = []
        self._act_hists: list[Tensor] = []
        self._act_hist_layer: list[int] = []
        self._grad_rows: list[Tensor] = []
        self._grad_meta: list[tuple[int, int]] = []
        self._grad_hists: list[Tensor] = []
        self._grad_hist_layer: list[int] = []
        self._act_masks: dict[int, Tensor] = {}
        self._grad_masks: dict[int, Tensor] = {}
        self._fwd_order: list[int] = []
        self._bwd_order: list[int] = []
        self._fwd_seen: set[int] = set()
        self._bwd_seen: set[int] = set()
        self._inputs: tuple[Tensor, dict[str, Any]] | None = None
        self._loss_in: tuple[Tensor, dict[str, Any]] | None = None
        self._carried: Tensor | None = None
        self._carried_bwd: Tensor | None = None
        self._step_modes = {"train": 0, "eval_in_train_mode": 0, "train_in_eval_mode": 0, "eval": 0}
        self._root_marks: list[tuple[Any, ...] | None] = []
        self._root_completed = False

    def _collect(self, k: int, reason: str) -> StepPayload[Tensor]:
        """The sampled step's buffers as one payload of named device tensors (no sync)."""
        p: StepPayload[Tensor] = StepPayload(step=k, time=time.time(), reason=reason)
        if self._enabled["params"]:
            try:
                p.prow = self._ptrack.row(init=True)
            except Exception as e:
                self._fail("params", e)
        if self._act_rows:
            p.act, p.act_meta = torch.stack(self._act_rows), list(self._act_meta)
        if self._grad_rows:
            p.grad, p.grad_meta = torch.stack(self._grad_rows), list(self._grad_meta)
        if self._act_hists:
            p.act_hist, p.act_hist_layer = torch.stack(self._act_hists), list(self._act_hist_layer)
        if self._grad_hists:
            p.grad_hist = torch.stack(self._grad_hists)
            p.grad_hist_layer = list(self._grad_hist_layer)
        p.act_masks = dict(self._act_masks)
        p.grad_masks = dict(self._grad_masks)
        if self._inputs is not None:
            p.inputs, p.inputs_meta = self._inputs
        if self._loss_in is not None:
            p.loss_in, p.loss_in_meta = self._loss_in
        p.carried, p.carried_bwd = self._carried, self._carried_bwd
        p.fwd_order = list(self._fwd_order)
        if self._fwd_order and self._fwd_order != self._mask_order:
            # here, not when the record is read: every rank of a DistributedProbe collects, only
            # rank 0 records, and all ranks must send the same masks
            self._mask_order = list(self._fwd_order)
            self._mask_skip = self._redundant_masks(self._mask_order)
        p.bwd_order = list(self._bwd_order)
        p.modes = dict(self._step_modes)
        p.exact_nonfinite = self._exact_nonfinite
        return p

    # ------------------------------------------------------------------ hooks
    def _root_pre_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if self._root_exit_on:  # one mark per call, popped by _root_exit (balanced when nested)
            self._root_marks.append(
                self._forward_mark() if not self._paused and torch.is_grad_enabled() else None
            )
        if self._paused:
            return
        try:
            grad = torch.is_grad_enabled()
            training = module.training
            mode = (
                ("train" if training else "train_in_eval_mode")
                if grad
                else ("eval_in_train_mode" if training else "eval")
            )
            self.forward_modes[mode] += 1
            self._step_modes[mode] += 1
            if not grad:
                return
            if not self._forward_since_boundary:
                if self._eval_losses:
                    self._log_val_loss()  # belongs to the step that finished before this forward
                self._forward_since_boundary = True
                self._t_first_fwd = time.perf_counter()
                if self.recent_batches.maxlen != 0:
                    self._batch_open = Batch(self.step_count, args, dict(kwargs))
                if self._sampling and self._enabled["inputs"]:
                    self._guarded("inputs", self._first_forward_checks, args)
            else:
                if self._batch_open is not None and self._batch_open.step == self.step_count:
                    # the open batch never reached the loss: a failed forward, or accumulation
                    # without a loss module; the batch that completes the step is the later one
                    self._batch_open = Batch(self.step_count, args, dict(kwargs))
                if self._sampling and self._inputs is None and self._enabled["inputs"]:
                    self._guarded("inputs", self._summarize_inputs, args)
        except Exception as e:
            self._fail("inputs", e)

    def _guarded(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        """Run one batch's summary; if that batch cannot be summarized (an odd shape, dtype or
        layout), only that batch's summary is missing: noted once, nothing is switched off."""
        try:
            fn(*args)
        except Exception as e:
            self._note(
                f"degraded:{what}",
                what,
                f"one batch's {what} statistics could not be computed and are left out of "
                f"that step ({type(e).__name__}: {e}); later batches are still summarized",
                e,
            )

    # A forward of the root that raises half-way (a bad batch skipped by the training loop's
    # try/except) must leave no trace in the step's statistics: every root forward of a sampled
    # step takes a mark of the per-step forward buffers, and if the forward does not complete the
    # buffers go back to the mark.  Completed forwards (several per step with gradient
    # accumulation) are all kept.  `_root_done` (an ordinary forward hook) runs only when the
    # forward returned; `_root_exit` (always_call) runs either way, after it.
    def _forward_mark(self) -> tuple[Any, ...]:
        return (
            len(self._act_rows),
            len(self._act_hists),
            dict(self._act_masks),
            len(self._fwd_order),
            self._inputs,
            self._carried,
            self._forward_since_boundary,
            self._t_first_fwd,
            self._batch_open,
        )

    def _root_done(self, module: nn.Module, args: Any, output: Any) -> None:
        self._root_completed = True

    def _root_exit(self, module: nn.Module, args: Any, output: Any) -> None:
        completed, self._root_completed = self._root_completed, False
        mark = self._root_marks.pop() if self._root_marks else None
        if completed or mark is None:
            return
        try:
            self._rollback(mark)
        except Exception as e:
            self._fail("forward", e)

    def _rollback(self, mark: tuple[Any, ...]) -> None:
        rows, hists, masks, order, inputs, carried, since, t_first, batch = mark
        del self._act_rows[rows:]
        del self._act_meta[rows:]
        del self._act_hists[hists:]
        del self._act_hist_layer[hists:]
        self._act_masks = masks
        del self._fwd_order[order:]
        self._fwd_seen = set(self._fwd_order)
        self._inputs = inputs
        self._carried = carried
        self._forward_since_boundary = since  # the next forward is the step's first again
        self._t_first_fwd = t_first
        self._batch_open = batch
        self.aborted_forwards += 1

    def _first_forward_checks(self, args: tuple[Any, ...]) -> None:
        # gradients left over from the previous step (no zero_grad): norm of what is there now
        grads = self._ptrack.grads()
        if grads:
            self._carried = S.norms(grads).norm()
        self._summarize_inputs(args)

    @S.without_grad
    def _summarize_inputs(self, args: tuple[Any, ...]) -> None:
        x = _primary_tensor(args)
        if x is None or x.numel() == 0:  # an empty batch has no statistics (nothing to record)
            return
        vec, _ = S.summarize(x)
        meta: dict[str, Any] = {
            "shape": tuple(x.shape),
            "dtype": str(x.dtype).replace("torch.", ""),
            "numel": x.numel(),
        }
        parts = [vec]
        if x.dim() >= 2:
            cdim = 1 if x.dim() >= 3 else x.dim() - 1
            dims = tuple(d for d in range(x.dim()) if d != cdim)
            c = x.shape[cdim]
            if c <= 4096:
                xf = x.float() if x.dtype != torch.float32 else x
                cnt = x.numel() / c
                cmean = xf.sum(dim=dims) / cnt
                csq = torch.linalg.vector_norm(xf, dim=dims) ** 2 / cnt
                parts += [cmean, csq]
                meta["channels"] = c
                meta["channel_dim"] = cdim
        self._inputs = (torch.cat([p.reshape(-1).float() for p in parts]), meta)

    def _make_fwd_hook(self, i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._paused or not torch.is_grad_enabled() or not self.model.training:
                return  # validation / no-grad forwards are kept apart from training statistics
            try:
                self._on_forward(i, output)
            except Exception as e:
                self._fail("forward", e)

        return hook

    def _make_grad_hook(self, i: int) -> Callable[[Tensor], None]:
        def hook(grad: Tensor) -> None:
            if self._paused or not self._enabled["backward"]:
                return
            try:
                self._on_grad(i, grad)
            except Exception as e:
                self._fail("backward", e)

        return hook

    def _redundant_masks(self, order: list[int]) -> set[int]:
        """Linear / conv layers whose per-unit masks carry no information, given the forward order.

        A Linear / Conv unit is "dead" only if a ReLU-style function follows it directly.  When the
        next tracked module (dropout skipped) is an activation or a normalization, that module
        shows the dead units itself (or none can exist, after a norm); when nothing follows, the
        units always receive gradient.  Only a functional activation (``F.relu`` inside a custom
        module) needs the Linear / Conv mask, so it is computed only there.
        """
        skip: set[int] = set()
        kinds = [self.layers[i].kind for i in order]
        for pos, i in enumerate(order):
            if kinds[pos] not in ("linear", "conv"):
                continue
            nxt = next(
                (kinds[q] for q in range(pos + 1, len(order)) if kinds[q] != "dropout"), None
            )
            if nxt is None or nxt in ("activation", "norm"):
                skip.add(i)
        return skip

    def _unit_dim(self, i: int, t: Tensor) -> int | None:
        if t.dim() < 2:
            return None
        info = self.layers[i]
        if info.kind in ("linear", "conv"):
            self._last_channel_first = info.channel_first
        if info.channel_first:
            return 1
        if info.kind == "linear":
            return t.dim() - 1
        if info.relu_family:
            return 1 if (self._last_channel_first and t.dim() >= 3) else t.dim() - 1
        return 1 if t.dim() >= 4 else t.dim() - 1

    @S.without_grad
    def _on_forward(self, i: int, output: Any) -> None:
        t = _primary_tensor(output)
        if t is None or t.numel() == 0:
            return
        info = self.layers[i]
        if i not in self._fwd_seen:
            self._fwd_seen.add(i)
            self._fwd_order.append(i)
        row, hist = S.summarize(
            t, bounds=info.saturation, exact_nonfinite=self._exact_nonfinite, hist=self.histograms
        )
        self._act_rows.append(row)
        self._act_meta.append((i, t.numel()))
        if hist is not None:
            self._act_hists.append(hist)
            self._act_hist_layer.append(i)
        if info.relu_family or info.kind in ("linear", "conv"):
            ud = self._unit_dim(i, t)
            if ud is not None and t.shape[ud] <= _MAX_UNITS and i not in self._mask_skip:
                self._unit_dim_cache[i] = ud
                m = S.unit_mask(t, ud, positive=True, nonneg=info.nonneg)
                prev = self._act_masks.get(i)
                self._act_masks[i] = (
                    m if prev is None or prev.shape != m.shape else torch.maximum(prev, m)
                )
        if t.requires_grad and self._enabled["backward"]:
            t.register_hook(self._grad_hooks[i])  # type: ignore[no-untyped-call]

    @S.without_grad
    def _on_grad(self, i: int, g: Tensor) -> None:
        if g is None or g.numel() == 0:
            return
        if not self._bwd_seen:  # first output gradient of the step: no parameter gradient added yet
            self._carried_bwd = self._ptrack.grad_norm(g.device, self.param_in_optimizer)
        if i not in self._bwd_seen:
            self._bwd_seen.add(i)
            self._bwd_order.append(i)
        row, hist = S.summarize(g, exact_nonfinite=self._exact_nonfinite, hist=self.histograms)
        self._grad_rows.append(row)
        self._grad_meta.append((i, g.numel()))
        if hist is not None:
            self._grad_hists.append(hist)
            self._grad_hist_layer.append(i)
        ud = self._unit_dim_cache.get(i)
        if (
            self.layers[i].kind in ("linear", "conv")
            and ud is not None
            and ud < g.dim()
            and i not in self._mask_skip
        ):
            m = S.unit_mask(g, ud, positive=False)
            prev = self._grad_masks.get(i)
            self._grad_masks[i] = (
                m if prev is None or prev.shape != m.shape else torch.maximum(prev, m)
            )

    def _loss_pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self._paused or not torch.is_grad_enabled():
            return
        b = self._batch_open
        if b is not None and b.step == self.step_count and len(args) > 1:
            b.target = args[1]
            self._close_batch()
        if not self._sampling or self._loss_in is not None or not self._enabled["inputs"]:
            return
        self._guarded("loss input", self._summarize_loss_inputs, module, args)

    @S.without_grad
    def _summarize_loss_inputs(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not args or not isinstance(args[0], Tensor) or args[0].numel() == 0:
            return  # an empty batch: nothing to summarize
        pred = args[0]
        target = args[1] if len(args) > 1 and isinstance(args[1], Tensor) else None
        if target is not None and target.numel() == 0:
            target = None
        meta: dict[str, Any] = {
            "loss": type(module).__name__,
            "pred_shape": tuple(pred.shape),
            "pred_dtype": str(pred.dtype).replace("torch.", ""),
        }
        p = pred.detach()
        pf = p.float() if p.is_floating_point() else p.double().float()
        mn, mx = torch.aminmax(pf)
        if pf.dim() >= 2:
            rowdev = (pf.sum(dim=1) - 1.0).abs().mean()
        else:
            rowdev = pf.new_full((), float("nan"))
        parts = [mn, mx, rowdev]
        if target is not None:
            meta["target_shape"] = tuple(target.shape)
            meta["target_dtype"] = str(target.dtype).replace("torch.", "")
            tf = target.detach().float()
            tmn, tmx = torch.aminmax(tf)
            integral = (tf - tf.round()).abs().amax() if tf.numel() else tf.new_zeros(())
            parts += [tmn, tmx, integral]
        extra, extra_meta = loss_extras(pred, target)  # head / loss / target rules (issue 13)
        meta.update(extra_meta, n_base=len(parts))
        self._loss_in = (torch.cat([torch.stack(parts).float(), extra]), meta)

    def _loss_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._paused or not isinstance(output, Tensor) or output.numel() != 1:
            return
        try:
            if torch.is_grad_enabled() and self.model.training:
                self._put_scalar(self.step_count, "loss", output.detach().reshape(()))
            elif self.auto_val_loss:
                self._eval_losses.append(output.detach().reshape(()))
        except Exception as e:
            self._fail("inputs", e)

    def _put_scalar(self, step: int, name: str, value: Any) -> None:
        col = self._scalar_buf.get(name)
        if col is None:
            col = self._scalar_buf[name] = ([], [])
        col[0].append(step)
        col[1].append(value)

    def _log_val_loss(self) -> None:
        losses, self._eval_losses = self._eval_losses, []
        step = self.current_step
        self._put_scalar(step, "val_loss", torch.stack(losses).float().mean())

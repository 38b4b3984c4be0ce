"""The recording engine: hooks -> per-step device buffers -> one transfer -> decode -> History.

Cost design
-----------
* Steps that are not sampled pay (almost) nothing: the per-layer forward hooks are *installed*
  at the step boundary before a sampled step and *removed* at the boundary after it
  (:mod:`.schedule`).  What stays attached permanently is one forward pre-hook on the root module
  (train/eval bookkeeping), the optimizer's step hooks and, when a loss module is given, one hook
  on it (:mod:`.hooks`).
* Statistics are computed on the tensor's device, in fp32 (:mod:`trainscope.stats`), collected
  as a :class:`~.payload.StepPayload` of named device tensors, copied to the host **once** per
  sampled step -- non-blocking on CUDA (pinned memory + an event, read at a later boundary) --
  and decoded in one straight line (:mod:`.decode`).  Nothing calls ``.item()``.

Failure design
--------------
Every hook body is guarded.  An exception inside the recorder is recorded in ``errors``,
reported once as a ``RuntimeWarning``, and the failing component is switched off; the user's
training never sees it.

This package imports only the floors below it (``run``, ``stats``, ``layers``, ``history``,
``_params``, ``_hooks``); :class:`~trainscope.probe.Probe` builds on :class:`Recorder`.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from .._hooks import HookFn
from .._params import ParamTracker
from ..history import History, Update
from ..layers import LayerInfo, Selector, classify, select_layers
from ..run import Batch, Handle, ProbeError
from .decode import decode_param_rows, decode_record, first_sample
from .hooks import Hooks
from .payload import Pending, StepPayload, start_transfer
from .schedule import Schedule

__all__ = ["ATTACHED", "IDLE_SECONDS", "Exchange", "Recorder", "StepPayload"]

IDLE_SECONDS = 1.0
"""Before any step boundary has been seen, training counts as idle for :meth:`Recorder.at_boundary`
(a task may run on the calling thread) once the step count has not moved for this long."""

R = TypeVar("R", bound="Recorder")

ATTACHED: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()
"""Model -> the recorder attached to it (one per model)."""


class Exchange(Protocol):
    """A payload-exchange strategy (e.g. :mod:`trainscope.distributed`): what the recorder
    hands over at a sampled step, and the schedule decisions taken together with others."""

    def exchange(self, k: int, payload: StepPayload[Tensor]) -> StepPayload[Tensor]:
        """The payload to record for sampled step ``k`` (``full=False``: record none)."""

    def agree_schedule(self) -> bool:
        """Apply the schedule agreed at the last exchange; False: adapt it locally."""

    def defer_sample(self) -> bool:
        """``sample_next()``: True if the request travels with the next exchange instead."""


class Recorder(Hooks, Schedule):
    """Records per-layer statistics of ``model`` into ``history`` (see :class:`~trainscope.Probe`
    for every parameter).  ``every`` and ``budget`` arrive validated; ``auto``: the default
    policy (dense start, budget, jump triggers)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        *,
        loss_fn: nn.Module | None,
        every: int | Callable[[int], bool],
        auto: bool,
        cheap_every: int | None,
        histograms: bool,
        include: Selector | Sequence[Selector] | None,
        exclude: Selector | Sequence[Selector] | None,
        budget: float | None,
        dead_window: int,
        track_init: bool,
        auto_val_loss: bool,
        history: History | None,
        keep_batches: int,
        exchange: Exchange | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self._auto = auto
        self.every: int | Callable[[int], bool] = every
        self._base_every = every if isinstance(every, int) else 1
        self.cheap_every = cheap_every
        self.histograms = histograms
        self.budget = budget
        self.track_init = track_init
        self.auto_val_loss = auto_val_loss
        self._include = include
        self._exclude = exclude
        self._exchange = exchange
        self.recent_batches: deque[Batch] = deque(maxlen=max(int(keep_batches), 0))
        # the batch of the step in progress: it joins recent_batches once complete (the loss saw its
        # target, or the step ended), so a reader on another thread never sees a half batch
        self._batch_open: Batch | None = None

        chosen = select_layers(model, include, exclude)  # raises on patterns that match nothing
        self._modules: list[nn.Module] = [m for _, m in chosen]
        self.layers: list[LayerInfo] = [classify(n, m) for n, m in chosen]
        self._index = {id(m): i for i, m in enumerate(self._modules)}
        # parameters grouped by the tracked module that owns them directly
        self._ptrack = ParamTracker(
            model, self._index, len(self.layers), on_unmeasured=self._note_unmeasured
        )
        self.param_in_optimizer: dict[str, bool] = {}
        if optimizer is not None:
            owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
            model_ids = {id(p) for p in model.parameters()}
            if model_ids and not (owned & model_ids):
                raise ValueError(
                    "the optimizer does not own any parameter of this model. Build it from this "
                    "model's parameters (torch.optim.SGD(model.parameters(), ...)) or pass the "
                    "optimizer that trains this model."
                )
            self.param_in_optimizer = {  # every name of a tied parameter
                n: id(self._ptrack.params[j]) in owned for n, j in self._ptrack.aliases
            }
        self.history = (
            history if history is not None else History(self.layers, dead_window=dead_window)
        )
        if history is not None:
            self.history.set_layers(self.layers)

        self.errors: list[ProbeError] = []
        self._warned: set[str] = set()
        self._enabled = {"forward": True, "backward": True, "params": True, "inputs": True}
        self._handles: list[Any] = []  # permanent while attached
        self._sample_handles: list[Any] = []  # present only around sampled steps
        self._step_callbacks: dict[int, Callable[[Any], None]] = {}
        self._cb_key = 0
        # (where, task) run at every boundary after the recorder's own work, before the callbacks
        self._boundary_tasks: list[tuple[str, Callable[[], Any]]] = []
        # the one "run this at the next step boundary" queue (at_boundary), keyed
        self._queued: dict[str, Callable[[Any], None]] = {}
        self._boundary_thread: int | None = None  # the thread step boundaries run on
        self._idle_mark: tuple[int, float] | None = None  # (step_count, when it was first seen)
        self._lock = threading.RLock()
        self._attached = False
        self._paused = 0
        self._optimizer_mode = optimizer is not None
        self.step_count = 0  # completed optimizer steps
        self._init_schedule()
        self._forward_since_boundary = False
        self._reset_step_buffers()
        # scalars waiting for the next transfer, by name: (steps, values: floats or 0-d tensors)
        self._scalar_buf: dict[str, tuple[list[int], list[Any]]] = {}
        self._param_rows: list[tuple[int, Tensor]] = []
        self._eval_losses: list[Tensor] = []
        self._pending: deque[Pending] = deque()
        self._last_flush = time.perf_counter()
        self.flush_interval = 0.5  # seconds between scalar flushes on unsampled steps (no sync)
        self.forward_modes = dict.fromkeys(
            ("train", "eval_in_train_mode", "train_in_eval_mode", "eval"), 0
        )
        self._last_channel_first = False
        self._unit_dim_cache: dict[int, int] = {}
        self._mask_order: list[int] = []
        self._mask_skip: set[int] = set()  # see _redundant_masks
        self.aborted_forwards = 0  # root forwards that raised half-way, rolled back
        self._root_done_hook = HookFn(self._root_done)
        self._root_exit_hook = HookFn(self._root_exit)
        self._fwd_hooks = [HookFn(self._make_fwd_hook(i)) for i in range(len(self._modules))]
        self._grad_hooks = [self._make_grad_hook(i) for i in range(len(self._modules))]

    def use_exchange(self, exchange: Exchange | None) -> None:
        """Hand sampled steps' payloads to ``exchange`` (e.g. the distributed strategy)."""
        self._exchange = exchange

    # ------------------------------------------------------------------ lifecycle
    @property
    def is_attached(self) -> bool:
        return self._attached

    def attach(self: R) -> R:
        """Register the hooks.  Raises if this model already has an attached probe."""
        if self._attached:
            raise RuntimeError(
                "this probe is already attached; call probe.detach() before attaching again"
            )
        other = ATTACHED.get(self.model)
        if other is not None and other is not self and other.is_attached:
            raise RuntimeError(
                "this model already has an attached trainscope Probe; detach it first "
                "(other_probe.detach()) or reuse it"
            )
        handles: list[Any] = []
        clock = self._hook_clock
        try:
            handles.append(
                self.model.register_forward_pre_hook(
                    HookFn(self._root_pre_hook, clock), with_kwargs=True
                )
            )
            if self.optimizer is not None:
                handles.append(
                    self.optimizer.register_step_pre_hook(HookFn(self._opt_pre_hook, clock))
                )
                handles.append(self.optimizer.register_step_post_hook(HookFn(self._opt_post_hook)))
            if self.loss_fn is not None:
                handles.append(
                    self.loss_fn.register_forward_pre_hook(HookFn(self._loss_pre_hook, clock))
                )
                handles.append(self.loss_fn.register_forward_hook(HookFn(self._loss_hook, clock)))
            if self.track_init:
                self._ptrack.keep_init()
        except Exception:
            for h in handles:
                h.remove()
            raise
        self._handles = handles
        self._attached = True
        ATTACHED[self.model] = self
        self._next_sample = self.step_count
        if self._start_step is None:
            self._start_step = self.step_count
        self._begin_step()
        return self

    def detach(self) -> None:
        """Remove every hook (the model is left exactly as found) and flush what is pending."""
        if not self._attached:
            return
        with contextlib.suppress(Exception):
            self.flush()
        for h in self._handles + self._sample_handles:
            h.remove()
        self._handles = []
        self._sample_handles = []
        self._sampling = False
        self._root_exit_on = False
        self._attached = False
        self._ptrack.release()
        self._reset_step_buffers()
        if ATTACHED.get(self.model) is self:
            del ATTACHED[self.model]

    def __enter__(self: R) -> R:
        if not self._attached:
            self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            if self._attached:
                for h in self._handles + self._sample_handles:
                    h.remove()

    @contextlib.contextmanager
    def paused(self: R) -> Iterator[R]:
        """Record nothing inside the block (e.g. while a check or the LR finder runs the model);
        optimizer steps taken inside it are not counted."""
        self._paused += 1
        try:
            yield self
        finally:
            self._paused -= 1

    # ------------------------------------------------------------------ public API
    def step(self) -> None:
        """Mark a step boundary by hand (only when no optimizer was given)."""
        if self._optimizer_mode:
            self._warn_once(
                "manual-step",
                "probe.step() is ignored: steps are counted from optimizer.step() when the probe "
                "has an optimizer",
            )
            return
        self._boundary()

    def log(self, **values: float | int | Tensor) -> None:
        """Record scalars (``loss=``, ``val_loss=``, ``acc=``, ...) for the current step.

        Tensors are kept on their device and copied with the next transfer (no sync here).  A value
        logged after ``optimizer.step()`` and before the next training forward belongs to the step
        that just finished; otherwise to the step in progress.  Several values for one name in one
        step are averaged.
        """
        step = self.current_step
        for name, v in values.items():
            if not isinstance(name, str) or not name:
                raise ValueError("scalar names must be non-empty strings")
            if isinstance(v, Tensor):
                if v.numel() != 1:
                    raise ValueError(
                        f"log({name}=...) needs a scalar; got a tensor of shape {tuple(v.shape)}"
                    )
                self._put_scalar(step, name, v.detach().reshape(()))
            elif isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
                self._put_scalar(step, name, float(v))
            else:
                raise TypeError(
                    f"log({name}=...) takes a number or a one-element tensor, got {type(v).__name__}"
                )

    @property
    def current_step(self) -> int:
        """The step new values are attributed to (see :meth:`log`)."""
        if self._forward_since_boundary or self.step_count == 0:
            return self.step_count
        return self.step_count - 1

    def on_step(self, callback: Callable[[Any], None]) -> Handle:
        """Call ``callback(probe)`` at every step boundary, on the training thread.

        Exceptions are recorded in :attr:`errors` and never reach the training loop.
        """
        self._cb_key += 1
        self._step_callbacks[self._cb_key] = callback
        return Handle(self._step_callbacks, self._cb_key)

    def at_boundary(self, key: str, task: Callable[[Any], None]) -> bool:
        """Run ``task(self)`` where it cannot race with training: now, on the thread step boundaries
        run on, or when training is idle (detached, or no step for :data:`IDLE_SECONDS` before any
        boundary was seen); otherwise at the next step boundary, on the training thread.  Tasks
        are keyed: one queued twice runs once.  Returns whether it ran now (a task that raises at a
        boundary is recorded in :attr:`errors`, never reaching the loop)."""
        now = time.monotonic()
        if self._idle_mark is None or self._idle_mark[0] != self.step_count:
            self._idle_mark = (self.step_count, now)
        idle = not self._attached or (
            self._boundary_thread is None and now - self._idle_mark[1] >= IDLE_SECONDS
        )
        if self._boundary_thread == threading.get_ident() or idle:
            self._queued.pop(key, None)
            task(self)
            return True
        self._queued[key] = task
        return False

    def sample_next(self) -> None:
        """Record full statistics at the next step, whatever the schedule."""
        if self._exchange is not None and self._exchange.defer_sample():
            return
        if not self._force_sample:
            self._reason_next = "requested"
        self._force_sample = True
        if self._attached and not self._sampling:
            self._install_sampling()
        if self._attached and not self._cheap_now:
            # a complete sample: the parameter update is measured too (the optimizer's pre-hook
            # takes the snapshot; without an optimizer it is taken here, at the boundary)
            self._cheap_now = True
            if not self._optimizer_mode and not self._forward_since_boundary:
                self._ptrack.take_snapshot()

    def flush(self) -> None:
        """Copy everything pending to the history now (blocks on the device if needed)."""
        with self._lock:
            if self._eval_losses:
                self._log_val_loss()
            if self._scalar_buf:
                self._start_transfer(None, block=True)
            while self._pending:
                self._process(self._pending.popleft())

    # ------------------------------------------------------------------ failure handling
    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"trainscope: {msg}", RuntimeWarning, stacklevel=3)

    def _note(self, key: str, where: str, msg: str, exc: BaseException | None = None) -> None:
        """A degraded measurement (one tensor, one batch): recorded once in :attr:`errors` and
        warned once, without switching any part of the probe off."""
        if key in self._warned:
            return
        if len(self.errors) < 1000:
            err = f"{type(exc).__name__}: {exc}; {msg}" if exc is not None else msg
            tb = "".join(traceback.format_exception(exc)) if exc is not None else ""
            self.errors.append(ProbeError(where, self.step_count, err, tb))
        self._warn_once(key, msg)

    def _note_unmeasured(self, name: str, what: str, exc: BaseException | None) -> None:
        self._note(
            f"unmeasured:{name}:{what}",
            "params",
            f"the {what} norm of parameter `{name}` cannot be measured; it is left out of its "
            "layer's statistics, every other parameter is still measured",
            exc,
        )

    def _fail(self, where: str, exc: BaseException) -> None:
        if len(self.errors) < 1000:
            self.errors.append(
                ProbeError(
                    where, self.step_count, f"{type(exc).__name__}: {exc}", traceback.format_exc()
                )
            )
        switched_off = where in self._enabled
        if switched_off:
            self._enabled[where] = False
        self._warn_once(  # once per probe: later failures are listed in probe.errors
            "internal-error",
            f"an internal error in the probe's {where} code was caught and "
            + ("that part is switched off" if switched_off else "that step's record is incomplete")
            + f"; training continues. ({type(exc).__name__}: {exc}) Details: probe.errors",
        )
        if where in ("forward", "backward", "boundary"):
            self._reset_step_buffers()

    # ------------------------------------------------------------------ the step boundary
    def _opt_pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._paused:
            return
        try:
            if self._cheap_now and self._enabled["params"]:
                self._ptrack.take_snapshot()
        except Exception as e:
            self._fail("params", e)

    def _opt_post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._paused:
            return
        self._boundary()

    def _boundary(self) -> None:
        t0 = time.perf_counter()
        if not self._attached or self._paused:
            return
        k = self.step_count
        sampled = self._sampling
        self._close_batch()  # the step's batch is complete now, whatever happens below
        try:
            with self._lock:
                payload: StepPayload[Tensor] | None = None
                if self._exchange is None:
                    self._record_optimizer_scalars(k)
                    if sampled:
                        payload = self._collect(k, self._reason_now)
                else:  # every rank must reach the exchange that follows
                    self._guarded_call("optimizer scalars", self._record_optimizer_scalars, k)
                    if sampled:
                        payload = self._exchange.exchange(k, self._collect_guarded(k))
                if not sampled and self._cheap_now and self._enabled["params"]:
                    try:
                        row = self._ptrack.row(init=False)
                        if row is not None:
                            self._param_rows.append((k, row))
                    except Exception as e:
                        self._fail("params", e)
                if self._t_boundary is not None:
                    dur = t0 - self._t_boundary
                    if not sampled:
                        self._dur_plain.append(dur)
                    self._put_scalar(k, "step_time", dur)
                self._t_boundary = t0
                self.step_count = k + 1
                self._forward_since_boundary = False
                if sampled:
                    self._after_sample(k)
                self._process_ready()
                if (
                    payload is not None
                    or (time.perf_counter() - self._last_flush) > self.flush_interval
                ):
                    self._start_transfer(payload, block=False)
                if sampled:
                    self._reset_step_buffers()
                else:  # the hooks of an unsampled step touch nothing else
                    self._step_modes = dict.fromkeys(self._step_modes, 0)
                self._begin_step()
        except Exception as e:
            self._fail("boundary", e)
            self.step_count = k + 1
            self._forward_since_boundary = False
            with contextlib.suppress(Exception):
                self._begin_step()
        self._account(t0, time.perf_counter(), sampled)
        for where, task in self._boundary_tasks:
            self._guarded_call(where, task)
        self._boundary_thread = threading.get_ident()
        while self._queued:
            name, queued = self._queued.popitem()
            self._guarded_call(f"boundary task {name}", queued, self)
        for key, cb in list(self._step_callbacks.items()):
            try:
                cb(self)
            except Exception as e:
                self._fail(f"callback {getattr(cb, '__name__', key)}", e)

    def _guarded_call(self, where: str, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:
            self._fail(where, e)

    def _collect_guarded(self, k: int) -> StepPayload[Tensor]:
        try:
            return self._collect(k, self._reason_now)
        except Exception as e:
            self._fail("collect", e)
            return StepPayload(step=k)

    def _record_optimizer_scalars(self, k: int) -> None:
        opt = self.optimizer
        if opt is None:
            return
        groups = opt.param_groups
        lr0 = groups[0].get("lr")
        if isinstance(lr0, Tensor):
            lr0 = lr0.detach()
        if lr0 is not None:
            self._put_scalar(k, "lr", lr0 if isinstance(lr0, Tensor) else float(lr0))
        for gi, g in enumerate(groups[1:], start=1):
            lr = g.get("lr")
            if lr is not None and not isinstance(lr, Tensor) and lr != lr0:
                self._put_scalar(k, f"lr/group{gi}", float(lr))
        mom = groups[0].get("momentum")
        if mom is None and "betas" in groups[0]:
            mom = groups[0]["betas"][0]
        if isinstance(mom, (int, float)):
            self._put_scalar(k, "momentum", float(mom))

    # ------------------------------------------------------------------ transfer and host side
    def _start_transfer(self, payload: StepPayload[Tensor] | None, *, block: bool) -> None:
        """One copy to the host of the payload, the cheap steps' rows and the buffered scalars."""
        pending = start_transfer(self.step_count, payload, self._param_rows, self._scalar_buf)
        self._param_rows = []
        self._scalar_buf = {}
        self._pending.append(pending)
        self._last_flush = time.perf_counter()
        if block or not pending.on_device:
            while self._pending:
                self._process(self._pending.popleft())

    def _process_ready(self) -> None:
        while self._pending and self._pending[0].ready():
            self._process(self._pending.popleft())

    def _process(self, pending: Pending) -> None:
        try:
            buf = pending.result()
            fl = pending.meta
            for name, (steps, values) in fl.scalars(buf).items():
                if name == "loss":
                    self._watch("loss", values, "nonfinite_loss")
                self.history.add_scalar_series(name, steps, values)
            rows = fl.param_rows(buf)
            if fl.scal_float or fl.scal_tensor:
                if not fl.full and rows is None:
                    self.history.notify(Update(step=self.history.step, scalars=True))
            if rows is not None:
                watched = decode_param_rows(rows[0], rows[1], self._ptrack, self.history)
                if watched is not None:
                    self._watch("grad_norm_total", watched, "nonfinite_grad")
                if not fl.full:
                    self.history.notify(Update(step=int(rows[0][-1]), scalars=True))
            host = fl.host(buf)
            if host is not None and host.full:
                self._record(host)
        except Exception as e:
            self._fail("flush", e)

    def _record(self, p: StepPayload[np.ndarray]) -> None:
        rec, totals, nonfinite = decode_record(p, self.layers, self._ptrack, self.history)
        if nonfinite and not self._exact_nonfinite:
            self._exact_nonfinite = True  # count exactly from now on (see stats.py)
            self._trigger_sample("nonfinite", limited=False)
        if totals:
            self.history.add_scalars(p.step, totals)
        first = self.history.first_record is None
        self.history.add_record(rec)
        if first:
            self.history.meta["first_sample"] = first_sample(
                rec, self.layers, self._start_step or 0
            )
        self.history.notify(Update(step=p.step, scalars=True, record=True))

"""The probe: attaches to any ``nn.Module`` and records per-layer statistics at low cost.

Cost design
-----------
* Steps that are not sampled pay (almost) nothing: the per-layer forward hooks are *installed*
  at the step boundary before a sampled step and *removed* at the boundary after it.  What stays
  attached permanently is one forward pre-hook on the root module (train/eval bookkeeping), the
  optimizer's step hooks and, when a loss module is given, one hook on it.
* Statistics are computed on the tensor's device, in fp32 (:mod:`trainscope.stats`), collected as
  device tensors, concatenated and copied to the host **once** per sampled step -- non-blocking
  on CUDA (pinned memory + an event, read at a later boundary).  Nothing calls ``.item()``.
* ``budget=`` (a fraction of step time) adapts the sampling interval to the measured overhead.

Failure design
--------------
Every hook body is guarded.  An exception inside the probe is recorded in :attr:`Probe.errors`,
reported once as a ``RuntimeWarning``, and the failing component is switched off; the user's
training never sees it.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import threading
import time
import traceback
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import stats as S
from ._hooks import Handle as _Handle
from ._hooks import HookFn as _HookFn
from ._hooks import Pending as _Pending
from ._hooks import primary_tensor as _primary_tensor
from ._lossextra import loss_extras, parse_loss_extras
from ._params import ParamTracker
from .actions import ActionQueue, Ticket
from .history import LAYER_METRICS, PARAM_METRICS, History, StepRecord, Update
from .layers import LayerInfo, Selector, classify, select_layers
from .run import Batch, ProbeError

__all__ = ["Batch", "Probe", "ProbeError"]

_ATTACHED: weakref.WeakKeyDictionary[nn.Module, Probe] = weakref.WeakKeyDictionary()
_MAX_UNITS = 1 << 16  # per-unit masks are kept for layers with at most this many units
DEFAULT_EVERY = 10
"""Default sampling interval (optimizer steps) of the full statistics."""
START_RATIO = 3
"""Default policy: after a full sample at step ``k`` (counted from the first step the probe saw)
the next one comes ``max(1, k // START_RATIO)`` steps later, until that reaches the budget's
interval: every step for the first 6, then 2, 3, 4, 5, 7, 9, 12... (21 samples in 300 steps,
about ``START_RATIO * ln(n)`` more over ``n`` steps)."""
JUMP_WINDOW = 64
"""Per-step values (loss, whole-model gradient norm) a jump is judged against."""
JUMP_SIGMAS = 6.0
"""A value this many robust standard deviations (1.4826 MAD) above the window's median, and at
least twice the median's magnitude above zero, jumps."""
DEFAULT_BUDGET = 0.02
"""Default overhead budget (fraction of step time) when ``every`` is not given."""
COST_WINDOW = 2.0
"""Seconds over which the probe's per-step cost is averaged (its flushes run every 0.5 s)."""
MAX_SAMPLE_GAP = 5.0
"""Seconds of training after which the budget lets the probe take a full sample anyway."""


class Probe:
    """Per-layer statistics from any PyTorch model, cheap enough to leave on.

    Parameters
    ----------
    model
        Any ``nn.Module``.  Leaf modules and modules that own parameters directly are tracked,
        each under its ``named_modules()`` name.
    optimizer
        When given, every ``optimizer.step()`` is a step boundary (through the optimizer's step
        hooks, so the training loop is unchanged).  Without one, call :meth:`step` yourself.
    loss_fn
        A loss *module* (e.g. ``nn.CrossEntropyLoss()``): its output is logged as ``loss`` in
        training forwards and as ``val_loss`` under ``no_grad`` / eval mode, and its inputs are
        summarized (for the "probabilities into the loss" and "wrong loss" checks).
    every
        Sample the full statistics every ``every`` optimizer steps (step 0 is always sampled), or
        a callable ``step -> bool``.  ``None`` (default): evidence first, then the budget.  Every
        step is sampled at the start, then intervals grow with the step count (after a sample at
        step ``k``, the next at ``k + max(1, k // 3)``: 21 full samples in the first 300 steps)
        until they reach the budget's interval: every :data:`DEFAULT_EVERY` steps, lengthened
        automatically so that the measured overhead stays within :data:`DEFAULT_BUDGET` of the
        step time.  On top of that a full sample is taken right after a jump of a per-step value
        the probe already holds on the host (the loss, and the whole-model gradient norm when
        ``cheap_every`` records it): the first non-finite value, or a value more than
        :data:`JUMP_SIGMAS` robust deviations above its recent median and at least double it
        (at most one such sample per interval).  The first step the probe sees (before the first
        ``optimizer.step()``) is always sampled fully; ``history.first_record`` keeps it.
    cheap_every
        Additionally record the cheap, parameter-level set (weight / gradient norms, update ratio,
        distance from init) every ``cheap_every`` steps; ``None``: only at sampled steps.
    histograms
        Record activation and output-gradient histograms at sampled steps.
    include, exclude
        Name globs (``"encoder.*"``), ``"re:<regex>"``, module types or ``(name, module) -> bool``
        selecting which modules to track.
    budget
        Keep the probe's own measured overhead at or below this fraction of step time
        (e.g. ``0.03``) by lengthening the sampling interval (never below ``every``).  Requires
        an integer ``every``.  Default: :data:`DEFAULT_BUDGET` when ``every`` is not given,
        otherwise none.
    dead_window
        Number of sampled steps over which a unit must never fire to count as dead.
    track_init
        Keep a copy of the initial parameters for ``dist_init`` (costs one model's worth of
        memory, plus one more for the update ratio).
    history
        A :class:`~trainscope.history.History` to record into (a new one by default).
    data
        Optional training data (an iterable of batches, e.g. a ``DataLoader``) that one-click
        checks and the LR finder may draw from while training runs.
    keep_batches
        How many recent training batches to keep *references* to (no copy) in
        :attr:`recent_batches`, for the checks to run on real data when ``data`` is not given.
        A batch joins it complete: when the loss module sees its target (at the step boundary
        without ``loss_fn``), never as a half batch whose target is still unknown.
    logdir
        Also append everything recorded to this run directory (crash-safe, bounded; see
        :mod:`trainscope.runlog`), readable with ``trainscope.open(logdir)``, live from another
        process too.  The writer is :attr:`run_writer`.  Under ``torch.distributed`` (an
        initialized process group of 2+ processes), a plain ``Probe`` created on every rank with
        the same ``logdir`` does what one run directory needs: rank 0 writes it, the other ranks
        write nothing to disk (they warn once and record their own batches in memory), and
        ``history.meta`` holds ``rank`` and ``world_size``.  Each rank's statistics are its own
        batch's; :class:`~trainscope.distributed.DistributedProbe` combines every rank's.
    attach
        Attach immediately (default).  Otherwise call :meth:`attach` or use ``with Probe(...)``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        loss_fn: nn.Module | None = None,
        every: int | Callable[[int], bool] | None = None,
        cheap_every: int | None = None,
        histograms: bool = True,
        include: Selector | Sequence[Selector] | None = None,
        exclude: Selector | Sequence[Selector] | None = None,
        budget: float | None = None,
        dead_window: int = 20,
        track_init: bool = True,
        auto_val_loss: bool = True,
        history: History | None = None,
        data: Any = None,
        keep_batches: int = 1,
        logdir: str | os.PathLike[str] | None = None,
        attach: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"Probe needs a torch.nn.Module, got {type(model).__name__}. "
                "Pass the model itself (e.g. Probe(model, optimizer)), not its output or a function."
            )
        if getattr(getattr(model, "dynamo_ctx", None), "fullgraph", False) is True:
            raise ValueError(
                "this model was compiled with torch.compile(..., fullgraph=True), which cannot hold "
                "the probe's per-layer hooks (they run at graph breaks on sampled steps). Compile "
                "without fullgraph=True; see docs/beyond.md for what works under torch.compile."
            )
        if optimizer is not None and not (
            hasattr(optimizer, "param_groups") and hasattr(optimizer, "register_step_post_hook")
        ):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}. "
                "Pass optimizer=None and call probe.step() after each update if you step by hand."
            )
        if loss_fn is not None and not isinstance(loss_fn, nn.Module):
            raise TypeError(
                "loss_fn must be a loss module such as nn.CrossEntropyLoss() so the probe can hook it; "
                f"got {type(loss_fn).__name__}. For a functional loss call probe.log(loss=loss) instead."
            )
        self._auto = every is None  # the default policy: dense start, budget, jump triggers
        if every is None:
            every = DEFAULT_EVERY
            if budget is None:
                budget = DEFAULT_BUDGET
        if isinstance(every, bool) or not (
            callable(every) or (isinstance(every, int) and every >= 1)
        ):
            raise ValueError(
                f"every must be a positive int or a callable step -> bool, got {every!r}"
            )
        if cheap_every is not None and (not isinstance(cheap_every, int) or cheap_every < 1):
            raise ValueError(f"cheap_every must be None or a positive int, got {cheap_every!r}")
        if budget is not None:
            if not (isinstance(budget, (int, float)) and 0 < budget < 1):
                raise ValueError(
                    f"budget is a fraction of step time in (0, 1), e.g. 0.03; got {budget!r}"
                )
            if callable(every):
                raise ValueError("budget adapts an integer sampling interval; pass every=<int>")
        if not isinstance(dead_window, int) or dead_window < 1:
            raise ValueError(f"dead_window must be a positive int, got {dead_window!r}")

        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.every: int | Callable[[int], bool] = every
        self._base_every = every if isinstance(every, int) else 1
        self.cheap_every = cheap_every
        self.histograms = histograms
        self.budget = budget
        self.track_init = track_init
        self.auto_val_loss = auto_val_loss
        self._include = include
        self._exclude = exclude
        self.data = data
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
        self.history.meta.update(
            model=type(model).__name__,
            n_params=sum(p.numel() for p in model.parameters()),
            n_trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
            optimizer=type(optimizer).__name__ if optimizer is not None else None,
            loss_fn=type(loss_fn).__name__ if loss_fn is not None else None,
            loss_reduction=r if isinstance(r := getattr(loss_fn, "reduction", None), str) else None,
            param_in_optimizer=self.param_in_optimizer,
        )
        self.run_writer: Any = None
        ranks = _process_group()
        if ranks is not None:
            rank, world = ranks
            self.history.meta.update(rank=rank, world_size=world)
            if rank != 0 and logdir is not None:
                logdir = None  # one run directory per run: rank 0 writes it
                warnings.warn(
                    f"trainscope: rank {rank} of {world} does not write logdir (rank 0 does); "
                    f"this Probe records rank {rank}'s own batches in memory only. For statistics "
                    "combined over every rank's batch, use trainscope.DistributedProbe on every "
                    "rank instead of Probe.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        if logdir is not None:
            from .runlog import RunWriter

            self.run_writer = RunWriter(logdir, self.history)
            self.run_writer.on_failure(self._writer_failed)

        self.errors: list[ProbeError] = []
        self._warned: set[str] = set()
        self._enabled = {"forward": True, "backward": True, "params": True, "inputs": True}
        self._handles: list[Any] = []  # permanent while attached
        self._sample_handles: list[Any] = []  # present only around sampled steps
        self._step_callbacks: dict[int, Callable[[Probe], None]] = {}
        self._cb_key = 0
        self._lock = threading.RLock()
        self._attached = False
        self._paused = 0
        self._optimizer_mode = optimizer is not None

        self.step_count = 0  # completed optimizer steps
        self._sampling = False  # hooks installed for the step in progress
        self._cheap_now = False
        self._next_sample = 0
        self._force_sample = False
        self._start_step: int | None = None  # the first step the probe saw (its step 0)
        self._last_sample_step = -1
        self._last_trigger_step = -(10**9)
        self._reason_next = "requested"  # why the forced sample is taken
        self._reason_now = ""  # why the step in progress is sampled
        # per-step host-side values watched for jumps: name -> recent values (numpy, bounded)
        self._jump_windows: dict[str, np.ndarray] = {}
        self.sample_reasons: dict[str, int] = {}  # full samples taken, by reason
        self._exact_nonfinite = False
        self._forward_since_boundary = False
        self._reset_step_buffers()
        # scalars waiting for the next transfer, by name: (steps, values: floats or 0-d tensors)
        self._scalar_buf: dict[str, tuple[list[int], list[Any]]] = {}
        self._param_rows: list[tuple[int, Tensor]] = []
        self._eval_losses: list[Tensor] = []
        self._pending: deque[_Pending] = deque()
        self._last_flush = time.perf_counter()
        self.flush_interval = 0.5  # seconds between scalar flushes on unsampled steps (no sync)
        self._t_boundary: float | None = None
        self._dur_plain: deque[float] = deque(maxlen=64)  # boundary to boundary, plain steps
        # a step's own work: first training forward -> end of the probe's boundary work, so pauses
        # between steps (data loading, validation, a paused notebook) are never charged to sampling
        self._t_first_fwd: float | None = None
        self._work_sampled: deque[float] = deque(maxlen=32)
        self._work_plain: deque[float] = deque(maxlen=64)
        self._hook_clock = [0.0]  # seconds spent in the permanent hooks since the last boundary
        # the probe's cost per plain step: a mean over windows of COST_WINDOW seconds (blended),
        # so that the periodic flushes count in proportion instead of making the reading jump
        self._step_cost: float | None = None
        self._cost_window = [0.0, 0, 0.0]  # [sum of costs, steps, window start]
        self.forward_modes = {
            "train": 0,
            "eval_in_train_mode": 0,
            "train_in_eval_mode": 0,
            "eval": 0,
        }
        self._last_channel_first = False
        self._unit_dim_cache: dict[int, int] = {}
        self._mask_order: list[int] = []
        self._mask_skip: set[int] = set()  # see _redundant_masks
        self.actions = ActionQueue(self)
        self._root_exit_on = False  # the root's completion hooks are installed (sampled steps)
        self.aborted_forwards = 0  # root forwards that raised half-way, rolled back
        self._root_done_hook = _HookFn(self._root_done)
        self._root_exit_hook = _HookFn(self._root_exit)
        self._fwd_hooks = [_HookFn(self._make_fwd_hook(i)) for i in range(len(self._modules))]
        self._grad_hooks = [self._make_grad_hook(i) for i in range(len(self._modules))]
        if attach:
            self.attach()

    # ------------------------------------------------------------------ lifecycle
    @property
    def is_attached(self) -> bool:
        return self._attached

    def attach(self) -> Probe:
        """Register the hooks.  Raises if this model already has an attached probe."""
        if self._attached:
            raise RuntimeError(
                "this probe is already attached; call probe.detach() before attaching again"
            )
        other = _ATTACHED.get(self.model)
        if other is not None and other is not self and other.is_attached:
            raise RuntimeError(
                "this model already has an attached trainscope Probe; detach it first "
                "(other_probe.detach()) or reuse it"
            )
        handles: list[Any] = []
        try:
            handles.append(
                self.model.register_forward_pre_hook(
                    _HookFn(self._root_pre_hook, self._hook_clock), with_kwargs=True
                )
            )
            if self.optimizer is not None:
                handles.append(
                    self.optimizer.register_step_pre_hook(
                        _HookFn(self._opt_pre_hook, self._hook_clock)
                    )
                )
                handles.append(self.optimizer.register_step_post_hook(_HookFn(self._opt_post_hook)))
            if self.loss_fn is not None:
                handles.append(
                    self.loss_fn.register_forward_pre_hook(
                        _HookFn(self._loss_pre_hook, self._hook_clock)
                    )
                )
                handles.append(
                    self.loss_fn.register_forward_hook(_HookFn(self._loss_hook, self._hook_clock))
                )
            if self.track_init:
                self._ptrack.keep_init()
        except Exception:
            for h in handles:
                h.remove()
            raise
        self._handles = handles
        self._attached = True
        _ATTACHED[self.model] = self
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
        if self.run_writer is not None:
            try:
                self.run_writer.flush()
            except Exception as e:  # a full disk must not turn detach() into a crash
                self._fail("logdir", e)
        for h in self._handles + self._sample_handles:
            h.remove()
        self._handles = []
        self._sample_handles = []
        self._sampling = False
        self._root_exit_on = False
        self._attached = False
        self._ptrack.release()
        self._reset_step_buffers()
        if _ATTACHED.get(self.model) is self:
            del _ATTACHED[self.model]

    def __enter__(self) -> Probe:
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
    def paused(self) -> Iterator[Probe]:
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

    def on_step(self, callback: Callable[[Probe], None]) -> _Handle:
        """Call ``callback(probe)`` at every step boundary, on the training thread.

        Exceptions are recorded in :attr:`errors` and never reach the training loop.
        """
        self._cb_key += 1
        self._step_callbacks[self._cb_key] = callback
        return _Handle(self._step_callbacks, self._cb_key)

    def request(self, action: str, /, **params: Any) -> Ticket:
        """Queue an action (e.g. ``probe.request("set_lr", lr=1e-3)``) for the next step boundary.

        Returns its :class:`~trainscope.actions.Ticket`; a request with bad arguments is refused
        at once (``ticket.status == "refused"``, ``ticket.message`` says why) and changes nothing.
        """
        return self.actions.submit(action, params, source="python")

    def findings(self, min_severity: str | None = None) -> list[Any]:
        """Current diagnosis (see :mod:`trainscope.diagnostics`): what looks wrong, with evidence.

        ``min_severity`` (``"info"``, ``"warning"`` or ``"error"``, positional or by keyword:
        ``probe.findings("warning")``) keeps only findings at least that severe.
        """
        from .diagnostics import diagnose_probe  # type: ignore[import-not-found,unused-ignore]

        found: list[Any] = diagnose_probe(self, min_severity=min_severity)
        return found

    def sample_next(self) -> None:
        """Record full statistics at the next step, whatever the schedule."""
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

    @property
    def overhead(self) -> float | None:
        """Measured overhead as a fraction of the step time without the probe.

        ``(extra cost of a sampled step / interval + cost on every step) / (plain step - that
        cost)``: the sampled-step extra is the difference of median step durations, so it holds
        device work too; the per-step part is timed (boundary, flushes and permanent hooks).
        ``None`` until enough steps ran.  What the probe cannot time is left out: PyTorch's
        dispatch of the hooks and the cache effects of running Python between the user's ops.
        That is noise on long steps but not on sub-millisecond ones, where the end-to-end cost
        is about twice this figure (``benchmarks/overhead_estimate.py``: a 0.27 ms MLP 12.6%
        against 5.5%, a 0.54 ms MLP 6.6% against 3.4%).  The per-step part is averaged over
        2 s windows, so the flushes every 0.5 s count in proportion and the reading does not
        jump after each one.
        """
        parts = self._cost_parts()
        if parts is None:
            return None
        base, extra, per_step = parts
        every = self._every_int()
        return (extra / every + per_step) / base if every else per_step / base

    def _cost_parts(self) -> tuple[float, float, float] | None:
        """``(plain step time without the probe, extra per sampled step, cost per step)``."""
        if len(self._dur_plain) < 4:
            return None
        per_step = self._step_cost
        if per_step is None:  # the first window is still open
            w = self._cost_window
            per_step = w[0] / w[1] if w[1] else 0.0
        base = statistics.median(self._dur_plain) - per_step
        if base <= 0:
            return None
        extra = 0.0
        if len(self._work_sampled) >= 2 and len(self._work_plain) >= 2:
            extra = max(
                statistics.median(self._work_sampled) - statistics.median(self._work_plain), 0.0
            )
        return base, extra, per_step

    @property
    def step_time(self) -> float | None:
        """Median wall time of a recent step without sampling (seconds)."""
        return statistics.median(self._dur_plain) if self._dur_plain else None

    def summary(
        self,
        metrics: Sequence[str] = (
            "act_mean",
            "act_std",
            "act_frac_zero",
            "act_dead_frac",
            "grad_norm",
            "update_ratio",
        ),
    ) -> str:
        """A plain-text table of the latest sampled step (for scripts and logs)."""
        rec = self.history.latest
        if rec is None:
            return "trainscope: nothing sampled yet"
        order = self.history.forward_order
        w = max(8, *(len(self.layers[i].name) for i in order))
        head = f"{'layer':<{w}} {'type':<12}" + "".join(f"{m:>14}" for m in metrics)
        lines = [f"trainscope: step {rec.step}", head, "-" * len(head)]
        for i in order:
            info = self.layers[i]
            cells = "".join(f"{_fmt(rec.metrics[m][i]):>14}" for m in metrics)
            lines.append(f"{info.name:<{w}} {info.type[:12]:<12}{cells}")
        return "\n".join(lines)

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

    def _writer_failed(self, msg: str) -> None:
        if len(self.errors) < 1000:
            self.errors.append(ProbeError("logdir", self.step_count, msg, ""))

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

    # ------------------------------------------------------------------ schedule
    def _every_int(self) -> int | None:
        return self.every if isinstance(self.every, int) else None

    def _is_sample_step(self, step: int) -> bool:
        if self._force_sample or step == 0 or step == self._start_step:
            return True
        if (
            not self._auto
            and self.budget is not None
            and len(self._dur_plain) < 8
            and step % 2 == 1
        ):
            return False  # the budget needs plain steps to measure the baseline against
        if callable(self.every):
            try:
                return bool(self.every(step))
            except Exception as e:
                self._fail("schedule", e)
                self.every = 10
                return step % 10 == 0
        return step >= self._next_sample

    def _begin_step(self) -> None:
        """Decide what the step now starting records, and (un)install hooks accordingly."""
        k = self.step_count
        sample = self._is_sample_step(k)
        if sample:
            self._reason_now = (
                self._reason_next
                if self._force_sample
                else ("first_step" if k == self._start_step else "schedule")
            )
        self._cheap_now = sample or (self.cheap_every is not None and k % self.cheap_every == 0)
        if sample and not self._sampling:
            self._install_sampling()
        elif not sample and self._sampling:
            self._remove_sampling()
        self._ptrack.snap_valid = False
        if not self._optimizer_mode and self._cheap_now:
            self._ptrack.take_snapshot()  # manual mode: the update is measured from this boundary

    def _install_sampling(self) -> None:
        if not self._enabled["forward"]:
            self._sampling = True
            return
        try:
            for i, m in enumerate(self._modules):
                self._sample_handles.append(m.register_forward_hook(self._fwd_hooks[i]))
            self._sample_handles.append(self.model.register_forward_hook(self._root_done_hook))
            self._sample_handles.append(
                self.model.register_forward_hook(self._root_exit_hook, always_call=True)
            )
            self._root_exit_on = True
        except Exception as e:
            self._remove_sampling()
            self._fail("forward", e)
        self._sampling = True

    def _remove_sampling(self) -> None:
        for h in self._sample_handles:
            h.remove()
        self._sample_handles = []
        self._sampling = False
        self._root_exit_on = False
        self._root_marks.clear()

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

    # ------------------------------------------------------------------ the step boundary
    def _boundary(self) -> None:
        t0 = time.perf_counter()
        if not self._attached or self._paused:
            return
        k = self.step_count
        sampled = self._sampling
        self._close_batch()  # the step's batch is complete now, whatever happens below
        try:
            with self._lock:
                self._record_optimizer_scalars(k)
                payload: dict[str, Any] | None = None
                if sampled:
                    payload = self._collect(k)
                elif self._cheap_now and self._enabled["params"]:
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
                    self._force_sample = False
                    self._last_sample_step = k
                    self.sample_reasons[self._reason_now] = (
                        self.sample_reasons.get(self._reason_now, 0) + 1
                    )
                    self._adapt_interval()
                    self._next_sample = k + self._interval_after(k)
                self._process_ready()
                due = (
                    payload is not None
                    or (time.perf_counter() - self._last_flush) > self.flush_interval
                )
                if due:
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
        # the probe's own cost this step: this boundary (transfers and flushes included, callbacks
        # and actions excluded: they are the caller's) plus the permanent hooks since the last one
        t_end = time.perf_counter()
        cost = t_end - t0 + self._hook_clock[0]
        self._hook_clock[0] = 0.0
        if self._t_first_fwd is not None:
            (self._work_sampled if sampled else self._work_plain).append(t_end - self._t_first_fwd)
            self._t_first_fwd = None
        if not sampled:  # a mean, not a median: periodic flushes must count
            w = self._cost_window
            if w[1] == 0:
                w[2] = t_end
            w[0] += cost
            w[1] += 1
            if t_end - w[2] >= COST_WINDOW:
                mean = w[0] / w[1]
                self._step_cost = mean if self._step_cost is None else 0.5 * (self._step_cost + mean)
                w[0], w[1] = 0.0, 0
        try:
            self.actions.apply_pending()
        except Exception as e:
            self._fail("actions", e)
        for key, cb in list(self._step_callbacks.items()):
            try:
                cb(self)
            except Exception as e:
                self._fail(f"callback {getattr(cb, '__name__', key)}", e)

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

    def _collect(self, k: int) -> dict[str, Any]:
        """Gather a sampled step's device tensors (no sync) into one payload for a single transfer."""
        tensors: list[Tensor] = []
        meta: dict[str, Any] = {
            "step": k,
            "full": True,
            "time": time.time(),
            "reason": self._reason_now,
        }

        def add(key: str, t: Tensor | None) -> None:
            if t is None:
                return
            flat = t.detach().reshape(-1).float()
            meta.setdefault("slices", {})[key] = (
                sum(x.numel() for x in tensors),
                flat.numel(),
                tuple(t.shape),
            )
            tensors.append(flat)

        if self._enabled["params"]:
            try:
                add("prow", self._ptrack.row(init=True))
            except Exception as e:
                self._fail("params", e)
        if self._act_rows:
            add("act", torch.stack(self._act_rows))
            meta["act_meta"] = list(self._act_meta)
        if self._grad_rows:
            add("grad", torch.stack(self._grad_rows))
            meta["grad_meta"] = list(self._grad_meta)
        if self._act_hists:
            add("act_hist", torch.stack(self._act_hists))
            meta["act_hist_layer"] = list(self._act_hist_layer)
        if self._grad_hists:
            add("grad_hist", torch.stack(self._grad_hists))
            meta["grad_hist_layer"] = list(self._grad_hist_layer)
        for i, m in self._act_masks.items():
            add(f"amask{i}", m)
        for i, m in self._grad_masks.items():
            add(f"gmask{i}", m)
        meta["amask"] = list(self._act_masks)
        meta["gmask"] = list(self._grad_masks)
        if self._inputs is not None:
            add("inputs", self._inputs[0])
            meta["inputs_meta"] = self._inputs[1]
        if self._loss_in is not None:
            add("loss_in", self._loss_in[0])
            meta["loss_in_meta"] = self._loss_in[1]
        if self._carried is not None:
            add("carried", self._carried)
        if self._carried_bwd is not None:
            add("carried_bwd", self._carried_bwd)
        meta["fwd_order"] = list(self._fwd_order)
        if self._fwd_order and self._fwd_order != self._mask_order:
            # here, not when the record is read: every rank of a DistributedProbe collects, only
            # rank 0 records, and all ranks must send the same masks
            self._mask_order = list(self._fwd_order)
            self._mask_skip = self._redundant_masks(self._mask_order)
        meta["bwd_order"] = list(self._bwd_order)
        meta["modes"] = dict(self._step_modes)
        meta["exact_nonfinite"] = self._exact_nonfinite
        meta["tensors"] = tensors
        return meta

    def _start_transfer(self, payload: dict[str, Any] | None, *, block: bool) -> None:
        """Concatenate the payload's tensors and the buffered scalars into one copy to the host."""
        meta: dict[str, Any] = (
            payload if payload is not None else {"step": self.step_count, "full": False}
        )
        tensors: list[Tensor] = meta.pop("tensors", [])
        if self._param_rows:  # cheap steps since the last transfer, stacked: still one copy
            meta["param_steps"] = [k for k, _ in self._param_rows]
            meta["param_offset"] = sum(t.numel() for t in tensors)
            stacked = torch.stack([r for _, r in self._param_rows])
            meta["param_shape"] = tuple(stacked.shape)
            tensors.append(stacked.reshape(-1))
            self._param_rows = []
        offset = sum(t.numel() for t in tensors)
        # per name: floats stay on the host; 0-d tensors are stacked (one op per name, not per
        # value: a 0.5 s flush of a 0.5 ms step holds ~1000 losses)
        scal_float: list[tuple[str, list[int], list[float]]] = []
        scal_tensor: list[tuple[str, list[int], int]] = []
        scal_values: list[Tensor] = []
        for name, (steps, vals) in self._scalar_buf.items():
            tsteps: list[int] = []
            tens: list[Tensor] = []
            fsteps: list[int] = []
            fvals: list[float] = []
            for k, v in zip(steps, vals, strict=True):
                if isinstance(v, Tensor):
                    tsteps.append(k)
                    tens.append(v)
                else:
                    fsteps.append(k)
                    fvals.append(v)
            if fvals:
                scal_float.append((name, fsteps, fvals))
            if not tens:
                continue
            try:
                t = torch.stack(tens)
            except RuntimeError:  # mixed dtypes or devices
                t = torch.stack([v.float().to(tens[0].device) for v in tens])
            scal_tensor.append((name, tsteps, len(tens)))
            scal_values.append(t.float().reshape(-1))
        self._scalar_buf = {}
        meta["scal_float"] = scal_float
        meta["scal_tensor"] = scal_tensor
        meta["scal_offset"] = offset
        devices = {t.device for t in tensors} | {t.device for t in scal_values}
        dev = next(iter(devices)) if len(devices) == 1 else torch.device("cpu")
        flat_parts = [t.to(dev) for t in tensors] + [t.to(dev) for t in scal_values]
        flat = torch.cat(flat_parts) if flat_parts else torch.zeros(0)
        self._pending.append(_Pending(flat, meta))
        self._last_flush = time.perf_counter()
        if block or not flat.is_cuda:
            while self._pending:
                self._process(self._pending.popleft())

    def _process_ready(self) -> None:
        while self._pending and self._pending[0].ready():
            self._process(self._pending.popleft())

    # ------------------------------------------------------------------ host side
    def _process(self, pending: _Pending) -> None:
        try:
            buf = pending.result()
            meta = pending.meta
            self._process_scalars(buf, meta)
            if meta.get("param_steps"):
                self._process_param_rows(buf, meta)
            if meta.get("full"):
                self._process_record(buf, meta)
        except Exception as e:
            self._fail("flush", e)

    def _process_scalars(self, buf: np.ndarray, meta: dict[str, Any]) -> None:
        acc: dict[str, list[tuple[Any, Any]]] = {}
        for name, steps, vals in meta["scal_float"]:
            acc.setdefault(name, []).append((steps, vals))
        pos = meta["scal_offset"]
        for name, steps, n in meta["scal_tensor"]:
            acc.setdefault(name, []).append((steps, buf[pos : pos + n]))
            pos += n
        if not acc:
            return
        for name, parts in acc.items():
            steps = np.concatenate([np.asarray(k, dtype=np.int64) for k, _ in parts])
            values = np.concatenate([np.asarray(v, dtype=np.float64) for _, v in parts])
            if len(steps) > 1 and (np.diff(steps) <= 0).any():
                # unordered or repeated steps: sort, and average several values of one step
                uniq, inv = np.unique(steps, return_inverse=True)
                values = np.bincount(inv, weights=values) / np.bincount(inv)
                steps = uniq
            if name == "loss":
                if not self._exact_nonfinite and not np.isfinite(values).all():
                    self._exact_nonfinite = True  # count non-finite values exactly from now on
                    self._trigger_sample("nonfinite_loss", limited=False)
                else:
                    self._watch_jumps("loss", values)
            self.history.add_scalar_series(name, steps, values)
        if not meta.get("full") and not meta.get("param_steps"):
            self.history.notify(Update(step=self.history.step, scalars=True))

    def _process_param_rows(self, buf: np.ndarray, meta: dict[str, Any]) -> None:
        off = meta["param_offset"]
        shape = meta["param_shape"]
        rows = buf[off : off + int(np.prod(shape))].reshape(shape)
        steps = np.asarray(meta["param_steps"], dtype=np.int64)
        self.history.add_param_rows(steps, self._ptrack.metrics(rows).astype(np.float32))
        for name, v in self._ptrack.totals(rows).items():
            keep = ~np.isnan(v)  # finite or ±Inf
            if keep.any():
                self.history.add_scalar_series(name, steps[keep].tolist(), v[keep].tolist())
            if name == "grad_norm_total" and keep.any():
                if not self._exact_nonfinite and not np.isfinite(v[keep]).all():
                    self._exact_nonfinite = True
                    self._trigger_sample("nonfinite_grad", limited=False)
                else:
                    self._watch_jumps("grad_norm_total", v[keep])
        if not meta.get("full"):
            self.history.notify(Update(step=int(steps[-1]), scalars=True))

    def _slice(self, buf: np.ndarray, meta: dict[str, Any], key: str) -> np.ndarray | None:
        s = meta.get("slices", {}).get(key)
        if s is None:
            return None
        start, n, shape = s
        out: np.ndarray = buf[start : start + n].reshape(shape)
        return out

    def _process_record(self, buf: np.ndarray, meta: dict[str, Any]) -> None:
        L = len(self.layers)
        k = meta["step"]
        metrics = {m: np.full(L, np.nan) for m in LAYER_METRICS}
        prow = self._slice(buf, meta, "prow")
        totals: dict[str, float] = {}
        if prow is not None:
            pm = self._ptrack.metrics(prow[None])[0]
            for j, m in enumerate(PARAM_METRICS):
                metrics[m] = pm[:, j]
            self._ptrack.count_nonfinite_grads(prow, metrics)
            totals = {n: float(v[0]) for n, v in self._ptrack.totals(prow[None]).items()}
        act = self._slice(buf, meta, "act")
        nonfinite_seen = False
        if act is not None:
            idx = np.array([i for i, _ in meta["act_meta"]])
            numel = np.array([n for _, n in meta["act_meta"]])
            a = S.finalize_summaries(act, idx, numel, L)
            for f in ("mean", "std", "min", "max", "abs_max", "frac_zero", "frac_sat", "nonfinite"):
                metrics[f"act_{f}"] = getattr(a, f)
            nonfinite_seen |= bool(np.nan_to_num(a.nonfinite, nan=0.0).any())
            act_hist = self._hist(buf, meta, "act_hist", "act_hist_layer", a)
        else:
            a, act_hist = None, None
        grad = self._slice(buf, meta, "grad")
        if grad is not None:
            idx = np.array([i for i, _ in meta["grad_meta"]])
            numel = np.array([n for _, n in meta["grad_meta"]])
            g = S.finalize_summaries(grad, idx, numel, L)
            for f in ("mean", "std", "abs_max", "frac_zero", "nonfinite"):
                metrics[f"ograd_{f}"] = getattr(g, f)
            nonfinite_seen |= bool(np.nan_to_num(g.nonfinite, nan=0.0).any())
            ograd_hist = self._hist(buf, meta, "grad_hist", "grad_hist_layer", g)
        else:
            ograd_hist = None
        dead: dict[int, np.ndarray] = {}
        for i in meta.get("amask", []):
            am = self._slice(buf, meta, f"amask{i}")
            if am is None:
                continue
            active = am > 0
            if self.layers[i].kind in ("linear", "conv"):
                gm = self._slice(buf, meta, f"gmask{i}") if i in meta.get("gmask", []) else None
                if gm is None or gm.shape != am.shape:
                    continue  # without the gradient we cannot tell a dead unit from a negative one
                active = active | (gm > 0)
            mask = self.history.update_units(i, active)
            dead[i] = mask
            metrics["act_dead_frac"][i] = float(mask.mean()) if mask.size else np.nan
        fwd = meta.get("fwd_order", [])
        bwd = meta.get("bwd_order", [])
        first_f = next(
            (
                i
                for i in fwd
                if metrics["act_nonfinite"][i] != 0 and np.isfinite(metrics["act_nonfinite"][i])
            ),
            None,
        )
        first_b = next(
            (
                i
                for i in bwd
                if metrics["ograd_nonfinite"][i] != 0 and np.isfinite(metrics["ograd_nonfinite"][i])
            ),
            None,
        )
        gnf = metrics["grad_nonfinite"]
        nonfinite_seen |= bool(np.nan_to_num(gnf, nan=0.0).any())
        if nonfinite_seen and not self._exact_nonfinite:
            self._exact_nonfinite = True  # count exactly from now on (see stats.py)
            self._trigger_sample("nonfinite", limited=False)
        if (
            fwd
            and len(fwd) >= len(self.history.forward_order[: len(fwd)])
            and self.history.samples() == 0
        ):
            self.history.set_forward_order(fwd)
        elif fwd and set(fwd) - set(self.history.forward_order[: len(fwd)]):
            self.history.set_forward_order(fwd)
        rec = StepRecord(
            step=k,
            time=meta["time"],
            metrics=metrics,
            act_hist=act_hist,
            ograd_hist=ograd_hist,
            forward_order=fwd,
            backward_order=bwd,
            first_nonfinite_forward=first_f,
            first_nonfinite_backward=first_b,
            dead_units=dead,
            inputs=self._inputs_summary(buf, meta),
            loss_inputs=self._loss_summary(buf, meta),
            extra={
                "forward_modes": meta.get("modes", {}),
                "exact_nonfinite": meta.get("exact_nonfinite", False),
                "dead_window_fill": {i: self.history.dead_window_fill(i) for i in dead},
                "sample_reason": meta.get("reason", ""),
                **meta.get("record_extra", {}),  # e.g. trainscope.distributed: ranks combined
            },
        )
        # gradient left over from earlier steps (missing zero_grad): at the step's first forward
        # and at its first output gradient, before backward added anything
        for key, name in (
            ("carried", "grad_norm_before_forward"),
            ("carried_bwd", "grad_norm_before_backward"),
        ):
            c = self._slice(buf, meta, key)
            if c is not None:
                rec.extra[name] = totals[name] = float(c.reshape(-1)[0])
        totals = {n: v for n, v in totals.items() if not np.isnan(v)}
        if totals:
            self.history.add_scalars(k, totals)
        first = self.history.first_record is None
        self.history.add_record(rec)
        if first:
            self._keep_first_sample(rec)
        self.history.notify(Update(step=k, scalars=True, record=True))

    def _keep_first_sample(self, rec: StepRecord) -> None:
        """The first full sample (normally step 0, before any update: the forward scale of the
        initialization on the first batch) in ``history.meta["first_sample"]``, per layer in
        forward order, so that it survives any length of run and travels with the run directory.
        ``history.first_record`` holds the whole record in memory."""

        def col(metric: str, order: list[int]) -> list[float | None]:
            v = rec.metrics[metric]
            return [float(v[i]) if np.isfinite(v[i]) else None for i in order]

        order = list(rec.forward_order) or list(range(len(self.layers)))
        self.history.meta["first_sample"] = {
            "step": int(rec.step),
            "before_first_update": int(rec.step) == (self._start_step or 0),
            "layers": [self.layers[i].name for i in order],
            **{
                m: col(m, order)
                for m in ("act_mean", "act_std", "act_abs_max", "act_nonfinite", "act_frac_zero")
            },
            "input_mean": rec.inputs.get("mean"),
            "input_std": rec.inputs.get("std"),
        }

    def _hist(
        self, buf: np.ndarray, meta: dict[str, Any], key: str, layer_key: str, summ: S.ActSummary
    ) -> np.ndarray | None:
        h = self._slice(buf, meta, key)
        if h is None:
            return None
        L = len(self.layers)
        counts = np.zeros((L, S.NBINS))
        np.add.at(counts, np.asarray(meta[layer_key], dtype=np.int64), h.astype(np.float64))
        return S.scale_histograms(counts, summ)

    def _inputs_summary(self, buf: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
        v = self._slice(buf, meta, "inputs")
        if v is None:
            return {}
        im = dict(meta["inputs_meta"])
        n = im["numel"]
        f = {name: float(v[j]) for j, name in enumerate(S.ACT_FIELDS)}
        mean = f["sum"] / n
        im.update(
            mean=mean,
            std=math.sqrt(max(f["sumsq"] / n - mean * mean, 0.0)),
            min=f["min"],
            max=f["max"],
        )
        c = im.get("channels")
        if c:
            base = len(S.ACT_FIELDS)
            cm = v[base : base + c].astype(np.float64)
            csq = v[base + c : base + 2 * c].astype(np.float64)
            im["channel_mean"] = cm
            im["channel_std"] = np.sqrt(np.maximum(csq - cm * cm, 0.0))
        return im

    def _loss_summary(self, buf: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
        v = self._slice(buf, meta, "loss_in")
        if v is None:
            return {}
        lm = dict(meta["loss_in_meta"])
        names = [
            "pred_min",
            "pred_max",
            "pred_rowsum_dev",
            "target_min",
            "target_max",
            "target_frac_dev",
        ]
        nb = int(lm.pop("n_base", len(v)))
        lm.update({n: float(x) for n, x in zip(names, v[:nb], strict=False)})
        em = {k: lm.pop(k, None) for k in ("extra_fields", "class_counts")}
        lm.update(parse_loss_extras(v[nb:], em))
        self._accumulate_classes(lm.get("class_counts"))
        return lm

    def _accumulate_classes(self, counts: Any) -> None:
        """Class counts of every sampled batch, summed in ``history.meta["class_counts"]``."""
        if counts:
            acc = self.history.meta.get("class_counts")
            if not isinstance(acc, list) or len(acc) != len(counts):
                acc = self.history.meta["class_counts"] = [0.0] * len(counts)
            for j, c in enumerate(counts):
                acc[j] += c

    def _interval_after(self, k: int) -> int:
        """Steps from a full sample at step ``k`` to the next scheduled one."""
        ev = self._every_int() or 1
        if not self._auto:
            return ev
        since = k - (self._start_step or 0)
        return max(1, min(ev, since // START_RATIO))

    def _trigger_sample(self, reason: str, *, limited: bool = True) -> None:
        """A full sample at the next step because a per-step value jumped.  ``limited``: at most
        one such sample per scheduled interval (at least DEFAULT_EVERY steps), so that triggers
        at most double the sampling rate (a run whose loss jumps all the time is sampled at
        twice its interval, no more)."""
        if not self._attached or self._force_sample:
            return
        if limited:
            if self.step_count - self._last_trigger_step < self._interval_after(
                max(self.step_count, (self._start_step or 0) + 3 * DEFAULT_EVERY)
            ):
                return
            self._last_trigger_step = self.step_count
        self.sample_next()
        self._reason_next = reason

    def _watch_jumps(self, name: str, values: np.ndarray) -> None:
        """Trigger a sample when a per-step value (already on the host: no sync) jumps above its
        recent median by more than JUMP_SIGMAS robust deviations.  Vectorized per flush."""
        if not self._auto or not len(values):
            return
        win = self._jump_windows.get(name)
        finite = values[np.isfinite(values)]
        if win is not None and len(win) >= 32 and len(finite):
            med = float(np.median(win))
            spread = 1.4826 * float(np.median(np.abs(win - med)))
            # a jump is both unusual (robust deviations) and large (the value at least doubles
            # its median): heavy-tailed mini-batch noise alone does not take samples
            if float(finite.max()) > med + max(JUMP_SIGMAS * spread, abs(med)):
                self._trigger_sample(f"{name}_jump")
        if len(finite):
            win = finite if win is None else np.concatenate([win, finite])
            self._jump_windows[name] = win[-JUMP_WINDOW:]

    def _adapt_interval(self) -> None:
        if self.budget is None or not isinstance(self.every, int):
            return
        if len(self._work_sampled) < 3 or len(self._dur_plain) < 8:
            return
        parts = self._cost_parts()
        if parts is None:
            return
        base, extra, per_step = parts
        # never fewer than one full sample per MAX_SAMPLE_GAP seconds of training
        cap = max(self._base_every, min(int(MAX_SAMPLE_GAP / base), 10_000))
        room = self.budget * base - per_step
        if room <= 0:  # the per-step cost alone takes the budget: sample as rarely as allowed
            self.every = cap
            return
        self.every = int(min(max(math.ceil(extra / room), self._base_every), cap))


def _process_group() -> tuple[int, int] | None:
    """``(rank, world size)`` of an initialized ``torch.distributed`` group of 2+ processes."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            world = dist.get_world_size()
            if world > 1:
                return dist.get_rank(), world
    except Exception:  # a broken or exotic backend: behave as a single process
        return None
    return None


def _fmt(v: float) -> str:
    if v is None or not np.isfinite(v):
        return "-" if v is None or np.isnan(v) else str(v)
    if v == 0:
        return "0"
    a = abs(v)
    if 1e-3 <= a < 1e4:
        return f"{v:.4g}"
    return f"{v:.2e}"

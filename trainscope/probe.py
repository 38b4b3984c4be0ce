"""The probe: attaches to any ``nn.Module`` and records per-layer statistics at low cost.

:class:`Probe` is the composition root of a run: the recording engine
(:class:`~trainscope.recorder.Recorder`: hooks, schedule, one transfer per sampled step, decode),
the :class:`~trainscope.history.History` it records into, the
:class:`~trainscope.actions.ActionQueue` applied at every step boundary, and the optional
:class:`~trainscope.runlog.RunWriter`.  It implements :class:`~trainscope.run.RunContext`, the
protocol every service takes; no service imports this module.

Failure design
--------------
Every hook body is guarded.  An exception inside the probe is recorded in :attr:`Probe.errors`,
reported once as a ``RuntimeWarning``, and the failing component is switched off; the user's
training never sees it.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .actions import ActionQueue, Ticket
from .history import LAYER_METRICS as LAYER_METRICS
from .history import RUN_END, History
from .layers import Selector
from .recorder import ATTACHED as _ATTACHED  # noqa: F401 (the model -> probe registry)
from .recorder import Recorder
from .recorder.schedule import COST_WINDOW as COST_WINDOW
from .recorder.schedule import DEFAULT_BUDGET as DEFAULT_BUDGET
from .recorder.schedule import DEFAULT_EVERY as DEFAULT_EVERY
from .recorder.schedule import JUMP_SIGMAS as JUMP_SIGMAS
from .recorder.schedule import JUMP_WINDOW as JUMP_WINDOW
from .recorder.schedule import MAX_SAMPLE_GAP as MAX_SAMPLE_GAP
from .recorder.schedule import START_RATIO as START_RATIO
from .run import Batch, ProbeError

__all__ = ["Batch", "Probe", "ProbeError"]


class Probe(Recorder):
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
        auto = every is None  # the default policy: dense start, budget, jump triggers
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
        super().__init__(
            model,
            optimizer,
            loss_fn=loss_fn,
            every=every,
            auto=auto,
            cheap_every=cheap_every,
            histograms=histograms,
            include=include,
            exclude=exclude,
            budget=budget,
            dead_window=dead_window,
            track_init=track_init,
            auto_val_loss=auto_val_loss,
            history=history,
            keep_batches=keep_batches,
        )
        self.data = data
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
        self.actions = ActionQueue(self)
        self._boundary_tasks.append(("actions", self._apply_actions))
        if attach:
            self.attach()

    def _apply_actions(self) -> None:
        self.actions.apply_pending()

    def _writer_failed(self, msg: str) -> None:
        if len(self.errors) < 1000:
            self.errors.append(ProbeError("logdir", self.step_count, msg, ""))

    def detach(self) -> None:
        """Remove every hook (the model is left exactly as found) and flush what is pending."""
        if self._attached and self.run_writer is not None:
            with contextlib.suppress(Exception):
                self.flush()
            try:
                self.run_writer.flush()
            except Exception as e:  # a full disk must not turn detach() into a crash
                self._fail("logdir", e)
        super().detach()

    def finish(self) -> list[Any]:
        """Say that training is over: flush what is pending, mark the end on the run's timeline
        and return the findings (:meth:`findings`), now including the end-of-run judgement
        (``still_improving``: training ended while the model had learned little and was still
        learning).  The probe stays attached; training that goes on after ``finish()`` makes
        the mark a thing of the past.  Calling it twice at the same step marks the end once."""
        try:
            self.flush()
        except Exception as e:  # a failed transfer must not make the end of training raise
            self._fail("finish", e)
        step = max(self.step_count - 1, 0)
        last = next((ev for ev in reversed(list(self.history.events)) if ev.kind == RUN_END), None)
        if last is None or int(last.step) != step:
            self.history.add_event(RUN_END, "training ended", step=step)
        return self.findings()

    # ------------------------------------------------------------------ services
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

"""When to sample: the schedule, the overhead budget, and the recorder's own cost accounting.

Steps that are not sampled pay (almost) nothing: the per-layer forward hooks are *installed* at
the step boundary before a sampled step and *removed* at the boundary after it.  ``budget=``
(a fraction of step time) lengthens the sampling interval to keep the measured overhead within it.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from .._params import ParamTracker

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


class Schedule:
    """Sampling decisions, hook (un)installation around sampled steps, budget and overhead."""

    if TYPE_CHECKING:  # state and methods of the Recorder these methods belong to
        model: nn.Module
        every: int | Callable[[int], bool]
        cheap_every: int | None
        budget: float | None
        step_count: int
        _auto: bool
        _base_every: int
        _attached: bool
        _optimizer_mode: bool
        _forward_since_boundary: bool
        _enabled: dict[str, bool]
        _ptrack: ParamTracker
        _modules: list[nn.Module]
        _fwd_hooks: list[Any]
        _root_done_hook: Any
        _root_exit_hook: Any
        _sample_handles: list[Any]
        _root_marks: list[Any]
        _exchange: Any

        def _fail(self, where: str, exc: BaseException) -> None: ...
        def sample_next(self) -> None: ...

    def _init_schedule(self) -> None:
        self._sampling = False  # hooks installed for the step in progress
        self._root_exit_on = False  # the root's completion hooks are installed (sampled steps)
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

    # ------------------------------------------------------------------ overhead
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

    def _account(self, t0: float, t_end: float, sampled: bool) -> None:
        """The probe's own cost this step: the boundary (transfers and flushes included,
        callbacks and actions excluded: they are the caller's) plus the permanent hooks."""
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

    def _after_sample(self, k: int) -> None:
        """Bookkeeping at the boundary that ends sampled step ``k``: the next one's step."""
        self._force_sample = False
        self._last_sample_step = k
        self.sample_reasons[self._reason_now] = self.sample_reasons.get(self._reason_now, 0) + 1
        if self._exchange is None or not self._exchange.agree_schedule():
            self._adapt_interval()
        self._next_sample = k + self._interval_after(k)

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

    def _watch(self, name: str, values: np.ndarray, nonfinite_reason: str) -> None:
        """A per-step value arrived on the host: its first non-finite value switches exact
        non-finite counting on and takes a sample; otherwise it is watched for jumps."""
        if not self._exact_nonfinite and not np.isfinite(values).all():
            self._exact_nonfinite = True  # count non-finite values exactly from now on
            self._trigger_sample(nonfinite_reason, limited=False)
        else:
            self._watch_jumps(name, values)

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

"""Watching a noisy metric: running-median smoothing, patience, ``min_delta`` (early stopping and
the reduce-on-plateau schedule share it), and reading new values of a probe's scalar."""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["Monitor", "ScalarFeed"]


class Monitor:
    """Is a metric still improving?

    Each observation is smoothed by the **median of the last** ``smoothing`` **observations** (a
    single outlier, good or bad, cannot move a median of three or more), then compared with the best
    smoothed value so far.  ``patience`` consecutive observations without an improvement of more
    than ``min_delta`` make :attr:`exhausted` true.

    Parameters
    ----------
    mode
        ``"min"`` (a loss) or ``"max"`` (an accuracy).
    patience
        Observations without improvement tolerated.
    smoothing
        Window of the running median (1 = raw values).
    min_delta
        Smallest change that counts as an improvement (absolute).
    """

    def __init__(self, *, mode: str = "min", patience: int = 5, smoothing: int = 3, min_delta: float = 0.0) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.mode = mode
        self.patience = patience
        self.smoothing = smoothing
        self.min_delta = min_delta
        self._window: deque[float] = deque(maxlen=max(1, smoothing))
        self.best = math.inf if mode == "min" else -math.inf
        self.best_step: int | None = None
        self.wait = 0
        self.count = 0
        self.smoothed: list[float] = []

    def observe(self, value: float, step: int | None = None) -> bool:
        """Add one observation; returns ``True`` if it is a new best (smoothed)."""
        v = float(value)
        self.count += 1
        if not math.isfinite(v):  # a non-finite value never improves and counts against patience
            self.wait += 1
            self.smoothed.append(v)
            return False
        self._window.append(v)
        s = float(np.median(np.asarray(self._window)))
        self.smoothed.append(s)
        better = s < self.best - self.min_delta if self.mode == "min" else s > self.best + self.min_delta
        if better:
            self.best = s
            self.best_step = step
            self.wait = 0
            return True
        self.wait += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.wait >= self.patience

    def reset_wait(self) -> None:
        self.wait = 0


class ScalarFeed:
    """New values of one scalar of a probe's history since the last call (oldest first)."""

    def __init__(self, probe: RunContext, name: str) -> None:
        self.probe = probe
        self.name = name
        s = probe.history.scalars.get(name)
        self._seen = s.total if s is not None else 0

    def new(self) -> list[tuple[int, float]]:
        s = self.probe.history.scalars.get(self.name)
        if s is None or s.total <= self._seen:
            return []
        n = min(s.total - self._seen, len(s))
        self._seen = s.total
        steps, vals = s.last(n)
        return [(int(a), float(b)) for a, b in zip(steps, vals, strict=True)]

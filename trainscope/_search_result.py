"""The record of a :func:`trainscope.search`: its trials, the rung decisions and the result.

:class:`Trial` (one trial's configuration, status and reports), ``_Store`` (the values every trial
reported at each rung, and the ASHA cut), :class:`SearchResult` (the table, the best trial, live
updates, ``run_dir/search.json``).  Re-exported by :mod:`trainscope.search`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SearchResult", "Trial"]



# ---------------------------------------------------------------------------- trials
@dataclass
class Trial:
    """One trial: its configuration, status and what it reported."""

    id: int
    config: dict[str, Any]
    seed: int
    status: str = "pending"  # pending | running | completed | stopped | failed | interrupted
    value: float | None = None  # the trial's metric: last reported (or train_fn's return value)
    step: int | None = None  # last reported step
    rung: int = 0  # rungs passed
    stopped_at: int | None = None  # the rung step it was stopped at
    reports: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None
    logdir: str | None = None
    seconds: float = 0.0

    def row(self, metric: str) -> dict[str, Any]:
        return {"trial": self.id, **self.config, metric: self.value, "step": self.step, "status": self.status,
                "seconds": round(self.seconds, 3), **({"error": self.error} if self.error else {})}


class _Store:
    """Rung values and live progress, shared by the trials (dicts + lock, or manager proxies)."""

    def __init__(self, rungs: MutableMapping[Any, Any], progress: MutableMapping[Any, Any], lock: Any) -> None:
        self.rungs, self.progress, self.lock = rungs, progress, lock

    def decide(self, k: int, value: float, eta: int, mode: str) -> bool:
        """Record ``value`` at rung ``k``; go on only if it is in the best 1/eta there (ASHA)."""
        v = value if math.isfinite(value) else math.inf * (1 if mode == "min" else -1)
        with self.lock:
            vals: list[float] = [*(float(x) for x in self.rungs.get(k, [])), v]
            self.rungs[k] = vals
        ranked = sorted(vals, reverse=(mode == "max"))
        cut = ranked[max(len(ranked) // eta - 1, 0)]
        if not math.isfinite(value):
            return False
        return bool(value <= cut) if mode == "min" else bool(value >= cut)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    return repr(v)


# ---------------------------------------------------------------------------- the result
class SearchResult:
    """The trials of a search (live while it runs), the best configuration and the table."""

    def __init__(self, trials: list[Trial], *, metric: str, mode: str, budget: int | None, eta: int,
                 milestones: list[int], space: Mapping[str, Any], run_dir: str | None) -> None:
        self.trials = trials
        self.metric = metric
        self.mode = mode
        self.budget = budget
        self.eta = eta
        self.milestones = milestones
        self.space = dict(space)
        self.run_dir = run_dir
        self.finished = False
        self.elapsed = 0.0
        self._listeners: dict[int, Callable[[SearchResult], None]] = {}
        self._next = 0
        self.listener_errors: list[str] = []

    # -- what a user reads
    @property
    def best(self) -> Trial | None:
        """The best trial that ran its whole budget (or, if none did, the best of those that reached
        the furthest step); ``None`` if no trial has a finite value."""
        ok = [t for t in self.trials if t.value is not None and math.isfinite(t.value)]
        full = [t for t in ok if t.status == "completed"]
        pool = full or ([t for t in ok if t.step == max(x.step or 0 for x in ok)] if ok else [])
        if not pool:
            return None
        return (min if self.mode == "min" else max)(pool, key=lambda t: t.value if t.value is not None else math.nan)

    @property
    def best_config(self) -> dict[str, Any] | None:
        b = self.best
        return None if b is None else dict(b.config)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.status] = out.get(t.status, 0) + 1
        return out

    @property
    def steps_used(self) -> int:
        """Steps the trials ran (their last reported steps): against ``trials * budget`` without stopping."""
        return sum(t.step or 0 for t in self.trials)

    def table(self) -> list[dict[str, Any]]:
        """One row per trial: ``trial``, the hyper-parameters, the metric, ``step``, ``status``, ``seconds``."""
        return [t.row(self.metric) for t in self.trials]

    def dataframe(self) -> Any:
        """:meth:`table` as a pandas DataFrame (pandas must be installed)."""
        import pandas as pd  # type: ignore[import-untyped,unused-ignore]

        return pd.DataFrame(self.table()).set_index("trial")

    def __str__(self) -> str:
        keys = list(self.space)
        head = ["trial", *keys, self.metric, "step", "status"]
        rows = [[str(t.id), *[_fmt(t.config.get(k)) for k in keys], _fmt(t.value), _fmt(t.step), t.status]
                for t in self.trials]
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        b = self.best
        lines.append(f"best: trial {b.id} {self.metric}={b.value:.4g} {b.config}" if b is not None and b.value is not None
                     else "best: none (no trial reported a finite value)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        c = self.counts()
        return (f"<SearchResult {len(self.trials)} trials ({', '.join(f'{v} {k}' for k, v in c.items())}); "
                f"best {self.metric}: {None if self.best is None else self.best.value}>")

    # -- live updates
    def subscribe(self, callback: Callable[[SearchResult], None]) -> Callable[[], None]:
        """Call ``callback(result)`` whenever trials progress (on the searching thread); returns an
        unsubscribe function.  A callback that raises is dropped and noted in ``listener_errors``."""
        self._next += 1
        key = self._next
        self._listeners[key] = callback

        def unsubscribe() -> None:
            self._listeners.pop(key, None)

        return unsubscribe

    def notify(self) -> None:
        for key, cb in list(self._listeners.items()):
            try:
                cb(self)
            except Exception as e:
                self._listeners.pop(key, None)
                if len(self.listener_errors) < 20:
                    self.listener_errors.append(f"{type(e).__name__}: {e}")

    def save(self) -> None:
        """Write ``run_dir/search.json`` (the settings and the table), atomically."""
        if self.run_dir is None:
            return
        doc = {"metric": self.metric, "mode": self.mode, "budget": self.budget, "eta": self.eta,
               "rungs": self.milestones, "space": {k: repr(v) for k, v in self.space.items()},
               "finished": self.finished, "elapsed": self.elapsed,
               "trials": [_jsonable({**t.row(self.metric), "config": t.config, "logdir": t.logdir,
                                     "stopped_at": t.stopped_at, "rung": t.rung}) for t in self.trials]}
        path = os.path.join(self.run_dir, "search.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1, allow_nan=True)
        os.replace(tmp, path)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)

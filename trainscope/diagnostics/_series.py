"""Pure helpers the rules share: series access, depth order, persistence, loss-curve summary."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..history import History
from .context import Context

__all__ = [
    "LossCurve",
    "feeder",
    "fmt",
    "head_layers",
    "held",
    "loss_curve",
    "param_layers",
    "ran",
    "scalar",
    "series",
]


def fmt(v: float | None) -> str:
    """Short human form: ``0.9``, ``12.3``, ``2e-4``, ``3.1e+05``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    v = float(v)
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    a = abs(v)
    if 1e-2 <= a < 1e4:
        return f"{v:.3g}"
    m, e = f"{v:.1e}".split("e")
    m = m.rstrip("0").rstrip(".")
    return f"{m}e{int(e)}"


def pct(v: float) -> str:
    """``0.874`` -> ``87%``."""
    return f"{100 * v:.0f}%"


def scalar(h: History, name: str, *, whole: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of a scalar series (older points are bucket means) since the latest
    change the user made to the model or its optimizer (:func:`last_change`; ``whole``: the whole
    run)."""
    a = h.scalar(name)
    s, v = np.asarray(a["last"], dtype=np.int64), np.asarray(a["mean"], dtype=np.float64)
    change = None if whole else last_change(h)
    if change is not None:
        keep = s >= change
        s, v = s[keep], v[keep]
    return s, v


def series(h: History, ctx: Context, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps (T,), values (T, L))`` of a per-layer metric since the latest change the user made
    (:func:`last_change`), memoized for one diagnosis."""

    def get() -> tuple[np.ndarray, np.ndarray]:
        s, v = h.layer_series(metric)
        s, v = np.asarray(s), np.asarray(v, dtype=np.float64)
        change = last_change(h)
        if change is not None and len(s):
            keep = s >= change
            s, v = s[keep], v[keep]
        return s, v

    return ctx.memo(f"series:{metric}", get)


def held(flags: np.ndarray, need: int, of: int) -> bool:
    """True when at least ``need`` of the last ``of`` flags are set (and ``need`` samples exist)."""
    f = np.asarray(flags, dtype=bool)[-of:]
    return len(f) >= need and int(f.sum()) >= need


def ran(h: History, ctx: Context) -> list[int]:
    """Layers in forward order that produced activation statistics at some sampled step."""

    def get() -> list[int]:
        _, act = series(h, ctx, "act_std")
        if act.size == 0:
            return []
        seen = np.isfinite(act).any(axis=0)
        return [i for i in h.forward_order if i < len(seen) and seen[i]]

    return ctx.memo("ran", get)


def param_layers(h: History, ctx: Context) -> list[int]:
    """Linear / conv layers with trainable parameters that ran, in forward order."""
    return [
        i
        for i in ran(h, ctx)
        if h.layers[i].kind in ("linear", "conv") and h.layers[i].n_trainable > 0
    ]


def feeder(h: History, ctx: Context, i: int) -> int | None:
    """The layer that ran just before ``i`` in forward order (its output is ``i``'s input)."""
    order = ran(h, ctx)
    if i not in order:
        return None
    k = order.index(i)
    return order[k - 1] if k > 0 else None


def head_layers(h: History, ctx: Context) -> list[str]:
    """The model's head: the modules that ran after the last linear / conv layer with trainable
    parameters (its output activation, e.g. a softmax), latest first, then that layer itself.
    Empty when no such layer ran.  What a finding about the loss's inputs points at."""

    def get() -> list[str]:
        order = ran(h, ctx)
        pl = param_layers(h, ctx)
        if not pl:
            return []
        k = order.index(pl[-1])
        after = [h.layers[i].name for i in order[k + 1:] if h.layers[i].kind in ("activation", "other", "norm")]
        return [*reversed(after), h.layers[pl[-1]].name]

    return ctx.memo("head_layers", get)


def names(h: History, idx: list[int]) -> list[str]:
    return [h.layers[i].name for i in idx]


@dataclass
class LossCurve:
    """Robust summary of the training loss (finite values only).

    ``head`` / ``tail``: median of the first / last ``w`` losses; ``best``: the lowest running
    median (window ``w``) and its step; ``w = clamp(n // 10, 5, 50)``.
    """

    steps: np.ndarray
    values: np.ndarray
    w: int
    head: float
    tail: float
    best: float
    best_step: int
    nonfinite_step: int | None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def progress(self) -> float:
        """Fraction of the initial loss removed so far (``(head - tail) / |head|``)."""
        return (self.head - self.tail) / max(abs(self.head), 1e-12)


def loss_curve(h: History, ctx: Context, name: str = "loss") -> LossCurve | None:
    """Summary of a loss series, or ``None`` with fewer than ``min_loss_points`` finite values."""

    def get() -> LossCurve | None:
        steps, vals = scalar(h, name)  # since the latest change: a jump the user caused is not a fault
        fin = np.isfinite(vals)
        bad = np.flatnonzero(~fin)
        nonfinite = int(steps[bad[0]]) if len(bad) else None
        s, v = steps[fin], vals[fin]
        if len(v) < ctx.thresholds.min_loss_points:
            return None
        w = int(min(max(len(v) // 10, 5), 50))
        roll = np.median(np.lib.stride_tricks.sliding_window_view(v, w), axis=1)
        b = int(np.argmin(roll))
        return LossCurve(
            steps=s,
            values=v,
            w=w,
            head=float(np.median(v[:w])),
            tail=float(np.median(v[-w:])),
            best=float(roll[b]),
            best_step=int(s[b + w - 1]),
            nonfinite_step=nonfinite,
        )

    return ctx.memo(f"curve:{name}", get)


NOT_CHANGES = ("snapshot", "snapshot_ensemble", "run_check", "lr_find", "early_stopping", "loss_landscape")
"""Timeline actions that change neither the model nor its training (they read, save, or restore what
they touched).  Every other intervention, and every undo, is a *change*: the evidence before it
belongs to another model or another optimizer setting."""


def is_change(ev: object) -> bool:
    """Whether a timeline event is a change the user made (an intervention other than
    :data:`NOT_CHANGES`, or an undo)."""
    kind = getattr(ev, "kind", None)
    data = getattr(ev, "data", None) or {}
    return kind == "undo" or (kind == "intervention" and data.get("action") not in NOT_CHANGES)


def last_change(h: History) -> int | None:
    """Step of the latest change on the history's timeline (``None``: none): the rules read the
    evidence from that step on (a re-init, a rollback, an undo, a new learning rate or optimizer
    starts a new segment; a finding from before it that no longer holds is resolved by it)."""
    for ev in reversed(list(h.events)):
        if is_change(ev):
            return int(ev.step)
    return None


def last_weight_change(h: History) -> int | None:
    """Deprecated name of :func:`last_change`."""
    return last_change(h)

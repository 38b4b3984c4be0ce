"""Pure numpy helpers that turn history arrays into small payloads for the browser.

Everything here is bounded by the *output* size: a line never has more than ``max_points``
float32 points (min/max decimation keeps spikes visible), a heatmap is a ``uint8`` image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..stats import BINS_PER_DECADE, LOG_MIN, NAN, NBINS, NEG_INF, POS_INF, ZERO

__all__ = [
    "MAX_POINTS",
    "bin_label",
    "ema",
    "envelope",
    "hist_image",
    "jsonable_number",
    "log_ticks",
    "mean_decimate",
    "minmax_decimate",
    "nice_ticks",
]

MAX_POINTS = 1000
"""Most points sent for one line (float32 x and y: 8 kB)."""

_NEG_INF, _ZERO, _POS_INF, _NAN = NEG_INF, ZERO, POS_INF, NAN


def minmax_decimate(
    x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` float32 points of ``(x, y)`` keeping each bucket's min and max.

    Points are split into ``max_points // 2`` consecutive buckets (none is dropped); each bucket
    contributes its lowest and highest point, in time order, so spikes survive decimation.
    NaN values are kept where a bucket holds nothing else (a gap in the drawn line).
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.shape} and {y.shape}")
    if max_points < 2:
        raise ValueError("max_points must be >= 2")
    n = len(x)
    if n <= max_points:
        return x.astype(np.float32), y.astype(np.float32)
    k = math.ceil(n / (max_points // 2))  # points per bucket
    b = math.ceil(n / k)
    pad = b * k - n
    yy = np.concatenate([y, np.full(pad, np.nan)]).reshape(b, k)
    nan = np.isnan(yy)
    lo = np.where(nan, np.inf, yy).argmin(axis=1)
    hi = np.where(nan, -np.inf, yy).argmax(axis=1)
    first = np.minimum(lo, hi)
    second = np.maximum(lo, hi)
    base = np.arange(b) * k
    idx = np.stack([base + first, base + second], axis=1).reshape(-1)
    idx = np.minimum(idx, n - 1)
    return x[idx].astype(np.float32), y[idx].astype(np.float32)


def envelope(series: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A scalar series from :meth:`History.scalar` as one raw line: raw points as they are,
    bucketed (older) points as their min then max, so the drawn line keeps the full range."""
    step = np.asarray(series["step"], dtype=np.float64)
    if len(step) == 0:
        return np.zeros(0), np.zeros(0)
    count = np.asarray(series["count"])
    lo = np.asarray(series["min"], dtype=np.float64)
    hi = np.asarray(series["max"], dtype=np.float64)
    first = np.asarray(series["first"], dtype=np.float64)
    last = np.asarray(series["last"], dtype=np.float64)
    bucket = count > 1
    if not bucket.any():
        return step, np.asarray(series["mean"], dtype=np.float64)
    # every point becomes two (x, y) pairs; raw points repeat themselves, buckets span first..last
    xs = np.stack([np.where(bucket, first, step), np.where(bucket, last, step)], axis=1).reshape(-1)
    ys = np.stack([lo, hi], axis=1).reshape(-1)
    keep = np.ones(len(xs), bool)
    keep[1::2] = bucket  # drop the duplicate of raw points
    return xs[keep], ys[keep]


def mean_decimate(
    x: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None, max_points: int = MAX_POINTS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average consecutive points (NaN-aware, optionally weighted) down to ``max_points``.

    ``y`` may be ``(T,)`` or ``(T, L)`` (several lines sharing ``x``).  Returns ``x``, ``y`` and
    the summed weight of each output point.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones(len(x)) if weight is None else np.asarray(weight, dtype=np.float64)
    n = len(x)
    if n <= max_points:
        return x, y, w
    edges = np.linspace(0, n, max_points + 1).astype(np.int64)[:-1]
    ww = w if y.ndim == 1 else w[:, None]
    valid = ~np.isnan(y)
    num = np.add.reduceat(np.where(valid, y * ww, 0.0), edges, axis=0)
    den = np.add.reduceat(np.where(valid, ww, 0.0), edges, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ym = num / den
    xm = np.add.reduceat(x * w, edges) / np.add.reduceat(w, edges)
    return xm, ym, np.add.reduceat(w, edges)


def ema(y: np.ndarray, count: np.ndarray | None = None, window: float = 50.0) -> np.ndarray:
    """Debiased exponential moving average over ``window`` steps (fastai's smoothed loss).

    A point that stands for ``count`` steps (a history bucket) weighs as ``count`` steps.
    Non-finite points are skipped (the average carries over them).  Vectorised: the recursion
    ``s_t = d_t s_{t-1} + (1 - d_t) y_t`` is unrolled with cumulative sums in chunks short enough
    that ``exp`` of the accumulated decay stays in range.
    """
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    c = np.ones(n) if count is None else np.asarray(count, dtype=np.float64)
    beta = 1.0 - 1.0 / max(float(window), 1.0 + 1e-9)
    valid = np.isfinite(y)
    logd = np.where(valid, np.log(beta) * np.maximum(c, 1.0), 0.0)  # skipped points: no decay
    gain = np.where(valid, -np.expm1(logd), 0.0)  # 1 - d
    v = np.where(valid, y, 0.0)
    total = np.cumsum(logd)
    s_out = np.empty(n)
    d_out = np.empty(n)
    s_prev = d_prev = 0.0
    start = 0
    while start < n:
        base = total[start - 1] if start else 0.0
        # the chunk ends before the accumulated decay passes e^-600
        end = int(np.searchsorted(-(total - base), 600.0, side="right"))
        end = min(max(end, start + 1), n)
        m = total[start:end] - base  # <= 0, >= -600 (except a single huge bucket)
        m = np.maximum(m, -700.0)
        grow = np.exp(-m)
        decay = np.exp(m)
        s_out[start:end] = decay * (s_prev + np.cumsum(gain[start:end] * v[start:end] * grow))
        d_out[start:end] = decay * (d_prev + np.cumsum(gain[start:end] * grow))
        s_prev, d_prev = s_out[end - 1], d_out[end - 1]
        start = end
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d_out > 0, s_out / np.where(d_out > 0, d_out, 1.0), np.nan)


def nice_ticks(lo: float, hi: float, n: int = 4) -> np.ndarray:
    """About ``n`` round tick values (1, 2, 5 x 10^k steps) inside ``[lo, hi]`` (small figures,
    where the plotting library's default ticks would overlap)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return np.zeros(0)
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        return np.array([lo])
    raw = (hi - lo) / max(n, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = np.arange(first, hi + step * 1e-9, step)
    return np.round(ticks / step) * step


def tick_format(ticks: np.ndarray) -> str:
    """A d3 number format that tells adjacent ``ticks`` apart, short: as many significant digits
    as the step between ticks needs (at least 3), exponent notation below 1e-3 and from 1e5."""
    t = np.unique(np.asarray(ticks, dtype=np.float64))
    t = t[np.isfinite(t)]
    m = float(np.max(np.abs(t))) if len(t) else 0.0
    if m == 0.0:
        return ".3~g"
    step = float(np.min(np.diff(t))) if len(t) > 1 else m
    # the fewest significant digits that write every tick exactly (2.5e-8 steps need one more)
    digits = next(
        (d for d in range(1, 8) if all(abs(float(f"{v:.{d - 1}e}") - v) <= 1e-6 * step for v in t)),
        7,
    )
    if m < 1e-3 or m >= 1e5:
        return f".{max(digits - 1, 1)}~e"
    return f".{max(digits, 3)}~g"


def log_ticks(lo: float, hi: float, n: int = 4) -> np.ndarray:
    """Round ticks for a log axis: decades, or 1-2-5 within one or two decades."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi <= 0:
        return np.zeros(0)
    if hi < lo:
        lo, hi = hi, lo
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for mults in ((1.0,), (1.0, 3.0), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)):
        cand = np.array([m * 10.0**e for e in range(e0, e1 + 1) for m in mults])
        cand = cand[(cand >= lo * (1 - 1e-9)) & (cand <= hi * (1 + 1e-9))]
        if len(cand) >= 2:
            if len(cand) > n + 1:  # thin out evenly
                cand = cand[:: math.ceil(len(cand) / n)]
            return cand
    return np.array([lo, hi])


def _magnitude(v: float) -> str:
    a = abs(v)
    if 1e-2 <= a < 10:
        text = f"{a:.2g}"
    elif 10 <= a < 1e3:
        text = f"{a:.0f}"
    else:
        text = f"{a:.0e}".replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")
    return ("−" if v < 0 else "") + text


def bin_label(b: int) -> str:
    """A readable value for histogram bin ``b`` (its geometric centre): ``"0.46"``, ``"−3e-5"``."""
    if b == _NEG_INF:
        return "−Inf"
    if b == _POS_INF:
        return "+Inf"
    if b == _NAN:
        return "NaN"
    if b == _ZERO:
        return "0"
    j = b - (_ZERO + 1) if b > _ZERO else (_ZERO - 1) - b
    v = 10.0 ** (LOG_MIN + (j + 0.5) / BINS_PER_DECADE)
    return _magnitude(v if b > _ZERO else -v)


def hist_image(counts: np.ndarray) -> dict[str, Any]:
    """A ``(C, NBINS)`` stack of histograms (C columns: steps or layers) as a heatmap image.

    Rows are the value bins in increasing order, cropped to the range that holds any count; the
    zero bin is always kept, the -Inf / +Inf / NaN bins only when they hold something (they are
    flagged ``special`` so the browser paints them in an alarm colour).  Each column is
    normalised to its total and log-scaled (``log1p(1000 * fraction)``, fastai's "colorful
    dimension"), then quantised: 0 means "no values here", 1..255 the intensity.

    Returns ``{"rows", "cols", "values" (bytes, row-major, row 0 = lowest bin), "labels",
    "special", "bins", "scale"}``; ``scale`` is what the colour bar draws: ``{"k": 1000, "unit",
    "ticks": [[level 0..1, label], ...]}`` (a cell ``v`` in 1..255 holds the share
    ``expm1((v - 1) / 254 * log1p(k)) / k`` of its column's values).
    """
    counts = np.nan_to_num(np.asarray(counts, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if counts.ndim != 2 or counts.shape[1] != NBINS:
        raise ValueError(f"expected histograms of shape (C, {NBINS}), got {counts.shape}")
    counts = np.maximum(counts, 0.0)
    used = counts.sum(axis=0) > 0
    finite = np.flatnonzero(used[_NEG_INF + 1 : _POS_INF]) + _NEG_INF + 1
    lo = min(int(finite.min()) if len(finite) else _ZERO, _ZERO)
    hi = max(int(finite.max()) if len(finite) else _ZERO, _ZERO)
    bins = ([_NEG_INF] if used[_NEG_INF] else []) + list(range(lo, hi + 1))
    bins += [b for b in (_POS_INF, _NAN) if used[b]]
    sub = counts[:, bins]  # (C, R)
    total = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total > 0, sub / total, 0.0)
    level = np.log1p(1000.0 * frac) / math.log1p(1000.0)
    img = np.where(sub > 0, 1 + np.round(level * 254), 0).astype(np.uint8)
    return {
        "rows": len(bins),
        "cols": int(counts.shape[0]),
        "values": np.ascontiguousarray(img.T).tobytes(),
        "labels": [bin_label(b) for b in bins],
        "special": [b in (_NEG_INF, _POS_INF, _NAN) for b in bins],
        "bins": bins,
        "scale": COLOR_SCALE,
    }


_K = 1000.0
COLOR_SCALE: dict[str, Any] = {
    "k": _K,
    "unit": "share of the column's values",
    "ticks": [[round(math.log1p(_K * f) / math.log1p(_K), 4), label]
              for f, label in ((0.001, "0.1%"), (0.01, "1%"), (0.1, "10%"), (1.0, "100%"))],
}
"""The colour bar of :func:`hist_image` images: where 0.1 %, 1 %, 10 % and 100 % of a column
fall on its 0..1 colour level."""


def jsonable_number(v: Any, digits: int = 4) -> float | str | None:
    """A float rounded to ``digits`` significant digits for JSON; NaN -> None, ±Inf -> "inf"."""
    if v is None:
        return None
    f = float(v)
    if math.isnan(f):
        return None
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if f == 0.0:
        return 0.0
    return float(f"{f:.{digits}g}")

"""The chart model (line charts, heatmaps) laid out into backend-neutral drawing primitives."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _raster as R
from ._sources import (
    _NONFINITE,
    PALETTE,
)


# ============================================================================ chart model
@dataclass
class _Series:
    name: str
    x: np.ndarray
    y: np.ndarray
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    color: str = PALETTE[0]


@dataclass
class _LineChart:
    title: str
    series: list[_Series]
    events: list[tuple[float, str]] = field(default_factory=list)
    ylabel: str = ""
    xlabel: str = "step"
    log_y: bool | None = None  # None: automatic


@dataclass
class _Heatmap:
    title: str
    values: np.ndarray  # (rows, cols)
    row_labels: list[str]
    x: np.ndarray  # (cols,) step of each column
    log: bool = False
    xlabel: str = "step"
    col_labels: list[str] | None = None  # instead of numeric x ticks (e.g. histogram bins)


Prim = tuple[Any, ...]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    out: list[float] = []
    v = start
    while v <= hi + step * 1e-9 and len(out) < 50:
        out.append(0.0 if abs(v) < step * 1e-9 else v)
        v += step
    return out


def _fmt(v: float) -> str:
    if v is None or not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    a = abs(v)
    if 1e-3 <= a < 1e5:
        s = f"{v:.4g}"
        return s
    return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")


def _decimate(x: np.ndarray, cols: np.ndarray, *ys: np.ndarray) -> np.ndarray:
    """Indices keeping, per pixel column, the first, last, min and max point of every series."""
    n = len(x)
    if n == 0 or n <= 2 * (int(cols.max()) - int(cols.min()) + 1):
        return np.arange(n)
    keep = {0, n - 1}
    order = np.argsort(cols, kind="stable")
    c_sorted = cols[order]
    bounds = np.flatnonzero(np.diff(c_sorted)) + 1
    for grp in np.split(order, bounds):
        keep.add(int(grp[0]))
        keep.add(int(grp[-1]))
        for y in ys:
            v = y[grp]
            fin = np.isfinite(v)
            if fin.any():
                keep.add(int(grp[np.flatnonzero(fin)[np.argmin(v[fin])]]))
                keep.add(int(grp[np.flatnonzero(fin)[np.argmax(v[fin])]]))
            if (~fin).any():
                keep.add(int(grp[np.flatnonzero(~fin)[0]]))
    return np.array(sorted(keep))


def _layout_line(ch: _LineChart, W: int, H: int, s: int) -> list[Prim]:
    """Primitives of a line chart in pixel coordinates (see the two backends below)."""
    prims: list[Prim] = [("rect", 0, 0, W, H, "#ffffff", 1.0)]
    ys_all = []
    for se in ch.series:
        for arr in (se.y, se.lo, se.hi):
            if arr is not None and len(arr):
                ys_all.append(np.asarray(arr, dtype=np.float64))
    xs_all = [np.asarray(se.x, dtype=np.float64) for se in ch.series if len(se.x)]
    yv = np.concatenate(ys_all) if ys_all else np.zeros(0)
    fin = yv[np.isfinite(yv)]
    xv = np.concatenate(xs_all) if xs_all else np.zeros(0)
    xv = xv[np.isfinite(xv)]
    title_h = 12 * s
    prims.append(("text", 8 * s, 4 * s, ch.title, "#222222", s, "start", False))
    if not len(fin) or not len(xv):
        prims.append(("text", W / 2, H / 2, "no data", "#888888", s, "middle", False))
        return prims
    log = ch.log_y
    if log is None:
        log = bool(fin.min() > 0 and fin.max() / fin.min() > 50)
    if log:
        pos = fin[fin > 0]
        if not len(pos):
            log = False
    if log:
        ylo, yhi = math.log10(pos.min()), math.log10(pos.max())
        if yhi - ylo < 1e-12:
            ylo, yhi = ylo - 0.5, yhi + 0.5
        pad = (yhi - ylo) * 0.05
        ylo, yhi = ylo - pad, yhi + pad
        ticks = [float(t) for t in range(math.ceil(ylo), math.floor(yhi) + 1)]
        if len(ticks) > 8:
            k = math.ceil(len(ticks) / 8)
            ticks = ticks[::k]
        tick_labels = [_fmt(10**t) for t in ticks]
    else:
        ylo, yhi = float(fin.min()), float(fin.max())
        if yhi - ylo < 1e-12 * max(abs(yhi), 1.0):
            ylo, yhi = ylo - max(abs(ylo) * 0.1, 1e-3), yhi + max(abs(yhi) * 0.1, 1e-3)
        pad = (yhi - ylo) * 0.05
        ylo, yhi = ylo - pad, yhi + pad
        ticks = _nice_ticks(ylo, yhi)
        tick_labels = [_fmt(t) for t in ticks]
    xlo, xhi = float(xv.min()), float(xv.max())
    if xhi - xlo < 1e-9:
        xlo, xhi = xlo - 1, xhi + 1
    left = max((len(t) for t in tick_labels), default=1) * 6 * s + 12 * s
    right, top, bottom = 12 * s, title_h + 10 * s, 26 * s
    x0, x1, y0, y1 = left, W - right, top, H - bottom

    def px(x: np.ndarray | float) -> Any:
        return x0 + (np.asarray(x, dtype=np.float64) - xlo) / (xhi - xlo) * (x1 - x0)

    def py(y: np.ndarray | float) -> Any:
        v = np.asarray(y, dtype=np.float64)
        if log:
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)
        return y1 - (v - ylo) / (yhi - ylo) * (y1 - y0)

    prims.append(("rect", x0, y0, x1, y1, "#fbfbfb", 1.0))
    for t, lab in zip(ticks, tick_labels, strict=True):
        yy = float(y1 - (t - ylo) / (yhi - ylo) * (y1 - y0))
        if y0 - 0.5 <= yy <= y1 + 0.5:
            prims.append(("hline", x0, x1, yy, "#e4e4e4", 1.0, 0))
            prims.append(("text", x0 - 4 * s, yy - 4 * s, lab, "#444444", s, "end", False))
    for t in _nice_ticks(xlo, xhi, 6):
        xx = float(px(t))
        prims.append(("vline", xx, y0, y1, "#eeeeee", 1.0, 0))
        prims.append(("text", xx, y1 + 4 * s, _fmt(t), "#444444", s, "middle", False))
    prims.append(("text", (x0 + x1) / 2, H - 10 * s, ch.xlabel, "#444444", s, "middle", False))
    # interventions
    for ex, label in ch.events:
        if xlo <= ex <= xhi:
            xx = float(px(ex))
            prims.append(("vline", xx, y0, y1, "#9a9a9a", 1.0, 3 * s))
            prims.append(("text", xx + 2 * s, y0 + 2 * s, label[:24], "#666666", s, "start", False))
    notes = []
    for se in ch.series:
        x = np.asarray(se.x, dtype=np.float64)
        if not len(x):
            continue
        y = np.asarray(se.y, dtype=np.float64)
        cols = np.floor(px(x)).astype(np.int64)
        idx = _decimate(x, cols, y, *(a for a in (se.lo, se.hi) if a is not None))
        if se.lo is not None and se.hi is not None:
            lo, hi = (
                np.asarray(se.lo, dtype=np.float64)[idx],
                np.asarray(se.hi, dtype=np.float64)[idx],
            )
            if np.any(lo != hi):
                prims.append(("band", px(x[idx]), py(lo), py(hi), se.color, 0.18))
        yy = y[idx]
        prims.append(("line", px(x[idx]), np.clip(py(yy), y0 - 2, y1 + 2), se.color, 1.5 * s))
        bad = ~np.isfinite(y) | (log & (y <= 0))
        if bad.any():
            bx = px(x[bad])
            prims.append(("marks", bx, np.full(len(bx), y0 + 1.0 * s), _NONFINITE, 3 * s))
            first = x[bad][0]
            notes.append(
                f"{se.name}: {int(bad.sum())} non-finite{' or <= 0' if log else ''} from step {_fmt(first)}"
            )
    # legend
    ly = y0 + 4 * s
    for se in ch.series:
        lx = x1 - 6 * s - R.text_width(se.name[:40], s) - 16 * s
        prims.append(("rect", lx - 3 * s, ly - 2 * s, x1 - 2 * s, ly + 9 * s, "#ffffff", 0.8))
        prims.append(
            (
                "line",
                np.array([lx, lx + 12 * s]),
                np.array([ly + 3.5 * s, ly + 3.5 * s]),
                se.color,
                2.0 * s,
            )
        )
        prims.append(("text", lx + 16 * s, ly, se.name[:40], "#222222", s, "start", False))
        ly += 11 * s
    for note in notes[:3]:
        prims.append(("text", x0 + 4 * s, ly, note[:70], _NONFINITE, s, "start", False))
        ly += 11 * s
    prims.append(("frame", x0, y0, x1, y1, "#888888"))
    return prims


_VIRIDIS = np.array(
    [
        [68, 1, 84],
        [72, 40, 120],
        [62, 74, 137],
        [49, 104, 142],
        [38, 130, 142],
        [31, 158, 137],
        [53, 183, 121],
        [110, 206, 88],
        [181, 222, 43],
        [253, 231, 37],
    ],
    dtype=np.float64,
)


def _colormap(v: np.ndarray, log: bool) -> tuple[np.ndarray, float, float]:
    """Values -> RGB (viridis); NaN light grey, +-Inf red.  Returns the image and the range."""
    a = np.asarray(v, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(a > 0, np.log10(np.where(a > 0, a, 1.0)), np.nan) if log else a.copy()
    fin = t[np.isfinite(t)]
    lo, hi = (
        (float(np.percentile(fin, 1)), float(np.percentile(fin, 99))) if len(fin) else (0.0, 1.0)
    )
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    u = np.clip((t - lo) / (hi - lo), 0, 1)
    pos = np.nan_to_num(u, nan=0.0) * (len(_VIRIDIS) - 1)
    i0 = np.floor(pos).astype(np.int64).clip(0, len(_VIRIDIS) - 2)
    f = (pos - i0)[..., None]
    rgb = _VIRIDIS[i0] * (1 - f) + _VIRIDIS[i0 + 1] * f
    rgb[~np.isfinite(t)] = (225, 225, 225)
    rgb[np.isinf(a)] = (200, 0, 0)
    if log:
        rgb[np.isfinite(a) & (a <= 0)] = (240, 240, 240)
    return rgb, lo, hi


def _layout_heatmap(hm: _Heatmap, W: int, H: int, s: int) -> list[Prim]:
    prims: list[Prim] = [("rect", 0, 0, W, H, "#ffffff", 1.0)]
    prims.append(("text", 8 * s, 4 * s, hm.title, "#222222", s, "start", False))
    vals = np.asarray(hm.values, dtype=np.float64)
    if vals.size == 0:
        prims.append(("text", W / 2, H / 2, "no data", "#888888", s, "middle", False))
        return prims
    rows, cols = vals.shape
    label_w = min(max((len(r) for r in hm.row_labels), default=1), 28) * 6 * s + 10 * s
    x0, x1 = label_w, W - 70 * s
    y0, y1 = 22 * s, H - 26 * s
    rgb, lo, hi = _colormap(vals, hm.log)
    prims.append(("image", x0, y0, x1 - x0, y1 - y0, rgb))
    step = max(1, math.ceil(rows * 10 * s / max(y1 - y0, 1)))
    for r in range(0, rows, step):
        yy = y0 + (r + 0.5) / rows * (y1 - y0) - 4 * s
        prims.append(("text", x0 - 4 * s, yy, hm.row_labels[r][:28], "#333333", s, "end", False))
    if hm.col_labels is not None:
        last_end = -1e9
        for c in range(cols):
            lab = hm.col_labels[c]
            xx = x0 + (c + 0.5) / cols * (x1 - x0)
            half = R.text_width(lab, s) / 2
            if lab and xx - half > last_end + 6 * s:  # skip labels that would overlap
                prims.append(("text", xx, y1 + 4 * s, lab, "#444444", s, "middle", False))
                last_end = xx + half
    elif len(hm.x):
        xs = np.asarray(hm.x, dtype=np.float64)
        for t in _nice_ticks(float(xs.min()), float(xs.max()), 6):
            c = int(np.argmin(np.abs(xs - t)))
            xx = x0 + (c + 0.5) / cols * (x1 - x0)
            prims.append(("text", xx, y1 + 4 * s, _fmt(t), "#444444", s, "middle", False))
    prims.append(("text", (x0 + x1) / 2, H - 10 * s, hm.xlabel, "#444444", s, "middle", False))
    # colour bar
    bx0, bx1 = x1 + 10 * s, x1 + 20 * s
    bar = _VIRIDIS[::-1]
    n = max(int(y1 - y0), 2)
    grad = np.array(
        [
            np.interp(np.linspace(0, len(bar) - 1, n), np.arange(len(bar)), bar[:, c])
            for c in range(3)
        ]
    ).T
    prims.append(("image", bx0, y0, bx1 - bx0, y1 - y0, grad[:, None, :]))
    fmt_hi = _fmt(10**hi) if hm.log else _fmt(hi)
    fmt_lo = _fmt(10**lo) if hm.log else _fmt(lo)
    prims.append(("text", bx1 + 2 * s, y0, fmt_hi, "#444444", s, "start", False))
    prims.append(("text", bx1 + 2 * s, y1 - 8 * s, fmt_lo, "#444444", s, "start", False))
    prims.append(("frame", x0, y0, x1, y1, "#888888"))
    return prims



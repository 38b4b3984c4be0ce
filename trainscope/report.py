"""Offline reports and figures of a run: one self-contained HTML file, and PNG figures.

>>> trainscope.report.write_report(probe, "report.html")          # doctest: +SKIP
>>> trainscope.report.write_report(trainscope.open("runs/"), "compare.html")   # doctest: +SKIP
>>> trainscope.report.save_png(probe, "loss.png")                 # doctest: +SKIP
>>> trainscope.report.save_figures(run, "figures/")               # doctest: +SKIP

The HTML report holds the curves, the layer table, heatmaps, the findings, the checklist results
and the interventions timeline.  Charts are inline SVG and heatmaps inline PNG (``data:`` URIs);
there is no script, stylesheet, font or image fetched from anywhere, so it opens offline and can
be attached to an issue.  Every user-provided string (module names, metric names, event labels and
data, run names, titles) is HTML-escaped.  PNG figures are drawn by :mod:`trainscope._raster`
(pure numpy + zlib); matplotlib is not needed.

Sources: a :class:`~trainscope.Probe`, a :class:`~trainscope.History`, a run
(:class:`~trainscope.runlog.Run`, or its path), or a list of those / a
:class:`~trainscope.runlog.RunSet` -- several runs are overlaid.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _raster as R
from . import metrics as _metrics
from ._version import __version__
from .history import History

__all__ = [
    "figure_png",
    "report_html",
    "runs_overview_html",
    "save_figures",
    "save_png",
    "write_report",
]

PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)
_NONFINITE = "#c00000"
_CURVE_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Loss", ("loss", "val_loss")),
    ("Learning rate", ("lr",)),
    ("Gradient norm (whole model)", ("grad_norm_total",)),
    ("Update / weight ratio (whole model)", ("update_ratio_total",)),
    ("Step time (s)", ("step_time",)),
)
_TABLE_METRICS = tuple((m.name, m.short) for m in _metrics.report_metrics())
_HEATMAPS = tuple((m.name, m.heatmap or m.label, m.log_scale) for m in _metrics.heatmap_metrics())


# ============================================================================ sources
@dataclass
class _Source:
    name: str
    history: History
    probe: Any = None
    path: str | None = None
    finished: bool | None = None


def _sources(source: Any) -> list[_Source]:
    from .run import RunContext
    from .runlog import Run, RunSet

    if isinstance(source, (str, os.PathLike)):
        from .runlog import open_run

        source = open_run(source, follow=False)
    if isinstance(source, RunSet):
        source = list(source.runs)
    if isinstance(source, RunContext):
        return [_Source(str(source.history.meta.get("model", "run")), source.history, probe=source)]
    if isinstance(source, History):
        return [_Source(str(source.meta.get("model", "run")), source)]
    if isinstance(source, Run):
        return [_Source(source.name, source.history, path=source.path, finished=source.finished)]
    if isinstance(source, dict):  # {name: History | Probe | Run}
        out = []
        for name, s in source.items():
            for src in _sources(s):
                src.name = str(name)
                out.append(src)
        return out
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        out = []
        for s in source:
            out.extend(_sources(s))
        if not out:
            raise ValueError("nothing to report: the list of runs is empty")
        names = [s.name for s in out]
        for i, s in enumerate(out):
            if names.count(s.name) > 1:
                s.name = f"{s.name} #{i + 1}"
        return out
    raise TypeError(
        f"cannot report on a {type(source).__name__}; pass a Probe, a History, a run "
        "(trainscope.open(path)), a run directory path, or a list of those"
    )


def esc(s: Any) -> str:
    """HTML-escape anything (quotes included): safe in text and attribute values."""
    return html.escape(str(s), quote=True)


def _layer_name(h: History, i: Any) -> str | None:
    """The name of layer ``i``, or None when ``i`` is not a valid index (a crafted history)."""
    if isinstance(i, (int, np.integer)) and not isinstance(i, bool) and 0 <= int(i) < len(h.layers):
        return str(h.layers[int(i)].name)
    return None


def _order(h: History) -> list[int]:
    """``h.forward_order`` without indices that name no layer."""
    L = len(h.layers)
    return [
        int(i)
        for i in h.forward_order
        if isinstance(i, (int, np.integer)) and not isinstance(i, bool) and 0 <= int(i) < L
    ]


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


# ============================================================================ backends
def _png_data_uri(rgb: np.ndarray) -> str:
    png = R.encode_png(np.clip(np.round(rgb), 0, 255).astype(np.uint8))
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _svg(prims: list[Prim], W: int, H: int) -> str:
    out = [f'<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="monospace">']
    for p in prims:
        kind = p[0]
        if kind == "rect":
            _, xa, ya, xb, yb, color, op = p
            out.append(
                f'<rect x="{min(xa, xb):.1f}" y="{min(ya, yb):.1f}" width="{abs(xb - xa):.1f}" height="{abs(yb - ya):.1f}" fill="{color}" fill-opacity="{op}"/>'
            )
        elif kind == "frame":
            _, xa, ya, xb, yb, color = p
            out.append(
                f'<rect x="{xa:.1f}" y="{ya:.1f}" width="{xb - xa:.1f}" height="{yb - ya:.1f}" fill="none" stroke="{color}"/>'
            )
        elif kind in ("hline", "vline"):
            if kind == "hline":
                _, xa, xb, y, color, width, dash = p
                coords = (xa, y, xb, y)
            else:
                _, x, ya, yb, color, width, dash = p
                coords = (x, ya, x, yb)
            d = f' stroke-dasharray="{dash},{dash}"' if dash else ""
            out.append(
                f'<line x1="{coords[0]:.1f}" y1="{coords[1]:.1f}" x2="{coords[2]:.1f}" y2="{coords[3]:.1f}" stroke="{color}" stroke-width="{width}"{d}/>'
            )
        elif kind == "line":
            _, xs, ys, color, width = p
            for seg in _finite_runs(xs, ys):
                pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in seg)
                out.append(
                    f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="{width}" stroke-linejoin="round"/>'
                )
        elif kind == "band":
            _, xs, lo, hi, color, op = p
            ok = np.isfinite(xs) & np.isfinite(lo) & np.isfinite(hi)
            if ok.sum() >= 2:
                upper = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs[ok], hi[ok], strict=True))
                lower = " ".join(
                    f"{a:.1f},{b:.1f}" for a, b in zip(xs[ok][::-1], lo[ok][::-1], strict=True)
                )
                out.append(
                    f'<polygon points="{upper} {lower}" fill="{color}" fill-opacity="{op}" stroke="none"/>'
                )
        elif kind == "marks":
            _, xs, ys, color, size = p
            for a, b in zip(xs, ys, strict=True):
                out.append(
                    f'<path d="M{a:.1f},{b:.1f} l{-size / 2:.1f},{size:.1f} h{size:.1f} z" fill="{color}"/>'
                )
        elif kind == "text":
            _, x, y, text, color, s, anchor, vertical = p
            fs = 10 * s
            if vertical:
                out.append(
                    f'<text x="{x:.1f}" y="{y:.1f}" font-size="{fs}" fill="{color}" text-anchor="{anchor}" transform="rotate(-90 {x:.1f} {y:.1f})">{esc(text)}</text>'
                )
            else:
                out.append(
                    f'<text x="{x:.1f}" y="{y + 7.5 * s:.1f}" font-size="{fs}" fill="{color}" text-anchor="{anchor}">{esc(text)}</text>'
                )
        elif kind == "image":
            _, x, y, w, h, rgb = p
            out.append(
                f'<image x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" preserveAspectRatio="none" style="image-rendering:pixelated" href="{_png_data_uri(rgb)}"/>'
            )
    out.append("</svg>")
    return "".join(out)


def _finite_runs(xs: np.ndarray, ys: np.ndarray) -> list[list[tuple[float, float]]]:
    ok = np.isfinite(xs) & np.isfinite(ys)
    runs: list[list[tuple[float, float]]] = []
    cur: list[tuple[float, float]] = []
    for a, b, good in zip(xs.tolist(), ys.tolist(), ok.tolist(), strict=True):
        if good:
            cur.append((a, b))
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def _raster(prims: list[Prim], W: int, H: int) -> R.Raster:
    cv = R.Raster(W, H)
    for p in prims:
        kind = p[0]
        if kind == "rect":
            _, xa, ya, xb, yb, color, op = p
            cv.rect(xa, ya, xb, yb, color, op)
        elif kind == "frame":
            _, xa, ya, xb, yb, color = p
            for x in (xa, xb):
                cv.vline(x, ya, yb, color)
            for y in (ya, yb):
                cv.hline(xa, xb, y, color)
        elif kind == "hline":
            _, xa, xb, y, color, width, dash = p
            cv.hline(xa, xb, y, color, width, dash)
        elif kind == "vline":
            _, x, ya, yb, color, width, dash = p
            cv.vline(x, ya, yb, color, width, dash)
        elif kind == "line":
            _, xs, ys, color, width = p
            cv.polyline(xs, ys, color, width)
        elif kind == "band":
            _, xs, lo, hi, color, op = p
            cv.band(xs, lo, hi, color, op)
        elif kind == "marks":
            _, xs, ys, color, size = p
            for a, b in zip(xs, ys, strict=True):
                cv.polyline(
                    np.array([a - size / 2, a + size / 2, a, a - size / 2]),
                    np.array([b + size, b + size, b, b + size]),
                    color,
                    1.5,
                )
        elif kind == "text":
            _, x, y, text, color, s, anchor, vertical = p
            cv.text(x, y, text, color, s, anchor, vertical)
        elif kind == "image":
            _, x, y, w, h, rgb = p
            ih, iw = rgb.shape[:2]
            w, h = max(round(w), 1), max(round(h), 1)
            rows = np.minimum((np.arange(h) * ih / h).astype(np.int64), ih - 1)
            cols = np.minimum((np.arange(w) * iw / w).astype(np.int64), iw - 1)
            cv.image(round(x), round(y), rgb[rows][:, cols])
    return cv


# ============================================================================ charts of a run
def _events(h: History) -> list[tuple[float, str]]:
    return [
        (float(e.step), str(e.label))
        for e in list(h.events)
        if e.kind in ("intervention", "undo", "check")
    ]


def _scalar_series(h: History, name: str, color: str, label: str | None = None) -> _Series:
    d = h.scalar(name)
    return _Series(label or name, d["step"], d["mean"], d["min"], d["max"], color)


def _curve_charts(srcs: list[_Source]) -> list[_LineChart]:
    charts = []
    multi = len(srcs) > 1
    groups = list(_CURVE_GROUPS)
    extra = []
    for src in srcs:
        for n in src.history.scalar_names():
            if n not in {m for _, ms in groups for m in ms} and n not in extra:
                extra.append(n)
    groups += [(n, (n,)) for n in extra[:16]]
    for title, names in groups:
        series = []
        for si, src in enumerate(srcs):
            for ni, n in enumerate(names):
                if n not in src.history.scalar_names():
                    continue
                color = (
                    PALETTE[(si if multi else ni) % len(PALETTE)]
                    if not (multi and len(names) > 1)
                    else PALETTE[(si * len(names) + ni) % len(PALETTE)]
                )
                label = f"{src.name}: {n}" if multi else n
                series.append(_scalar_series(src.history, n, color, label))
        if not series:
            continue
        ev = _events(srcs[0].history) if not multi else []
        charts.append(_LineChart(title, series, ev, ylabel=", ".join(names)))
    return charts


def _heatmaps(h: History) -> list[_Heatmap]:
    out = []
    order = _order(h)
    names = [h.layer_names[i] for i in order]
    for metric, title, log in _HEATMAPS:
        steps, vals = h.layer_series(metric)
        if not len(steps) or not np.isfinite(vals).any():
            continue
        mat = vals[:, order].T
        keep = np.isfinite(mat).any(axis=1)
        if not keep.any():
            continue
        out.append(
            _Heatmap(
                title, mat[keep], [n for n, k in zip(names, keep, strict=True) if k], steps, log
            )
        )
    rec = h.latest
    if (
        rec is not None
        and rec.act_hist is not None
        and np.shape(rec.act_hist)[:1] == (len(h.layers),)
    ):
        counts = np.asarray(rec.act_hist, dtype=np.float64)[order]
        tot = counts.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(tot > 0, counts / tot, np.nan)
        frac = np.where(frac > 0, frac, np.nan)
        nz = np.flatnonzero(np.nansum(np.nan_to_num(frac), axis=0) > 0)
        if len(nz):
            a, b = max(int(nz.min()) - 1, 0), min(int(nz.max()) + 2, frac.shape[1])
            out.append(
                _Heatmap(
                    f"Activation histogram at step {rec.step} (fraction per bin)",  # SVG text: escaped
                    frac[:, a:b],
                    names,
                    np.arange(a, b),
                    True,
                    "bin (lower magnitude edge)",
                    _bin_labels()[a:b],
                )
            )
    return out


def _bin_labels() -> list[str]:
    """Short labels for the histogram bins: whole decades, zero and the special bins only."""
    from .stats import HIST_LABELS

    out = []
    for lab in HIST_LABELS:
        if lab in ("0", "-inf", "+inf", "nan"):
            out.append(lab)
            continue
        mant, _, exp = lab.partition("e")
        e = float(exp)
        out.append(f"{mant}e{int(e)}" if e == int(e) and int(e) % 2 == 0 else "")
    return out


# ============================================================================ HTML
_CSS = """
body{font:14px/1.45 -apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#777}.grid{display:flex;flex-wrap:wrap;gap:12px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f4f4f4;position:sticky;top:0}td.l,th.l{text-align:left}.sev-error{background:#fde2e2}.sev-warning{background:#fff3d6}
.sev-info{background:#e8f1fb}.bad{background:#fde2e2;font-weight:600}.warn{background:#fff3d6}.badge{display:inline-block;
padding:0 6px;border-radius:8px;font-size:11.5px;font-weight:600}.pass{color:#17692b}.fail{color:#a40000}.warnc{color:#8a5a00}
code{background:#f4f4f4;padding:0 3px;border-radius:3px}details{margin:8px 0}summary{cursor:pointer;font-weight:600}
.kv td{text-align:left}svg{background:#fff;border:1px solid #eee}
"""


def _cell(v: float, metric: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '<td class="muted">-</td>'
    cls = ""
    if metric in ("act_nonfinite", "grad_nonfinite") and v != 0:
        cls = ' class="bad"'
        return f"<td{cls}>{'yes' if v < 0 else esc(_fmt(float(v)))}</td>"
    if not math.isfinite(v):
        cls = ' class="bad"'
    elif metric in ("act_dead_frac", "act_frac_sat") and v > 0.5:
        cls = ' class="warn"'
    return f"<td{cls}>{esc(_fmt(float(v)))}</td>"


def _metric(rec: Any, m: str, i: int) -> float:
    try:
        return float(rec.metrics[m][i])
    except (KeyError, IndexError, TypeError, ValueError):
        return math.nan


def _layer_table(h: History) -> str:
    rec = h.latest
    if rec is None:
        return '<p class="muted">No sampled step recorded yet.</p>'
    head = "".join(f"<th>{esc(lbl)}</th>" for _, lbl in _TABLE_METRICS)
    rows = []
    for i in _order(h):
        info = h.layers[i]
        cells = "".join(_cell(_metric(rec, m, i), m) for m, _ in _TABLE_METRICS)
        rows.append(
            f'<tr><td class="l"><code>{esc(info.name)}</code></td><td class="l">{esc(info.type)}</td><td>{esc(info.n_params)}</td>{cells}</tr>'
        )
    nf = []
    for idx, what in (
        (rec.first_nonfinite_forward, "first non-finite activation (forward order)"),
        (rec.first_nonfinite_backward, "first non-finite output gradient (backward order)"),
    ):
        if idx is not None:
            name = _layer_name(h, idx)
            shown = esc(name) if name is not None else f"layer index {esc(idx)} (no such layer)"
            nf.append(f"{what}: <code>{shown}</code>")
    note = f'<p class="bad">{"; ".join(nf)}</p>' if nf else ""
    return (
        f'<p class="muted">Latest sampled step: {esc(rec.step)}. Layers in forward order.</p>{note}'
        f'<div style="overflow-x:auto"><table><tr><th class="l">layer</th><th class="l">type</th><th>params</th>{head}</tr>{"".join(rows)}</table></div>'
    )


def _findings_for(src: _Source) -> tuple[list[dict[str, Any]] | None, str]:
    try:
        if src.probe is not None:
            found = src.probe.findings()
        else:
            from .diagnostics import diagnose

            found = diagnose(src.history)
        return [f.as_dict() if hasattr(f, "as_dict") else dict(f) for f in found], ""
    except ImportError as e:
        return None, f"diagnosis is not available in this installation ({e})"
    except Exception as e:
        return None, f"diagnosis failed: {type(e).__name__}: {e}"


def _findings_html(src: _Source) -> str:
    items, why = _findings_for(src)
    if items is None:
        return f'<p class="muted">{esc(why)}</p>'
    if not items:
        return '<p class="pass">No findings: nothing looks wrong in the recorded statistics.</p>'
    rows = []
    for f in items:
        sev = str(f.get("severity", "info"))
        layers = ", ".join(f"<code>{esc(x)}</code>" for x in f.get("layers", [])[:8])
        fixes = "; ".join(
            f"{esc(i.get('label', i.get('action')))} (<code>{esc(i.get('action'))}</code> {esc(json.dumps(i.get('params', {}), default=str))})"
            for i in f.get("interventions", [])
        )
        span = f"{f.get('first_step', '?')}–{f.get('last_step', '?')}"
        state = "" if f.get("active", True) else ' <span class="muted">(no longer holds)</span>'
        rows.append(
            f'<tr class="sev-{esc(sev)}"><td class="l"><span class="badge">{esc(sev)}</span></td><td class="l"><b>{esc(f.get("title", ""))}</b>{state}<br>'
            f'{esc(f.get("evidence", ""))}</td><td class="l">{layers}</td><td>{esc(span)}</td><td class="l">{fixes}</td></tr>'
        )
    return f'<table><tr><th class="l">severity</th><th class="l">finding and evidence</th><th class="l">layers</th><th>steps</th><th class="l">suggested fixes</th></tr>{"".join(rows)}</table>'


def _checklist_items(src: _Source) -> tuple[list[dict[str, Any]] | None, str]:
    try:
        from .checklists import checklist_state
    except ImportError as e:
        return None, f"checklists are not available in this installation ({e})"
    try:
        if src.probe is not None:
            return list(checklist_state(src.probe)), ""
        items = [dict(it) for it in checklist_state(None)]
        checks = src.history.meta.get("checks") or {}
        found, _ = _findings_for(src)
        for it in items:
            res = checks.get(it.get("check")) if it.get("check") else None
            related = [
                f
                for f in (found or [])
                if it.get("id") in f.get("checklist", [])
                and f.get("severity") in ("warning", "error")
            ]
            if isinstance(res, dict) and "status" in res:
                it["status"], it["evidence"] = res["status"], res.get("evidence", "")
            elif related:
                it["status"] = "fail" if any(f["severity"] == "error" for f in related) else "warn"
                it["evidence"] = "; ".join(f"{f['title']}: {f['evidence']}" for f in related)
        return items, ""
    except Exception as e:
        return None, f"checklist failed: {type(e).__name__}: {e}"


def _checklist_html(src: _Source) -> str:
    items, why = _checklist_items(src)
    if items is None:
        return f'<p class="muted">{esc(why)}</p>'
    cls = {"pass": "pass", "fail": "fail", "warn": "warnc"}
    rows = "".join(
        f'<tr><td class="l">{esc(it.get("source", ""))}</td><td class="l">{esc(it.get("title", it.get("id", "")))}</td>'
        f'<td class="l {cls.get(str(it.get("status")), "muted")}">{esc(it.get("status", ""))}</td><td class="l">{esc(it.get("evidence", ""))}</td></tr>'
        for it in items
    )
    return f'<table><tr><th class="l">list</th><th class="l">item</th><th class="l">status</th><th class="l">evidence</th></tr>{rows}</table>'


def _when(t: Any) -> str:
    try:
        return _dt.datetime.fromtimestamp(float(t)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def _timeline_html(h: History) -> str:
    evs = list(h.events)
    if not evs:
        return '<p class="muted">No interventions or other events were recorded.</p>'
    rows = []
    for e in evs[-500:]:
        when = _when(e.time)
        data = json.dumps(e.data, default=str, sort_keys=True)
        if len(data) > 400:
            data = data[:400] + "…"
        rows.append(
            f'<tr><td>{esc(e.step)}</td><td class="l">{esc(when)}</td><td class="l">{esc(e.kind)}</td><td class="l">{esc(e.label)}</td><td class="l"><code>{esc(data)}</code></td></tr>'
        )
    more = (
        f'<p class="muted">Showing the last 500 of {esc(len(evs))} events.</p>'
        if len(evs) > 500
        else ""
    )
    return f'{more}<table><tr><th>step</th><th class="l">time</th><th class="l">kind</th><th class="l">label</th><th class="l">details</th></tr>{"".join(rows)}</table>'


def _meta_html(src: _Source) -> str:
    h = src.history
    m = h.meta
    rows = [
        ("model", m.get("model")),
        ("parameters", m.get("n_params")),
        ("trainable", m.get("n_trainable")),
        ("optimizer", m.get("optimizer")),
        ("loss", m.get("loss_fn")),
        ("processes (DDP)", m.get("world_size")),
        ("last step", h.step),
        ("sampled steps", h.samples()),
        ("tracked layers", len(h.layers)),
        ("run directory", src.path),
        (
            "finished",
            None
            if src.finished is None
            else ("yes" if src.finished else "no (still written, or the writer stopped)"),
        ),
    ]
    for name in ("loss", "val_loss"):
        d = h.scalar(name)
        if len(d["mean"]):
            rows.append((f"last {name}", _fmt(float(d["mean"][-1]))))
            fin = d["min"][np.isfinite(d["min"])]
            if len(fin):
                rows.append((f"best {name}", _fmt(float(fin.min()))))
    body = "".join(
        f'<tr><th class="l">{esc(k)}</th><td>{esc(v)}</td></tr>' for k, v in rows if v is not None
    )
    return f'<table class="kv">{body}</table>'


def _chart_svgs(charts: list[Any], W: int, H: int) -> str:
    parts = []
    for ch in charts:
        prims = (
            _layout_line(ch, W, H, 1)
            if isinstance(ch, _LineChart)
            else _layout_heatmap(ch, W, H, 1)
        )
        parts.append(_svg(prims, W, H))
    return '<div class="grid">' + "".join(parts) + "</div>"


def _run_section(src: _Source, *, heading: bool) -> str:
    h = src.history
    parts = []
    if heading:
        parts.append(f"<h2>Run <code>{esc(src.name)}</code></h2>")
    parts.append(_meta_html(src))
    parts.append("<h3>Layers</h3>" if heading else "<h2>Layers</h2>")
    parts.append(_layer_table(h))
    hms = _heatmaps(h)
    parts.append("<h3>Heatmaps</h3>" if heading else "<h2>Heatmaps</h2>")
    parts.append(
        _chart_svgs(hms, 1140, max(170, min(26 + 13 * len(h.layers), 520) + 48))
        if hms
        else '<p class="muted">No per-layer series recorded yet.</p>'
    )
    parts.append("<h3>Findings</h3>" if heading else "<h2>Findings</h2>")
    parts.append(_findings_html(src))
    parts.append("<h3>Checklist</h3>" if heading else "<h2>Checklist</h2>")
    parts.append(_checklist_html(src))
    parts.append(
        "<h3>Interventions timeline</h3>" if heading else "<h2>Interventions timeline</h2>"
    )
    parts.append(_timeline_html(h))
    return "".join(parts)


def report_html(source: Any, *, title: str | None = None) -> str:
    """The report as one HTML string (see :func:`write_report`)."""
    srcs = _sources(source)
    multi = len(srcs) > 1
    ttl = title or (
        f"trainscope report: {srcs[0].name}"
        if not multi
        else f"trainscope comparison of {len(srcs)} runs"
    )
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(ttl)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(ttl)}</h1>",
        f'<p class="muted">Generated {esc(now)} by trainscope {esc(__version__)}. Self-contained: opens offline.</p>',
    ]
    parts.append("<h2>Curves</h2>")
    charts = _curve_charts(srcs)
    parts.append(
        _chart_svgs(charts, 560, 300) if charts else '<p class="muted">No scalars recorded.</p>'
    )
    if multi:
        parts.append("<h2>Runs</h2>")
        parts.append(_comparison_table(srcs))
        for src in srcs:
            parts.append(
                f"<details><summary>{esc(src.name)}</summary>{_run_section(src, heading=True)}</details>"
            )
    else:
        parts.append("<h2>Run</h2>")
        parts.append(_run_section(srcs[0], heading=False))
    parts.append("</body></html>")
    return "\n".join(parts)


def _comparison_table(srcs: list[_Source]) -> str:
    rows = []
    for i, s in enumerate(srcs):
        h = s.history
        cells = []
        for name in ("loss", "val_loss"):
            d = h.scalar(name)
            fin = d["min"][np.isfinite(d["min"])] if len(d["min"]) else np.zeros(0)
            cells.append(_fmt(float(d["mean"][-1])) if len(d["mean"]) else "-")
            cells.append(_fmt(float(fin.min())) if len(fin) else "-")
        lr = h.scalar("lr")
        cells.append(_fmt(float(lr["mean"][-1])) if len(lr["mean"]) else "-")
        swatch = f'<span class="badge" style="background:{PALETTE[i % len(PALETTE)]}">&nbsp;</span>'
        rows.append(
            f'<tr><td class="l">{swatch} <code>{esc(s.name)}</code></td><td>{esc(h.step)}</td><td>{esc(h.samples())}</td>'
            + "".join(f"<td>{esc(c)}</td>" for c in cells)
            + f"<td>{esc(len(h.events))}</td></tr>"
        )
    return (
        '<table><tr><th class="l">run</th><th>last step</th><th>samples</th><th>last loss</th><th>best loss</th><th>last val_loss</th><th>best val_loss</th><th>last lr</th><th>events</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def runs_overview_html(runs: Any) -> str:
    """A compact HTML fragment: the runs' loss curves overlaid and a comparison table."""
    srcs = _sources(list(runs) if isinstance(runs, (list, tuple)) else runs)
    charts = [c for c in _curve_charts(srcs) if c.title in ("Loss", "Learning rate")]
    if not charts:
        charts = _curve_charts(srcs)[:1]
    return _chart_svgs(charts, 520, 260) + _comparison_table(srcs)


def write_report(source: Any, path: str | os.PathLike[str], *, title: str | None = None) -> str:
    """Write a self-contained offline HTML report of ``source`` to ``path``; returns the path.

    Parameters
    ----------
    source
        A Probe, a History, a run (``trainscope.open(path)``) or a run directory path; or a list
        of those / a RunSet to compare several runs (their curves are overlaid).
    path
        Where to write the ``.html`` file (parent directories are created).
    title
        The report's title (default: from the model's name).
    """
    doc = report_html(source, title=title)
    p = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(p))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{p}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(doc)
    os.replace(tmp, p)
    return p


# ============================================================================ PNG figures
def figure_png(
    source: Any, what: str = "loss", *, width: int = 900, height: int = 520, scale: int = 2
) -> bytes:
    """One figure as PNG bytes.

    ``what``: a curve group (``"loss"``, ``"lr"``, ``"grad_norm_total"``, any scalar name), a
    per-layer heatmap (``"heatmap:act_std"``, any per-layer metric) or the latest activation /
    output-gradient histogram (``"hist:act"`` / ``"hist:ograd"``).  ``width`` / ``height`` are
    in units of ``scale`` pixels (the PNG is ``width*scale`` x ``height*scale``).
    """
    if not isinstance(scale, int) or not 1 <= scale <= 4:
        raise ValueError(f"scale must be an int from 1 to 4, got {scale!r}")
    if not (100 <= width <= 4000 and 80 <= height <= 4000):
        raise ValueError(
            f"width must be in [100, 4000] and height in [80, 4000]; got {width}x{height}"
        )
    srcs = _sources(source)
    W, H = width * scale, height * scale
    chart: Any
    if what.startswith("heatmap:"):
        from .history import LAYER_METRICS

        metric = what.split(":", 1)[1]
        if metric not in LAYER_METRICS:
            raise ValueError(
                f"unknown per-layer metric {metric!r}; metrics are {', '.join(LAYER_METRICS)}"
            )
        h = srcs[0].history
        steps, vals = h.layer_series(metric)
        order = _order(h)
        log = _metrics.get(metric).log_scale
        chart = _Heatmap(
            f"{metric} per layer ({srcs[0].name})",
            vals[:, order].T if len(steps) else np.zeros((0, 0)),
            [h.layer_names[i] for i in order],
            steps,
            log,
        )
        prims = _layout_heatmap(chart, W, H, scale)
    elif what in ("hist:act", "hist:ograd"):
        h = srcs[0].history
        rec = h.latest
        counts = None if rec is None else (rec.act_hist if what == "hist:act" else rec.ograd_hist)
        if counts is None:
            raise ValueError(
                f"no {what} histogram recorded (histograms=False, or nothing sampled yet)"
            )
        order = _order(h)
        c = np.asarray(counts, dtype=np.float64)[order]
        tot = c.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(c > 0, c / np.where(tot > 0, tot, 1), np.nan)
        chart = _Heatmap(
            f"{what[5:]} histogram at step {rec.step if rec else '?'}",
            frac,
            [h.layer_names[i] for i in order],
            np.arange(c.shape[1]),
            True,
            "bin",
            _bin_labels(),
        )
        prims = _layout_heatmap(chart, W, H, scale)
    else:
        wanted = {"loss": ("loss", "val_loss"), "lr": ("lr",)}.get(what, (what,))
        series = []
        multi = len(srcs) > 1
        for si, src in enumerate(srcs):
            for ni, n in enumerate(wanted):
                if n in src.history.scalar_names():
                    label = f"{src.name}: {n}" if multi else n
                    series.append(
                        _scalar_series(
                            src.history, n, PALETTE[(si * len(wanted) + ni) % len(PALETTE)], label
                        )
                    )
        if not series:
            known = sorted({n for s in srcs for n in s.history.scalar_names()})
            raise ValueError(
                f"no scalar {what!r} recorded; scalars are: {', '.join(known) or 'none'}"
            )
        chart = _LineChart(what, series, [] if multi else _events(srcs[0].history))
        prims = _layout_line(chart, W, H, scale)
    return _raster(prims, W, H).to_png()


def save_png(source: Any, path: str | os.PathLike[str], what: str = "loss", **kwargs: Any) -> str:
    """Write :func:`figure_png` to ``path``; returns the path."""
    data = figure_png(source, what, **kwargs)
    p = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data)
    return p


def save_figures(source: Any, outdir: str | os.PathLike[str], **kwargs: Any) -> list[str]:
    """Write the standard figures (curves, heatmaps, latest histograms) as PNGs into ``outdir``."""
    srcs = _sources(source)
    out = []
    names = {n for s in srcs for n in s.history.scalar_names()}
    for what in ("loss", "lr", "grad_norm_total", "update_ratio_total"):
        if (what == "loss" and names & {"loss", "val_loss"}) or what in names:
            out.append(save_png(source, os.path.join(outdir, f"{what}.png"), what, **kwargs))
    if len(srcs) == 1:
        h = srcs[0].history
        for metric, _, _ in _HEATMAPS:
            steps, vals = h.layer_series(metric)
            if len(steps) and np.isfinite(vals).any():
                out.append(
                    save_png(
                        source,
                        os.path.join(outdir, f"heatmap_{metric}.png"),
                        f"heatmap:{metric}",
                        **kwargs,
                    )
                )
        rec = h.latest
        for kind, arr in (
            ("act", None if rec is None else rec.act_hist),
            ("ograd", None if rec is None else rec.ograd_hist),
        ):
            if arr is not None:
                out.append(
                    save_png(
                        source, os.path.join(outdir, f"hist_{kind}.png"), f"hist:{kind}", **kwargs
                    )
                )
    return out

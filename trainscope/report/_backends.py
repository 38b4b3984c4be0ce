"""The two drawing backends of the primitives: inline SVG and the numpy raster (PNG)."""

from __future__ import annotations

import base64

import numpy as np

from .. import _raster as R
from ._charts import (
    Prim,
)
from ._sources import (
    esc,
)


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



"""A small numpy rasterizer and PNG encoder (no matplotlib, no Pillow).

Enough to draw publication-ready line charts and heatmaps: anti-aliased polylines, filled bands,
rectangles, dashed rules and text in a built-in 5x7 bitmap font (scaled by an integer factor), and
to write the result as an RGB PNG (zlib, filter 0) -- see :func:`encode_png`.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = ["Raster", "encode_png", "hex_rgb", "text_width"]

# ----------------------------------------------------------------------------- 5x7 bitmap font
# One line per glyph: the character, then its 7 rows of 5 pixels ('#' ink, '.' paper).
_FONT_SRC = r"""
  ..... ..... ..... ..... ..... ..... .....
! ..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..
" .#.#. .#.#. .#.#. ..... ..... ..... .....
# .#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.
$ ..#.. .#### #.#.. .###. ..#.# ####. ..#..
% ##... ##..# ...#. ..#.. .#... #..## ...##
& .##.. #..#. #.#.. .#... #.#.# #..#. .##.#
' ..#.. ..#.. .#... ..... ..... ..... .....
( ...#. ..#.. .#... .#... .#... ..#.. ...#.
) .#... ..#.. ...#. ...#. ...#. ..#.. .#...
* ..... ..#.. #.#.# .###. #.#.# ..#.. .....
+ ..... ..#.. ..#.. ##### ..#.. ..#.. .....
, ..... ..... ..... ..... .##.. ..#.. .#...
- ..... ..... ..... ##### ..... ..... .....
. ..... ..... ..... ..... ..... .##.. .##..
/ ..... ....# ...#. ..#.. .#... #.... .....
0 .###. #...# #..## #.#.# ##..# #...# .###.
1 ..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.
2 .###. #...# ....# ...#. ..#.. .#... #####
3 ##### ...#. ..#.. ...#. ....# #...# .###.
4 ...#. ..##. .#.#. #..#. ##### ...#. ...#.
5 ##### #.... ####. ....# ....# #...# .###.
6 ..##. .#... #.... ####. #...# #...# .###.
7 ##### ....# ...#. ..#.. .#... .#... .#...
8 .###. #...# #...# .###. #...# #...# .###.
9 .###. #...# #...# .#### ....# ...#. .##..
: ..... .##.. .##.. ..... .##.. .##.. .....
; ..... .##.. .##.. ..... .##.. ..#.. .#...
< ...#. ..#.. .#... #.... .#... ..#.. ...#.
= ..... ..... ##### ..... ##### ..... .....
> .#... ..#.. ...#. ....# ...#. ..#.. .#...
? .###. #...# ....# ...#. ..#.. ..... ..#..
@ .###. #...# ....# .##.# #.#.# #.#.# .###.
A .###. #...# #...# ##### #...# #...# #...#
B ####. #...# #...# ####. #...# #...# ####.
C .###. #...# #.... #.... #.... #...# .###.
D ###.. #..#. #...# #...# #...# #..#. ###..
E ##### #.... #.... ####. #.... #.... #####
F ##### #.... #.... ####. #.... #.... #....
G .###. #...# #.... #.### #...# #...# .####
H #...# #...# #...# ##### #...# #...# #...#
I .###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.
J ..### ...#. ...#. ...#. ...#. #..#. .##..
K #...# #..#. #.#.. ##... #.#.. #..#. #...#
L #.... #.... #.... #.... #.... #.... #####
M #...# ##.## #.#.# #.#.# #...# #...# #...#
N #...# #...# ##..# #.#.# #..## #...# #...#
O .###. #...# #...# #...# #...# #...# .###.
P ####. #...# #...# ####. #.... #.... #....
Q .###. #...# #...# #...# #.#.# #..#. .##.#
R ####. #...# #...# ####. #.#.. #..#. #...#
S .#### #.... #.... .###. ....# ....# ####.
T ##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..
U #...# #...# #...# #...# #...# #...# .###.
V #...# #...# #...# #...# #...# .#.#. ..#..
W #...# #...# #...# #.#.# #.#.# #.#.# .#.#.
X #...# #...# .#.#. ..#.. .#.#. #...# #...#
Y #...# #...# .#.#. ..#.. ..#.. ..#.. ..#..
Z ##### ....# ...#. ..#.. .#... #.... #####
[ .###. .#... .#... .#... .#... .#... .###.
\ ..... #.... .#... ..#.. ...#. ....# .....
] .###. ...#. ...#. ...#. ...#. ...#. .###.
^ ..#.. .#.#. #...# ..... ..... ..... .....
_ ..... ..... ..... ..... ..... ..... #####
` .#... ..#.. ...#. ..... ..... ..... .....
a ..... ..... .###. ....# .#### #...# .####
b #.... #.... #.##. ##..# #...# #...# ####.
c ..... ..... .###. #.... #.... #...# .###.
d ....# ....# .##.# #..## #...# #...# .####
e ..... ..... .###. #...# ##### #.... .###.
f ..##. .#..# .#... ###.. .#... .#... .#...
g ..... .#### #...# #...# .#### ....# .###.
h #.... #.... #.##. ##..# #...# #...# #...#
i ..#.. ..... .##.. ..#.. ..#.. ..#.. .###.
j ...#. ..... ..##. ...#. ...#. #..#. .##..
k #.... #.... #..#. #.#.. ##... #.#.. #..#.
l .##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.
m ..... ..... ##.#. #.#.# #.#.# #...# #...#
n ..... ..... #.##. ##..# #...# #...# #...#
o ..... ..... .###. #...# #...# #...# .###.
p ..... ..... ####. #...# ####. #.... #....
q ..... ..... .##.# #..## .#### ....# ....#
r ..... ..... #.##. ##..# #.... #.... #....
s ..... ..... .###. #.... .###. ....# ####.
t .#... .#... ###.. .#... .#... .#..# ..##.
u ..... ..... #...# #...# #...# #..## .##.#
v ..... ..... #...# #...# #...# .#.#. ..#..
w ..... ..... #...# #...# #.#.# #.#.# .#.#.
x ..... ..... #...# .#.#. ..#.. .#.#. #...#
y ..... ..... #...# #...# .#### ....# .###.
z ..... ..... ##### ...#. ..#.. .#... #####
{ ...#. ..#.. ..#.. .#... ..#.. ..#.. ...#.
| ..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..
} .#... ..#.. ..#.. ...#. ..#.. ..#.. .#...
~ ..... ..... .#... #.#.# ...#. ..... .....
"""


def _parse_font() -> dict[str, np.ndarray]:
    glyphs: dict[str, np.ndarray] = {}
    for line in _FONT_SRC.split("\n"):
        if len(line) < 3:
            continue
        ch, rows = line[0], line[2:].split()
        if len(rows) != 7 or any(len(r) != 5 for r in rows):
            raise ValueError(f"bad glyph for {ch!r}")
        glyphs[ch] = np.array([[c == "#" for c in r] for r in rows], dtype=bool)
    return glyphs


GLYPHS = _parse_font()
CELL_W, CELL_H = 6, 8  # glyph plus one pixel of spacing


def text_width(s: str, scale: int = 1) -> int:
    """Width in pixels of ``s`` drawn at ``scale``."""
    return max(len(s) * CELL_W - 1, 0) * scale


def hex_rgb(color: str) -> np.ndarray:
    """``"#1f77b4"`` -> ``array([31, 119, 180])`` (float)."""
    c = color.lstrip("#")
    if len(c) == 3:
        c = "".join(x * 2 for x in c)
    return np.array([int(c[i : i + 2], 16) for i in (0, 2, 4)], dtype=np.float64)


class Raster:
    """An RGB canvas (float, 0..255) with alpha-blended drawing in pixel coordinates
    (x to the right, y downwards, pixel centres at integer + 0.5)."""

    def __init__(self, width: int, height: int, background: str = "#ffffff") -> None:
        if width < 1 or height < 1 or width * height > 50_000_000:
            raise ValueError(f"canvas size {width}x{height} is out of range")
        self.w, self.h = int(width), int(height)
        self.img = np.empty((self.h, self.w, 3), dtype=np.float64)
        self.img[:] = hex_rgb(background)

    # ------------------------------------------------------------------ primitives
    def blend(
        self, alpha: np.ndarray, color: str, opacity: float = 1.0, at: tuple[int, int] = (0, 0)
    ) -> None:
        """Composite ``color`` with per-pixel coverage ``alpha`` (0..1) whose top-left pixel is
        ``at = (row, col)``; only that region of the canvas is touched."""
        y0, x0 = at
        h, w = alpha.shape
        ya, xa = max(y0, 0), max(x0, 0)
        yb, xb = min(y0 + h, self.h), min(x0 + w, self.w)
        if yb <= ya or xb <= xa:
            return
        a = np.clip(alpha[ya - y0 : yb - y0, xa - x0 : xb - x0], 0.0, 1.0)[..., None] * opacity
        region = self.img[ya:yb, xa:xb]
        region *= 1.0 - a
        region += a * hex_rgb(color)

    def rect(
        self, x0: float, y0: float, x1: float, y1: float, color: str, opacity: float = 1.0
    ) -> None:
        xa, xb = sorted((x0, x1))
        ya, yb = sorted((y0, y1))
        i0, i1 = int(max(np.floor(xa), 0)), int(min(np.ceil(xb), self.w))
        j0, j1 = int(max(np.floor(ya), 0)), int(min(np.ceil(yb), self.h))
        if i1 <= i0 or j1 <= j0:
            return
        c = hex_rgb(color)
        region = self.img[j0:j1, i0:i1]
        region *= 1.0 - opacity
        region += opacity * c

    def hline(
        self, x0: float, x1: float, y: float, color: str, width: float = 1.0, dash: int = 0
    ) -> None:
        self._axis_line(x0, x1, y, color, width, dash, horizontal=True)

    def vline(
        self, x: float, y0: float, y1: float, color: str, width: float = 1.0, dash: int = 0
    ) -> None:
        self._axis_line(y0, y1, x, color, width, dash, horizontal=False)

    def _axis_line(
        self,
        a0: float,
        a1: float,
        c: float,
        color: str,
        width: float,
        dash: int,
        *,
        horizontal: bool,
    ) -> None:
        lo, hi = sorted((a0, a1))
        i0, i1 = int(max(np.floor(lo), 0)), int(min(np.ceil(hi), self.w if horizontal else self.h))
        half = max(width, 1.0) / 2.0
        j0 = int(max(np.floor(c - half), 0))
        j1 = int(min(np.ceil(c + half), self.h if horizontal else self.w))
        if i1 <= i0 or j1 <= j0:
            return
        mask = np.ones(i1 - i0, dtype=bool)
        if dash:
            mask = ((np.arange(i0, i1) // dash) % 2) == 0
        col = hex_rgb(color)
        for j in range(j0, j1):
            if horizontal:
                self.img[j, i0:i1][mask] = col
            else:
                self.img[i0:i1, j][mask] = col

    def polyline(
        self, xs: np.ndarray, ys: np.ndarray, color: str, width: float = 1.5, opacity: float = 1.0
    ) -> None:
        """Anti-aliased polyline; NaN points break it into separate pieces."""
        xs = np.asarray(xs, dtype=np.float64)
        ys = np.asarray(ys, dtype=np.float64)
        ok = np.isfinite(xs) & np.isfinite(ys)
        if ok.sum() == 0:
            return
        r = max(width, 0.8) / 2.0
        # sample every segment densely and stamp an anti-aliased disc at each sample
        seg = ok[:-1] & ok[1:]
        pts_x: list[np.ndarray] = [xs[ok]]
        pts_y: list[np.ndarray] = [ys[ok]]
        if seg.any():
            x0, y0, x1, y1 = xs[:-1][seg], ys[:-1][seg], xs[1:][seg], ys[1:][seg]
            lengths = np.hypot(x1 - x0, y1 - y0)
            n = np.minimum(np.ceil(lengths / 0.4).astype(np.int64) + 1, 4000)
            idx = np.repeat(np.arange(len(n)), n)
            t = np.concatenate([np.linspace(0.0, 1.0, k) for k in n])
            pts_x.append(x0[idx] + (x1 - x0)[idx] * t)
            pts_y.append(y0[idx] + (y1 - y0)[idx] * t)
        px = np.concatenate(pts_x)
        py = np.concatenate(pts_y)
        keep = (px > -r - 2) & (px < self.w + r + 2) & (py > -r - 2) & (py < self.h + r + 2)
        px, py = px[keep], py[keep]
        if not len(px):
            return
        k = int(np.ceil(r + 1))
        bx0 = max(int(np.floor(px.min())) - k, 0)
        by0 = max(int(np.floor(py.min())) - k, 0)
        bx1 = min(int(np.ceil(px.max())) + k + 1, self.w)
        by1 = min(int(np.ceil(py.max())) + k + 1, self.h)
        if bx1 <= bx0 or by1 <= by0:
            return
        cover = np.zeros((by1 - by0, bx1 - bx0))
        fx = np.floor(px).astype(np.int64)
        fy = np.floor(py).astype(np.int64)
        for dy in range(-k, k + 1):
            for dx in range(-k, k + 1):
                cx, cy = fx + dx, fy + dy
                inside = (cx >= bx0) & (cx < bx1) & (cy >= by0) & (cy < by1)
                if not inside.any():
                    continue
                d = np.hypot(cx[inside] + 0.5 - px[inside], cy[inside] + 0.5 - py[inside])
                cov = np.clip(r + 0.5 - d, 0.0, 1.0)
                np.maximum.at(cover, (cy[inside] - by0, cx[inside] - bx0), cov)
        self.blend(cover, color, opacity, at=(by0, bx0))

    def band(
        self,
        xs: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
        color: str,
        opacity: float = 0.2,
        clip: tuple[float, float, float, float] | None = None,
    ) -> None:
        """Fill between two curves sharing increasing ``xs`` (pixel coordinates)."""
        xs, lo, hi = (np.asarray(a, dtype=np.float64) for a in (xs, lo, hi))
        ok = np.isfinite(xs) & np.isfinite(lo) & np.isfinite(hi)
        if ok.sum() < 2:
            return
        xs, lo, hi = xs[ok], lo[ok], hi[ok]
        x0, y0, x1, y1 = clip if clip is not None else (0, 0, self.w, self.h)
        cols = np.arange(int(max(np.floor(xs.min()), x0)), int(min(np.ceil(xs.max()), x1)))
        if not len(cols):
            return
        top = np.interp(cols + 0.5, xs, np.minimum(lo, hi))
        bot = np.interp(cols + 0.5, xs, np.maximum(lo, hi))
        r0 = int(max(np.floor(min(top.min(), y1)), 0, y0))
        r1 = int(min(np.ceil(max(bot.max(), y0)) + 1, self.h, y1 + 1))
        if r1 <= r0:
            return
        rows = np.arange(r0, r1)[:, None] + 0.5
        mask = (rows >= top[None, :] - 0.5) & (rows <= bot[None, :] + 0.5)
        mask &= (rows >= y0) & (rows <= y1)
        self.blend(mask.astype(np.float64), color, opacity, at=(r0, int(cols[0])))

    def image(self, x0: int, y0: int, rgb: np.ndarray) -> None:
        """Paste an ``(h, w, 3)`` image (0..255) with its top-left corner at ``(x0, y0)``."""
        h, w = rgb.shape[:2]
        xa, ya = max(x0, 0), max(y0, 0)
        xb, yb = min(x0 + w, self.w), min(y0 + h, self.h)
        if xb <= xa or yb <= ya:
            return
        self.img[ya:yb, xa:xb] = rgb[ya - y0 : yb - y0, xa - x0 : xb - x0]

    def text(
        self,
        x: float,
        y: float,
        s: str,
        color: str = "#222222",
        scale: int = 1,
        anchor: str = "start",
        vertical: bool = False,
    ) -> None:
        """Draw ``s`` with its top-left at ``(x, y)`` (``anchor`` ``start``/``middle``/``end``
        along the text direction); ``vertical`` reads bottom to top."""
        if not s:
            return
        bitmap = np.zeros((CELL_H, len(s) * CELL_W), dtype=bool)
        for i, ch in enumerate(s):
            g = GLYPHS.get(ch, GLYPHS["?"])
            bitmap[0:7, i * CELL_W : i * CELL_W + 5] = g
        bitmap = bitmap[:, : max(len(s) * CELL_W - 1, 1)]
        if scale > 1:
            bitmap = np.kron(bitmap, np.ones((scale, scale), dtype=bool))
        if vertical:
            bitmap = np.rot90(bitmap)
        h, w = bitmap.shape
        along = h if vertical else w
        shift = {"start": 0.0, "middle": along / 2.0, "end": float(along)}.get(anchor, 0.0)
        if vertical:
            top, left = round(y - along + shift), round(x)
        else:
            top, left = round(y), round(x - shift)
        self.blend(bitmap.astype(np.float64), color, at=(top, left))

    def to_png(self) -> bytes:
        return encode_png(np.clip(np.round(self.img), 0, 255).astype(np.uint8))


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode an ``(H, W, 3)`` uint8 array as a PNG file (8-bit RGB, no interlace)."""
    a = np.ascontiguousarray(rgb, dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"encode_png needs an (H, W, 3) array, got shape {a.shape}")
    h, w = a.shape[:2]
    raw = np.zeros((h, 1 + 3 * w), dtype=np.uint8)  # filter byte 0 (None) on every row
    raw[:, 1:] = a.reshape(h, 3 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + chunk(b"IEND", b"")
    )

"""Shared bqplot helpers: figure style, one-message mark updates, readable ticks, colours."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import bqplot as bq
import ipywidgets as W
import numpy as np

from ..history import History
from ._series import log_ticks, nice_ticks, tick_format

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
_RESERVED = {"loss", "val_loss", "lr", "momentum", "step_time", "epoch"}
_PROBE_PREFIXES = ("lr/", "grad_norm", "update_ratio", "step_time")
STEP_FMT = "~s"  # 1.2k, 30k: step axes
Y_FMT = ".3~g"
LOG_FMT = ".2~g"  # 0.001, 0.5, 20, 1e+03
EVENT_COLORS = {
    "intervention": "#e6550d",
    "undo": "#636363",
    "lr_find": "#756bb1",
    "rollback": "#636363",
}
_VIRIDIS = ["#440154", "#414487", "#2a788e", "#22a884", "#7ad151", "#fde725"]
UPDATE_BAND = (1e-4, 1e-2)
"""Update/weight ratios inside this band count as healthy (the 1e-3 rule of thumb, ±1 decade)."""

EMPTY = np.zeros(0, np.float32)


def user_metrics(history: History) -> list[str]:
    """Scalars the user logged (``probe.log(acc=...)``), not the probe's own (loss, lr, norms...)."""
    return [
        n
        for n in history.scalar_names()
        if n not in _RESERVED and not n.startswith(_PROBE_PREFIXES)
    ]


def depth_colors(n: int) -> list[str]:
    """``n`` colours from dark (first layer) to yellow (last), viridis-like."""
    if n <= 0:
        return []
    out = []
    for i in range(n):
        f = i / max(n - 1, 1) * (len(_VIRIDIS) - 1)
        j = min(int(f), len(_VIRIDIS) - 2)
        a, b = _VIRIDIS[j], _VIRIDIS[j + 1]
        w = f - j
        rgb = [
            round(int(a[k : k + 2], 16) * (1 - w) + int(b[k : k + 2], 16) * w) for k in (1, 3, 5)
        ]
        out.append("#" + "".join(f"{c:02x}" for c in rgb))
    return out


def figure(title: str, marks: list[Any], axes: list[Any], *, height: str = "260px") -> bq.Figure:
    return bq.Figure(
        title=title,
        marks=marks,
        axes=axes,
        animation_duration=0,
        fig_margin={"top": 32, "bottom": 40, "left": 62, "right": 14},
        layout=W.Layout(width="100%", height=height, min_width="260px"),
        legend_location="top-right",
        title_style={"font-size": "13px"},
    )


def set_marks(mark: Any, **values: Any) -> None:
    """Assign several traits of one mark as one message."""
    with mark.hold_sync():
        for k, v in values.items():
            setattr(mark, k, v)


def set_ticks(axis: bq.Axis, values: np.ndarray, *, log: bool, fit_format: bool = False) -> None:
    """Round tick values over the finite range of ``values`` (small figures only); with
    ``fit_format`` also a label format that tells those ticks apart (:func:`tick_format`)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return
    ticks = (
        log_ticks(float(v.min()), float(v.max()))
        if log
        else nice_ticks(float(v.min()), float(v.max()))
    )
    if len(ticks) and not np.array_equal(np.asarray(axis.tick_values, dtype=np.float64), ticks):
        axis.tick_values = ticks
    if fit_format and not log and len(ticks):
        fmt = tick_format(ticks)
        if axis.tick_format != fmt:
            axis.tick_format = fmt


def pad_lines(lines: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Several (x, y) lines of different lengths as 2-D float32 arrays padded with NaN.

    One line stays 1-D; 2-D arrays get at least two columns (bqplot squeezes size-1 axes, which
    would turn one point per line into one line).
    """
    if len(lines) == 1:
        x, y = lines[0]
        return np.asarray(x, np.float32), np.asarray(y, np.float32)
    n = max(2, max((len(x) for x, _ in lines), default=0))
    X = np.full((len(lines), n), np.nan, np.float32)
    Y = np.full((len(lines), n), np.nan, np.float32)
    for i, (x, y) in enumerate(lines):
        X[i, : len(x)] = x
        Y[i, : len(y)] = y
    return X, Y


def positive(y: np.ndarray) -> np.ndarray:
    """For log scales: non-positive values become gaps."""
    y = np.asarray(y, dtype=np.float32)
    return np.where(y > 0, y, np.nan).astype(np.float32)

"""Layer-table rows: the latest per-layer metrics, formatted for JSON and colour coded.

The thresholds come from :mod:`trainscope.metrics` (Python), so the browser only draws
(``status`` 0 fine, 1 look at it, 2 bad).  They are display hints, deliberately simple; the diagnosis (``trainscope.diagnostics``)
is where findings with evidence come from.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import metrics as _metrics
from ..history import History, StepRecord

__all__ = ["COLUMNS", "cell_status", "column_status", "layer_rows"]

COLUMNS: list[dict[str, str]] = [
    {"key": m.name, "label": m.label, "fmt": m.fmt, "title": m.title} for m in _metrics.table_metrics()
]
"""The layer table's columns: those marked ``table`` in :mod:`trainscope.metrics`."""
_NONFINITE_KEYS = _metrics.NONFINITE_NAMES


def cell_status(key: str, v: float) -> int | None:
    """0 fine, 1 look at it, 2 bad, ``None`` not applicable (NaN)."""
    out = column_status(key, np.array([v], dtype=np.float64))[0]
    return None if out < 0 else int(out)


def column_status(key: str, v: np.ndarray) -> np.ndarray:
    """:func:`cell_status` for a whole column at once (-1 = not applicable)."""
    return _metrics.column_status(key, v)  # thresholds: trainscope.metrics (Metric.health)


def _round4(v: np.ndarray) -> list[Any]:
    """Four significant digits, NaN -> None, ±Inf -> "inf" / "-inf" (JSON has neither)."""
    v = np.asarray(v, dtype=np.float64)
    finite = np.isfinite(v) & (v != 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.floor(np.log10(np.abs(np.where(finite, v, 1.0))))
        scale = 10.0 ** (3 - mag)
        r = np.where(finite, np.round(v * scale) / scale, v)
    out: list[Any] = r.tolist()
    for j in np.flatnonzero(~np.isfinite(v)):
        out[j] = None if np.isnan(v[j]) else ("inf" if v[j] > 0 else "-inf")
    return out


def layer_rows(history: History, record: StepRecord | None = None) -> list[dict[str, Any]]:
    """One row per layer, in forward order, for :class:`~trainscope.widgets.LayerTable`."""
    rec = history.latest if record is None else record
    L = len(history.layers)
    order = [i for i in history.forward_order if i < L]
    idx = np.asarray(order, dtype=np.int64)
    cols_v: list[list[Any]] = []
    cols_s: list[list[int | None]] = []
    for col in COLUMNS:
        arr = rec.metrics.get(col["key"]) if rec is not None else None
        v = (
            np.asarray(arr, dtype=np.float64)[idx]
            if arr is not None and len(arr) == L
            else np.full(len(idx), np.nan)
        )
        cols_v.append(_round4(v))
        cols_s.append([None if x < 0 else int(x) for x in column_status(col["key"], v)])
    bad = np.zeros(len(idx), dtype=bool)
    if rec is not None:
        for key in _NONFINITE_KEYS:
            arr = rec.metrics.get(key)
            if arr is not None and len(arr) == L:
                a = np.asarray(arr, dtype=np.float64)[idx]
                bad |= np.isfinite(a) & (a != 0)
    rows: list[dict[str, Any]] = []
    for k, i in enumerate(order):
        info = history.layers[i]
        rows.append(
            {
                "name": info.name,
                "type": info.type,
                "kind": info.kind,
                "n_params": int(info.n_params),
                "values": [c[k] for c in cols_v],
                "status": [c[k] for c in cols_s],
                "nonfinite": bool(bad[k]),
            }
        )
    return rows

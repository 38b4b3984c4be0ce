"""Layer-table rows: the latest per-layer metrics, formatted for JSON and colour coded.

The thresholds are here, in Python, so the browser only draws (``status`` 0 fine, 1 look at it,
2 bad).  They are display hints, deliberately simple; the diagnosis (``trainscope.diagnostics``)
is where findings with evidence come from.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..history import History, StepRecord

__all__ = ["COLUMNS", "cell_status", "column_status", "layer_rows"]

COLUMNS: list[dict[str, str]] = [
    {"key": "act_mean", "label": "act mean", "fmt": "num", "title": "mean of the layer's output"},
    {
        "key": "act_std",
        "label": "act std",
        "fmt": "num",
        "title": "standard deviation of the output (shrinking/exploding by depth: init)",
    },
    {
        "key": "act_frac_zero",
        "label": "% zero",
        "fmt": "pct",
        "title": "share of exactly-zero outputs",
    },
    {
        "key": "act_dead_frac",
        "label": "dead",
        "fmt": "pct",
        "title": "share of units that never fired over the dead-unit window",
    },
    {
        "key": "act_frac_sat",
        "label": "saturated",
        "fmt": "pct",
        "title": "share of outputs at the bounds of tanh / sigmoid-like activations",
    },
    {
        "key": "grad_norm",
        "label": "grad norm",
        "fmt": "sci",
        "title": "norm of the layer's parameter gradient",
    },
    {
        "key": "weight_norm",
        "label": "weight norm",
        "fmt": "sci",
        "title": "norm of the layer's parameters",
    },
    {
        "key": "update_ratio",
        "label": "update/weight",
        "fmt": "sci",
        "title": "||Δθ|| / ||θ|| per step; healthy around 1e-3 (1e-4 .. 1e-2)",
    },
]
_NONFINITE_KEYS = ("act_nonfinite", "ograd_nonfinite", "grad_nonfinite")


def cell_status(key: str, v: float) -> int | None:
    """0 fine, 1 look at it, 2 bad, ``None`` not applicable (NaN)."""
    out = column_status(key, np.array([v], dtype=np.float64))[0]
    return None if out < 0 else int(out)


def column_status(key: str, v: np.ndarray) -> np.ndarray:
    """:func:`cell_status` for a whole column at once (-1 = not applicable)."""
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        if key == "act_dead_frac":
            st = np.where(v > 0.5, 2, np.where(v > 0.1, 1, 0))
        elif key == "act_frac_zero":
            st = np.where(v >= 0.95, 2, np.where(v >= 0.6, 1, 0))
        elif key == "act_frac_sat":
            st = np.where(v > 0.5, 2, np.where(v > 0.2, 1, 0))
        elif key == "act_std":
            st = np.where((v < 1e-4) | (v > 1e3), 2, np.where((v < 1e-2) | (v > 1e1), 1, 0))
        elif key == "grad_norm":
            st = np.where(v == 0, 1, 0)
        elif key == "update_ratio":
            ok = (v >= 1e-4) & (v <= 1e-2)
            near = (v >= 1e-5) & (v <= 1e-1)
            st = np.where(v == 0, 1, np.where(ok, 0, np.where(near, 1, 2)))
        else:
            st = np.zeros(len(v), dtype=np.int64)
    st = np.where(np.isinf(v), 2, st)
    return np.where(np.isnan(v), -1, st).astype(np.int64)


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

"""Layer-table rows: the latest per-layer metrics, formatted for JSON and colour coded.

The thresholds are here, in Python, so the browser only draws (``status`` 0 fine, 1 look at it,
2 bad).  They are display hints, deliberately simple; the diagnosis (``trainscope.diagnostics``)
is where findings with evidence come from.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..history import History, StepRecord
from ._series import jsonable_number

__all__ = ["COLUMNS", "cell_status", "layer_rows"]

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
    if math.isnan(v):
        return None
    if math.isinf(v):
        return 2
    if key in ("act_dead_frac",):
        return 2 if v > 0.5 else 1 if v > 0.1 else 0
    if key == "act_frac_zero":
        return 2 if v >= 0.95 else 1 if v >= 0.6 else 0
    if key == "act_frac_sat":
        return 2 if v > 0.5 else 1 if v > 0.2 else 0
    if key == "act_std":
        return 2 if (v < 1e-4 or v > 1e3) else 1 if (v < 1e-2 or v > 1e1) else 0
    if key == "grad_norm":
        return 1 if v == 0 else 0
    if key == "update_ratio":
        if v == 0:
            return 1
        return 0 if 1e-4 <= v <= 1e-2 else 1 if 1e-5 <= v <= 1e-1 else 2
    return 0


def layer_rows(history: History, record: StepRecord | None = None) -> list[dict[str, Any]]:
    """One row per layer, in forward order, for :class:`~trainscope.widgets.LayerTable`."""
    rec = history.latest if record is None else record
    rows: list[dict[str, Any]] = []
    L = len(history.layers)
    for i in history.forward_order:
        if i >= L:
            continue
        info = history.layers[i]
        values: list[Any] = []
        status: list[int | None] = []
        for col in COLUMNS:
            arr = rec.metrics.get(col["key"]) if rec is not None else None
            v = float(arr[i]) if arr is not None and i < len(arr) else math.nan
            values.append(jsonable_number(v))
            status.append(cell_status(col["key"], v))
        nonfinite = 0
        if rec is not None:
            for key in _NONFINITE_KEYS:
                arr = rec.metrics.get(key)
                if arr is not None and i < len(arr) and np.isfinite(arr[i]) and arr[i] != 0:
                    nonfinite += 1
        rows.append(
            {
                "name": info.name,
                "type": info.type,
                "kind": info.kind,
                "n_params": int(info.n_params),
                "values": values,
                "status": status,
                "nonfinite": nonfinite > 0,
            }
        )
    return rows

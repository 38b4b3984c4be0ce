"""Report sources (Probe, History, Run, path, lists of those), the palette and HTML escaping."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import metrics as _metrics
from ..history import History

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
    from ..run import RunContext
    from ..runlog import Run, RunSet

    if isinstance(source, (str, os.PathLike)):
        from ..runlog import open_run

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



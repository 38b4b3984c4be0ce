"""The charts of a run: curve groups, per-layer heatmaps, histogram bin labels."""

from __future__ import annotations

import numpy as np

from ..history import History
from ._charts import (
    _Heatmap,
    _LineChart,
    _Series,
)
from ._sources import (
    _CURVE_GROUPS,
    _HEATMAPS,
    PALETTE,
    _order,
    _Source,
)


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
    from ..stats import HIST_LABELS

    out = []
    for lab in HIST_LABELS:
        if lab in ("0", "-inf", "+inf", "nan"):
            out.append(lab)
            continue
        mant, _, exp = lab.partition("e")
        e = float(exp)
        out.append(f"{mant}e{int(e)}" if e == int(e) and int(e) % 2 == 0 else "")
    return out



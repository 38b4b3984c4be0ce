"""PNG figures of a run: figure_png, save_png, save_figures."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .. import metrics as _metrics
from ._backends import (
    _raster,
)
from ._charts import (
    _Heatmap,
    _layout_heatmap,
    _layout_line,
    _LineChart,
)
from ._runcharts import (
    _bin_labels,
    _events,
    _scalar_series,
)
from ._sources import (
    _HEATMAPS,
    PALETTE,
    _order,
    _sources,
)


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
        from ..history import LAYER_METRICS

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

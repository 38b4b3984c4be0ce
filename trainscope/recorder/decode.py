"""Host side: a transferred :class:`~.payload.StepPayload` -> a :class:`StepRecord`, in one line.

``finalize the summary rows -> histograms -> per-unit masks -> record``: every step reads the
payload's named host arrays and the statistics helpers below it (:mod:`trainscope.stats`,
:mod:`trainscope._params`), and writes into the :class:`~trainscope.history.History` (the dead-unit
windows, the forward order).  Nothing here calls back into the recorder: what the recorder
must act on (a non-finite value seen) is returned.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import metrics as _metrics
from .. import stats as S
from .._lossextra import parse_loss_extras
from .._params import ParamTracker
from ..history import LAYER_METRICS, PARAM_METRICS, History, StepRecord
from ..layers import LayerInfo
from .payload import StepPayload

__all__ = ["decode_param_rows", "decode_record", "first_sample"]

ACT_FIELDS = tuple(m.field for m in _metrics.LAYER if m.source == "act")  # stats.ActSummary fields
OGRAD_FIELDS = tuple(m.field for m in _metrics.LAYER if m.source == "ograd")
LOSS_IN_FIELDS = (
    "pred_min",
    "pred_max",
    "pred_rowsum_dev",
    "target_min",
    "target_max",
    "target_frac_dev",
)


def decode_param_rows(
    steps: np.ndarray, rows: np.ndarray, ptrack: ParamTracker, history: History
) -> np.ndarray | None:
    """Store the cheap steps' parameter metrics and totals; returns the whole-model gradient
    norms recorded (finite or infinite), for the recorder's non-finite / jump watch."""
    history.add_param_rows(steps, ptrack.metrics(rows).astype(np.float32))
    watched = None
    for name, v in ptrack.totals(rows).items():
        keep = ~np.isnan(v)  # finite or ±Inf
        if keep.any():
            history.add_scalar_series(name, steps[keep].tolist(), v[keep].tolist())
            if name == "grad_norm_total":
                watched = v[keep]
    return watched


def decode_record(
    p: StepPayload[np.ndarray], layers: list[LayerInfo], ptrack: ParamTracker, history: History
) -> tuple[StepRecord, dict[str, float], bool]:
    """``(record, whole-model totals, a non-finite value was seen)`` of one sampled step."""
    L = len(layers)
    metrics = {m: np.full(L, np.nan) for m in LAYER_METRICS}
    totals: dict[str, float] = {}
    if p.prow is not None:
        pm = ptrack.metrics(p.prow[None])[0]
        for j, m in enumerate(PARAM_METRICS):
            metrics[m] = pm[:, j]
        ptrack.count_nonfinite_grads(p.prow, metrics)
        totals = {n: float(v[0]) for n, v in ptrack.totals(p.prow[None]).items()}
    nonfinite_seen = False
    act_hist = ograd_hist = None
    if p.act is not None:
        a = _finalize(p.act, p.act_meta, L)
        for f in ACT_FIELDS:
            metrics[f"act_{f}"] = getattr(a, f)
        nonfinite_seen |= bool(np.nan_to_num(a.nonfinite, nan=0.0).any())
        act_hist = _hist(p.act_hist, p.act_hist_layer, a, L)
    if p.grad is not None:
        g = _finalize(p.grad, p.grad_meta, L)
        for f in OGRAD_FIELDS:
            metrics[f"ograd_{f}"] = getattr(g, f)
        nonfinite_seen |= bool(np.nan_to_num(g.nonfinite, nan=0.0).any())
        ograd_hist = _hist(p.grad_hist, p.grad_hist_layer, g, L)
    dead: dict[int, np.ndarray] = {}
    for i, am in p.act_masks.items():
        active = am > 0
        if layers[i].kind in ("linear", "conv"):
            gm = p.grad_masks.get(i)
            if gm is None or gm.shape != am.shape:
                continue  # without the gradient we cannot tell a dead unit from a negative one
            active = active | (gm > 0)
        mask = history.update_units(i, active)
        dead[i] = mask
        metrics["act_dead_frac"][i] = float(mask.mean()) if mask.size else np.nan
    fwd, bwd = p.fwd_order, p.bwd_order
    nonfinite_seen |= bool(np.nan_to_num(metrics["grad_nonfinite"], nan=0.0).any())
    if fwd and len(fwd) >= len(history.forward_order[: len(fwd)]) and history.samples() == 0:
        history.set_forward_order(fwd)
    elif fwd and set(fwd) - set(history.forward_order[: len(fwd)]):
        history.set_forward_order(fwd)
    rec = StepRecord(
        step=p.step,
        time=p.time,
        metrics=metrics,
        act_hist=act_hist,
        ograd_hist=ograd_hist,
        forward_order=fwd,
        backward_order=bwd,
        first_nonfinite_forward=_first_nonfinite(fwd, metrics["act_nonfinite"]),
        first_nonfinite_backward=_first_nonfinite(bwd, metrics["ograd_nonfinite"]),
        dead_units=dead,
        inputs=_inputs_summary(p),
        loss_inputs=_loss_summary(p, history),
        extra={
            "forward_modes": p.modes,
            "exact_nonfinite": p.exact_nonfinite,
            "dead_window_fill": {i: history.dead_window_fill(i) for i in dead},
            "sample_reason": p.reason,
            **p.extra,  # e.g. trainscope.distributed: ranks combined
        },
    )
    # gradient left over from earlier steps (missing zero_grad): at the step's first forward
    # and at its first output gradient, before backward added anything
    for c, name in (
        (p.carried, "grad_norm_before_forward"),
        (p.carried_bwd, "grad_norm_before_backward"),
    ):
        if c is not None:
            rec.extra[name] = totals[name] = float(c.reshape(-1)[0])
    return rec, {n: v for n, v in totals.items() if not np.isnan(v)}, nonfinite_seen


def first_sample(rec: StepRecord, layers: list[LayerInfo], start_step: int) -> dict[str, Any]:
    """The first full sample (normally step 0, before any update: the forward scale of the
    initialization on the first batch), per layer in forward order, for ``history.meta``."""

    def col(metric: str, order: list[int]) -> list[float | None]:
        v = rec.metrics[metric]
        return [float(v[i]) if np.isfinite(v[i]) else None for i in order]

    order = list(rec.forward_order) or list(range(len(layers)))
    return {
        "step": int(rec.step),
        "before_first_update": int(rec.step) == start_step,
        "layers": [layers[i].name for i in order],
        **{
            m: col(m, order)
            for m in ("act_mean", "act_std", "act_abs_max", "act_nonfinite", "act_frac_zero")
        },
        "input_mean": rec.inputs.get("mean"),
        "input_std": rec.inputs.get("std"),
    }


def _finalize(rows: np.ndarray, meta: list[tuple[int, int]], L: int) -> S.ActSummary:
    idx = np.array([i for i, _ in meta])
    numel = np.array([n for _, n in meta])
    return S.finalize_summaries(rows, idx, numel, L)


def _first_nonfinite(order: list[int], nonfinite: np.ndarray) -> int | None:
    return next((i for i in order if nonfinite[i] != 0 and np.isfinite(nonfinite[i])), None)


def _hist(
    h: np.ndarray | None, layer: list[int], summ: S.ActSummary, L: int
) -> np.ndarray | None:
    if h is None:
        return None
    counts = np.zeros((L, S.NBINS))
    np.add.at(counts, np.asarray(layer, dtype=np.int64), h.astype(np.float64))
    return S.scale_histograms(counts, summ)


def _inputs_summary(p: StepPayload[np.ndarray]) -> dict[str, Any]:
    v = p.inputs
    if v is None:
        return {}
    im = dict(p.inputs_meta)
    n = im["numel"]
    f = {name: float(v[j]) for j, name in enumerate(S.ACT_FIELDS)}
    mean = f["sum"] / n
    im.update(
        mean=mean,
        std=math.sqrt(max(f["sumsq"] / n - mean * mean, 0.0)),
        min=f["min"],
        max=f["max"],
    )
    c = im.get("channels")
    if c:
        base = len(S.ACT_FIELDS)
        cm = v[base : base + c].astype(np.float64)
        csq = v[base + c : base + 2 * c].astype(np.float64)
        im["channel_mean"] = cm
        im["channel_std"] = np.sqrt(np.maximum(csq - cm * cm, 0.0))
    return im


def _loss_summary(p: StepPayload[np.ndarray], history: History) -> dict[str, Any]:
    v = p.loss_in
    if v is None:
        return {}
    lm = dict(p.loss_in_meta)
    nb = int(lm.pop("n_base", len(v)))
    lm.update({n: float(x) for n, x in zip(LOSS_IN_FIELDS, v[:nb], strict=False)})
    em = {k: lm.pop(k, None) for k in ("extra_fields", "class_counts")}
    lm.update(parse_loss_extras(v[nb:], em))
    _accumulate_classes(history, lm.get("class_counts"))
    return lm


def _accumulate_classes(history: History, counts: Any) -> None:
    """Class counts of every sampled batch, summed in ``history.meta["class_counts"]``."""
    if counts:
        acc = history.meta.get("class_counts")
        if not isinstance(acc, list) or len(acc) != len(counts):
            acc = history.meta["class_counts"] = [0.0] * len(counts)
        for j, c in enumerate(counts):
            acc[j] += c

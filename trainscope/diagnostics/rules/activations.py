"""Rules about the forward signal: scale across depth and time, dead / saturated / identical units."""

from __future__ import annotations

import numpy as np

from ...history import History
from .._series import feeder, fmt, held, names, param_layers, pct, series
from ..context import Context
from ..finding import Finding, intervention
from ..registry import rule
from .causes import root_cause


def init_scheme(h: History) -> str:
    """He init for ReLU-like networks, Glorot for tanh / sigmoid ones."""
    bounded = any(x.bounds is not None and not x.relu_family for x in h.layers)
    relu_like = any(
        x.relu_family or x.type in ("LeakyReLU", "PReLU", "RReLU", "GELU", "SiLU", "ELU", "Mish")
        for x in h.layers
    )
    return "xavier_normal" if bounded and not relu_like else "kaiming_normal"


def act_profile(h: History, ctx: Context) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Std of the representation entering each hidden linear / conv layer, in depth order.

    Point ``k`` is the output of the module that runs just before parametrized layer ``k + 1``
    (i.e. what that layer reads), for every parametrized layer after the first.  The output
    layer's own output (logits) is not part of the profile: its scale is the task's, not the
    network's.  Returns ``(point layers, steps, values (T, K))``.
    """

    def get() -> tuple[list[int], np.ndarray, np.ndarray]:
        pl = param_layers(h, ctx)
        pts = [f for f in (feeder(h, ctx, i) for i in pl[1:]) if f is not None]
        pts = list(dict.fromkeys(pts))
        steps, std = series(h, ctx, "act_std")
        return pts, steps, std[:, pts] if pts else np.zeros((len(steps), 0))

    return ctx.memo("act_profile", get)


def _depth_ratios(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample: last / first positive finite point of the profile, and the two indices."""
    T = values.shape[0]
    ratio = np.full(T, np.nan)
    first = np.zeros(T, dtype=np.int64)
    last = np.zeros(T, dtype=np.int64)
    for t in range(T):
        ok = np.flatnonzero(np.isfinite(values[t]) & (values[t] > 0))
        if len(ok) >= 2:
            first[t], last[t] = ok[0], ok[-1]
            ratio[t] = values[t, ok[-1]] / values[t, ok[0]]
    return ratio, first, last


def _scale_finding(h: History, ctx: Context, *, vanishing: bool) -> Finding | None:
    th = ctx.thresholds
    pts, steps, vals = act_profile(h, ctx)
    if not pts or len(steps) == 0:
        return None
    label = "vanishing_activations" if vanishing else "exploding_activations"
    word = "falls" if vanishing else "grows"
    scheme = init_scheme(h)
    fixes = [
        intervention("reinit", "Re-initialize with LSUV (unit-variance layers)", layers="all", scheme="lsuv"),
        intervention("reinit", f"Re-initialize ({scheme})", layers="all", scheme=scheme),
    ]
    # across depth
    ratio, first, last = _depth_ratios(vals)
    with np.errstate(invalid="ignore", divide="ignore"):
        flags = ratio < th.depth_ratio if vanishing else ratio > 1.0 / th.depth_ratio
    if held(flags, th.persist_need, th.persist_of):
        t = len(steps) - 1 - int(np.argmax(flags[::-1]))  # latest flagged sample
        r = float(ratio[t])
        a, b = pts[int(first[t])], pts[int(last[t])]
        extreme = r < th.depth_ratio_error if vanishing else r > 1.0 / th.depth_ratio_error
        na, nb = h.layers[a].name, h.layers[b].name
        factor = 1.0 / r if vanishing else r
        return Finding(
            label=label,
            severity="error" if extreme else "warning",
            title=f"Activations {'vanish' if vanishing else 'explode'} with depth ({fmt(factor)}x from `{na}` to `{nb}`)",
            evidence=(
                f"activation std {word} from {fmt(vals[t, first[t]])} at `{na}` to "
                f"{fmt(vals[t, last[t]])} at `{nb}` ({fmt(factor)}x {'smaller' if vanishing else 'larger'} "
                f"across {len(pts)} hidden layers, step {int(steps[t])}; held in "
                f"{int(np.asarray(flags[-th.persist_of:]).sum())} of the last {min(th.persist_of, len(flags))} samples)"
            ),
            layers=names(h, pts),
            interventions=fixes,
            data={"ratio": r, "profile": [float(x) for x in vals[t]]},
        )
    return None


@rule("vanishing_activations", checklist=("karpathy.init_well", "tobin.grad_flow"), finite=True)
def vanishing_activations(h: History, ctx: Context) -> Finding | None:
    """The std of the representation entering the last hidden linear / conv layer is ``depth_ratio``
    (100x) or more below the one entering the second (the profile skips the logits), in
    ``persist_need`` of the last ``persist_of`` samples.  Error from 1e4x.  Exactly-zero layers are
    left to ``dead_units`` / ``symmetric_init``."""
    return _scale_finding(h, ctx, vanishing=True)


@rule("exploding_activations", checklist=("karpathy.init_well", "tobin.bug_numerical"), finite=True)
def exploding_activations(h: History, ctx: Context) -> Finding | None:
    """Mirror image of ``vanishing_activations``: the std grows 100x or more from the second to
    the last hidden linear / conv input (persisting).  Error from 1e4x."""
    return _scale_finding(h, ctx, vanishing=False)


def producer(h: History, i: int) -> int | None:
    """The nearest linear / conv layer that runs before ``i`` (the source of its units)."""
    order = h.forward_order
    if i not in order:
        return None
    for j in reversed(order[: order.index(i)]):
        if h.layers[j].kind in ("linear", "conv") and h.layers[j].n_trainable > 0:
            return j
    return None


@rule("dead_units", checklist=("tobin.grad_flow", "karpathy.init_well"), finite=True)
def dead_units(h: History, ctx: Context) -> Finding | None:
    """ReLU-family units (or linear / conv units, with a functional ReLU) that never produced a
    positive output -- and, for linear / conv, never received a gradient -- over the whole
    dead-unit window (``Probe(dead_window=...)``, at least ``dead_min_window`` samples).  Severity by
    the worst layer's dead share: info >= 25%, warning >= 50%, error >= 90%."""
    th = ctx.thresholds
    rec = h.latest
    if rec is None or not rec.dead_units:
        return None
    fill = rec.extra.get("dead_window_fill", {})
    need = min(th.dead_min_window, h.dead_window)
    # one group per source of units: the linear / conv layer, with the activation module after it
    groups: dict[int, dict[str, float | int | None]] = {}
    for i, mask in rec.dead_units.items():
        if mask.size < 2 or fill.get(i, 0) < need:
            continue
        own = h.layers[i].kind in ("linear", "conv")
        src = i if own else producer(h, i)
        key = src if src is not None else i
        g = groups.setdefault(key, {"share": 0.0, "units": int(mask.size), "act": None, "fill": 0})
        if float(mask.mean()) >= float(g["share"] or 0.0):
            g["share"], g["units"] = float(mask.mean()), int(mask.size)
        if not own:
            g["act"] = i
        g["fill"] = max(int(g["fill"] or 0), int(fill.get(i, 0)))
    flagged = sorted(
        ((float(g["share"] or 0.0), k) for k, g in groups.items() if float(g["share"] or 0.0) >= th.dead_info),
        reverse=True,
    )
    if not flagged:
        return None
    worst, wk = flagged[0]
    sev = "error" if worst >= th.dead_error else "warning" if worst >= th.dead_warning else "info"
    layers: list[str] = []
    parts = []
    for s, k in flagged:
        g = groups[k]
        act = g["act"]
        layers.append(h.layers[k].name)
        if act is not None and act != k:
            layers.append(h.layers[int(act)].name)
            where = f"`{h.layers[int(act)].name}` (after `{h.layers[k].name}`)"
        else:
            where = f"`{h.layers[k].name}`"
        units = int(g["units"] or 0)
        parts.append(f"{pct(s)} of {where} ({round(s * units)} of {units} units)")
    g0 = groups[wk]
    shown = h.layers[int(g0["act"])].name if g0["act"] is not None else h.layers[wk].name
    onset = _dead_onset(h, ctx, [wk] + ([int(g0["act"])] if g0["act"] is not None else []), th.dead_info)
    cause = root_cause(h, ctx, onset if onset is not None else h.step, symptom="dead")
    sources = [h.layers[k].name for _, k in flagged if h.layers[k].kind in ("linear", "conv")]
    fixes = []
    if sources:
        fixes.append(intervention("reinit", "Re-initialize the dead layers (He init)", layers=sources, scheme="kaiming_normal"))
        fixes.append(intervention("reinit", "Re-initialize the dead layers (LSUV)", layers=sources, scheme="lsuv"))
    fixes.append(intervention("scale_lr", "Lower the learning rate 10x", factor=0.1))
    if cause is not None:
        fixes = cause.fixes + [f for f in fixes if f not in cause.fixes]
    when = f" (since step {onset})" if onset is not None else ""
    return Finding(
        label="dead_units",
        severity=sev,
        title=(f"{cause.short} -> " if cause else "") + f"Dead ReLU units: {pct(worst)} of `{shown}`",
        evidence=(f"{cause.text} -> " if cause else "") + "; ".join(parts)
        + f" never fired over the last {int(g0['fill'] or 0)} sampled steps{when}",
        layers=list(dict.fromkeys(layers)),
        interventions=fixes,
        data={"dead_share": {h.layers[k].name: s for s, k in flagged}, "onset": onset,
              "cause": cause.key if cause else None},
    )


def _dead_onset(h: History, ctx: Context, idx: list[int], level: float) -> int | None:
    """First sampled step from which the dead share of these layers stayed at or above ``level``."""
    steps, dead = series(h, ctx, "act_dead_frac")
    if len(steps) == 0:
        return None
    col = np.nanmax(np.where(np.isfinite(dead[:, idx]), dead[:, idx], -1.0), axis=1)
    above = col >= level
    if not above[-1]:
        return None
    below = np.flatnonzero(~above)
    k = int(below[-1]) + 1 if len(below) else 0
    return int(steps[k])


@rule("saturated_activations", checklist=("karpathy.init_well", "tobin.normalize_inputs"), finite=True)
def saturated_activations(h: History, ctx: Context) -> Finding | None:
    """A bounded activation (tanh, sigmoid, hardtanh, softsign; not ReLU6) with at least
    ``sat_warning`` (50%) of its outputs within 1% of the output range from a bound -- where the
    derivative is <= 0.04 -- as the median of the last ``persist_of`` samples, holding in
    ``persist_need`` of them.  Output activations (no trainable layer after them) are skipped:
    saturated outputs there are confident predictions.  Info from 20%, error from 90%."""
    th = ctx.thresholds
    steps, sat = series(h, ctx, "act_frac_sat")
    if len(steps) == 0:
        return None
    order = h.forward_order
    hits: list[tuple[float, int]] = []
    for i, info in enumerate(h.layers):
        if info.bounds is None or info.relu_family or i not in order:
            continue
        later = order[order.index(i) + 1 :]
        if not any(h.layers[j].n_trainable > 0 and h.layers[j].kind != "norm" for j in later):
            continue  # output non-linearity
        col = sat[:, i]
        if not held(col >= th.sat_info, th.persist_need, th.persist_of):
            continue
        hits.append((float(np.nanmedian(col[-th.persist_of :])), i))
    if not hits:
        return None
    hits.sort(reverse=True)
    worst, wi = hits[0]
    sev = "error" if worst >= th.sat_error else "warning" if worst >= th.sat_warning else "info"
    prods = [p for p in (producer(h, i) for _, i in hits) if p is not None]
    fixes = []
    if prods:
        fixes.append(intervention("reinit", "Re-initialize the layers feeding them (Glorot)", layers=[h.layers[p].name for p in prods], scheme="xavier_normal"))
        fixes.append(intervention("reinit", "Re-initialize with LSUV", layers="all", scheme="lsuv"))
    fixes.append(intervention("scale_lr", "Lower the learning rate 3x", factor=0.3))
    lo, hi = h.layers[wi].bounds or (0.0, 1.0)
    layers = []
    for _, i in hits:
        layers.append(h.layers[i].name)
    return Finding(
        label="saturated_activations",
        severity=sev,
        title=f"Saturated {h.layers[wi].type}: {pct(worst)} of `{h.layers[wi].name}` at its bounds",
        evidence="; ".join(
            f"{pct(s)} of `{h.layers[i].name}` outputs within 1% of the range from a bound"
            for s, i in hits
        )
        + f" ({h.layers[wi].type} range [{fmt(lo)}, {fmt(hi)}]; median of the last {th.persist_of} samples):"
        " the gradient through those units is cut 25-100x",
        layers=layers + [h.layers[p].name for p in prods],
        interventions=fixes,
        data={"saturated_share": {h.layers[i].name: s for s, i in hits}},
    )


@rule("symmetric_init", checklist=("karpathy.init_well",), finite=True)
def symmetric_init(h: History, ctx: Context) -> Finding | None:
    """At least ``symmetric_share`` (half) of a linear / conv layer's units (weight row plus bias)
    are exact copies of one another after at least one optimizer step: identical units get
    identical gradients and can never become different (zero or constant init).  Read from the
    model at diagnosis time.  Error when all units are identical."""
    th = ctx.thresholds
    if not ctx.symmetry or h.step < 1:
        return None
    hits = []
    for name, (units, group) in ctx.symmetry.items():
        if group >= 2 and group / units >= th.symmetric_share:
            hits.append((group / units, units, group, name))
    if not hits:
        return None
    hits.sort(reverse=True)
    full = any(g == u for _, u, g, _ in hits)
    scheme = init_scheme(h)
    layers = [n for *_, n in hits]
    return Finding(
        label="symmetric_init",
        severity="error" if full else "warning",
        title=f"Identical units in `{layers[0]}` (zero or constant init)",
        evidence="; ".join(
            (f"all {u} units of `{n}` are identical" if g == u else f"{g} of {u} units of `{n}` are identical")
            for _, u, g, n in hits
        )
        + f" at step {h.step}: identical units receive identical gradients, so they never differ",
        layers=layers,
        interventions=[intervention("reinit", f"Re-initialize randomly ({scheme})", layers=layers, scheme=scheme)],
        data={"identical": {n: (g, u) for _, u, g, n in hits}},
    )

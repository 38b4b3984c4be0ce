"""Rules about the forward signal: scale across depth and time, dead / saturated / identical units."""

from __future__ import annotations

import numpy as np

from ...history import History
from .._series import feeder, fmt, held, names, param_layers, pct, ran, series
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
    left to ``dead_units`` / ``symmetric_init``.

    Also (warning) when the signal is lost by the output: a network with hidden layers trained with
    a regression loss (MSE, L1, Huber) on one output per example whose output varies across the
    batch ``depth_ratio`` (100x) or more less than the targets do, in ``persist_need`` of the last
    ``persist_of`` samples, after ``min_progress_steps`` steps, while the training loss makes no
    progress (the ``not_learning`` plateau, from ``min_steps_plateau`` steps) and no layer died
    (``dead_units`` at warning names that cause) -- read from the last module's activation std
    over the samples, and the prediction the loss received at the latest one must agree: the output
    hardly depends on the input, so at
    most ~2% of the targets' variance can be explained.  Info instead when that ratio has at least
    doubled since the first sample (the signal is coming back: a slow start) or validation improved
    at each of the last ``val_trend_points`` evaluations down to a new best."""
    return _scale_finding(h, ctx, vanishing=True) or _constant_output(h, ctx)


_REGRESSION_LOSSES = ("MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss")


def _constant_output(h: History, ctx: Context) -> Finding | None:
    th = ctx.thresholds
    rec = h.latest
    li = rec.loss_inputs if rec is not None else {}
    if not li or li.get("loss") not in _REGRESSION_LOSSES:
        return None
    ps, ts = tuple(li.get("pred_shape") or ()), tuple(li.get("target_shape") or ())
    if len(ps) < 1 or ps[0] < 2 or int(np.prod(ps)) != ps[0] or int(np.prod(ts or (0,))) != ps[0]:
        return None  # one output per example (a multi-output std mixes the columns' offsets)
    tstd, pstd = float(li.get("target_std", np.nan)), float(li.get("pred_std", np.nan))
    if not (tstd > 0 and np.isfinite(tstd)) or h.step < th.min_progress_steps:
        return None
    if not (pstd < th.depth_ratio * tstd):
        return None  # what the loss receives varies (a skip from the input, an offset added after the last module)
    pl = param_layers(h, ctx)
    order = ran(h, ctx)
    if len(pl) < 2 or not order:
        return None  # no hidden layer: a linear model's flat output is the data's, not a lost signal
    out = order[-1]
    steps, std = series(h, ctx, "act_std")
    col = std[:, out] / tstd if len(steps) else np.zeros(0)
    with np.errstate(invalid="ignore"):
        flags = col < th.depth_ratio
    if not held(flags, th.persist_need, th.persist_of):
        return None
    from .curves import curve_state  # the loss-curve summary (curves imports this module lazily)

    st = curve_state(h, ctx)
    if st.curve is None or not st.early_plateau or st.diverging or st.exploding:
        return None
    d = dead_units(h, ctx)
    if d is not None and d.severity != "info":
        return None  # a dead layer is the cause, and names itself
    since = int(steps[len(flags) - int(np.argmin(flags[::-1]))]) if not flags.all() else int(steps[0])
    r = float(np.nanmedian(col[-th.persist_of:]))
    first = float(col[np.flatnonzero(np.isfinite(col))[0]])
    growing = r >= 2 * first  # the output's variation is coming back (a slow start, not a lost signal)
    from .curves import _val_new_bests

    val = _val_new_bests(h, ctx)
    doubt = (f"; but it grew {fmt(r / first)}x since step {int(steps[0])}: the signal may be coming back" if growing
             else "") + (f"; but validation improved at each of the last {val} evaluations: the model learns" if val else "")
    prof = [(h.layers[i].name, float(std[0, i])) for i in order if np.isfinite(std[0, i])]
    scheme = init_scheme(h)
    return Finding(
        label="vanishing_activations",
        severity="info" if doubt else "warning",
        title=f"The output hardly depends on the input (it varies {fmt(1 / r)}x less than the targets)",
        evidence=(
            f"the output `{h.layers[out].name}` varies across the batch by std {fmt(r * tstd)} while the "
            f"targets vary by {fmt(tstd)} (median ratio {fmt(r)} over the last {min(th.persist_of, len(flags))} "
            f"samples, below {fmt(th.depth_ratio)} since step {since}), and the training loss has not moved: "
            "the forward signal is lost on the way to the output, which predicts about a constant"
            + (" (activation std by layer at step " + str(int(steps[0])) + ": "
               + ", ".join(f"`{n}` {fmt(v)}" for n, v in prof[:8]) + ")" if prof else "")
            + doubt
        ),
        first_step=since,
        layers=[h.layers[i].name for i in pl],
        interventions=[
            intervention("reinit", "Re-initialize with LSUV (unit-variance layers)", layers="all", scheme="lsuv"),
            intervention("reinit", f"Re-initialize ({scheme})", layers="all", scheme=scheme),
        ],
        data={"output_vs_target_std": r, "since": since},
    )


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
    dead-unit window (``Probe(dead_window=...)``, at least ``dead_min_window`` samples) -- or, for
    units that fired earlier in the window, over its last ``dead_min_window`` (5) samples, when at least
    ``dead_error`` (90%) of the layer went silent that way (the layer died during training; a short
    run never rolls the window past the samples from before the death; a partial death waits for
    the whole window: healthy short runs lose half a layer on easy discrete inputs and still fit).  Severity by
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
        g = groups.setdefault(key, {"share": 0.0, "units": int(mask.size), "act": None, "fill": 0, "since": None})
        share, span, since = float(mask.mean()), int(fill.get(i, 0)), None
        died = _died_recently(h, ctx, i, share)
        if died is not None:
            share, span, since = died
        if share >= float(g["share"] or 0.0):
            g["share"], g["units"], g["fill"], g["since"] = share, int(mask.size), span, since
        if not own:
            g["act"] = i
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
    onset = (int(g0["since"]) if g0["since"] is not None
             else _dead_onset(h, ctx, [wk] + ([int(g0["act"])] if g0["act"] is not None else []), th.dead_info))
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
        + f" never fired over the last {int(g0['fill'] or 0)} sampled steps{when}"
        + (" (they fired before: the units died during training)" if g0["since"] is not None else ""),
        layers=list(dict.fromkeys(layers)),
        interventions=fixes,
        data={"dead_share": {h.layers[k].name: s for s, k in flagged}, "onset": onset, "shown": shown,
              "cause": cause.key if cause else None},
    )


def _died_recently(h: History, ctx: Context, i: int, share: float) -> tuple[float, int, int] | None:
    """Units of layer ``i`` that fired earlier in the dead-unit window but not in any of its last
    ``dead_min_window`` samples: ``(share of the layer, samples, step since which the layer's silent
    share stayed at dead_warning or above)`` when that share reaches ``dead_error`` and exceeds the
    whole window's ``share``.  A short run never rolls the window past the samples from before a
    death (a 66-step run holds ~15 samples of a 20-sample window); its recent samples can tell."""
    th = ctx.thresholds
    k = th.dead_min_window
    acts = h.unit_activity(i)
    if len(acts) <= k or any(a.shape != acts[-1].shape for a in acts):
        return None
    act = np.stack(acts)  # (samples, units)
    recent = ~act[-k:].any(axis=0)
    r = float(recent.mean())
    if r < th.dead_error or r <= share:
        return None
    silent = (~act).mean(axis=1) >= th.dead_warning
    j = len(silent) - int(np.argmin(silent[::-1])) if not silent.all() else 0
    s, v = h.layer_series("act_dead_frac")
    col = np.asarray(v, dtype=np.float64)[:, i] if len(s) else np.zeros(0)
    steps = np.asarray(s)[np.isfinite(col)][-len(acts):]
    if len(steps) != len(acts):
        return None
    return r, k, int(steps[min(j, len(steps) - 1)])


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

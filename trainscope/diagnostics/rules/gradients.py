"""Rules about the backward signal and the parameters: gradient scale across depth and time,
non-finite values, parameters that never move, gradients that are never cleared."""

from __future__ import annotations

import re

import numpy as np

from ...history import History
from .._series import fmt, held, loss_curve, names, param_layers, scalar, series
from ..context import Context
from ..finding import Finding, intervention
from ..registry import rule
from .causes import root_cause


def grad_profile(h: History, ctx: Context) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Gradient scale per hidden linear / conv layer, in depth order (the output layer excluded).

    Returns ``(layers, steps, relative, backprop)``: ``relative = ||grad W|| / ||W||`` -- how fast
    one learning rate moves each layer -- and ``backprop`` = RMS of the gradient with respect to the
    layer's output (the back-propagated signal), both ``(T, K)`` on the sampled steps.
    """

    def get() -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
        pl = param_layers(h, ctx)[:-1]
        steps, gn = series(h, ctx, "ograd_std")
        _, gm = series(h, ctx, "ograd_mean")
        back = np.sqrt(gm[:, pl] ** 2 + gn[:, pl] ** 2) if pl else np.zeros((len(steps), 0))
        # parameter metrics live in a denser series; take them at the sampled steps
        psteps, g = series(h, ctx, "grad_norm")
        _, w = series(h, ctx, "weight_norm")
        with np.errstate(invalid="ignore", divide="ignore"):
            rel_all = g / w
        rel = np.full((len(steps), len(pl)), np.nan)
        if len(psteps) and pl:
            idx = np.searchsorted(psteps, steps)
            ok = (idx < len(psteps)) & (psteps[np.minimum(idx, len(psteps) - 1)] == steps)
            rel[ok] = rel_all[idx[ok]][:, pl]
        return pl, steps, rel, back

    return ctx.memo("grad_profile", get)


def weight_grad(h: History, ctx: Context, pl: list[int], steps: np.ndarray) -> np.ndarray:
    """``||grad W||`` of the layers ``pl`` at the sampled ``steps`` (NaN where not measured)."""
    psteps, g = series(h, ctx, "grad_norm")
    out = np.full((len(steps), len(pl)), np.nan)
    if len(psteps) and pl:
        idx = np.searchsorted(psteps, steps)
        ok = (idx < len(psteps)) & (psteps[np.minimum(idx, len(psteps) - 1)] == steps)
        out[ok] = g[idx[ok]][:, pl]
    return out


def _ends(row: np.ndarray) -> tuple[int, int] | None:
    ok = np.flatnonzero(np.isfinite(row) & (row > 0))
    return (int(ok[0]), int(ok[-1])) if len(ok) >= 2 else None


def _depth_flags(vals: np.ndarray, vanishing: bool, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: is first-layer / last-hidden-layer beyond ``ratio`` (or ``1/ratio``)?"""
    flags = np.zeros(len(vals), dtype=bool)
    r = np.full(len(vals), np.nan)
    for t, row in enumerate(vals):
        e = _ends(row)
        if e is None:
            continue
        r[t] = row[e[0]] / row[e[1]]
        flags[t] = r[t] < ratio if vanishing else r[t] > 1.0 / ratio
    return flags, r


def role(name: str) -> str:
    """A module name with its block numbers taken out: the numeric path components
    (``layers.3.mlp.fc1`` -> ``layers.#.mlp.fc1``), or, in a name without any, the digits
    (``fc3`` -> ``fc#``: a hand-numbered chain)."""
    parts = name.split(".")
    if any(p.isdigit() for p in parts):
        return ".".join("#" if p.isdigit() else p for p in parts)
    return re.sub(r"\d+", "#", name)


def comparable_groups(h: History, idx: list[int]) -> list[list[int]]:
    """Positions in ``idx`` grouped by role: the same module type under the same name with the
    block numbers taken out (``layers.#.self_attn.q_proj``, ``features.#``, ``fc#``), in depth
    order; groups of one are dropped.  Gradient sizes are compared only inside a group: an
    attention projection and an MLP projection, or a layer before and after a global pool, differ
    in scale by design, while the same layer of consecutive blocks should not."""
    groups: dict[tuple[str, str], list[int]] = {}
    for k, i in enumerate(idx):
        info = h.layers[i]
        groups.setdefault((info.type, role(info.name)), []).append(k)
    return [g for g in groups.values() if len(g) >= 2]


def _progressing(h: History, ctx: Context) -> tuple[bool, str]:
    """AUTOTRAINER's gate: a gradient profile is a problem only while training does not progress.
    True when the training loss fell below half of its initial value."""
    c = loss_curve(h, ctx)
    if c is None or c.head <= 0:
        return False, ""
    ok = c.tail < 0.5 * c.head
    return ok, (f"; training progresses nonetheless (loss {fmt(c.head)} -> {fmt(c.tail)}), so this is not blocking it"
                if ok else "")


def _gradient_scale(h: History, ctx: Context, *, vanishing: bool) -> Finding | None:
    th = ctx.thresholds
    pl, steps, rel, back = grad_profile(h, ctx)
    label = "vanishing_gradients" if vanishing else "exploding_gradients"
    best: tuple[float, list[int], np.ndarray, np.ndarray] | None = None
    if len(pl) >= 2 and len(steps):
        wg = weight_grad(h, ctx, pl, steps)
        for grp in comparable_groups(h, pl):
            flags, r_back = _depth_flags(back[:, grp], vanishing, th.depth_ratio)
            if h.layers[pl[grp[0]]].kind == "conv":
                # a conv's per-element output gradient also shrinks with its spatial size (strides,
                # pooling, a global pool after it); its weight gradient, summed over the positions,
                # does not: where it was measured it must agree
                wflags, r_w = _depth_flags(wg[:, grp], vanishing, th.depth_ratio)
                flags = flags & (wflags | ~np.isfinite(r_w))
            if not held(flags, th.persist_need, th.persist_of):
                continue
            t = len(steps) - 1 - int(np.argmax(flags[::-1]))
            strength = -np.log10(r_back[t]) if vanishing else np.log10(r_back[t])
            if best is None or strength > best[0]:
                best = (float(strength), grp, flags, r_back)
    if best is not None:
        _, grp, flags, r_back = best
        t = len(steps) - 1 - int(np.argmax(flags[::-1]))
        e = _ends(back[t, grp]) or (0, len(grp) - 1)
        ka, kb = grp[e[0]], grp[e[1]]
        a, b = h.layers[pl[ka]].name, h.layers[pl[kb]].name
        factor = 1.0 / r_back[t] if vanishing else r_back[t]
        extreme = (r_back[t] < th.depth_ratio_error) if vanishing else (r_back[t] > 1 / th.depth_ratio_error)
        word = "smaller" if vanishing else "larger"
        with np.errstate(invalid="ignore", divide="ignore"):
            rel_ratio = rel[t, ka] / rel[t, kb]
        fixes = [intervention("reinit", "Re-initialize with LSUV", layers="all", scheme="lsuv")]
        if vanishing:
            fixes.append(intervention("switch_optimizer", "Switch to Adam (per-parameter step sizes)", name="adam"))
        else:
            fixes.append(intervention("clip_grad", "Clip the gradient norm", max_norm=_clip_level(h)))
        moving, note = _progressing(h, ctx)
        cause = root_cause(h, ctx, int(steps[t]), symptom="vanishing" if vanishing else "exploding")
        return Finding(
            label=label,
            severity="info" if moving else "error" if extreme else "warning",
            title=(f"{cause.short} -> " if cause else "")
            + f"Gradients {'vanish' if vanishing else 'explode'} toward the input ({fmt(factor)}x from `{b}` to `{a}`)",
            evidence=(
                (f"{cause.text} -> " if cause else "")
                + f"the back-propagated gradient (RMS of d loss / d output) is {fmt(back[t, ka])} at `{a}` and "
                f"{fmt(back[t, kb])} at `{b}`, the same kind of layer {len(grp)} blocks apart: {fmt(factor)}x {word} "
                "at the input end"
                + (f"; the weights' relative gradient ||grad W||/||W|| is {fmt(rel[t, ka])} vs {fmt(rel[t, kb])}"
                   if np.isfinite(rel_ratio) else "")
                + f" (step {int(steps[t])}, held in {int(flags[-th.persist_of:].sum())} of the last "
                f"{min(th.persist_of, len(flags))} samples){note}"
            ),
            layers=names(h, [pl[k] for k in grp]),
            interventions=(cause.fixes if cause else []) + fixes,
            data={"backprop_ratio": float(r_back[t]), "relative_ratio": float(rel_ratio),
                  "cause": cause.key if cause else None},
        )
    if vanishing:
        return None
    return _exploding_over_time(h, ctx) or _nonfinite_growth(h, ctx) or _recurrent_blowup(h, ctx) or _spikes(h, ctx)


def _exploding_over_time(h: History, ctx: Context) -> Finding | None:
    """The total gradient norm grows 100x while the loss does not improve."""
    th = ctx.thresholds
    s, g = scalar(h, "grad_norm_total")
    ok = np.isfinite(g) & (g > 0)
    s, g = s[ok], g[ok]
    if len(g) < th.persist_need + 2:
        return None
    k = max(1, len(g) // 10)
    early = float(np.median(g[:k]))
    late = g[-th.persist_of :]
    flags = late > early / th.time_ratio
    _, loss = scalar(h, "loss")
    loss = loss[np.isfinite(loss)]
    improving = len(loss) >= 10 and np.median(loss[-5:]) < 0.9 * np.median(loss[:5])
    if improving or not held(flags, th.persist_need, th.persist_of):
        return None
    return Finding(
        label="exploding_gradients",
        severity="error",
        title=f"Gradient norm exploded ({fmt(float(np.median(late)) / early)}x)",
        evidence=(
            f"total gradient norm grew from {fmt(early)} (median of the first {k} records) to "
            f"{fmt(float(np.median(late)))} by step {int(s[-1])}, while the loss did not improve"
        ),
        layers=[],
        interventions=[
            intervention("clip_grad", "Clip the gradient norm", max_norm=_round(early)),
            intervention("scale_lr", "Lower the learning rate 10x", factor=0.1),
            intervention("rollback", "Roll back to before the blow-up"),
        ],
        data={"growth": float(np.median(late)) / early},
    )


def _nonfinite_growth(h: History, ctx: Context) -> Finding | None:
    """The gradient norm grew ``1 / time_ratio`` (100x) over the finite steps before the first
    non-finite one: the NaN is where an explosion ended."""
    th = ctx.thresholds
    s, g = scalar(h, "grad_norm_total")
    bad = np.flatnonzero(~np.isfinite(g))
    ls, lv = scalar(h, "loss")
    lbad = np.flatnonzero(~np.isfinite(lv))
    cands = ([int(s[bad[0]])] if len(bad) else []) + ([int(ls[lbad[0]])] if len(lbad) else [])
    first_bad = min(cands, default=None)
    if first_bad is None:
        return None
    before = (s < first_bad) & np.isfinite(g) & (g > 0)
    gs, gv = s[before], g[before]
    if len(gv) < 2:
        return None
    growth = float(gv.max() / gv[0])
    if growth < 1.0 / th.time_ratio:
        return None
    top = int(gs[int(np.argmax(gv))])
    return Finding(
        label="exploding_gradients",
        severity="error",
        title=f"Gradients exploded ({fmt(growth)}x in {top - int(gs[0])} steps), then NaN/Inf at step {first_bad}",
        evidence=(
            f"total gradient norm grew from {fmt(float(gv[0]))} at step {int(gs[0])} to {fmt(float(gv.max()))} at step "
            f"{top}; the first non-finite value followed at step {first_bad}"
        ),
        interventions=[
            intervention("clip_grad", "Clip the gradient norm", max_norm=_round(float(gv[0]))),
            intervention("scale_lr", "Lower the learning rate 10x", factor=0.1),
        ],
        first_step=int(gs[0]),
        data={"growth": growth, "nonfinite_step": first_bad},
    )


RECURRENT = ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")


RECURRENT_BLOWUP = 10.0
"""A recurrent layer's gradient norm 10x its weights' norm: an order of magnitude above the ~1 or
less of a healthy network (one SGD step at lr 0.1 would replace the weights)."""


def _recurrent_blowup(h: History, ctx: Context) -> Finding | None:
    """A recurrent layer whose gradient norm reached ``RECURRENT_BLOWUP`` (10x) its weights' norm,
    in a run that then went non-finite: the gradient exploded through the recurrence (too few
    finite steps to see it grow)."""
    steps, g = series(h, ctx, "grad_norm")
    _, w = series(h, ctx, "weight_norm")
    _, lv = scalar(h, "loss")
    if len(steps) == 0 or not (len(lv) and not np.isfinite(lv).all()):
        return None
    for i, info in enumerate(h.layers):
        if info.type not in RECURRENT:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            r = g[:, i] / w[:, i]
        ok = np.flatnonzero(np.isfinite(r) & (r >= RECURRENT_BLOWUP))
        if len(ok):
            k = int(ok[0])
            return Finding(
                label="exploding_gradients",
                severity="error",
                title=f"Gradients explode through the recurrence of `{info.name}` (then NaN/Inf)",
                evidence=(
                    f"at step {int(steps[k])} the gradient of `{info.name}` is {fmt(float(r[k]))}x its weights' norm "
                    f"({fmt(float(g[k, i]))} vs {fmt(float(w[k, i]))}): back-propagation through time multiplies it at "
                    "every time step, and the run went non-finite. Clip the gradient norm, or initialize the recurrent "
                    "weights orthogonal / below 1 in scale"
                ),
                layers=[info.name],
                interventions=[intervention("clip_grad", "Clip the gradient norm", max_norm=1.0),
                               intervention("scale_lr", "Lower the learning rate 10x", factor=0.1)],
                first_step=int(steps[k]),
                data={"relative_gradient": float(r[k])},
            )
    return None
SPIKE_FACTOR = 10.0
"""A spike: the total gradient norm of one step is 10x the median of the 20 steps before it."""


def _spikes(h: History, ctx: Context) -> Finding | None:
    """Recurrent nets: the per-step gradient norm spikes (>= ``SPIKE_FACTOR`` x its recent median)
    at least 3 times in the last 200 records -- the classic exploding gradient of RNNs, which
    gradient clipping fixes.  Warning."""
    rec = [x.name for x in h.layers if x.type in RECURRENT]
    if not rec:
        return None
    s, g = scalar(h, "grad_norm_total")
    ok = np.isfinite(g) & (g > 0)
    s, g = s[ok][-200:], g[ok][-200:]
    if len(g) < 25:
        return None
    med = np.array([np.median(g[max(0, k - 20):k]) for k in range(5, len(g))])
    ratio = g[5:] / med
    hits = np.flatnonzero(ratio >= SPIKE_FACTOR)
    if len(hits) < 3:
        return None
    worst = int(np.argmax(ratio))
    return Finding(
        label="exploding_gradients",
        severity="warning",
        title=f"Gradient norm spikes in a recurrent net ({len(hits)} steps at >= {fmt(SPIKE_FACTOR)}x the recent level)",
        evidence=(
            f"in the last {len(g)} steps the total gradient norm jumped to {fmt(SPIKE_FACTOR)}x or more of its recent median "
            f"{len(hits)} times (worst {fmt(float(ratio[worst]))}x at step {int(s[5 + worst])}, median {fmt(float(np.median(g)))}): "
            f"exploding gradients through the recurrence of {', '.join(f'`{n}`' for n in rec[:3])}. Clip the gradient norm"
        ),
        layers=rec,
        interventions=[intervention("clip_grad", "Clip the gradient norm", max_norm=_round(float(np.median(g))))],
        first_step=int(s[5 + hits[0]]),
        data={"spikes": len(hits), "worst": float(ratio[worst])},
    )


def _round(v: float) -> float:
    """One significant digit (a readable clipping level)."""
    if not np.isfinite(v) or v <= 0:
        return 1.0
    e = np.floor(np.log10(v))
    return float(np.round(v / 10**e) * 10**e)


def _clip_level(h: History) -> float:
    _, g = scalar(h, "grad_norm_total")
    g = g[np.isfinite(g) & (g > 0)]
    return _round(float(np.median(g))) if len(g) else 1.0


@rule("vanishing_gradients", checklist=("tobin.grad_flow", "karpathy.init_well"), finite=True)
def vanishing_gradients(h: History, ctx: Context) -> Finding | None:
    """Across the hidden linear / conv layers (the output layer excluded, at least two), the
    back-propagated gradient -- RMS of the gradient with respect to each layer's output -- is
    ``depth_ratio`` (100x) or more smaller at the first layer than at the last hidden one, in
    ``persist_need`` of the last ``persist_of`` samples.  The weights' relative gradient
    ``||grad W|| / ||W||`` is reported alongside.  Exactly-zero gradients are not "vanishing" (see
    ``dead_units``, ``frozen_parameters``).  Error from 1e4x."""
    return _gradient_scale(h, ctx, vanishing=True)


@rule("exploding_gradients", checklist=("tobin.bug_numerical", "tobin.error_dynamics"))
def exploding_gradients(h: History, ctx: Context) -> Finding | None:
    """Mirror image of ``vanishing_gradients`` across depth (100x larger at the input end), or
    over time: the total gradient norm in ``persist_need`` of the last ``persist_of`` records is
    100x its early median (first 10% of the records, at least one) while the loss has not
    improved by 10%."""
    return _gradient_scale(h, ctx, vanishing=False)


def _nonfinite_first(h: History, ctx: Context, metric: str) -> tuple[int, np.ndarray] | None:
    """First sample index with a non-finite value in ``metric``, and the per-layer flags there."""
    steps, v = series(h, ctx, metric)
    if len(steps) == 0:
        return None
    bad = np.nan_to_num(v, nan=0.0) != 0
    rows = np.flatnonzero(bad.any(axis=1))
    return (int(rows[0]), bad[rows[0]]) if len(rows) else None


@rule("nan_inf", checklist=("tobin.bug_numerical", "tobin.error_dynamics"))
def nan_inf(h: History, ctx: Context) -> Finding | None:
    """A non-finite value (NaN / Inf) in the training loss, a layer's output, the gradient of a
    layer's output or a parameter gradient.  Reports the first step and the first layer in forward
    order (or backward order when the forward pass was finite).  Error -- except when only
    gradients were non-finite and only in isolated samples (fewer than ``persist_need`` of the
    last ``persist_of``), which is what AMP loss scaling produces on purpose: info."""
    th = ctx.thresholds
    steps, _ = series(h, ctx, "act_std")
    ls, lv = scalar(h, "loss")
    bad_loss = np.flatnonzero(~np.isfinite(lv))
    loss_step = int(ls[bad_loss[0]]) if len(bad_loss) else None
    fwd = _nonfinite_first(h, ctx, "act_nonfinite")
    bwd = _nonfinite_first(h, ctx, "ograd_nonfinite")
    par = _nonfinite_first(h, ctx, "grad_nonfinite")
    if loss_step is None and fwd is None and bwd is None and par is None:
        return None
    order = h.forward_order
    rec = h.latest
    layers: list[str] = []
    parts: list[str] = []
    first: list[int] = [] if loss_step is None else [loss_step]
    if fwd is not None:
        t, flags = fwd
        where = next((i for i in order if flags[i]), int(np.argmax(flags)))
        layers.append(h.layers[where].name)
        first.append(int(steps[t]))
        before = [h.layers[i].name for i in order[: order.index(where)]] if where in order else []
        wsteps, wn = series(h, ctx, "weight_norm")
        at = np.flatnonzero(wsteps == steps[t])
        poisoned_weights = bool(h.layers[where].n_params > 0 and len(at) and not np.isfinite(wn[at[0], where]))
        parts.append(
            f"first non-finite output at step {int(steps[t])} in the forward pass, at `{h.layers[where].name}`"
            + (f" (the {len(before)} layers before it were finite)" if before else " (the first layer)")
            + (": its weights are already non-finite, so an earlier, unsampled step produced the first one"
               if poisoned_weights else "")
        )
        if rec is not None and rec.inputs and not (np.isfinite(rec.inputs.get("min", 0.0)) and np.isfinite(rec.inputs.get("max", 0.0))):
            parts.append("the input batch itself contains non-finite values")
    elif bwd is not None:
        t, flags = bwd
        border = rec.backward_order if rec is not None and rec.backward_order else list(reversed(order))
        where = next((i for i in border if flags[i]), int(np.argmax(flags)))
        layers.append(h.layers[where].name)
        first.append(int(steps[t]))
        parts.append(
            f"forward pass finite; first non-finite gradient at step {int(steps[t])} in the backward pass, "
            f"flowing into `{h.layers[where].name}`"
        )
    if par is not None:
        pst, pv = series(h, ctx, "grad_nonfinite")
        t, flags = par
        bad_layers = [h.layers[i].name for i in np.flatnonzero(flags)]
        first.append(int(pst[t]))
        parts.append(f"non-finite parameter gradients at step {int(pst[t])} in {', '.join(f'`{n}`' for n in bad_layers[:5])}")
        layers += [n for n in bad_layers if n not in layers]
    if loss_step is not None:
        parts.append(f"training loss non-finite from step {loss_step}")
    # AMP-style isolated gradient overflows are expected
    only_grads = loss_step is None and fwd is None
    if only_grads:
        pst, pv = series(h, ctx, "grad_nonfinite")
        gflags = (np.nan_to_num(pv, nan=0.0) != 0).any(axis=1)
        _, ov = series(h, ctx, "ograd_nonfinite")
        oflags = (np.nan_to_num(ov, nan=0.0) != 0).any(axis=1)
        persistent = held(gflags, th.persist_need, th.persist_of) or held(oflags, th.persist_need, th.persist_of)
        sev = "error" if persistent else "info"
    else:
        sev = "error"
    good = scalar(h, "grad_norm_total")[1]
    good = good[np.isfinite(good) & (good > 0)]
    fixes = [
        intervention("rollback", "Roll back to a snapshot before the first NaN"),
        intervention("clip_grad", "Clip the gradient norm", max_norm=_round(float(np.median(good))) if len(good) else 1.0),
        intervention("scale_lr", "Lower the learning rate 10x", factor=0.1),
    ]
    onset = min(first)
    trace = _explosion_trace(h, ctx, onset)
    if trace:
        parts.insert(0, trace)
    cause = root_cause(h, ctx, onset, symptom="nan") if sev == "error" else None
    if cause is not None:
        fixes = cause.fixes + [f for f in fixes if f not in cause.fixes]
    return Finding(
        label="nan_inf",
        severity=sev,
        title=(f"{cause.short} -> " if cause else "")
        + f"Non-finite values (NaN/Inf) from step {min(first)}" + (f" at `{layers[0]}`" if layers else ""),
        evidence=(f"{cause.text} -> " if cause else "") + "; ".join(parts),
        layers=layers,
        interventions=fixes,
        first_step=min(first),
        data={"first_step": min(first), "loss_step": loss_step, "cause": cause.key if cause else None},
    )


def _explosion_trace(h: History, ctx: Context, onset: int) -> str:
    """Where the blow-up before the first non-finite value started: the first layer, in forward
    order, whose largest |output| grew ``1 / time_ratio`` (100x) between the first sample and the
    last finite one before ``onset`` -- also when the NaN step itself was not sampled."""
    steps, am = series(h, ctx, "act_abs_max")
    ok = [k for k in range(len(steps)) if steps[k] < onset or (steps[k] == onset and np.isfinite(am[k]).all())]
    if len(ok) < 2:
        return ""
    a, b = ok[0], ok[-1]
    for i in h.forward_order:
        x0, x1 = am[a, i], am[b, i]
        if np.isfinite(x0) and np.isfinite(x1) and x0 > 0 and x1 / x0 >= 1.0 / ctx.thresholds.time_ratio:
            return (f"activations explode from `{h.layers[i].name}` on: its largest |output| grew {fmt(x1 / x0)}x from "
                    f"step {int(steps[a])} ({fmt(x0)}) to step {int(steps[b])} ({fmt(x1)}) before the first NaN/Inf")
    return ""

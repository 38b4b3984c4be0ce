"""Rules about parameters that never move and gradients that are never cleared."""

from __future__ import annotations

import numpy as np

from ...history import History
from .._series import fmt, held, scalar, series
from ..context import Context
from ..finding import Finding, intervention
from ..registry import rule


def _owner(param: str) -> str:
    return param.rsplit(".", 1)[0] if "." in param else "model"


def _trainable(h: History, ctx: Context, param: str) -> bool:
    if ctx.requires_grad is not None and param in ctx.requires_grad:
        return ctx.requires_grad[param]
    try:
        return h.layers[h.layer_index(_owner(param))].n_trainable > 0
    except KeyError:
        return True


def _listing(items: list[str], n: int = 6) -> str:
    shown = ", ".join(f"`{x}`" for x in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _group_lrs(h: History) -> list[float]:
    """The latest learning rate of every parameter group the probe logged (``lr``, ``lr/groupN``)."""
    out = []
    for name in h.scalar_names():
        if name == "lr" or name.startswith("lr/group"):
            _, v = scalar(h, name)
            v = v[np.isfinite(v)]
            if len(v):
                out.append(float(v[-1]))
    return out


@rule("frozen_parameters", checklist=("tobin.grad_flow",), finite=True)
def frozen_parameters(h: History, ctx: Context) -> Finding | None:
    """Parameters that can never change: (a) ``requires_grad`` parameters the optimizer does not
    hold; (b) layers with trainable parameters whose gradient is missing (``None``: not connected
    to the loss, or never run) in ``persist_need`` of the last ``persist_of`` records (at both of the
    first two records: a connected layer gets a gradient at every backward) while other
    layers do get gradients -- or *no* layer gets one (the loss is detached from the model: error);
    (c) layers with a non-zero gradient whose weights are exactly where they started after two or
    more steps: a gradient too small to change float32 weights (relative gradient below 1e-7,
    vanishing), else a learning rate of 0 for their group.  Warning.  Layers whose parameters are
    tied to another module's (weight tying) are judged through that module.  Parameters frozen on
    purpose (``requires_grad=False``) alone give an info."""
    th = ctx.thresholds
    in_opt: dict[str, bool] = h.meta.get("param_in_optimizer") or {}
    missing = [n for n, ok in in_opt.items() if not ok and _trainable(h, ctx, n)]
    if ctx.requires_grad is not None:
        frozen = sorted(n for n, rg in ctx.requires_grad.items() if not rg)  # parameter names
        frozen_layers = list(dict.fromkeys(_owner(n) for n in frozen))
    else:
        frozen = frozen_layers = [x.name for x in h.layers if x.n_params > 0 and x.n_trainable == 0]
    tied = ctx.tied or {}
    no_grad: list[str] = []
    unmoved: list[str] = []
    vanished: list[str] = []
    detached = False
    steps, g = series(h, ctx, "grad_norm")
    _, wn = series(h, ctx, "weight_norm")
    # a connected layer gets a gradient at every backward: missing at both of the first two samples suffices
    need = max(2, min(th.persist_need, len(steps)))
    if len(steps) >= need:
        measured = np.isfinite(wn) & (wn > 0)  # the probe tracks (measures) this layer's parameters
        candidates = [i for i, info in enumerate(h.layers)
                      if info.n_trainable and info.name not in tied and bool(measured[-th.persist_of:, i].any())]
        any_grad = np.isfinite(g).any(axis=1)
        if candidates and held(~any_grad, need, th.persist_of):
            detached = True  # not a single parameter receives a gradient
            no_grad = [h.layers[i].name for i in candidates]
        else:
            for i in candidates:
                col = g[:, i]
                others = np.isfinite(np.delete(g, i, axis=1)).any(axis=1) if g.shape[1] > 1 else np.ones(len(col), bool)
                if held(~np.isfinite(col) & others & measured[:, i], need, th.persist_of):
                    no_grad.append(h.layers[i].name)
        _, d = series(h, ctx, "dist_init")
        if h.step >= 2 and len(d) and not detached:
            last_d, last_g, last_w = d[-1], g[-1], wn[-1]
            for i, info in enumerate(h.layers):
                if info.n_trainable and info.name not in tied and last_d[i] == 0 and np.isfinite(last_g[i]) and last_g[i] > 0:
                    if info.name not in no_grad and not any(_owner(p) == info.name for p in missing):
                        rel = last_g[i] / last_w[i] if np.isfinite(last_w[i]) and last_w[i] > 0 else np.inf
                        (vanished if rel < 1e-7 else unmoved).append(info.name)
    if not (missing or no_grad or unmoved or vanished or frozen):
        return None
    parts = []
    if detached:
        parts.append(
            f"no parameter receives a gradient in the last {min(th.persist_of, len(steps))} records although training "
            "steps run: the loss is not connected to the model's parameters (computed from `.item()` / `.detach()` / "
            "numpy, re-wrapped with torch.tensor(...) or requires_grad=True, or the forward pass runs under no_grad)"
        )
    if missing:
        parts.append(
            f"{len(missing)} trainable parameter(s) are not in the optimizer, so they are never updated: {_listing(missing)}"
        )
    if no_grad and not detached:
        params = [n for n, rg in (ctx.requires_grad or {}).items() if rg and _owner(n) in no_grad]
        parts.append(
            f"{_listing(no_grad)} receive no gradient (not connected to the loss: unused in forward, detached, or "
            f"run under no_grad) in the last {min(th.persist_of, len(steps))} records"
            + (f": .grad stays None for {_listing(params)}" if params else "")
        )
    if vanished:
        parts.append(
            f"{_listing(vanished)} have not moved since step 0: their gradient is below 1e-7 of the weights' norm, too "
            "small to change float32 weights (vanishing gradient; see the gradient profile)"
        )
    if unmoved:
        lrs = _group_lrs(h)
        why = ("a parameter group has learning rate 0" if any(v == 0 for v in lrs)
               else "their parameter group's learning rate is 0, or the optimizer skips them")
        parts.append(f"{_listing(unmoved)} have gradients but have not moved since step 0 ({why})")
    serious = bool(missing or no_grad or unmoved or vanished)
    if frozen:
        parts.append(f"{len(frozen)} frozen on purpose (requires_grad=False): {_listing(frozen, 4)}")
    known = set(h.layer_names)
    layers = [n for n in dict.fromkeys([_owner(p) for p in missing] + no_grad + unmoved + vanished) if n in known]
    if not serious:
        layers = [n for n in frozen_layers if n in known]
    if detached:
        title = "No parameter receives a gradient: the loss is detached from the model"
    elif serious and layers:
        title = f"Parameters that never change in `{layers[0]}`"
    else:
        title = "Some parameters are frozen (requires_grad=False)"
    return Finding(
        label="frozen_parameters",
        severity="error" if detached else "warning" if serious else "info",
        title=title,
        evidence="; ".join(parts),
        layers=layers,
        interventions=[],
        data={"not_in_optimizer": missing, "no_gradient": no_grad, "unmoved": unmoved, "vanished": vanished,
              "frozen": frozen, "detached": detached},
    )


@rule("missing_zero_grad", checklist=("tobin.zero_grad",))
def missing_zero_grad(h: History, ctx: Context) -> Finding | None:
    """Gradients accumulate across optimizer steps: at the start of a step's backward pass the
    parameters still hold a gradient whose norm is at least ``zero_grad_ratio`` (1e-3) of the
    gradient norm after backward, at the first forward of the step as well (so a ``zero_grad()``
    between forward and backward does not count), in ``persist_need`` of the last ``persist_of``
    sampled steps.  Error: every step then applies the sum of all past gradients."""
    th = ctx.thresholds
    fs, fv = scalar(h, "grad_norm_before_forward")  # absent at a step: no gradient was held
    bs, bv = scalar(h, "grad_norm_before_backward")
    gs, gv = scalar(h, "grad_norm_total")
    total = dict(zip(gs.tolist(), gv.tolist(), strict=False))
    fwd = dict(zip(fs.tolist(), fv.tolist(), strict=False))
    bwd = dict(zip(bs.tolist(), bv.tolist(), strict=False))
    flags, ratios = [], []
    for s in sorted(set(fwd) | set(bwd)):
        t = total.get(s)
        if t is None or not np.isfinite(t) or t <= 0:
            continue
        r = min(fwd.get(s, 0.0), bwd.get(s, fwd.get(s, 0.0))) / t
        ratios.append(r)
        flags.append(bool(r >= th.zero_grad_ratio))
    # conclusive from the first sampled steps on: a healthy loop holds exactly no gradient here
    need = max(1, min(th.persist_need, len(flags)))
    if not flags or not held(np.array(flags, dtype=bool), need, th.persist_of):
        return None
    r = float(np.median(ratios[-th.persist_of :]))
    return Finding(
        label="missing_zero_grad",
        severity="error",
        title="Gradients accumulate across steps (zero_grad() missing?)",
        evidence=(
            f"before backward the parameters still hold a gradient of norm {fmt(r)}x the gradient after it "
            f"(median of the last {min(th.persist_of, len(flags))} sampled steps): each step applies the sum of "
            "all past gradients. Call optimizer.zero_grad() once per step."
        ),
        layers=[],
        interventions=[intervention("rollback", "Roll back to an earlier snapshot")],
        data={"carried_ratio": r},
    )

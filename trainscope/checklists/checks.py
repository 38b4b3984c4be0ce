"""The automated checks.  Each is ``check(env, **options) -> CheckResult`` and runs inside
:func:`~trainscope.checklists.isolation.isolated` (see ``runner.run_check``): whatever it does to the
model, it is undone, bit for bit."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..diagnostics.assess import (
    assess_init_loss,
    assess_inputs,
    assess_loss_inputs,
    expected_init_loss,
    input_stats,
    loss_input_stats,
)
from ..diagnostics.config import Thresholds
from ..diagnostics.rules.setup import MODE_DEPENDENT
from ..run import Batch
from .base import CHECKS as CHECKS
from .base import CheckEnv as CheckEnv
from .base import CheckResult as CheckResult
from .base import CheckSpec as CheckSpec
from .base import _check as _check
from .base import batch_size as batch_size
from .base import forward as forward
from .base import primary as primary
from .base import take as take

__all__ = ["CHECKS", "CheckEnv", "CheckResult", "CheckSpec"]

_TH = Thresholds()
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _fmt(v: float) -> str:
    from ..diagnostics._series import fmt

    return fmt(v)


def _no_dropout(model: nn.Module) -> None:
    model.train()
    for m in model.modules():
        if isinstance(m, _DROPOUT):
            m.eval()


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _fit(env: CheckEnv, train: Batch, steps: int, lr: float, evaluate: Batch | None = None, every: int = 5,
         done: int = 0, total: int | None = None) -> dict[str, Any]:
    """Train the model in place (caller restores it) with a private Adam; returns the losses.
    Reports ``done + k`` of ``total`` (default ``steps``) iterations, and stops when cancelled."""
    assert env.loss_fn is not None
    params = [p for _, p in _trainable(env.model)]
    for p in params:
        p.grad = None
    opt = torch.optim.Adam(params, lr=lr)
    torch.manual_seed(0)
    losses: list[float] = []
    evals: list[float] = []
    with torch.enable_grad():
        for k in range(steps):
            env.tick(done + k, total or steps)
            _no_dropout(env.model)
            loss = env.loss_fn(forward(env.model, train), train.target)
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            if evaluate is not None and (k % every == every - 1 or k == steps - 1):
                env.model.eval()
                with torch.no_grad():
                    evals.append(float(env.loss_fn(forward(env.model, evaluate), evaluate.target)))
            if evaluate is None and len(losses) > 1 and losses[-1] <= 1e-3 * losses[0]:
                break
    return {"losses": losses, "evals": evals}


# ------------------------------------------------------------------------------ the checks
@_check("loss_at_init", "Verify loss @ init", loss=True, target=True)
def loss_at_init(env: CheckEnv) -> CheckResult:
    """Compare the loss at initialization with the loss of an uninformed prediction (ln C)."""
    name = type(env.loss_fn).__name__
    h = env.history
    loss0: float | None = None
    source = ""
    pred_shape = None
    if h is not None:
        s = h.scalar("loss")
        if len(s["last"]) and int(s["last"][0]) == 0:
            loss0, source = float(s["mean"][0]), "recorded at step 0"
        li = h.latest.loss_inputs if h.latest is not None else {}
        pred_shape = li.get("pred_shape")
        name = li.get("loss", name)
    if loss0 is None:
        if env.probe is not None and env.probe.step_count > 0:
            return CheckResult("loss_at_init", "not_run",
                               f"the model has trained {env.probe.step_count} steps and the step-0 loss was not recorded: "
                               "create the probe with loss_fn=... before training, or call this before the first step")
        assert env.batch is not None and env.loss_fn is not None
        env.model.train()
        with torch.no_grad():
            pred = forward(env.model, env.batch)
            loss0 = float(env.loss_fn(pred, env.batch.target))
        pred_shape, source = tuple(pred.shape), "on the current batch, before training"
    exp = expected_init_loss(name, pred_shape)
    if exp is None:
        t = env.batch.target if env.batch is not None else None
        extra = ""
        if isinstance(t, Tensor) and t.is_floating_point() and t.numel() > 1:
            extra = f"; predicting the target mean would give MSE {_fmt(float(t.float().var(unbiased=False)))}"
        return CheckResult("loss_at_init", "manual", f"loss at init {_fmt(loss0)} ({source}); no reference value for {name}{extra}",
                           details={"loss": loss0})
    ref, how = exp
    status, excess = assess_init_loss(loss0, ref, _TH)
    verdict = {"pass": "as expected", "warn": "somewhat off", "fail": "far off: the network starts confidently wrong"}[status]
    if status == "warn" and loss0 < ref / 2:
        verdict = "suspiciously low: do the inputs leak the label?"
    return CheckResult("loss_at_init", status,
                       f"loss at init {_fmt(loss0)} ({source}); an uninformed prediction gives {how}: {verdict} ({excess:+.2f} nats)",
                       details={"loss": loss0, "expected": ref})


@_check("overfit_batch", "Overfit one batch", loss=True, target=True, trains=True)
def overfit_batch(env: CheckEnv, steps: int = 200, lr: float = 1e-3, examples: int = 32) -> CheckResult:
    """Train on a few examples (dropout off, private Adam): the loss must fall to ~0."""
    assert env.batch is not None
    small = take(env.batch, slice(0, examples))
    n = batch_size(small)
    r = _fit(env, small, steps, lr)
    losses = r["losses"]
    first, last = losses[0], min(losses[-5:])
    if not math.isfinite(losses[-1]):
        status, verdict = "fail", "the loss became non-finite"
    elif last <= 0.1 * first or last < 1e-3:
        status, verdict = "pass", "fits it"
    elif last <= 0.5 * first:
        status, verdict = "warn", "fits it only partly"
    else:
        status, verdict = "fail", "cannot fit it: look for a bug in the model, the loss or the labels"
    return CheckResult("overfit_batch", status,
                       f"on {n} examples the loss went from {_fmt(first)} to {_fmt(last)} in {len(losses)} steps (Adam, lr {lr:g}): {verdict}",
                       details={"first": first, "last": last, "steps": len(losses)})


@_check("input_baseline", "Input-independent baseline", loss=True, target=True, trains=True)
def input_baseline(env: CheckEnv, steps: int = 100, lr: float = 1e-3) -> CheckResult:
    """Train on half the batch with real and with zeroed inputs; compare on the other half."""
    assert env.batch is not None
    n = batch_size(env.batch)
    if n < 4:
        return CheckResult("input_baseline", "not_run", f"needs a batch of at least 4 examples, got {n}")
    train, held = take(env.batch, slice(0, n // 2)), take(env.batch, slice(n // 2, n))

    def z(v: Any) -> Any:
        return torch.zeros_like(v) if isinstance(v, Tensor) else v

    def zero(b: Batch) -> Batch:
        return Batch(b.step, tuple(z(a) for a in b.args), {k: z(v) for k, v in b.kwargs.items()}, b.target)

    start = [p.detach().clone() for _, p in _trainable(env.model)]
    real = _fit(env, train, steps, lr, evaluate=held, total=2 * steps)["evals"]
    with torch.no_grad():
        for (_, p), v in zip(_trainable(env.model), start, strict=True):
            p.copy_(v)
    zeros = _fit(env, zero(train), steps, lr, evaluate=zero(held), done=steps, total=2 * steps)["evals"]
    rb, zb = min(real), min(zeros)
    if rb < 0.9 * zb:
        status, verdict = "pass", "the real inputs help"
    elif rb < zb:
        status, verdict = "warn", "the real inputs help only a little"
    else:
        status, verdict = "fail", "the model does no better with its inputs than without: labels unrelated to the inputs, or inputs that do not reach the model"
    return CheckResult("input_baseline", status,
                       f"best held-out loss {_fmt(rb)} with the real inputs vs {_fmt(zb)} with zeroed inputs "
                       f"({n // 2} training / {n - n // 2} held-out examples, {steps} steps): {verdict}",
                       details={"real": rb, "zero": zb})


@_check("batch_mixing", "Backprop dependency (batch mixing)")
def batch_mixing(env: CheckEnv, batch_dim: int | None = None) -> CheckResult:
    """Eval mode: gradient of example i's output w.r.t. the other examples must be exactly 0.
    ``batch_dim=None``: 0, or 1 for inputs that sequence-first modules (``nn.LSTM`` with
    ``batch_first=False``...) read as ``(T, B, ...)``."""
    from .mixing import mixing_test

    return mixing_test(env, batch_dim=batch_dim, tolerance=_TH.mixing_tolerance)


BN_TYPES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d")
BN_LAG = 1.25
"""Eval-mode loss this many times the train-mode loss on the same training batch: the running
statistics lag behind the weights (the batch's own statistics score far better)."""


@_check("bn_lag", "Batch-norm running statistics vs batch statistics", loss=True, target=True)
def bn_lag(env: CheckEnv) -> CheckResult:
    """The loss on one training batch with batch statistics (train mode, dropout off) vs with the
    running statistics (eval mode).  A model that memorizes scores well both ways; one whose
    running statistics lag scores well only with the batch's own statistics."""
    assert env.batch is not None and env.loss_fn is not None
    bns = [n for n, m in env.model.named_modules() if type(m).__name__ in BN_TYPES]
    if not bns:
        return CheckResult("bn_lag", "pass", "no batch norm: eval mode computes what train mode does")
    with torch.no_grad():
        _no_dropout(env.model)
        train_loss = float(env.loss_fn(forward(env.model, env.batch), env.batch.target))
        env.model.eval()
        eval_loss = float(env.loss_fn(forward(env.model, env.batch), env.batch.target))
    if not (math.isfinite(train_loss) and math.isfinite(eval_loss)):
        return CheckResult("bn_lag", "not_run", f"non-finite loss (train mode {train_loss}, eval mode {eval_loss})")
    lag = eval_loss > BN_LAG * train_loss and eval_loss - train_loss > 0.05 * max(abs(train_loss), 1e-12)
    verdict = ("the running statistics lag behind the weights: eval-mode (validation) scores understate the model"
               if lag else "the running statistics match the batch statistics")
    return CheckResult("bn_lag", "warn" if lag else "pass",
                       f"on a training batch the loss is {_fmt(train_loss)} with batch statistics and {_fmt(eval_loss)} with "
                       f"the running statistics of {len(bns)} batch-norm layer(s): {verdict}",
                       layers=bns, details={"train_mode": train_loss, "eval_mode": eval_loss, "lag": lag})


@_check("grad_flow", "Gradients reach every parameter", loss=True, target=True)
def grad_flow(env: CheckEnv) -> CheckResult:
    """Every trainable parameter gets a (non-zero) gradient and is in the optimizer."""
    assert env.batch is not None and env.loss_fn is not None
    named = _trainable(env.model)
    frozen = [n for n, p in env.model.named_parameters() if not p.requires_grad]
    env.model.eval()
    with torch.enable_grad():
        loss = env.loss_fn(forward(env.model, env.batch), env.batch.target)
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    unused = [n for (n, _), g in zip(named, grads, strict=True) if g is None]
    zero = [n for (n, _), g in zip(named, grads, strict=True) if g is not None and not bool(g.ne(0).any())]
    missing: list[str] = []
    if env.optimizer is not None:
        owned = {id(p) for g in env.optimizer.param_groups for p in g["params"]}
        missing = [n for n, p in named if id(p) not in owned]

    def show(xs: list[str]) -> str:
        return ", ".join(f"`{x}`" for x in xs[:6]) + (f" and {len(xs) - 6} more" if len(xs) > 6 else "")

    parts = []
    if unused:
        parts.append(f"no gradient path from the loss to {show(unused)}")
    if missing:
        parts.append(f"not in the optimizer: {show(missing)}")
    if zero:
        parts.append(f"exactly zero gradient on this batch: {show(zero)}")
    status = "fail" if unused or missing else "warn" if zero else "pass"
    if status == "pass":
        parts.append(f"all {len(named)} trainable parameters receive a gradient" + (" and are in the optimizer" if env.optimizer is not None else ""))
    if frozen:
        parts.append(f"{len(frozen)} frozen on purpose (requires_grad=False)")
    owners = list(dict.fromkeys(n.rsplit(".", 1)[0] if "." in n else "model" for n in unused + missing + zero))
    return CheckResult("grad_flow", status, "; ".join(parts), layers=owners,
                       details={"unused": unused, "not_in_optimizer": missing, "zero": zero, "frozen": frozen})


@_check("seed", "Fixed random seed", batch=False)
def seed(env: CheckEnv) -> CheckResult:
    """torch's seed was set explicitly (a seed below 2**32; the default is a random 64-bit value)."""
    s = torch.initial_seed()
    det = torch.are_deterministic_algorithms_enabled()
    note = "numpy and python `random` cannot be inspected: seed them too if your data pipeline uses them"
    if s < 2**32:
        return CheckResult("seed", "pass", f"torch seed is {s} (set explicitly); deterministic algorithms {'on' if det else 'off'}; {note}",
                           details={"torch_seed": s})
    return CheckResult("seed", "warn", f"torch was not seeded explicitly (initial seed {s} is random): call torch.manual_seed(...) first; {note}",
                       details={"torch_seed": s})


@_check("train_eval_mode", "Train / eval mode", batch=False)
def train_eval_mode(env: CheckEnv) -> CheckResult:
    """Dropout / batch norm models: training in train mode, validation in eval mode."""
    mods = [n for n, m in env.model.named_modules() if type(m).__name__ in MODE_DEPENDENT]
    if not mods:
        return CheckResult("train_eval_mode", "pass", "no dropout or batch norm: train and eval mode compute the same thing")
    if env.probe is None:
        return CheckResult("train_eval_mode", "manual",
                           f"mode-dependent modules: {', '.join(mods[:5])}; attach a Probe to count forward passes by mode", layers=mods)
    from ..diagnostics import Context
    from ..diagnostics.rules.setup import train_eval_mode as rule

    fm = dict(env.probe.forward_modes)
    f = rule(env.probe.history, Context(forward_modes=fm))
    counts = ", ".join(f"{k}: {v}" for k, v in fm.items())
    if f is not None:
        return CheckResult("train_eval_mode", "fail", f.evidence + f" (forward passes {counts})", layers=f.layers)
    if fm.get("train", 0) == 0:
        return CheckResult("train_eval_mode", "not_run", "no training forward pass recorded yet")
    return CheckResult("train_eval_mode", "pass", f"training in train mode, no-grad passes in eval mode ({counts})")


@_check("input_stats", "Input normalization statistics")
def input_stats_check(env: CheckEnv) -> CheckResult:
    """Inputs have zero mean and unit scale per feature (float inputs)."""
    assert env.batch is not None
    x = primary(env.batch.args) if env.batch.args else primary(list(env.batch.kwargs.values()))
    if x is None:
        first = next((a for a in env.batch.args if isinstance(a, Tensor)), None)
        kind = str(first.dtype).replace("torch.", "") if first is not None else "not tensors"
        return CheckResult("input_stats", "not_run", f"inputs are {kind}: no normalization to check")
    status, evidence, nums = assess_inputs(input_stats(x), _TH)
    return CheckResult("input_stats", status, evidence, details=nums)


@_check("loss_inputs", "Loss receives logits of the right shape", loss=True, target=True)
def loss_inputs(env: CheckEnv) -> CheckResult:
    """What enters the loss: logits vs probabilities, and prediction / target shapes."""
    h = env.history
    li = h.latest.loss_inputs if h is not None and h.latest is not None else {}
    source = "as the loss saw them during training"
    if not li:
        assert env.batch is not None
        env.model.eval()
        with torch.no_grad():
            pred = forward(env.model, env.batch)
        li = loss_input_stats(type(env.loss_fn).__name__, pred, env.batch.target)
        source = "from the model's output on this batch (eval mode)"
    problems = assess_loss_inputs(li)
    serious = [p for p in problems if p[1] in ("warning", "error")]
    desc = f"{li.get('loss')}: prediction {tuple(li.get('pred_shape') or ())}, target {tuple(li.get('target_shape') or ())} ({source})"
    if not serious:
        note = "; ".join(e for _, _, e in problems)
        return CheckResult("loss_inputs", "pass", desc + ("; " + note if note else "; logits of matching shape"), details=dict(li))
    status = "fail" if any(s == "error" for _, s, _ in serious) else "warn"
    return CheckResult("loss_inputs", status, desc + "; " + "; ".join(e for _, _, e in serious), details=dict(li))

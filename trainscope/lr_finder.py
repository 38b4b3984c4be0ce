"""The LR range test ("LR finder"): sweep the learning rate up, watch the loss, suggest a rate.

``lr_find(model, optimizer, loss_fn, loader)`` trains on real batches while the learning rate grows
exponentially (or linearly) from ``start_lr`` to ``end_lr``, smooths the loss with fastai's debiased
EMA (beta 0.98), stops as soon as divergence is certain, and then puts **everything back
bit-identical**: parameters, buffers (BatchNorm statistics), gradients, train / eval flags, the
optimizer's hyper-parameters and state, and the Python / numpy / torch / CUDA random states --
also when the sweep diverges or raises.  The probe (if given) records nothing meanwhile, and
trainscope's live schedules keep their hands off the learning rate.

Suggestions are pure functions of ``(lrs, losses)`` (anchors §2.1, fastai's exact rules, in log-lr
space): ``steep`` (steepest descent w.r.t. log lr), ``valley`` (about halfway into the longest
decreasing stretch), ``minimum`` (lr at the minimum / 10) and ``slide``.  The **consensus** is
their median in log space (the geometric median in one dimension), reported with its **spread**
in decades (log10 of highest / lowest rule), a measure of how much the rules agree.

Divergence stop (any of): a non-finite loss; the smoothed loss above ``diverge_th`` x its best
(fastai / Lightning: 4); the raw loss above ``diverge_th`` x the best smoothed loss for
``diverge_patience`` consecutive iterations -- certain divergence, detected before the slow EMA
catches up, which saves iterations.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from .interventions._base import Applied, as_choice, as_float, as_int, group_value, set_group_value
from .interventions._control import suspended
from .interventions._state import (
    ModelCapture,
    OptimizerCapture,
    RNGCapture,
    interrupts_deferred,
    optimizer_params,
    split_batch,
)

if TYPE_CHECKING:
    from .run import RunContext

__all__ = ["RULES", "LRFinderResult", "consensus", "lr_find", "minimum", "slide", "steep", "suggest", "valley"]


# ---------------------------------------------------------------------------- rules (pure)
def _arrays(lrs: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(lrs, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("lrs and losses must be 1-D sequences of the same length")
    if len(a) < 3:
        raise ValueError(f"need at least 3 points to suggest a learning rate, got {len(a)}")
    if np.any(a <= 0):
        raise ValueError("learning rates must be positive")
    return a, b


def steep(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai ``steep``: the lr where the loss falls fastest per unit of log lr."""
    a, b = _arrays(lrs, losses)
    grads = (b[1:] - b[:-1]) / (np.log(a[1:]) - np.log(a[:-1]))
    return float(a[int(np.argmin(grads))])


def valley(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai ``valley``: about halfway into the longest decreasing subsequence of the loss."""
    a, arr = _arrays(lrs, losses)
    b = arr.tolist()  # plain floats: the O(n^2) loop is ~20x faster than on numpy scalars
    n = len(b)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if b[i] < b[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(a[idx])


def minimum(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai ``minimum``: the lr at the lowest loss, divided by 10."""
    a, b = _arrays(lrs, losses)
    return float(a[int(np.argmin(b))]) / 10


def slide(lrs: Sequence[float], losses: Sequence[float], lr_diff: int = 15, thresh: float = 0.005) -> float:
    """fastai ``slide``: walk left from the end until the loss gradient flattens."""
    a, b = _arrays(lrs, losses)
    g = np.gradient(b)
    r, left = -1, -1 - lr_diff
    local = a[max(left, -len(a))]
    while left >= -len(b) and abs(g[r] - g[left]) > thresh:
        local = a[left]
        r -= 1
        left -= 1
    return float(local)


RULES: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "steep": steep, "valley": valley, "minimum": minimum, "slide": slide,
}


def consensus(suggestions: dict[str, float]) -> tuple[float, float]:
    """Median of the suggestions in log space, and their spread in decades."""
    logs = np.log10([v for v in suggestions.values() if v > 0 and math.isfinite(v)])
    if len(logs) == 0:
        raise ValueError("no finite positive suggestion to agree on")
    return float(10 ** np.median(logs)), float(logs.max() - logs.min())


def suggest(lrs: Sequence[float], losses: Sequence[float], rules: Sequence[str] = ("steep", "valley", "minimum"),
            *, skip_start: int | None = None, skip_end: int = 5) -> tuple[dict[str, float], float, float]:
    """fastai's trimming (drop ``skip_start`` -- default a tenth -- and the last ``skip_end``
    points, stop at the first non-finite loss), then every rule and their consensus."""
    a = list(lrs)
    b = list(losses)
    s = len(a) // 10 if skip_start is None else skip_start
    a, b = a[s: len(a) - skip_end], b[s: len(b) - skip_end]
    bad = [i for i, v in enumerate(b) if not math.isfinite(v)]
    if bad:
        a, b = a[: bad[0]], b[: bad[0]]
    out = {r: RULES[r](a, b) for r in rules}
    lr, spread = consensus(out)
    return out, lr, spread


AGREE_DECADES = 1.0
"""Rules whose suggestions lie within this many decades (a factor 10) agree."""

_WHY = {
    "valley": "it is halfway into the longest stretch where the loss falls (robust to one noisy step, but "
              "cautious when that stretch is long)",
    "steep": "it follows the single steepest step of the curve, which one noisy batch can fake",
    "minimum": "it is a tenth of the lr at the lowest point, where the curve is flattest and noisiest",
    "slide": "it walks back from the end of the curve until the slope flattens, and depends on the noise threshold",
}


def agreement(suggestions: dict[str, float]) -> tuple[float, str | None, bool, str]:
    """Which learning rate to use, and why, from the rules' suggestions (pure).

    Returns ``(lr, trusted rule or None, agree, text)``.  The suggestion is always the median in
    log space (with three rules: the middle one, so one rule that fails on noise cannot move it).
    The rules *agree* when all lie within :data:`AGREE_DECADES` of each other.  When they do not,
    the text says so plainly, names the rule to trust (the median one) and why, and which rules
    are outliers and why they fail; when no two rules are within a decade of each other, it says
    that no rule is reliable on this curve.
    """
    lr, spread = consensus(suggestions)
    good = {k: v for k, v in suggestions.items() if v > 0 and math.isfinite(v)}
    vals = ", ".join(f"{k} {v:.2g}" for k, v in good.items())
    if spread <= AGREE_DECADES:
        return lr, None, True, f"the rules agree ({vals}: within a factor {10 ** spread:.1f})"
    factor = f"{10 ** spread:,.0f}"
    mid = min(good, key=lambda k: abs(math.log10(good[k]) - math.log10(lr)))
    trusted = mid if abs(math.log10(good[mid]) - math.log10(lr)) < 1e-9 else None
    near = [k for k in good if k != mid and abs(math.log10(good[k] / good[mid])) <= AGREE_DECADES]
    far = [k for k in good if k != mid and k not in near]
    why_far = "; ".join(f"{k} ({good[k]:.2g}) is off because {_WHY.get(k, 'it disagrees')}" for k in far)
    if trusted is not None and near:
        tail = f", while {why_far}" if far else " (only the two ends are further apart)"
        return (lr, trusted, False,
                f"the rules DISAGREE ({vals}: a factor {factor} apart). Trust {trusted} ({lr:.2g}), the median: "
                f"{' and '.join(near)} {'lies' if len(near) == 1 else 'lie'} within a decade of it{tail}")
    return (lr, trusted, False,
            f"the rules DISAGREE ({vals}: a factor {factor} apart) and no two are within a decade: no rule is "
            f"reliable on this curve. The median {lr:.2g} is a guess; rerun with more batches (data=, num_iter) "
            "or train a few hundred steps with a lower lr and look again")


def warmup_iterations(num_iter: int) -> int:
    """Iterations at the start of a sweep that only measure the loss and its noise: no divergence
    stop before them (they are also the points the suggestion rules drop)."""
    return max(3, min(num_iter // 10, 20))


def noise_level(raw: Sequence[float]) -> float:
    """Batch-to-batch standard deviation of the raw loss (0 with fewer than two points)."""
    v = [x for x in raw if math.isfinite(x)]
    return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def divergence_limit(best: float, noise: float, diverge_th: float) -> float:
    """The loss above which the sweep counts as diverging: ``diverge_th`` x the best smoothed
    loss (fastai / Lightning), but never within 3 batch-to-batch standard deviations of it -- a
    converged model's loss is tiny and noisy, and a ratio alone calls its noise divergence."""
    return max(diverge_th * best, best + 3.0 * noise)


def descended(raw: Sequence[float], losses: Sequence[float], warmup: int) -> bool:
    """Whether the smoothed loss fell clearly below its level at the start of the sweep (the mean
    raw loss of the first ``warmup`` iterations): by more than 3 standard errors of that mean and
    more than 2 %.  A converged model's curve is flat, then rises: there is no descent to find."""
    head = [x for x in raw[:warmup] if math.isfinite(x)]
    tail = [x for x in losses[warmup - 1:] if math.isfinite(x)] if len(losses) >= warmup else []
    if not head or not tail:
        return False
    start = float(np.mean(head))
    margin = max(3.0 * noise_level(head) / math.sqrt(len(head)), 0.02 * abs(start))
    return min(tail) < start - margin


def rise_lr(lrs: Sequence[float], raw: Sequence[float], losses: Sequence[float], warmup: int) -> float | None:
    """The first learning rate (after the warm-up) where the smoothed loss clearly rises above its
    starting level (twice the start, and 3 standard deviations above it); ``None`` if it never does."""
    head = [x for x in raw[:warmup] if math.isfinite(x)]
    if not head:
        return None
    start = float(np.mean(head))
    limit = max(2.0 * start, start + 3.0 * noise_level(head))
    for lr, v in zip(lrs[warmup:], losses[warmup:], strict=False):
        if not math.isfinite(v) or v > limit:
            return float(lr)
    return None


# ---------------------------------------------------------------------------- the sweep
@dataclass
class LRFinderResult:
    """What ``lr_find`` saw and suggests.

    ``suggestion`` is the rate to use (``None`` when the curve gives none: ``note`` says why and
    ``advice`` what to do).  ``agree`` tells whether the rules agree (within a decade); when they do
    not, ``trusted`` names the rule the suggestion comes from and ``advice`` says why.
    ``warnings`` flags a fragile sweep (one batch cycled, a converged model...).
    """

    lrs: list[float]
    losses: list[float]  # debiased EMA of the loss
    raw_losses: list[float]
    suggestions: dict[str, float] = field(default_factory=dict)
    suggestion: float | None = None
    spread: float | None = None
    iterations: int = 0
    stop_reason: str = "completed"
    elapsed: float = 0.0
    note: str = ""
    advice: str = ""
    agree: bool | None = None
    trusted: str | None = None
    descended: bool | None = None
    rise_lr: float | None = None
    distinct_batches: int | None = None
    warnings: list[str] = field(default_factory=list)

    def as_event(self) -> dict[str, Any]:
        """The timeline payload the dashboard plots."""
        return {"lrs": self.lrs, "losses": self.losses, "suggestion": self.suggestion,
                "suggestions": self.suggestions, "spread": self.spread, "iterations": self.iterations,
                "stop_reason": self.stop_reason, "note": self.note, "advice": self.advice, "agree": self.agree,
                "trusted": self.trusted, "descended": self.descended, "rise_lr": self.rise_lr,
                "distinct_batches": self.distinct_batches, "warnings": list(self.warnings)}

    def summary(self, data: str = "") -> str:
        """One plain sentence (or a few): the suggestion, whether to trust it, and any warning."""
        on = f" on {data}" if data else ""
        if self.stop_reason == "cancelled":
            return f"no suggestion: the model, optimizer and random state are back exactly as before the sweep{on}"
        if self.suggestion is None:
            head = f"no suggestion after {self.iterations} iterations{on}: {self.note or self.stop_reason}"
        else:
            head = f"suggested lr {self.suggestion:.3g} ({self.iterations} iterations{on})"
        extra = [self.note] if self.note and self.suggestion is not None else []
        parts = [head] + extra + ([self.advice] if self.advice else []) + list(self.warnings)
        return ". ".join(p.rstrip(". ") for p in parts if p)

    def apply(self, optimizer: torch.optim.Optimizer, how: str = "set_lr", *, total_steps: int = 1000,
              probe: RunContext | None = None) -> Applied:
        """Use the suggestion: ``"set_lr"`` sets it, ``"one_cycle"`` starts a one-cycle schedule
        peaking at it over ``total_steps`` steps."""
        from .interventions.schedule import one_cycle_, set_lr_

        if self.suggestion is None:
            raise ValueError(f"there is no suggestion to apply ({self.note or self.stop_reason})")
        as_choice("how", how, ("set_lr", "one_cycle"))
        if how == "set_lr":
            return set_lr_(optimizer, self.suggestion, probe=probe)
        return one_cycle_(optimizer, max_lr=self.suggestion, total_steps=total_steps, probe=probe)


def judge(res: LRFinderResult, rules: Sequence[str], *, num_iter: int, start_lr: float) -> None:
    """Fill ``res``'s suggestion, note, advice and warnings from its curve (pure: numbers only)."""
    warm = warmup_iterations(num_iter)
    lrs, losses, raw = res.lrs, res.losses, res.raw_losses
    res.descended = descended(raw, losses, warm) if len(raw) > warm else None
    res.rise_lr = rise_lr(lrs, raw, losses, warm)
    if res.rise_lr is None and res.stop_reason != "completed" and lrs:
        res.rise_lr = float(lrs[-1])  # the divergence stop is where it rose
    d = res.distinct_batches
    if d is not None and d < res.iterations:
        if d == 1:
            res.warnings.append(
                f"fragile: the sweep cycled ONE batch {res.iterations} times, so the curve shows how fast the model "
                "memorizes that batch, not how it learns from the data; the suggestion can be far off -- give "
                f"data= with at least {num_iter} batches")
        elif d * 10 <= res.iterations:
            res.warnings.append(
                f"fragile: the sweep cycled {d} batches over {res.iterations} iterations (each seen "
                f"{res.iterations / d:.0f} times): give data= with at least {num_iter} batches for a representative curve")
    try:
        res.suggestions, _, res.spread = suggest(lrs, losses, rules, skip_start=num_iter // 10)
    except ValueError as e:
        res.suggestions, res.spread = {}, None
        if res.stop_reason == "completed":
            res.note = f"no suggestion: {e}"
            res.advice = "raise num_iter"
        elif res.descended is False and len(raw) >= 2 and raw[-1] > raw[0]:
            res.note = (f"the loss rose from the first iterations and the sweep stopped after {len(raw)} "
                        f"({res.stop_reason})")
            res.advice = f"start_lr ({start_lr:.2g}) is already too large: lower start_lr"
        else:
            res.note = f"the sweep stopped after {len(raw)} iterations ({res.stop_reason}), too few to judge ({e})"
            res.advice = "raise num_iter, or check the loss on a few batches by hand"
        return
    if res.descended is False:
        edge = res.rise_lr
        res.note = ("the loss did not fall anywhere in the sweep: the model looks converged on this data (or cannot "
                    f"make progress in {len(raw)} iterations), so there is no descent for the rules to find and "
                    "their values are noise")
        if edge is not None:
            res.suggestion, res.trusted, res.agree = edge / 10, None, None
            res.advice = (f"the loss starts to rise at lr {edge:.2g}; the suggestion {edge / 10:.2g} is a tenth of "
                          "that: an upper bound for fine-tuning, not a rate the rules found. Keep the current lr "
                          "(or lower it) unless training has stalled; if the model is not trained yet, raise "
                          "num_iter")
        else:
            res.advice = ("the loss stayed flat up to end_lr: keep the current lr, raise end_lr to find where it "
                          "starts to rise, or raise num_iter if the model is not trained yet")
        return
    res.suggestion, res.trusted, res.agree, res.advice = agreement(res.suggestions)


class _Cycle:
    """Endless iterator over ``data`` (restarted when exhausted)."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.it: Iterator[Any] = iter(data)
        self.fresh = True
        self.taken = 0
        self.distinct: int | None = None  # batches in one pass, once the data was cycled

    def __next__(self) -> Any:
        try:
            b = next(self.it)
        except StopIteration:
            if self.fresh:
                raise ValueError("the loader yielded no batch") from None
            if self.distinct is None:
                self.distinct = self.taken
            self.it = iter(self.data)
            try:
                b = next(self.it)
            except StopIteration:
                raise ValueError(
                    "the data ran out and cannot be restarted (a generator?); pass a list of batches or a "
                    "DataLoader, or lower num_iter"
                ) from None
        self.fresh = False
        self.taken += 1
        return b


def lr_find(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[..., Tensor] | None,
    loader: Any,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    mode: str = "exp",
    beta: float = 0.98,
    diverge_th: float = 4.0,
    diverge_patience: int = 3,
    rules: Sequence[str] = ("steep", "valley", "minimum"),
    step_fn: Callable[[nn.Module, Any], Tensor] | None = None,
    probe: RunContext | None = None,
    data_note: str = "the loader passed to lr_find",
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> LRFinderResult:
    """Run the LR range test and restore everything afterwards (see the module docstring).

    Parameters
    ----------
    model, optimizer, loss_fn
        What the training uses; ``loss_fn(model(inputs), target)`` is the loss.
    loader
        An iterable of ``(inputs, target)`` batches (cycled if shorter than ``num_iter``).
    start_lr, end_lr, num_iter, mode
        The sweep: ``exp`` (``start * (end/start) ** (t/(num_iter-1))``) or ``linear``.
    beta
        Debiased EMA factor of the plotted / analysed loss (fastai: 0.98).
    diverge_th, diverge_patience
        Divergence stop (see the module docstring).
    rules
        Suggestion rules among :data:`RULES`.
    step_fn
        ``step_fn(model, batch) -> loss`` for batches that are not ``(inputs, target)``.
    probe
        Paused during the sweep (it records nothing and does not count the steps); the result is
        then put on its timeline as an ``lr_find`` event (what the dashboard plots).
    data_note
        How the data is described in that event.
    progress
        ``progress(done, num_iter)`` after every iteration (keep it cheap).
    cancel
        ``cancel() -> bool`` checked before every iteration: when it returns true the sweep stops
        there, everything is restored exactly as after a normal sweep, and the result has
        ``stop_reason == "cancelled"``, no suggestion, and is not put on the probe's timeline.
        Run as a dashboard action (``probe.request("lr_find")``), both default to the action's
        own (:func:`trainscope.actions.progress` / :func:`~trainscope.actions.cancel_requested`):
        the dashboard shows "Training paused: LR finder 37/100" with a Cancel button.

    Returns
    -------
    LRFinderResult

    Examples
    --------
    >>> res = trainscope.lr_find(model, opt, nn.CrossEntropyLoss(), loader)  # doctest: +SKIP
    >>> res.suggestion, res.suggestions, res.spread  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"lr_find needs an nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"lr_find needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if loss_fn is None and step_fn is None:
        raise ValueError("lr_find needs loss_fn (e.g. nn.CrossEntropyLoss()) or step_fn(model, batch) -> loss")
    start_lr = as_float("start_lr", start_lr, lo=0.0, lo_open=True)
    end_lr = as_float("end_lr", end_lr, lo=0.0, lo_open=True)
    if end_lr <= start_lr:
        raise ValueError(f"end_lr ({end_lr:g}) must be larger than start_lr ({start_lr:g})")
    num_iter = as_int("num_iter", num_iter, lo=6, hi=100000)
    as_choice("mode", mode, ("exp", "linear"))
    beta = as_float("beta", beta, lo=0.0, hi=1.0, hi_open=True)
    diverge_th = as_float("diverge_th", diverge_th, lo=1.0, lo_open=True)
    diverge_patience = as_int("diverge_patience", diverge_patience, lo=1)
    for r in rules:
        as_choice("rule", r, tuple(RULES))
    if loader is None:
        raise ValueError("lr_find needs data: an iterable of (inputs, target) batches such as a DataLoader")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a function progress(done, total), got {type(progress).__name__}")
    if cancel is not None and not callable(cancel):
        raise TypeError(f"cancel must be a function cancel() -> bool, got {type(cancel).__name__}")
    from . import actions

    if progress is None:
        def progress(done: int, total: int) -> None:
            actions.progress(done, total, "LR finder")
    if cancel is None:
        cancel = actions.cancel_requested

    def lr_at(t: int) -> float:
        r = t / (num_iter - 1)
        return start_lr * (end_lr / start_lr) ** r if mode == "exp" else start_lr + r * (end_lr - start_lr)

    groups = optimizer.param_groups
    lr0 = [group_value(g, "lr") for g in groups]
    ratios = [lr / lr0[0] if lr0[0] > 0 else 1.0 for lr in lr0]
    plan = [lr_at(t) for t in range(num_iter)]
    plain_lr = not any(isinstance(g["lr"], Tensor) for g in groups)  # the fast path: float lrs
    # everything is captured before the loader's iterator exists: a shuffled DataLoader draws
    # its order (and its workers' seed) from the global torch RNG when iterated
    saved_rng = RNGCapture()
    saved_model = ModelCapture(model, extra=optimizer_params(optimizer))  # + what the optimizer trains outside it
    saved_opt = OptimizerCapture(optimizer)
    lrs: list[float] = []
    losses: list[float] = []
    raw: list[float] = []
    reason = "completed"
    cancelled = False
    lag = 2 if any(p.is_cuda for p in model.parameters()) else 0  # read CUDA losses 2 steps late: no stall
    pending: deque[tuple[float, Tensor]] = deque()
    warm = warmup_iterations(num_iter)
    avg, best, over, noise = 0.0, math.inf, 0, 0.0
    t0 = time.perf_counter()

    def take(lr: float, loss: Tensor) -> str | None:
        nonlocal avg, best, over, noise
        v = float(loss)
        if not math.isfinite(v):
            return f"non-finite loss at lr {lr:.3g}"
        raw.append(v)
        avg = beta * avg + (1 - beta) * v
        sm = avg / (1 - beta ** len(raw))
        lrs.append(lr)
        losses.append(sm)
        best = min(best, sm)
        if len(raw) == warm:
            noise = noise_level(raw)  # batch-to-batch noise at lrs too small to change anything
        if len(raw) <= warm:
            return None  # the first iterations only measure the loss and its noise
        limit = divergence_limit(best, noise, diverge_th)
        if sm > limit:
            return f"diverged (smoothed loss > {diverge_th:g}x best) at lr {lr:.3g}"
        over = over + 1 if v > limit else 0
        if over >= diverge_patience:
            return f"diverged (loss > {diverge_th:g}x best for {diverge_patience} steps) at lr {lr:.3g}"
        return None

    pause = probe.paused() if probe is not None else contextlib.nullcontext()
    batches: _Cycle | None = None
    try:
        batches = _Cycle(loader)
        with pause, suspended(optimizer), torch.enable_grad():
            model.train()
            for it, lr in enumerate(plan):
                if cancel():
                    reason = f"cancelled after {it:,} of {num_iter:,} iterations"
                    cancelled = True
                    break
                for g, q in zip(groups, ratios, strict=True):
                    if plain_lr:
                        g["lr"] = lr * q
                    else:
                        set_group_value(g, "lr", lr * q)
                batch = next(batches)
                optimizer.zero_grad(set_to_none=True)
                if step_fn is not None:
                    loss = step_fn(model, batch)
                else:
                    args, kwargs, target = split_batch(batch)
                    loss = loss_fn(model(*args, **kwargs), target)  # type: ignore[misc]
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                if lag:
                    pending.append((lr, loss.detach()))
                    stop = None
                    while len(pending) > lag and stop is None:
                        stop = take(*pending.popleft())
                else:
                    stop = take(lr, loss.detach())
                if stop is not None:
                    reason = stop
                    break
                progress(it + 1, num_iter)
            while pending and reason == "completed":
                s = take(*pending.popleft())
                reason = s or reason
    finally:
        with interrupts_deferred():  # a Ctrl-C now waits until everything is back
            try:
                saved_model.restore()
                saved_opt.restore()
            finally:
                saved_rng.restore()
    res = LRFinderResult(lrs=lrs, losses=losses, raw_losses=raw, iterations=len(raw), stop_reason=reason,
                         elapsed=time.perf_counter() - t0,
                         distinct_batches=batches.distinct if batches is not None else None)
    if cancelled:
        res.stop_reason = "cancelled"
        res.note = (f"{reason}: the model, optimizer and random state are back exactly as before the sweep; "
                    "no suggestion")
        return res
    judge(res, rules, num_iter=num_iter, start_lr=start_lr)
    if probe is not None:
        probe.history.add_event("lr_find", "LR finder", step=probe.step_count, data=data_note, **res.as_event())
    return res

"""The rule registry and the stateless :func:`diagnose`."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ..history import History
from .context import Context
from .finding import Finding, severity_rank

__all__ = ["HEAD_LABELS", "LABELS", "LAST_RESORT", "RULES", "SYMPTOMS", "RuleSpec", "causal_rank", "diagnose", "finding_order", "rule"]

RuleFn = Callable[[History, Context], "Finding | None"]


@dataclass(frozen=True)
class RuleSpec:
    """One label's rule: a pure function ``(history, context) -> Finding | None``."""

    label: str
    fn: RuleFn
    checklist: tuple[str, ...]
    definition: str
    finite: bool = False  # reads statistics that are meaningless once NaN / Inf appeared


RULES: dict[str, RuleSpec] = {}

LABELS: tuple[str, ...] = (
    "vanishing_activations",
    "exploding_activations",
    "vanishing_gradients",
    "exploding_gradients",
    "dead_units",
    "saturated_activations",
    "symmetric_init",
    "nan_inf",
    "divergence",
    "oscillation",
    "not_learning",
    "lr_too_high",
    "lr_too_low",
    "overfitting",
    "bad_loss_at_init",
    "unnormalized_inputs",
    "frozen_parameters",
    "missing_zero_grad",
    "probabilities_into_loss",
    "train_eval_mode",
    "batch_mixing",
    "label_noise",
    "wrong_loss",
    "over_regularization",
    "head_loss_mismatch",
    "unscaled_targets",
    "class_imbalance",
    "still_improving",
)
"""The diagnosis vocabulary, in display order."""


SYMPTOMS: frozenset[str] = frozenset({
    "vanishing_activations", "exploding_activations", "vanishing_gradients", "exploding_gradients",
    "dead_units", "saturated_activations", "nan_inf", "divergence", "oscillation", "not_learning",
    "overfitting", "bad_loss_at_init",
})
"""Labels that name what training *shows* (a symptom) rather than what is wrong with the set-up
or the hyper-parameters (a cause).  Every other label -- the input, loss, optimizer, learning-rate
and data labels, including labels added later -- is a cause: when a cause and a symptom hold at
the same time, the cause is listed first (it is what the user should change; the symptom findings
name it in their own evidence through :func:`~trainscope.diagnostics.rules.causes.root_cause`)."""

HEAD_LABELS: frozenset[str] = frozenset({"wrong_loss", "probabilities_into_loss", "head_loss_mismatch"})
"""Findings about what the loss receives: when their rule names no layer, :func:`diagnose` points
them at the model's head (its output activation, then its last linear / conv layer)."""


LAST_RESORT: frozenset[str] = frozenset({"still_improving"})
"""Labels that explain a poor result only when nothing else does: "training ended too early" is
the verdict on a run with nothing else wrong, so it comes after every other finding of its
severity (a learning rate, a head or an input problem found in the same run is the cause)."""


def causal_rank(label: str) -> int:
    """0 for a cause, 1 for a symptom (:data:`SYMPTOMS`), 2 for a last-resort explanation
    (:data:`LAST_RESORT`): the second key of the findings' order."""
    return 2 if label in LAST_RESORT else 1 if label in SYMPTOMS else 0


CAUSE_ORDER: tuple[str, ...] = ("unnormalized_inputs", "symmetric_init", "lr_too_high", "lr_too_low")
"""Among causes of the same severity: the root-cause tests' order -- input scale, init, learning
rate -- then every other cause (head / loss structure, data, set-up)."""


def _cause_order(label: str) -> int:
    return CAUSE_ORDER.index(label) if label in CAUSE_ORDER else len(CAUSE_ORDER)


def _order(label: str) -> int:
    return LABELS.index(label) if label in LABELS else len(LABELS)


def finding_order(f: Finding) -> tuple[int, int, int, int, int, int]:
    """Sort key of current findings: warning and error before info; among those, causes before
    symptoms (root cause before symptom); then most severe; then, among causes, the root-cause
    tests' order (:data:`CAUSE_ORDER`); then earliest, display order."""
    sev = severity_rank(f.severity)
    return (0 if sev >= 1 else 1, causal_rank(f.label), -sev, _cause_order(f.label), int(f.first_step), _order(f.label))


def rule(label: str, *, checklist: Iterable[str] = (), finite: bool = False) -> Callable[[RuleFn], RuleFn]:
    """Register ``fn`` as the rule of ``label`` (its docstring is the documented definition).

    ``finite=True``: the rule reads statistics that non-finite values make meaningless; it is
    skipped while the latest sampled step holds NaN / Inf (``nan_inf`` reports that instead).
    """
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; add it to LABELS first")

    def deco(fn: RuleFn) -> RuleFn:
        RULES[label] = RuleSpec(label, fn, tuple(checklist), (fn.__doc__ or "").strip(), finite)
        return fn

    return deco


def diagnose(
    history: History,
    context: Context | None = None,
    *,
    labels: Iterable[str] | None = None,
    errors: list[str] | None = None,
    failed: set[str] | None = None,
) -> list[Finding]:
    """Run every rule (or those of ``labels``) on ``history``; never raises.

    Returns the findings that hold now, most severe first.  ``first_step`` / ``last_step`` are the
    steps the rule could see evidence for; :class:`~trainscope.diagnostics.Diagnoser` adds memory
    across calls.  A rule that fails is skipped, its traceback appended to ``errors`` and its label
    added to ``failed``.
    """
    ctx = context if context is not None else Context()
    ctx._memo.clear()
    wanted = list(labels) if labels is not None else list(LABELS)
    out: list[Finding] = []
    step = max(int(history.step), 0)
    poisoned = _nonfinite_now(history)
    for label in wanted:
        spec = RULES.get(label)
        if spec is None or (poisoned and spec.finite):
            continue
        try:
            f = spec.fn(history, ctx)
        except Exception:
            if errors is not None and len(errors) < 100:
                errors.append(f"{label}: {traceback.format_exc()}")
            if failed is not None:
                failed.add(label)
            continue
        if f is None:
            continue
        if not f.checklist:
            f.checklist = list(spec.checklist)
        if not f.layers and label in HEAD_LABELS:
            from ._series import head_layers

            f.layers = head_layers(history, ctx)
        if f.last_step < 0:
            f.last_step = step
        f.first_step = f.last_step if f.first_step < 0 else min(f.first_step, f.last_step)
        out.append(f)
    out.sort(key=finding_order)
    return out


def _nonfinite_now(history: History) -> bool:
    """Whether the latest sampled step (or the latest loss) holds NaN / Inf."""
    rec = history.latest
    if rec is not None:
        for m in ("act_nonfinite", "ograd_nonfinite", "grad_nonfinite"):
            v = np.nan_to_num(np.asarray(rec.metrics.get(m, [])), nan=0.0)
            if v.size and bool((v != 0).any()):
                return True
    vals = history.scalar("loss")["mean"]
    return bool(len(vals) and not np.isfinite(vals[-1]))

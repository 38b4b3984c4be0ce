"""The stateful :class:`Diagnoser` (memory across calls) and :func:`diagnose_probe`."""

from __future__ import annotations

import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..history import History
from ._series import is_change
from .config import Thresholds
from .context import Context, context_from_probe
from .finding import Finding, intervention, severity_rank
from .registry import LABELS, _nonfinite_now, diagnose, finding_order

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["REFRESH_STEPS", "Diagnoser", "diagnose_probe", "diagnoser_for", "on_training_thread"]


class Diagnoser:
    """Runs the rules and remembers: when each finding was first seen, and whether it still holds.

    A finding that stops holding stays listed with ``active=False`` (and its last step), so a
    transient problem remains visible in the run's record.

    Parameters
    ----------
    thresholds
        The rules' thresholds (:class:`~trainscope.diagnostics.Thresholds`).
    labels
        Restrict the diagnosis to these labels (default: all).
    """

    def __init__(self, thresholds: Thresholds | None = None, labels: list[str] | None = None) -> None:
        if labels is not None:
            unknown = [x for x in labels if x not in LABELS]
            if unknown:
                raise ValueError(f"unknown label(s) {unknown}; labels are: {', '.join(LABELS)}")
        self.thresholds = thresholds or Thresholds()
        self.labels = list(labels) if labels is not None else None
        self.errors: list[str] = []
        self.disabled: set[str] = set()  # labels whose rule raised: switched off
        self.newly_failed: list[str] = []
        self._memory: dict[str, Finding] = {}
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None

    def update(self, history: History, context: Context | None = None, *, key: tuple[Any, ...] | None = None) -> list[Finding]:
        """Diagnose ``history`` now and merge with what was seen before; returns :meth:`findings`.

        ``key`` identifies the state of the inputs: an update with the same key as the previous one
        re-uses its result.  Never raises (rule errors go to :attr:`errors`).
        """
        with self._lock:
            if key is not None and key == self._key:
                return self._sorted()
            ctx = context if context is not None else Context(thresholds=self.thresholds)
            wanted = [x for x in (self.labels if self.labels is not None else LABELS) if x not in self.disabled]
            failed: set[str] = set()
            try:
                now = diagnose(history, ctx, labels=wanted, errors=self.errors, failed=failed)
            except Exception:  # pragma: no cover - diagnose itself guards every rule
                self.errors.append(traceback.format_exc())
                return self._sorted()
            held = {f.label for f in now}
            for f in now:
                old = self._memory.get(f.label)
                if old is not None and old.first_step >= 0:
                    f.first_step = min(old.first_step, f.first_step)
                f.active = True
                self._memory[f.label] = f
            self.disabled |= failed  # a rule that raised is switched off for this run
            self.newly_failed = sorted(failed)
            changes = _model_changes(history)
            for label, old in self._memory.items():
                if label not in held:
                    if old.active and "resolved_by" not in old.data:
                        # the latest change since the finding was first seen (an event's step can be
                        # ahead of the latest recorded step: it is the step the change applies to)
                        fix = next((c for c in reversed(changes) if old.first_step <= c[0]), None)
                        if fix is not None:
                            old.data["resolved_by"] = {"step": fix[0], "action": fix[1]}
                            old.evidence += f" [resolved: no longer holds after `{fix[1]}` at step {fix[0]}]"
                    old.active = False
            self._key = key
            return self._sorted()

    def _sorted(self) -> list[Finding]:
        return sorted(self._memory.values(), key=lambda f: (not f.active, *finding_order(f)))

    def findings(self, min_severity: str | None = None, *, active_only: bool = False) -> list[Finding]:
        """What has been found so far: active first, then by severity and first step."""
        rank = severity_rank(min_severity) if min_severity is not None else 0
        with self._lock:
            return [f for f in self._sorted() if severity_rank(f.severity) >= rank and (f.active or not active_only)]

    def reset(self) -> None:
        """Forget every finding (e.g. after changing the model)."""
        with self._lock:
            self._memory.clear()
            self._key = None


def _model_changes(history: History) -> list[tuple[int, str]]:
    """``(step, action)`` of the interventions and undos on the timeline, in order."""
    return [(int(e.step), str(e.data.get("action") or e.label)) for e in list(history.events) if is_change(e)]


class _ProbeState:
    def __init__(self) -> None:
        self.diagnoser = Diagnoser()
        self.sym_step: int | None = None
        self.symmetry: dict[str, tuple[int, int]] | None = None
        self.tied: dict[str, str] | None = None
        self.regularization: dict[str, Any] | None = None
        self.demanded: dict[str, int] = {}  # on-demand check -> step it was last asked for
        self.damage: tuple[int, Any] | None = None  # (step, interventions.recover.Damage) of the latest check


_STATES: weakref.WeakKeyDictionary[Any, _ProbeState] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()
REFRESH_STEPS = 10
REFRESH_SECONDS = 2.0
"""...and older than this (wall time) before a diagnosis asks the probe for a fresh sample."""
"""A diagnosis asks the probe for a fresh full sample when its latest one is older than this many
steps (the probe's own schedule may sample much more rarely on cheap steps)."""


CHECKS: dict[str, Callable[..., Any]] = {}
"""The checklists' ``run(name, run_ctx)`` and ``auto(run_ctx)``, handed over once by
:func:`trainscope.builtins.register_builtins`: diagnostics never imports the checklists (which
read diagnostics' assessments)."""


def _run_named_check(name: str) -> Callable[[Any], None]:
    def task(probe: Any) -> None:
        run_check = CHECKS.get("run")
        if run_check is None:
            return
        try:
            run_check(name, probe)
        except ValueError:
            pass  # inputs missing (no batch with targets yet): asked again later

    return task


_ON_DEMAND: dict[str, Callable[[Any], None]] = {"bn_lag": _run_named_check("bn_lag")}
"""Read-only checks a rule can ask for when the statistics alone cannot decide (``Finding.data
["needs"]``); each runs at most once per :data:`REFRESH_STEPS` steps, never during a step."""


def _report_failures(probe: Any, d: Diagnoser) -> None:
    """Record switched-off rules in ``probe.errors`` (where the probe lists what it caught)."""
    from ..run import ProbeError

    for label in d.newly_failed:
        tb = next((e for e in reversed(d.errors) if e.startswith(f"{label}:")), "")
        if len(probe.errors) < 1000:
            probe.errors.append(ProbeError(f"diagnosis rule {label} (switched off)", int(probe.step_count),
                                           tb.strip().splitlines()[-1] if tb else "error", tb))
    d.newly_failed = []


def diagnoser_for(probe: RunContext) -> Diagnoser:
    """The :class:`Diagnoser` that :func:`diagnose_probe` keeps for this probe."""
    return _state(probe).diagnoser


def _state(probe: RunContext) -> _ProbeState:
    with _STATES_LOCK:
        st = _STATES.get(probe)
        if st is None:
            st = _STATES[probe] = _ProbeState()
        return st


def on_training_thread(probe: RunContext, key: str, task: Callable[[Any], None]) -> bool:
    """Run ``task(probe)`` where it cannot race with training (the run's one boundary queue,
    :meth:`~trainscope.run.RunContext.at_boundary`): now on the training thread or when training is
    idle, otherwise once at the next step boundary.  Returns whether it ran now.  A task that
    raises is kept in the diagnoser's errors, as a rule's is: it never reaches the caller or the
    training loop."""
    st = _state(probe)

    def guarded(p: Any) -> None:
        try:
            task(p)
        except Exception:
            if len(st.diagnoser.errors) < 100:
                st.diagnoser.errors.append(traceback.format_exc())

    return probe.at_boundary(key, guarded)


def diagnose_probe(
    probe: RunContext,
    min_severity: str | None = None,
    *,
    active_only: bool = False,
    auto_checks: bool = True,
    refresh: bool = True,
) -> list[Finding]:
    """The findings of a probe's run (what ``probe.findings()`` returns).

    Parameters
    ----------
    probe
        The :class:`~trainscope.Probe`.
    min_severity
        Only findings at this severity or above (``"info"``, ``"warning"``, ``"error"``).
    active_only
        Leave out findings that no longer hold.
    auto_checks
        Run the read-only automatic checks once (today: the batch-mixing test on the latest
        training batch, which changes nothing -- see :mod:`trainscope.checklists`).  It runs
        right away when called from the training thread or while training is idle, otherwise at
        the next step boundary (never concurrently with a training step).
    refresh
        When the latest full sample is more than :data:`REFRESH_STEPS` steps old, ask the probe
        to record one at the next step (a diagnosis deserves current evidence; the cost is one
        sampled step per call at most, only while someone asks for findings).

    Never raises for anything but a bad ``min_severity``; internal errors are recorded in
    ``diagnoser_for(probe).errors``.
    """
    if min_severity is not None:
        severity_rank(min_severity)
    st = _state(probe)
    d = st.diagnoser
    try:
        if auto_checks and "auto" in CHECKS:
            CHECKS["auto"](probe)
        h = probe.history
        if st.sym_step is None or (h.step != st.sym_step and (h.step < 2 * REFRESH_STEPS or h.step - st.sym_step >= REFRESH_STEPS)):
            ctx = context_from_probe(probe, thresholds=d.thresholds)
            st.symmetry, st.tied, st.sym_step = ctx.symmetry, ctx.tied, h.step
            st.regularization = ctx.regularization
        else:
            ctx = Context(
                forward_modes=dict(probe.forward_modes),
                symmetry=st.symmetry,
                tied=st.tied,
                regularization=st.regularization,
                requires_grad={n: bool(p.requires_grad) for n, p in probe.model.named_parameters()},
                thresholds=d.thresholds,
            )
        checks = h.meta.get("checks") or {}
        key = (h.step, h.samples(), tuple(sorted((k, v.get("time")) for k, v in checks.items())),
               tuple(sorted(probe.forward_modes.items())), len(h.scalar_names()))
        found = d.update(h, ctx, key=key)
        if d.newly_failed:
            _report_failures(probe, d)
        for f in found:
            need = f.data.get("needs") if f.active else None
            if need and need in _ON_DEMAND and st.demanded.get(need, -(10**9)) + REFRESH_STEPS <= probe.step_count:
                st.demanded[need] = probe.step_count
                on_training_thread(probe, f"check:{need}", _ON_DEMAND[need])
        if refresh and probe.is_attached:
            last = h.latest.step if h.latest is not None else -(10**9)
            age = time.time() - h.latest.time if h.latest is not None else float("inf")
            # stale in steps AND in time: a fast loop is re-sampled at most every REFRESH_SECONDS,
            # so asking for findings never overrides the probe's overhead budget by much
            if probe.step_count - last > REFRESH_STEPS and age > REFRESH_SECONDS:
                on_training_thread(probe, "sample", lambda p: p.sample_next())
    except Exception:
        if len(d.errors) < 100:
            d.errors.append(traceback.format_exc())
    out = d.findings(min_severity, active_only=active_only)
    try:
        return _lead_with_recovery(probe, st, out)
    except Exception:  # a failure here never hides the findings
        if len(d.errors) < 100:
            d.errors.append(traceback.format_exc())
        return out


RESTORING = ("recover",)
"""Suggested fixes that restore the weights themselves (never wrapped by :func:`with_recovery`)."""


def with_recovery(f: Finding, what: str, *, can_find_lr: bool = True) -> Finding:
    """A copy of ``f`` whose first suggested fix first restores usable weights (the ``recover``
    action), ``what`` naming the damage.  A fix for the cause applied to NaN / blown-up weights
    changes nothing, so the cause's fix becomes recover's follow-up: a lower learning rate becomes
    the LR finder's rate measured on the restored weights (a factor computed from updates that
    replaced the weights says nothing about the rate that trains them), falling back to the
    suggested factor (``can_find_lr``: the LR finder has data to run on; without, the factor itself);
    a fix recover cannot chain (a rollback, a re-init) stays listed after it."""
    from ..interventions.recover import FOLLOW_UPS

    ivs = list(f.interventions)
    if ivs and ivs[0]["action"] in RESTORING:
        return f
    first = ivs[0] if ivs else None
    act = first["action"] if first is not None else None
    params = dict(first.get("params", {})) if first is not None else {}
    if can_find_lr and ((act == "scale_lr" and float(params.get("factor", 1.0)) < 1.0) or act == "set_lr"):
        lead = intervention("recover", "Restore the damaged weights, then set the learning rate the LR finder "
                            "measures on them", then="lr_find", then_params={"apply": "set_lr"},
                            fallback_factor=float(params["factor"]) if act == "scale_lr" else 0.1)
    elif act is not None and act in FOLLOW_UPS and act != "none":
        label = str(first["label"]) if first is not None else act
        lead = intervention("recover", f"Restore the damaged weights, then: {label[:1].lower()}{label[1:]}",
                            then=act, then_params=params)
    else:
        lead = intervention("recover", "Restore the damaged weights (default init or a sound snapshot)")
    note = f" [the weights are already damaged ({what}): the first fix restores them before fixing the cause]"
    return replace(f, interventions=[lead, *ivs], evidence=f.evidence + note)


def _damage_suspected(h: History) -> bool:
    """Whether the recorded history gives any reason to read every tensor of the model and its
    optimizer (:func:`trainscope.interventions.recover.damage`, one pass over all of them): a
    non-finite loss, activation or gradient at the latest sample, a non-finite weight norm or
    gradient in the parameter series, or a layer's weight norm grown 100x since it was first
    recorded (the weights the exact check calls blown up are 1000x a fresh init's).  Without such a
    sign the weights are sound as far as the probe measured, and the check costs nothing."""
    if _nonfinite_now(h):
        return True
    _, w = h.layer_series("weight_norm")
    w = np.asarray(w, dtype=np.float64)
    if w.ndim == 2 and len(w):
        last, first = w[-1], w[0]
        if bool(np.isinf(last).any()) or bool((np.isnan(last) & np.isfinite(first)).any()):
            return True
        ok = np.isfinite(first) & (first > 0) & np.isfinite(last)
        if bool((last[ok] >= 100.0 * first[ok]).any()):
            return True
    _, g = h.layer_series("grad_nonfinite")
    g = np.nan_to_num(np.asarray(g, dtype=np.float64), nan=0.0)
    return bool(g.ndim == 2 and len(g) and (g[-1] != 0).any())


def _lead_with_recovery(probe: RunContext, st: _ProbeState, found: list[Finding]) -> list[Finding]:
    """While an active warning+ finding stands and the weights (or the optimizer state) are damaged
    -- NaN / Inf, or blown up 1000x past a fresh init (:func:`trainscope.interventions.recover.damage`)
    -- every active finding's first fix first restores them (:func:`with_recovery`).  The damage is
    measured at most once per step, and only while such a finding stands (no cost on a healthy run)."""
    severe = [f for f in found if f.active and severity_rank(f.severity) >= 1]
    if not severe:
        return found
    step = int(probe.step_count)
    if not _damage_suspected(probe.history):
        return found
    if st.damage is None or st.damage[0] != step:
        from ..interventions.recover import damage

        st.damage = (step, damage(probe.model, probe.optimizer))
    dmg = st.damage[1]
    if not dmg:
        return found
    what = dmg.describe()
    can_find_lr = True
    try:
        from ..actions import REGISTRY

        REGISTRY["lr_find"].validate(probe, {"apply": "set_lr"})
    except Exception:
        can_find_lr = False
    return [with_recovery(f, what, can_find_lr=can_find_lr) if f.active else f for f in found]

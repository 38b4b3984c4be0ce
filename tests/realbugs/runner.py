"""Train one version of a case the way a user would -- a plain PyTorch loop with a
``trainscope.Probe(model, optimizer, loss_fn=...)`` attached at its default settings, the findings
polled every few steps as the dashboard does -- and score a case: detection, root cause ranked
first, module, false alarms on the fixed version, steps to detection, and whether the first
suggested one-click fix repairs the run."""

from __future__ import annotations

import math
import random
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import trainscope
from trainscope.diagnostics import LABELS

from .cases import RealBug
from .programs import Program

SEVERE = ("warning", "error")
POLL_EVERY = 10
"""Steps between two ``probe.findings()`` calls (a dashboard polls about this often on these runs)."""


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Run:
    """What one training run of a program gave."""

    metric: float
    steps: int
    seconds: float
    findings: list[dict[str, Any]]  # final probe.findings(), as_dict() each
    seen: dict[str, int]  # warning+ label -> step of the poll that first showed it
    first_severe: str | None  # the first warning+ finding at the first poll that had one
    first_severe_step: int | None
    fix: dict[str, Any] | None = None  # the intervention applied (repair runs)
    errors: list[str] = field(default_factory=list)

    @property
    def severe(self) -> list[dict[str, Any]]:
        return [f for f in self.findings if f["severity"] in SEVERE]


def run_program(program: Program, *, seed: int = 0, repair: bool = False,
                poll_every: int = POLL_EVERY) -> Run:
    """Train ``program`` with a probe at defaults.  ``repair``: at the first poll that shows a
    finding at warning level or above, request that finding's first suggested intervention
    (``probe.request(action, **params)``) and train on to the end."""
    p = program
    model, opt, lf = p.model, p.optimizer, p.loss_fn
    probe = trainscope.Probe(model, opt, loss_fn=lf)
    gen = torch.Generator().manual_seed(seed)
    n = len(p.x)
    order, pos = torch.randperm(n, generator=gen), 0
    seen: dict[str, int] = {}
    first: tuple[str, int] | None = None
    fix: dict[str, Any] | None = None
    errors: list[str] = []
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ported bugs make torch warn (target size, softmax dim)
        try:
            for step in range(p.steps):
                if pos >= n:
                    order, pos = torch.randperm(n, generator=gen), 0
                idx = order[pos : pos + p.batch]
                pos += p.batch
                model.train()
                opt.zero_grad()
                loss = lf(model(p.x[idx]), p.y[idx])
                loss.backward()
                opt.step()
                if step % p.val_every == p.val_every - 1:
                    model.eval()
                    with torch.no_grad():
                        lf(model(p.xv), p.yv)
                    model.train()
                if step % poll_every == poll_every - 1:
                    sev = [f for f in probe.findings() if f.severity in SEVERE]
                    for f in sev:
                        seen.setdefault(f.label, step + 1)
                    if sev and first is None:
                        first = (sev[0].label, step + 1)
                        if repair:
                            fix = _apply_first_fix(probe, sev[0])
            # the user's loop is over: say so, as a script does at its end (the end-of-run rules
            # -- stopped while still learning -- judge only then)
            final = [f.as_dict() for f in probe.finish()]
            for f in final:  # found only at the end of the run: detected at its last step
                if f["severity"] in SEVERE:
                    seen.setdefault(f["label"], p.steps)
            model.eval()
            with torch.no_grad():
                metric = p.metric(model(p.xv), p.yv)
        finally:
            probe.detach()
    if fix is not None and fix.get("ticket") is not None:
        t = fix.pop("ticket")
        fix.update(status=t.status, message=t.message, applied_step=t.applied_step)
    errors += trainscope.diagnostics.diagnoser_for(probe).errors + [str(e.error) for e in probe.errors]
    if not math.isfinite(metric):
        metric = 0.0
    return Run(metric, p.steps, time.perf_counter() - t0, final, seen,
               first[0] if first else None, first[1] if first else None, fix, errors)


def _apply_first_fix(probe: trainscope.Probe, finding: Any) -> dict[str, Any]:
    if not finding.interventions:
        return {"label": finding.label, "action": None, "status": "none suggested"}
    iv = finding.interventions[0]
    out: dict[str, Any] = {"label": finding.label, "action": iv["action"], "params": dict(iv.get("params", {}))}
    try:
        out["ticket"] = probe.request(iv["action"], **iv.get("params", {}))
    except Exception:  # a refused request is a ticket; anything else is a finding of this benchmark
        out["status"] = "raised"
        out["message"] = traceback.format_exc().strip().splitlines()[-1]
    return out


# ------------------------------------------------------------------------------------ scoring
@dataclass
class Score:
    """One case, scored."""

    case: RealBug
    buggy: Run
    fixed: Run
    repaired: Run | None

    @property
    def wanted(self) -> set[str]:
        return set(self.case.expect) | set(self.case.proposed)

    @property
    def detected(self) -> bool:
        return bool(self.case.faulty and any(f["label"] in self.wanted for f in self.buggy.severe))

    @property
    def root_first(self) -> bool:
        sev = self.buggy.severe
        return bool(self.case.faulty and sev and sev[0]["label"] in set(self.case.root))

    @property
    def module_ok(self) -> bool | None:
        """Whether a detecting finding names one of the case's layers (None: not localizable)."""
        if not self.case.module or not self.case.faulty:
            return None
        return any(
            f["label"] in self.wanted and any(m in f["layers"] for m in self.case.module)
            for f in self.buggy.severe
        )

    @property
    def false_alarms(self) -> list[str]:
        """Warning+ labels on the fixed version (on both versions of a no-fault control)."""
        labels = [f["label"] for f in self.fixed.severe]
        if not self.case.faulty:
            labels += [f["label"] for f in self.buggy.severe]
        return list(dict.fromkeys(labels))

    @property
    def unexplained_alarms(self) -> list[str]:
        """:attr:`false_alarms` less the conditions the patch leaves in place (``case.fixed_true``)."""
        return [x for x in self.false_alarms if x not in self.case.fixed_true]

    @property
    def detection_step(self) -> int | None:
        steps = [s for label, s in self.buggy.seen.items() if label in self.wanted]
        return min(steps) if steps else None

    @property
    def evidence_step(self) -> int | None:
        """The earliest step a detecting finding's evidence refers to (its ``first_step``)."""
        steps = [int(f["first_step"]) for f in self.buggy.severe if f["label"] in self.wanted and f["first_step"] >= 0]
        return min(steps) if steps else None

    @property
    def bug_matters(self) -> bool:
        """The buggy program ends below 90 % of the fixed program's metric."""
        return self.buggy.metric < 0.9 * self.fixed.metric

    @property
    def repaired_ok(self) -> bool:
        """A first suggested fix was applied and the run ended at >= 90 % of the fixed metric."""
        r = self.repaired
        return bool(
            self.case.faulty and r is not None and r.fix is not None and r.fix.get("status") == "applied"
            and r.metric >= 0.9 * self.fixed.metric
        )

    def as_dict(self) -> dict[str, Any]:
        c = self.case

        def run(r: Run | None) -> dict[str, Any] | None:
            if r is None:
                return None
            return {
                "metric": round(r.metric, 4), "steps": r.steps, "seconds": round(r.seconds, 2),
                "severe": [f["label"] for f in r.severe], "seen": r.seen,
                "first_severe": r.first_severe, "first_severe_step": r.first_severe_step,
                "fix": r.fix, "errors": [e.strip().splitlines()[-1] for e in r.errors][:5],
                "findings": r.findings,
            }

        return {
            "no": c.no, "post": c.post, "faults": list(c.faults), "cause": c.cause,
            "module": list(c.module), "expect": list(c.expect), "root": list(c.root),
            "proposed": list(c.proposed), "proposed_missing": [x for x in c.proposed if x not in LABELS],
            "one_click_fix": c.fix, "note": c.note, "faulty": c.faulty,
            "detected": self.detected, "root_first": self.root_first, "module_ok": self.module_ok,
            "false_alarms": self.false_alarms, "unexplained_alarms": self.unexplained_alarms,
            "fixed_true": list(c.fixed_true), "detection_step": self.detection_step,
            "evidence_step": self.evidence_step,
            "bug_matters": self.bug_matters, "repaired_ok": self.repaired_ok,
            "buggy": run(self.buggy), "fixed": run(self.fixed), "repaired": run(self.repaired),
        }


def score_case(case: RealBug, *, seed: int = 0, repair: bool = True) -> Score:
    """Run the buggy version, the fixed version and (``repair``) the buggy version with its first
    suggested fix applied at detection."""
    seed_all(seed)
    buggy = run_program(case.build(False), seed=seed)
    seed_all(seed)
    fixed = run_program(case.build(True), seed=seed)
    repaired = None
    if repair and case.faulty and buggy.first_severe is not None:  # nothing to click otherwise
        seed_all(seed)
        repaired = run_program(case.build(False), seed=seed, repair=True)
    return Score(case, buggy, fixed, repaired)

"""The real-bug benchmark (DeepFD's faults ported to PyTorch, ``tests/realbugs/``): the registry is
complete and consistent, the scoring machinery works on cases trainscope detects today, and every
ported program runs in both versions with the fix making a difference where the port reproduces
the bug.  Rates are reported by ``benchmarks/realbugs.py``, not asserted here."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

import trainscope
from tests.realbugs.cases import BY_NO, CASES, EXCLUDED, FAULT_LABELS, NO_EFFECT
from tests.realbugs.runner import run_program, score_case, seed_all
from trainscope.actions import REGISTRY
from trainscope.diagnostics import LABELS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_registry_covers_deepfd_and_is_consistent() -> None:
    ported = {c.no for c in CASES}
    assert len(ported) == len(CASES), "case numbers are unique"
    assert ported | set(EXCLUDED) == set(range(1, 53)) and not ported & set(EXCLUDED)
    for c in CASES:
        assert c.cause and c.note, c.name
        for f in c.faults:
            assert f in FAULT_LABELS or f in ("origin", "layer_roperties"), (c.name, f)
        assert set(c.expect) <= set(LABELS), (c.name, set(c.expect) - set(LABELS))
        assert set(c.root) <= set(LABELS) | set(c.proposed), c.name
        assert set(c.fixed_true) <= set(LABELS), c.name
        if c.fix is not None:
            assert c.fix["action"] in REGISTRY, (c.name, c.fix)
        if not c.faulty:
            assert not c.expect and not c.proposed and not c.root
        seed_all(0)
        for fixed in (False, True):
            p = c.build(fixed)
            names = {n for n, _ in p.model.named_modules()}
            if not fixed and c.module:
                assert set(c.module) & names, (c.name, c.module, sorted(names))
            assert p.steps > 0 and len(p.x) == len(p.y) and len(p.xv) == len(p.yv)


def test_one_click_fixes_are_accepted_by_the_probe() -> None:
    """Each case's recorded one-click fix validates against a probe on its buggy program (the
    request is refused with a reason otherwise); one training step first, as LSUV needs a batch."""
    for c in CASES:
        if c.fix is None:
            continue
        seed_all(0)
        p = c.build(False)
        probe = trainscope.Probe(p.model, p.optimizer, loss_fn=p.loss_fn)
        try:
            p.optimizer.zero_grad()
            p.loss_fn(p.model(p.x[:8]), p.y[:8]).backward()
            p.optimizer.step()
            t = probe.request(c.fix["action"], **c.fix["params"])
            assert t.status != "refused", (c.name, t.message)
        finally:
            probe.detach()


# A case trainscope detects today, per family of fault: a learning rate that blows up, a loss that
# does not fit its output (cross-entropy over one unit, BCE on 1 / 2 targets), unscaled inputs, a run
# ended long before it converged (found at probe.finish()).
DETECTED_TODAY = (13, 29, 21, 8, 47)


@pytest.mark.parametrize("no", DETECTED_TODAY)
def test_detected_case_is_detected_and_its_fixed_version_is_clean(no: int) -> None:
    s = score_case(BY_NO[no], repair=False)
    assert s.detected, [f["label"] for f in s.buggy.severe]
    assert s.detection_step is not None and s.detection_step <= s.buggy.steps
    assert s.fixed.severe == [], [f["label"] for f in s.fixed.severe]
    assert s.false_alarms == []
    assert s.fixed.metric > s.buggy.metric
    d = s.as_dict()
    assert d["detected"] and d["buggy"]["severe"] and d["fixed"]["severe"] == []


def test_repair_run_applies_the_first_suggested_fix() -> None:
    """The repair run requests the first warning's first intervention at the poll that showed it;
    the trainscope action runs at the next step boundary (applied, or refused with a reason)."""
    seed_all(0)
    r = run_program(BY_NO[13].build(False), repair=True)
    assert r.first_severe is not None and r.fix is not None
    assert r.fix["label"] == r.first_severe
    assert r.fix["status"] in ("applied", "refused", "failed"), r.fix
    if r.fix["status"] == "applied":
        assert r.fix["applied_step"] is not None and r.fix["applied_step"] >= r.first_severe_step - 1


def test_scoring_a_clean_control_counts_both_versions_as_false_alarm_candidates() -> None:
    s = score_case(BY_NO[18], repair=True)
    assert not s.case.faulty and not s.detected and not s.root_first and s.module_ok is None
    assert s.repaired is None and not s.repaired_ok
    assert s.false_alarms == list(dict.fromkeys([f["label"] for f in s.fixed.severe] + [f["label"] for f in s.buggy.severe]))


def test_benchmark_report_and_json(tmp_path: Path) -> None:
    import realbugs  # benchmarks/realbugs.py

    out = tmp_path / "rb.json"
    assert realbugs.main(["--cases", "29", "18", "--no-repair", "--out", str(out)]) == 0
    import json

    doc = json.loads(out.read_text())
    assert [c["no"] for c in doc["cases"]] == [18, 29]
    agg = doc["summary"]
    assert agg["faulty"] == 1 and agg["ported"] == 2
    assert agg["detection"] == ("1/1 = 100%" if doc["cases"][1]["detected"] else "0/1 = 0%")
    assert {a["tool"].split()[0] for a in doc["anchors"]} == {"DeepDiagnosis", "DeepFD", "DEFault", "AUTOTRAINER"}


@pytest.mark.slow
@pytest.mark.parametrize("no", [c.no for c in CASES])
def test_both_versions_run_and_the_fix_helps(no: int) -> None:
    c = BY_NO[no]
    seed_all(0)
    buggy = run_program(c.build(False))
    seed_all(0)
    fixed = run_program(c.build(True))
    assert math.isfinite(fixed.metric) and math.isfinite(buggy.metric)
    if not c.faulty:
        return
    if no in NO_EFFECT:  # the port does not reproduce a worse metric; recorded, not hidden
        assert fixed.metric >= buggy.metric - 0.05, (buggy.metric, fixed.metric)
    else:
        assert fixed.metric > buggy.metric, (buggy.metric, fixed.metric)

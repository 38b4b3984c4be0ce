"""The suite of deliberately broken trainings and healthy controls (tests/broken/): the diagnosis
must name >= 90% of the faults (and the right layer where the fault is local), and stay silent at
warning level on every healthy run.  ``python -m tests.broken.report`` prints the table."""

from __future__ import annotations

import pytest

import trainscope.interventions  # registers the intervention actions the findings suggest
from trainscope.actions import REGISTRY
from trainscope.diagnostics import LABELS

from .broken.cases import ALL, BROKEN, HEALTHY, HELD_OUT
from .broken.report import run_all, table
from .broken.runner import Outcome

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def outcomes() -> list[Outcome]:
    return run_all()


def test_the_suite_covers_every_label_with_healthy_controls_of_several_kinds() -> None:
    assert {c.expect for c in BROKEN} == set(LABELS)
    assert len(HEALTHY) >= 5 and all(c.expect is None for c in HEALTHY)
    assert len({c.name for c in ALL}) == len(ALL) == len(HEALTHY) + len(BROKEN) + len(HELD_OUT)


def test_healthy_runs_get_no_finding_at_warning_level(outcomes: list[Outcome]) -> None:
    alarms = {o.case.name: [(f.label, f.evidence) for f in o.findings if f.severity != "info"]
              for o in outcomes if o.case.expect is None}
    assert not any(alarms.values()), alarms


def test_at_least_90_percent_of_broken_runs_get_their_label(outcomes: list[Outcome]) -> None:
    broken = [o for o in outcomes if o.case.expect is not None]
    missed = [(o.case.name, o.case.expect, o.severe) for o in broken if not o.detected]
    assert len(missed) <= 0.1 * len(broken), "\n" + table(outcomes)


def test_local_faults_are_placed_in_the_right_layer(outcomes: list[Outcome]) -> None:
    local = [o for o in outcomes if o.case.layers and o.detected]
    wrong = [(o.case.name, next(f.layers for f in o.findings if f.label == o.case.expect)) for o in local if not o.layer_ok]
    assert len(local) >= 15 and len(wrong) <= 0.1 * len(local), wrong


def test_no_internal_errors_and_findings_are_complete(outcomes: list[Outcome]) -> None:
    for o in outcomes:
        assert o.errors == [], (o.case.name, o.errors[:1])
        for f in o.findings:
            d = f.as_dict()
            assert d["evidence"] and d["title"] and d["checklist"], (o.case.name, d)
            assert 0 <= d["first_step"] <= d["last_step"] <= o.steps, (o.case.name, d)
            names = {x.name for x in o.probe.layers} if o.probe is not None else set()
            assert set(d["layers"]) <= names, (o.case.name, d["layers"])


def test_every_suggested_intervention_is_a_valid_request(outcomes: list[Outcome]) -> None:
    checked = 0
    for o in outcomes:
        assert o.probe is not None
        for f in o.findings:
            for iv in f.interventions:
                spec = REGISTRY.get(iv["action"])
                assert spec is not None, f"{f.label} suggests unknown action {iv['action']!r}"
                if iv["action"] == "rollback":
                    continue  # valid only once a snapshot exists (validate says so)
                try:
                    spec.validate(o.probe, dict(iv["params"]))
                except ValueError as e:
                    if "needs" in str(e):  # e.g. needs data / an optimizer: the probe decides
                        continue
                    raise AssertionError(f"{o.case.name}: {f.label} suggests {iv}: {e}") from e
                checked += 1
    assert checked >= 50
    assert "reinit" in trainscope.interventions.__dict__ or "reinit" in REGISTRY

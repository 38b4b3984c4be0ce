"""``probe.finish()``: the user's statement that training is over, and the end-of-run judgement it
enables (``still_improving``: ended while the model had learned little and was still learning).

A plain loop cannot tell the probe it is about to end, so before ``finish()`` existed a run stopped
after a few epochs of slow progress got at most an info-level "if training ends here"; the ported
DeepFD 'epoch' faults (stopped long before convergence) went undetected."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

import trainscope
from trainscope.diagnostics import Context, diagnose
from trainscope.diagnostics.finding import Finding
from trainscope.diagnostics.registry import finding_order
from trainscope.diagnostics.rules.dynamics import prior_loss, run_end
from trainscope.history import History


def _task(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 16, generator=g)
    w = torch.randn(16, 4, generator=g)
    return x, (x @ w).argmax(1)


LOSS = nn.CrossEntropyLoss()


def _train(lr: float, steps: int, *, finish: bool = True, seed: int = 0) -> tuple[trainscope.Probe, list[Finding]]:
    torch.manual_seed(seed)
    x, y = _task(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    lf = LOSS
    probe = trainscope.Probe(model, opt, loss_fn=lf)
    for i in range(steps):
        idx = torch.arange(i * 32, i * 32 + 32) % 512
        opt.zero_grad()
        lf(model(x[idx]), y[idx]).backward()
        opt.step()
    found = probe.finish() if finish else probe.findings()
    return probe, found


def _warn(found: list[Finding], label: str) -> Finding | None:
    return next((f for f in found if f.label == label and f.severity == "warning" and f.active), None)


def test_a_run_ended_near_chance_while_still_learning_is_a_warning_only_after_finish() -> None:
    probe, before = _train(0.02, 100, finish=False)
    assert _warn(before, "still_improving") is None  # the probe cannot know the loop is about to end
    found = probe.finish()
    f = _warn(found, "still_improving")
    assert f is not None, [(x.label, x.severity) for x in found]
    assert f.data["level"] >= 2 / 3 and "training ended at step 99" in f.evidence
    assert "class frequencies" in f.evidence  # the reference is a constant prediction's loss
    ends = [ev for ev in probe.history.events if ev.kind == "run_end"]
    assert len(ends) == 1 and ends[0].step == 99
    probe.finish()  # twice at the same step: one mark
    assert len([ev for ev in probe.history.events if ev.kind == "run_end"]) == 1
    probe.detach()


def test_a_converged_run_gets_no_end_of_run_warning() -> None:
    probe, found = _train(0.5, 400)
    assert _warn(found, "still_improving") is None, [(x.label, x.evidence) for x in found]
    assert not [f for f in found if f.severity != "info" and f.active]
    probe.detach()


def test_training_that_goes_on_after_finish_makes_the_mark_past() -> None:
    probe, found = _train(0.02, 100)
    assert _warn(found, "still_improving") is not None
    assert run_end(probe.history) is not None
    torch.manual_seed(1)
    x, y = _task()
    model, opt = probe.model, probe.optimizer
    assert opt is not None
    for _ in range(5):
        opt.zero_grad()
        LOSS(model(x[:32]), y[:32]).backward()
        opt.step()
    probe.flush()
    assert run_end(probe.history) is None
    assert _warn(probe.findings(), "still_improving") is None
    probe.detach()


# ------------------------------------------------------------------------- the rule on histories
def _history(losses: np.ndarray, *, end: bool = True) -> History:
    h = History()
    for i, v in enumerate(losses):
        h.add_scalars(i, {"loss": float(v)})
    h.meta["loss_fn"] = "CrossEntropyLoss"
    h.meta["class_counts"] = [100.0, 100.0, 100.0, 100.0]  # ln 4 = 1.386 for a constant prediction
    if end:
        h.add_event("run_end", "training ended", step=len(losses) - 1)
    return h


def _still(h: History) -> list[Finding]:
    return [f for f in diagnose(h, Context(), labels=["still_improving"]) if f.severity == "warning"]


def test_the_rule_needs_a_loss_near_the_prior_still_falling_and_not_levelling_off() -> None:
    rng = np.random.default_rng(0)
    n = 80
    noise = rng.normal(0, 0.005, n)
    linear = 1.386 - 0.3 * np.arange(n) / n + noise  # ends at ~78% of ln 4, falling steadily
    assert len(_still(_history(linear))) == 1
    assert _still(_history(linear, end=False)) == []  # no finish(): nothing to judge
    learned = 1.386 * np.exp(-np.arange(n) / 8) + 0.05 + noise  # converged far below the prior
    assert _still(_history(learned)) == []
    flat_out = 1.386 - 0.35 * (1 - np.exp(-np.arange(n) / 6)) + noise  # levelled off at 75% of it
    assert _still(_history(flat_out)) == []  # slow from here on, not unfinished
    flat = 1.386 + noise  # not learning at all: not_learning's business, not "ended too early"
    assert _still(_history(flat)) == []
    broken = 40.0 - 5 * np.arange(n) / n + noise  # far above a constant prediction: broken, not short
    assert _still(_history(broken)) == []


def test_prior_loss_is_the_best_constant_prediction() -> None:
    h = _history(np.ones(30))
    v, what = prior_loss(h, Context()) or (math.nan, "")
    assert abs(v - math.log(4)) < 1e-9 and "class frequencies" in what
    h.meta["class_counts"] = [90.0, 10.0]
    v, _ = prior_loss(h, Context()) or (math.nan, "")
    assert abs(v - (-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))) < 1e-9
    h.meta["loss_fn"] = "L1Loss"
    assert prior_loss(h, Context()) is None  # no constant-prediction loss known: the rule uses the first losses


def test_ended_early_is_ranked_after_every_other_finding_of_its_severity() -> None:
    late = Finding(label="still_improving", severity="warning", title="", evidence="", first_step=0)
    cause = Finding(label="lr_too_low", severity="warning", title="", evidence="", first_step=50)
    symptom = Finding(label="dead_units", severity="warning", title="", evidence="", first_step=90)
    ordered = sorted([late, symptom, cause], key=finding_order)
    assert [f.label for f in ordered] == ["lr_too_low", "dead_units", "still_improving"]


def test_mse_prior_only_for_one_target_per_example() -> None:
    """A constant prediction of several outputs predicts each output's mean: the pooled variance of
    all target values (what the probe measures) also counts the spread between those means, so it is
    no prior there (an autoencoder of the broken-run suite was called "ended early" with it)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    for out, targets, expect in ((1, 3.0 * torch.randn(64, 1, generator=g), True),
                                 (8, torch.sigmoid(x) + torch.arange(8.0), False)):
        model = nn.Linear(8, out)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        lf = nn.MSELoss()
        probe = trainscope.Probe(model, opt, loss_fn=lf)
        for _ in range(3):
            opt.zero_grad()
            lf(model(x), targets).backward()
            opt.step()
        probe.flush()
        prior = prior_loss(probe.history, Context())
        if expect:
            assert prior is not None and abs(prior[0] - float(targets.var(unbiased=False))) < 1e-3 * prior[0]
        else:
            assert prior is None
        probe.detach()

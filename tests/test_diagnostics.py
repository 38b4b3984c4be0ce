"""The diagnosis engine: the Finding contract, the registry, the Diagnoser's memory, robustness,
and the pure assessments (each rule's behaviour on real trainings is in test_diagnostics_suite)."""

from __future__ import annotations

import json
import math
import threading
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import trainscope
from trainscope.checklists import ITEMS
from trainscope.diagnostics import (
    LABELS,
    RULES,
    Context,
    Diagnoser,
    Finding,
    Thresholds,
    diagnose,
    diagnose_probe,
    diagnoser_for,
    intervention,
)
from trainscope.diagnostics.assess import (
    assess_init_loss,
    assess_inputs,
    assess_loss_inputs,
    expected_init_loss,
    input_stats,
)
from trainscope.diagnostics.context import weight_symmetry
from trainscope.history import History
from trainscope.layers import classify

CONTRACT_KEYS = {"label", "severity", "title", "first_step", "last_step", "active", "layers", "evidence", "checklist", "interventions"}


def _history_with_loss(values: list[float], start: int = 0) -> History:
    h = History([classify("fc", nn.Linear(2, 2))])
    for k, v in enumerate(values, start=start):
        h.add_scalars(k, {"loss": float(v)})
    return h


# ----------------------------------------------------------------------------- contract
def test_finding_as_dict_is_exactly_the_contract() -> None:
    f = Finding(
        label="dead_units", severity="warning", title="t", evidence="e", layers=["fc1"],
        checklist=["tobin.grad_flow"], interventions=[intervention("reinit", "Re-init", layers=["fc1"], scheme="lsuv")],
        first_step=3, last_step=np.int64(9), data={"x": np.float32(1.0)},
    )
    d = f.as_dict()
    assert set(d) == CONTRACT_KEYS
    assert d["severity"] in ("info", "warning", "error") and d["active"] is True
    assert d["last_step"] == 9 and isinstance(d["last_step"], int)
    assert d["interventions"] == [{"action": "reinit", "params": {"layers": ["fc1"], "scheme": "lsuv"}, "label": "Re-init"}]
    json.dumps(d)  # plain JSON
    with pytest.raises(ValueError, match="severity must be one of"):
        Finding(label="x", severity="fatal", title="", evidence="")


def test_every_label_has_a_documented_rule_linked_to_existing_checklist_items() -> None:
    ids = {i.id for i in ITEMS}
    assert len(LABELS) == len(set(LABELS)) and set(RULES) == set(LABELS)
    for label, spec in RULES.items():
        assert len(spec.definition) > 80, f"{label}: the rule's docstring documents its definition"
        assert spec.checklist and set(spec.checklist) <= ids, label
    linked = {lab for i in ITEMS for lab in i.labels}
    assert linked <= set(LABELS)


def test_empty_history_gives_no_finding_and_no_error() -> None:
    errors: list[str] = []
    assert diagnose(History([]), errors=errors) == []
    assert errors == []


# ----------------------------------------------------------------------------- memory
def test_diagnoser_remembers_first_step_and_marks_resolved_findings_inactive() -> None:
    rising = [2.3 - 0.01 * k for k in range(20)] + [2.1 + 0.2 * k for k in range(20)]
    h = _history_with_loss(rising)
    d = Diagnoser()
    found = d.update(h)
    div = next(f for f in found if f.label == "divergence")
    assert div.active and div.first_step <= 39 and div.last_step == 39
    first = div.first_step
    for k in range(40, 120):  # the loss comes back down and stays low
        h.add_scalars(k, {"loss": 0.5})
    found = d.update(h)
    div = next(f for f in found if f.label == "divergence")
    assert not div.active and div.first_step == first and div.last_step == 39
    assert d.findings(active_only=True) == [f for f in found if f.active]
    assert all(f.label != "divergence" for f in d.findings("warning", active_only=True))


def test_min_severity_filters_and_rejects_unknown_levels() -> None:
    h = _history_with_loss([1.0] * 10 + [50.0] * 30)  # exploding: error
    d = Diagnoser()
    d.update(h)
    assert [f.severity for f in d.findings("error")] == ["error"]
    with pytest.raises(ValueError, match="severity must be one of"):
        d.findings("critical")
    with pytest.raises(ValueError, match="unknown label"):
        Diagnoser(labels=["dead_unit"])


def test_a_failing_rule_is_recorded_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainscope.diagnostics import registry

    def broken(h: History, ctx: Context) -> Finding | None:
        raise RuntimeError("boom")

    monkeypatch.setitem(registry.RULES, "oscillation", registry.RuleSpec("oscillation", broken, ("tobin.error_dynamics",), "x"))
    errors: list[str] = []
    out = diagnose(_history_with_loss([1.0] * 10 + [50.0] * 30), errors=errors)
    assert any(f.label == "divergence" for f in out)
    assert len(errors) == 1 and "boom" in errors[0]


def test_statistics_rules_are_silent_while_the_latest_sample_holds_nan() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # all dead
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lf = nn.CrossEntropyLoss()
    probe = trainscope.Probe(model, opt, loss_fn=lf, every=1)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    for _ in range(8):
        opt.zero_grad()
        lf(model(x), y).backward()
        opt.step()
    probe.flush()
    assert "dead_units" in {f.label for f in diagnose(probe.history)}
    x[0, 0] = float("nan")
    for _ in range(2):
        opt.zero_grad()
        lf(model(x), y).backward()
        opt.step()
    probe.flush()
    labels = {f.label for f in diagnose(probe.history)}
    assert "nan_inf" in labels and "dead_units" not in labels
    probe.detach()


# ----------------------------------------------------------------------------- probe entry point
def _train(model: nn.Module, opt: torch.optim.Optimizer, probe_kw: dict | None = None, steps: int = 12) -> trainscope.Probe:
    lf = nn.CrossEntropyLoss()
    probe = trainscope.Probe(model, opt, loss_fn=lf, **{"every": 1, **(probe_kw or {})})
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    for _ in range(steps):
        opt.zero_grad()
        lf(model(x), y).backward()
        opt.step()
    probe.flush()
    return probe


def _one_step(probe: trainscope.Probe) -> None:
    lf = nn.CrossEntropyLoss()
    probe.model.zero_grad()
    lf(probe.model(torch.randn(16, 8)), torch.randint(0, 3, (16,))).backward()
    probe.optimizer.step()  # type: ignore[union-attr]


def test_probe_findings_returns_findings_and_runs_the_batch_mixing_check_once() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    probe = _train(model, torch.optim.Adam(model.parameters(), 1e-3))
    # asked on the thread the step boundaries run on (the probe knows it from the first step), the
    # check cannot race with training: it runs at once (another thread waits: the next test)
    found = probe.findings()
    assert isinstance(found, list) and all(isinstance(f, Finding) for f in found)
    checks = probe.history.meta["checks"]
    assert checks["batch_mixing"]["status"] == "pass"
    t = checks["batch_mixing"]["time"]
    probe.findings()
    assert probe.history.meta["checks"]["batch_mixing"]["time"] == t  # not re-run
    assert [e.kind for e in probe.history.events].count("check") == 1
    assert diagnoser_for(probe).errors == []
    probe.detach()


def test_from_another_thread_the_automatic_check_waits_for_the_training_thread() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = _train(model, opt, steps=2)
    seen: list[int] = []
    diagnose_probe(probe, auto_checks=False)  # installs the boundary hook
    t = threading.Thread(target=lambda: seen.append(len(diagnose_probe(probe))))
    t.start()
    t.join()
    # the training loop has not reached a boundary since: the check is queued, not run off-thread
    assert "batch_mixing" not in (probe.history.meta.get("checks") or {})
    _one_step(probe)  # step boundary on this (the training) thread
    assert probe.history.meta["checks"]["batch_mixing"]["status"] == "pass"
    probe.detach()


def test_when_training_is_idle_the_automatic_check_runs_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainscope import recorder

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    probe = _train(model, torch.optim.SGD(model.parameters(), lr=0.01), steps=2)
    monkeypatch.setattr(recorder, "IDLE_SECONDS", 0.0)
    probe.findings()  # no step since: training is idle
    assert probe.history.meta["checks"]["batch_mixing"]["status"] == "pass"
    probe.detach()


def test_diagnosis_requests_a_fresh_sample_when_the_latest_is_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainscope.diagnostics import diagnoser

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    probe = _train(model, torch.optim.SGD(model.parameters(), lr=0.01), {"every": 1000}, steps=30)
    assert probe.history.latest is not None and probe.history.latest.step == 0
    probe.findings()  # 30 steps old but recorded just now: no extra sample (keeps the budget)
    _one_step(probe)
    _one_step(probe)
    probe.flush()
    assert probe.history.latest.step == 0
    monkeypatch.setattr(diagnoser, "REFRESH_SECONDS", 0.0)  # now old in wall time too
    probe.findings()
    _one_step(probe)  # the request is applied at this boundary: the next step is sampled
    _one_step(probe)
    probe.flush()
    assert probe.history.latest.step >= 32  # a fresh sample was taken after the request
    probe.detach()


# ----------------------------------------------------------------------------- pure assessments
def test_weight_symmetry_counts_identical_units() -> None:
    lin = nn.Linear(5, 6)
    assert weight_symmetry(lin) == (6, 1)
    nn.init.constant_(lin.weight, 0.3)
    nn.init.zeros_(lin.bias)
    assert weight_symmetry(lin) == (6, 6)
    with torch.no_grad():
        lin.weight[:3] = torch.randn(3, 5)
    assert weight_symmetry(lin) == (6, 3)
    with torch.no_grad():  # rows of very different magnitudes are still told apart
        lin.weight.copy_(torch.randn(6, 5) * torch.tensor([1e12, 1, 1, 1, 1, 1])[:, None])
    assert weight_symmetry(lin) == (6, 1)
    assert weight_symmetry(nn.Linear(5, 1)) is None


def test_assess_loss_inputs_cases() -> None:
    probs = {"loss": "CrossEntropyLoss", "pred_shape": (32, 10), "pred_min": 0.01, "pred_max": 0.4, "pred_rowsum_dev": 1e-7,
             "target_shape": (32,), "target_min": 0.0, "target_max": 9.0, "target_frac_dev": 0.0}
    assert [x[:2] for x in assess_loss_inputs(probs)] == [("probabilities_into_loss", "error")]
    small_logits = {**probs, "pred_rowsum_dev": 0.9}  # all in [0, 1] but not rows of probabilities
    assert assess_loss_inputs(small_logits) == []
    bcast = {"loss": "MSELoss", "pred_shape": (64, 1), "target_shape": (64,), "pred_min": -1.0, "pred_max": 1.0,
             "pred_rowsum_dev": math.nan, "target_min": -2.0, "target_max": 2.0, "target_frac_dev": 0.3}
    assert [x[:2] for x in assess_loss_inputs(bcast)] == [("wrong_loss", "error")]
    assert "(64, 64)" in assess_loss_inputs(bcast)[0][2]
    bce = {"loss": "BCEWithLogitsLoss", "pred_shape": (8, 1), "target_shape": (8, 1), "pred_min": -3.0, "pred_max": 2.0,
           "target_min": 0.0, "target_max": 9.0, "target_frac_dev": 0.0}
    assert [x[:2] for x in assess_loss_inputs(bce)] == [("wrong_loss", "error")]
    nll = {"loss": "NLLLoss", "pred_shape": (8, 4), "pred_min": -2.0, "pred_max": 3.0, "pred_rowsum_dev": 3.0}
    assert [x[:2] for x in assess_loss_inputs(nll)] == [("wrong_loss", "warning")]
    ok = {"loss": "CrossEntropyLoss", "pred_shape": (8, 4), "pred_min": -2.0, "pred_max": 3.0, "pred_rowsum_dev": 2.0}
    assert assess_loss_inputs(ok) == []


def test_assess_inputs_thresholds() -> None:
    th = Thresholds()
    g = torch.Generator().manual_seed(0)
    assert assess_inputs(input_stats(torch.randn(256, 8, generator=g)), th)[0] == "pass"
    assert assess_inputs(input_stats(torch.rand(256, 8, generator=g) * 255), th)[0] == "warn"
    assert assess_inputs(input_stats(torch.rand(256, 8, generator=g)), th)[0] == "pass"  # [0, 1] data is fine
    mixed = torch.randn(256, 8, generator=g)
    mixed[:, 0] *= 1e3
    status, evidence, _ = assess_inputs(input_stats(mixed), th)
    assert status == "warn" and "feature 0" in evidence
    offset = torch.randn(256, 8, generator=g) * 0.1 + 2.0
    assert "mean" in assess_inputs(input_stats(offset), th)[1]
    assert assess_inputs(input_stats(torch.randint(0, 10, (4, 5))), th)[0] == "not_run"


def test_expected_loss_at_init() -> None:
    ref, how = expected_init_loss("CrossEntropyLoss", (16, 10))  # type: ignore[misc]
    assert ref == pytest.approx(math.log(10)) and "10 classes" in how
    assert expected_init_loss("MSELoss", (16, 1)) is None
    th = Thresholds()
    assert assess_init_loss(2.4, ref, th)[0] == "pass"
    assert assess_init_loss(4.0, ref, th)[0] == "warn"
    assert assess_init_loss(9.0, ref, th)[0] == "fail"
    assert assess_init_loss(0.3, ref, th)[0] == "warn"  # suspiciously low


def test_the_documentation_defines_every_label_and_threshold() -> None:
    import dataclasses
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "diagnosis.md").read_text()
    for label in LABELS:
        assert f"**`{label}`**" in doc, f"docs/diagnosis.md does not define {label}"
    for f in dataclasses.fields(Thresholds):
        assert f"`{f.name}`" in doc, f"docs/diagnosis.md does not list the threshold {f.name}"
    for item in ITEMS:
        assert f"`{item.id}`" in doc, item.id


# ------------------------------------------------------------------ real-architecture false alarms (issue 13)
def test_cross_entropy_on_logits_in_unit_interval_is_not_probabilities() -> None:
    # SqueezeNet (ReLU + global pool) or an early ViT: CE logits in [0, 1] whose rows do not sum to 1
    li = {"loss": "CrossEntropyLoss", "pred_shape": (16, 4), "pred_min": 0.004, "pred_max": 0.894,
          "pred_rowsum_dev": 0.8, "target_shape": (16,), "target_min": 0.0, "target_max": 3.0, "target_frac_dev": 0.0}
    assert [x for x in assess_loss_inputs(li) if x[0] == "probabilities_into_loss"] == []
    sig = dict(li, loss="BCEWithLogitsLoss", target_max=1.0)  # element-wise logit loss: still a sigmoid output
    assert any(x[0] == "probabilities_into_loss" for x in assess_loss_inputs(sig))


def test_softmax_over_a_size_one_dimension_and_class_indices_into_mse() -> None:
    ones = {"loss": "BCELoss", "pred_shape": (32, 1), "pred_min": 1.0, "pred_max": 1.0, "pred_rowsum_dev": 0.0,
            "target_shape": (32, 1), "target_min": 0.0, "target_max": 1.0, "target_frac_dev": 0.0}
    assert ("wrong_loss", "error") in [(a, b) for a, b, _ in assess_loss_inputs(ones)]
    mse = {"loss": "MSELoss", "pred_shape": (32,), "pred_min": -1.0, "pred_max": 2.0, "pred_rowsum_dev": math.nan,
           "target_shape": (32,), "target_dtype": "int64", "target_min": 0.0, "target_max": 9.0, "target_frac_dev": 0.0}
    assert ("wrong_loss", "warning") in [(a, b) for a, b, _ in assess_loss_inputs(mse)]
    counts = dict(mse, target_dtype="float32")  # integer-valued float targets may be counts: info only
    assert [b for a, b, _ in assess_loss_inputs(counts) if a == "wrong_loss"] == ["info"]


class _SeqFirstLM(nn.Module):
    def __init__(self, mix: bool = False) -> None:
        super().__init__()
        self.emb, self.rnn, self.out = nn.Embedding(20, 8), nn.LSTM(8, 16), nn.Linear(16, 20)
        self.mix = mix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.emb(x))
        if self.mix:
            h = h - h.mean(1, keepdim=True)  # a reduction over the batch (dim 1 in this layout)
        return self.out(h)


def test_batch_mixing_check_reads_the_sequence_first_layout() -> None:
    x = torch.randint(0, 20, (7, 5))  # (T, B)
    ok = trainscope.run_check("batch_mixing", _SeqFirstLM(), batch=x)
    assert ok.status == "pass" and ok.details["batch_dim"] == 1 and "sequence-first" in ok.evidence
    bad = trainscope.run_check("batch_mixing", _SeqFirstLM(mix=True), batch=x)
    assert bad.status == "fail"
    square = trainscope.run_check("batch_mixing", _SeqFirstLM(), batch=torch.randint(0, 20, (5, 5)))
    assert square.status == "not_run" and "cannot be told apart" in square.evidence


def _fit(model: nn.Module, steps: int, make_loss, lr: float = 0.05, every: int = 1):  # type: ignore[no-untyped-def]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    probe = trainscope.Probe(model, opt, every=every)
    for _ in range(steps):
        opt.zero_grad()
        loss = make_loss(model)
        loss.backward()
        probe.log(loss=float(loss.detach()))
        opt.step()
    probe.flush()
    return probe


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.rnn, self.out = nn.Embedding(16, 8), nn.GRU(8, 8, batch_first=True), nn.Linear(8, 16)
        self.out.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(self.emb(x))[0])


def test_tied_weights_are_not_frozen_parameters() -> None:
    x = torch.randint(0, 16, (4, 6))
    probe = _fit(_Tied(), 8, lambda m: nn.functional.cross_entropy(m(x).reshape(-1, 16), x.reshape(-1)))
    found = [f for f in probe.findings() if f.label == "frozen_parameters"]
    probe.detach()
    assert found == [], [f.evidence for f in found]


def test_a_loss_detached_from_the_model_is_an_error() -> None:
    x, y = torch.randn(32, 4), torch.randn(32, 1)

    def detached(m: nn.Module) -> torch.Tensor:  # the classic "fix" of 'does not require grad'
        return torch.tensor(nn.functional.mse_loss(m(x), y).item(), requires_grad=True)

    probe = _fit(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)), 8, detached)
    f = next(f for f in probe.findings() if f.label == "frozen_parameters")
    probe.detach()
    assert f.severity == "error" and "detached" in f.title and "item()" in f.evidence


class _Vanishing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)) * 1e-12)  # the gradient reaching fc1 is ~1e-12 of fc2's


def test_unmoved_weights_from_a_vanishing_gradient_are_not_blamed_on_a_zero_learning_rate() -> None:
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    probe = _fit(_Vanishing(), 6, lambda m: nn.functional.mse_loss(m(x), y), lr=1e-3)
    f = next(f for f in probe.findings() if f.label == "frozen_parameters")
    probe.detach()
    assert "fc1" in f.layers and "vanishing" in f.evidence and "learning rate 0" not in f.evidence


def test_gradient_sizes_are_compared_only_between_comparable_layers() -> None:
    from trainscope.diagnostics.rules.gradients import role

    assert role("model.layers.0.self_attn.q_proj") == role("model.layers.7.self_attn.q_proj") == "model.layers.#.self_attn.q_proj"
    assert role("model.layers.0.self_attn.q_proj") != role("model.layers.1.mlp.down_proj")
    assert role("fc1") == role("fc3") == "fc#" and role("stages.0.1.fc1") != role("stages.0.1.fc2")
    # a healthy 2-block "transformer" profile: q projections tiny (uniform attention), MLP projections not
    names = ["l.0.q", "l.0.mlp", "l.1.q", "l.1.mlp", "head"]
    h = History([classify(n, nn.Linear(4, 4)) for n in names])
    h.set_forward_order(list(range(5)))
    from trainscope.history import LAYER_METRICS, StepRecord

    for k in range(6):
        m = {x: np.full(5, np.nan, dtype=np.float32) for x in LAYER_METRICS}
        m["act_std"][:] = 1.0
        m["ograd_std"][:] = [1e-6, 1e-2, 1.2e-6, 1.1e-2, 1e-1]
        m["ograd_mean"][:] = 0.0
        h.add_record(StepRecord(k, 0.0, m, None, None, list(range(5)), [], None, None))
    assert diagnose(h, Context(), labels=["vanishing_gradients"]) == []
    # the same layers of different blocks 1e4x apart is vanishing
    for k in range(6, 12):
        m = {x: np.full(5, np.nan, dtype=np.float32) for x in LAYER_METRICS}
        m["act_std"][:] = 1.0
        m["ograd_std"][:] = [1e-7, 1e-6, 1e-3, 1e-2, 1e-1]
        m["ograd_mean"][:] = 0.0
        h.add_record(StepRecord(k, 0.0, m, None, None, list(range(5)), [], None, None))
    f = diagnose(h, Context(), labels=["vanishing_gradients"])
    assert f and f[0].severity != "info" and set(f[0].layers) in ({"l.0.q", "l.1.q"}, {"l.0.mlp", "l.1.mlp"})


def test_overfitting_needs_a_rise_that_matters_against_chance() -> None:
    h = _history_with_loss(list(np.linspace(1.4, 0.002, 100)))
    for k, v in zip(range(0, 100, 10), [1.0, 0.1, 0.01, 9e-4, 8.5e-4, 1.0e-3, 1.1e-3, 1.2e-3, 1.2e-3, 1.2e-3], strict=True):
        h.add_scalars(k, {"val_loss": v})
    assert diagnose(h, Context(n_classes=4), labels=["overfitting"]) == []
    h2 = _history_with_loss(list(np.linspace(1.4, 0.002, 100)))
    for k, v in zip(range(0, 100, 10), [1.0, 0.6, 0.4, 0.3, 0.35, 0.45, 0.5, 0.6, 0.7, 0.8], strict=True):
        h2.add_scalars(k, {"val_loss": v})
    assert [f.label for f in diagnose(h2, Context(n_classes=4), labels=["overfitting"])] == ["overfitting"]


def _label_noise_history(bn: bool) -> History:
    layers = [classify("conv", nn.Conv2d(3, 4, 3))] + ([classify("bn", nn.BatchNorm2d(4))] if bn else [])
    h = History([*layers, classify("fc", nn.Linear(4, 4))])
    for k, v in enumerate(np.linspace(1.39, 0.2, 100)):
        h.add_scalars(k, {"loss": float(v)})
    for k in range(0, 100, 10):
        h.add_scalars(k, {"val_loss": 1.39})
    return h


def test_label_noise_is_told_apart_from_batch_norm_lag() -> None:
    ctx = Context(n_classes=4)
    assert diagnose(_label_noise_history(False), ctx, labels=["label_noise"])[0].severity == "warning"
    h = _label_noise_history(True)
    undecided = diagnose(h, ctx, labels=["label_noise"])[0]
    assert undecided.severity == "info" and undecided.data["needs"] == "bn_lag"
    h.meta["checks"] = {"bn_lag": {"status": "warn", "step": 99, "evidence": "0.2 vs 1.4", "details": {"lag": True}}}
    lag = diagnose(h, ctx, labels=["label_noise"])[0]
    assert lag.severity == "info" and "batch-norm" in lag.title
    h.meta["checks"] = {"bn_lag": {"status": "pass", "step": 99, "evidence": "0.2 vs 0.2", "details": {"lag": False}}}
    assert diagnose(h, ctx, labels=["label_noise"])[0].severity == "warning"


def test_bn_lag_check_compares_batch_and_running_statistics() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(32, 6) * 3 + 5, torch.randint(0, 3, (32,))
    model.train()
    fresh = trainscope.run_check("bn_lag", model, None, nn.CrossEntropyLoss(), (x, y))
    assert fresh.details["eval_mode"] != fresh.details["train_mode"]
    with torch.no_grad():  # running statistics far from the batch's
        model[1].running_mean.fill_(-100.0)
    lagging = trainscope.run_check("bn_lag", model, None, nn.CrossEntropyLoss(), (x, y))
    assert lagging.status == "warn" and lagging.details["lag"]
    assert float(model[1].running_mean[0]) == -100.0  # nothing changed


def _grad_history(norms: list[float], layer: nn.Module) -> History:
    h = History([classify("rnn", layer), classify("out", nn.Linear(4, 2))])
    for k, g in enumerate(norms):
        h.add_scalars(k, {"grad_norm_total": g, "loss": 1.0})
    return h


def test_gradient_norm_spikes_in_a_recurrent_net_are_a_warning() -> None:
    rng = np.random.default_rng(0)
    base = list(1.0 + 0.1 * rng.random(120))
    spiky = list(base)
    for k in (40, 70, 100):
        spiky[k] = 50.0
    f = diagnose(_grad_history(spiky, nn.LSTM(4, 4)), Context(), labels=["exploding_gradients"])
    assert f and f[0].severity == "warning" and "spikes" in f[0].title and f[0].layers == ["rnn"]
    assert diagnose(_grad_history(base, nn.LSTM(4, 4)), Context(), labels=["exploding_gradients"]) == []


def test_gradient_growth_before_the_first_nan_is_exploding_gradients() -> None:
    h = _grad_history([1.0, 8.0, 70.0, 600.0, float("inf")], nn.RNN(4, 4))
    f = diagnose(h, Context(), labels=["exploding_gradients"])
    assert f and f[0].severity == "error" and "then NaN/Inf at step 4" in f[0].title


# ------------------------------------------------------------------ the timeline and bad input (issue 13)
def test_a_fix_on_the_timeline_resolves_a_finding_and_its_jump_is_not_divergence() -> None:
    losses = list(np.linspace(2.0, 0.5, 40)) + list(np.linspace(0.5, 3.0, 40))  # rising: divergence
    h = _history_with_loss(losses)
    d = Diagnoser()
    assert [f.label for f in d.update(h, Context())] == ["divergence"]
    # the user rolls back / re-initializes: the loss jumps, then falls again
    h.add_event("intervention", "Re-initialize", step=80, action="reinit")
    for k, v in enumerate(np.linspace(2.3, 1.0, 30), start=80):
        h.add_scalars(k, {"loss": float(v)})
    out = d.update(h, Context())
    div = next(f for f in out if f.label == "divergence")
    assert not div.active and div.data["resolved_by"] == {"step": 80, "action": "reinit"} and "resolved" in div.evidence
    # the jump from 3.0 back to 2.3, and then an undo restoring worse weights, are not read as a fault
    h.add_event("undo", "undo reinit", step=110, action="reinit")
    for k, v in enumerate(np.linspace(3.0, 2.9, 25), start=110):
        h.add_scalars(k, {"loss": float(v)})
    assert not any(f.active and f.label == "divergence" for f in d.update(h, Context()))


def test_a_rule_that_raises_is_switched_off_and_recorded_in_probe_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainscope.diagnostics.registry import RuleSpec

    calls = []

    def broken(h: History, ctx: Context) -> Finding | None:
        calls.append(1)
        raise RuntimeError("boom")

    monkeypatch.setitem(RULES, "oscillation", RuleSpec("oscillation", broken, (), "broken"))
    model = nn.Sequential(nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = trainscope.Probe(model, opt, loss_fn=nn.CrossEntropyLoss())
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    for _ in range(3):
        opt.zero_grad()
        probe.loss_fn(model(x), y).backward()
        opt.step()
        diagnose_probe(probe, auto_checks=False, refresh=False)
    probe.detach()
    assert len(calls) == 1 and "oscillation" in diagnoser_for(probe).disabled
    assert [e.where for e in probe.errors] == ["diagnosis rule oscillation (switched off)"]
    assert "boom" in probe.errors[0].error


def test_checklist_results_go_stale_when_the_model_changes() -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = trainscope.Probe(model, opt, loss_fn=nn.CrossEntropyLoss())
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    opt.zero_grad()
    probe.loss_fn(model(x), y).backward()
    opt.step()
    trainscope.run_check("input_stats", probe)
    state = {i["id"]: i for i in trainscope.checklist_state(probe)}
    assert state["tobin.normalize_inputs"]["status"] == "pass"
    probe.history.add_event("intervention", "Re-initialize", step=probe.step_count + 1, action="reinit")
    state = {i["id"]: i for i in trainscope.checklist_state(probe)}
    probe.detach()
    assert state["tobin.normalize_inputs"]["status"] == "not_run"


class _ReluRNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.rnn, self.head = nn.Embedding(8, 16), nn.RNN(16, 32, nonlinearity="relu", batch_first=True), nn.Linear(32, 3)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(1.6 * torch.eye(32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.emb(x))[0][:, -1])


def test_a_recurrent_net_whose_gradient_explodes_into_nan_is_exploding_gradients() -> None:
    x, y = torch.randint(0, 8, (16, 25)), torch.randint(0, 3, (16,))
    model = _ReluRNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    probe = trainscope.Probe(model, opt, loss_fn=nn.CrossEntropyLoss())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(6):
            opt.zero_grad()
            probe.loss_fn(model(x), y).backward()
            opt.step()
    f = [f for f in probe.findings() if f.label == "exploding_gradients"]
    probe.detach()
    assert f and f[0].severity == "error" and f[0].layers == ["rnn"], [x.title for x in probe.findings()]


class _KwOnly(nn.Module):
    def __init__(self, mix: bool) -> None:
        super().__init__()
        self.emb, self.out, self.mix = nn.Embedding(10, 8), nn.Linear(8, 2), mix

    def forward(self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.emb(input_ids) * attention_mask[..., None]
        if self.mix:
            h = h - h.mean(0, keepdim=True)
        return self.out(h.mean(1))


def test_batch_mixing_check_runs_on_keyword_inputs() -> None:
    kw = {"input_ids": torch.randint(0, 10, (6, 5)), "attention_mask": torch.ones(6, 5)}
    assert trainscope.run_check("batch_mixing", _KwOnly(False), batch=(kw, None)).status == "pass"
    bad = trainscope.run_check("batch_mixing", _KwOnly(True), batch=(kw, None))
    assert bad.status == "fail" and bad.layers and not any(x.startswith("inner") for x in bad.layers)


def test_over_regularization_needs_strong_regularization_and_a_run_that_cannot_fit() -> None:
    flat = _history_with_loss([2.3 - 0.2 * (1 - math.exp(-k / 10)) for k in range(120)])  # stalls at 2.1
    strong = Context(regularization={"decay_per_step": 0.05, "dropout": {}})
    f = diagnose(flat, strong, labels=["over_regularization"])
    assert f and f[0].severity == "warning" and "5%" in f[0].evidence
    assert diagnose(flat, Context(regularization={"decay_per_step": 1e-5, "dropout": {}}), labels=["over_regularization"]) == []
    fits = _history_with_loss(list(np.linspace(2.3, 0.3, 120)))
    assert diagnose(fits, strong, labels=["over_regularization"]) == []
    heavy_dropout = Context(regularization={"decay_per_step": 0.0, "dropout": {"fc": 0.9}})
    assert diagnose(flat, heavy_dropout, labels=["over_regularization"])[0].layers == ["fc"]


# ------------------------------------------------------------------ root cause before symptom
def _fixed_rule(label: str, severity: str, first_step: int = 0):  # type: ignore[no-untyped-def]
    def fn(h: History, ctx: Context) -> Finding:
        return Finding(label=label, severity=severity, title=label, evidence="e", first_step=first_step)

    return fn


def test_causes_are_listed_before_symptoms(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainscope.diagnostics.registry import RuleSpec

    for label, sev, first in (("nan_inf", "error", 2), ("exploding_gradients", "error", 0), ("lr_too_high", "warning", 8),
                              ("unnormalized_inputs", "warning", 8), ("dead_units", "info", 0)):
        monkeypatch.setitem(RULES, label, RuleSpec(label, _fixed_rule(label, sev, first), (), "test"))
    wanted = ["nan_inf", "exploding_gradients", "lr_too_high", "unnormalized_inputs", "dead_units"]
    h = _history_with_loss([1.0] * 3)
    # the cause (inputs, then the learning rate: the root-cause tests' order) leads, even at a lower
    # severity than the symptoms it produces; info findings come last
    expected = ["unnormalized_inputs", "lr_too_high", "exploding_gradients", "nan_inf", "dead_units"]
    assert [f.label for f in diagnose(h, Context(), labels=wanted)] == expected
    assert [f.label for f in Diagnoser(labels=wanted).update(h, Context())] == expected


def test_a_loss_the_model_cannot_move_is_not_divergence() -> None:
    # a constant output (softmax over one unit): every gradient is exactly 0, the loss only follows the batches
    rng = np.random.default_rng(0)
    h = History([classify("fc", nn.Linear(2, 2))])
    for k in range(120):
        h.add_scalars(k, {"loss": float(0.4 + 0.2 * (k > 60) + 0.1 * rng.random()), "grad_norm_total": 0.0})
    labels = {f.label: f for f in diagnose(h, Context())}
    assert "divergence" not in labels and "oscillation" not in labels
    assert "not_learning" in labels  # nothing can learn: a plateau
    assert "lr_too_low" not in labels  # a zero gradient is not an lr problem


def test_a_softmax_over_one_unit_names_the_head_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(4, 8))
    model.add_module("relu1", nn.ReLU())
    model.add_module("out", nn.Linear(8, 1))
    model.add_module("head", nn.Softmax(dim=1))
    x, y = torch.randn(64, 4), (torch.rand(64, 1) > 0.5).float()
    opt, lf = torch.optim.SGD(model.parameters(), lr=0.1), nn.BCELoss()
    probe = trainscope.Probe(model, opt, loss_fn=lf, every=1)
    for _ in range(5):
        opt.zero_grad()
        lf(model(x), y).backward()
        opt.step()
    probe.flush()
    try:
        errors = [f for f in probe.findings() if f.severity == "error"]
        assert errors and all(f.layers[0] == "head" for f in errors if f.label in ("wrong_loss", "head_loss_mismatch"))
        wl = [f for f in probe.findings() if f.label == "wrong_loss"]
        assert wl and wl[0].layers[:2] == ["head", "out"] and "softmax over a dimension of size 1" in wl[0].evidence
    finally:
        probe.detach()


def _curve_history(losses: list[float], update: float, grad: float = 0.5, lr: float = 1e-3) -> History:
    h = History([classify("fc", nn.Linear(2, 2))])
    for k, v in enumerate(losses):
        h.add_scalars(k, {"loss": float(v), "update_ratio_total": update, "grad_norm_total": grad, "lr": lr})
    return h


def test_a_plateau_with_small_updates_is_lr_too_low_with_a_computed_fix() -> None:
    rng = np.random.default_rng(1)
    flat = list(2.3 + 0.01 * rng.standard_normal(60))
    f = next(f for f in diagnose(_curve_history(flat, update=3e-4), Context()) if f.label == "lr_too_low")
    assert f.severity == "warning" and f.data["path"] == "stalled"
    first = f.interventions[0]
    assert first["action"] == "scale_lr" and first["params"]["factor"] == 20.0  # toward 1e-2 per step from 3e-4
    assert f.interventions[1] == intervention("set_lr", "Set the learning rate to 0.02", lr=pytest.approx(0.02))
    # the same plateau with healthy-sized updates is not blamed on the learning rate (and too early for not_learning)
    assert not {"lr_too_low", "not_learning"} & {f.label for f in diagnose(_curve_history(flat, update=5e-3), Context())}


def test_a_slow_steady_descent_is_lr_too_low_and_a_healthy_curve_is_not() -> None:
    rng = np.random.default_rng(2)
    n = np.arange(80)
    slow = list(2.3 - 0.001 * n + 0.003 * rng.standard_normal(80))  # 3.5% in 80 steps, not slowing down
    labels = {f.label: f for f in diagnose(_curve_history(slow, update=2e-3), Context())}
    assert labels["lr_too_low"].severity == "warning" and labels["lr_too_low"].data["path"] == "slow"
    assert labels["lr_too_low"].interventions[0] == intervention("scale_lr", "Scale the learning rate by 10", factor=10.0)
    healthy = list(0.3 + 2.0 * np.exp(-n / 15) + 0.01 * rng.standard_normal(80))  # fast, then flattening
    assert not [f for f in diagnose(_curve_history(healthy, update=2e-3), Context()) if f.label in ("lr_too_low", "not_learning")]


def test_not_learning_waits_for_100_steps() -> None:
    rng = np.random.default_rng(3)
    flat = list(1.0 + 0.02 * rng.standard_normal(140))
    assert "not_learning" not in {f.label for f in diagnose(_curve_history(flat[:80], update=5e-3), Context())}
    f = next(f for f in diagnose(_curve_history(flat, update=5e-3), Context()) if f.label == "not_learning")
    assert f.severity == "warning"


def test_after_an_applied_lsuv_reinit_the_stale_vanishing_finding_is_resolved() -> None:
    # examples/demo.ipynb's flow: six tanh layers of 128 initialized 100x too small, SGD with momentum on
    # the digits; the user applies the suggested re-init; the evidence before it belongs to another model
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x, y = torch.tensor(digits.data, dtype=torch.float32) / 16, torch.tensor(digits.target)
    layers: list[tuple[str, nn.Module]] = []
    for i in range(1, 7):
        layers += [(f"fc{i}", nn.Linear(64 if i == 1 else 128, 128)), (f"tanh{i}", nn.Tanh())]
    model = nn.Sequential(OrderedDict([*layers, ("head", nn.Linear(128, 10))]))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(0.01)
    opt, lf = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), nn.CrossEntropyLoss()
    probe = trainscope.Probe(model, opt, loss_fn=lf, every=10, budget=0.10)

    def train(steps: int) -> None:
        for s in range(steps):
            idx = torch.randint(len(x), (32,))
            opt.zero_grad()
            lf(model(x[idx]), y[idx]).backward()
            opt.step()
            if s % 10 == 9:
                probe.findings()

    try:
        train(400)
        van = next(f for f in probe.findings() if f.label == "vanishing_gradients")
        assert van.active and van.severity == "error" and van.interventions[0]["action"] == "reinit"
        ticket = probe.request(van.interventions[0]["action"], **van.interventions[0]["params"])
        train(400)
        assert ticket.status == "applied"
        v = next(f for f in probe.findings() if f.label == "vanishing_gradients")
        # no longer active at any level (it used to stay as an info with the pre-fix ratio in its evidence)
        assert not v.active and v.data["resolved_by"] == {"step": ticket.applied_step, "action": "reinit"}
        stale = [f.label for f in probe.findings() if f.active and f.first_step < int(ticket.applied_step)]
        assert stale == []
    finally:
        probe.detach()


def test_evidence_from_before_a_learning_rate_change_is_not_read_after_it() -> None:
    h = History([classify("fc", nn.Linear(2, 2))])
    for k in range(60):  # an lr that is far too high: updates of 20% per step, the loss oscillating
        h.add_scalars(k, {"loss": 1.0 + (k % 2), "update_ratio_total": 0.2, "grad_norm_total": 1.0, "lr": 1.0})
    d = Diagnoser()
    assert "lr_too_high" in {f.label for f in d.update(h, Context())}
    h.add_event("intervention", "Scale the learning rate by 0.01", step=60, action="scale_lr")
    for k in range(60, 63):  # a few steps later: the last 10 records still mostly predate the change
        h.add_scalars(k, {"loss": float(np.exp(-(k - 60) / 10)), "update_ratio_total": 2e-3, "grad_norm_total": 1.0, "lr": 0.01})
    f = next(f for f in d.update(h, Context()) if f.label == "lr_too_high")
    assert not f.active and f.data["resolved_by"] == {"step": 60, "action": "scale_lr"}


def test_min_max_scaled_inputs_are_normalized_enough() -> None:
    th = Thresholds()
    g = torch.Generator().manual_seed(4)
    # min-max scaling to [0, 1] (or [-1, 0]): features near 0.5 that vary by +-0.1 are standard practice
    unit = (0.5 + 0.1 * torch.randn(256, 8, generator=g)).clamp(0, 1)
    assert assess_inputs(input_stats(unit), th)[0] == "pass"
    assert assess_inputs(input_stats(unit - 1), th)[0] == "pass"
    # the same offset at a larger scale still warns, and so do features of very different scales in [0, 1]
    assert assess_inputs(input_stats(unit * 10), th)[0] == "warn"
    spread = unit.clone()
    spread[:, 1:] *= 1e-3
    assert assess_inputs(input_stats(spread), th)[0] == "warn"


def test_small_batch_noise_on_a_plateau_is_not_divergence() -> None:
    rng = np.random.default_rng(5)
    noisy = list(1.0 + 0.3 * rng.standard_normal(60))  # batch-of-16 noise around a plateau, 60 steps
    assert "divergence" not in {f.label for f in diagnose(_curve_history(noisy, update=5e-3), Context())}
    rising = noisy[:30] + list(1.0 + np.linspace(0.5, 3.0, 30) + 0.3 * rng.standard_normal(30))
    assert "divergence" in {f.label for f in diagnose(_curve_history(rising, update=5e-3), Context())}


def test_label_noise_not_raised_while_validation_still_improves() -> None:
    # a hard but learnable task: validation is still setting new bests, only slowly (DeepFD 50's
    # fixed program at an early poll): that is not "nothing generalizes"
    def run(val: list[float]) -> list[str]:
        h = History([classify("fc", nn.Linear(4, 2))])
        for k, v in enumerate(np.linspace(0.708, 0.509, 200)):
            h.add_scalars(k, {"loss": float(v)})
        for k, v in zip(range(0, 200, 25), val, strict=True):
            h.add_scalars(k, {"val_loss": v})
        return [f.severity for f in diagnose(h, Context(n_classes=2), labels=["label_noise"])]

    assert run([0.688, 0.684, 0.681, 0.675, 0.670, 0.668, 0.664, 0.661]) == []
    # labels unrelated to inputs: validation rises from chance as training memorizes -> still a warning
    assert run([0.693, 0.690, 0.695, 0.700, 0.705, 0.712, 0.720, 0.730]) == ["warning"]


def test_not_learning_is_info_while_validation_sets_new_bests() -> None:
    # a noisy training loss (dropout) that has barely moved after 150 steps, while validation (eval
    # mode) improves at every evaluation: the model learns, slowly (DeepFD 50's fixed program)
    def run(val: list[float]) -> list[str]:
        rng = np.random.default_rng(0)
        h = History([classify("fc", nn.Linear(4, 2))])
        for k, v in enumerate(np.linspace(0.69, 0.67, 150) + 0.03 * rng.standard_normal(150)):
            h.add_scalars(k, {"loss": float(v)})
        for k, v in zip(range(24, 150, 25), val, strict=True):
            h.add_scalars(k, {"val_loss": v})
        return [f.severity for f in diagnose(h, Context(n_classes=2), labels=["not_learning"])]

    assert run([0.688, 0.684, 0.681, 0.675, 0.670, 0.666]) == ["info"]
    # validation flat or noisy: still the warning
    assert run([0.690, 0.689, 0.691, 0.690, 0.692, 0.689]) == ["warning"]

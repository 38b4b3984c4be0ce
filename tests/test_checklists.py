"""Checklists: items and their state, the automated checks' verdicts, and above all that running a
check leaves model, gradients, buffers, optimizer state and RNG states bit-identical -- also when
the check fails or raises."""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import trainscope
from trainscope.checklists import CHECKS, ITEMS, checklist_state, isolated, run_check
from trainscope.checklists.isolation import same_bits

from .broken.models import CenterOverBatch, DetachedFirst, SeqMixer, sequences


# ------------------------------------------------------------------------------- helpers
def _digits(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:n], dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    return x, torch.tensor(d.target[:n])


def _bn_model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))


def _trained(model: nn.Module, steps: int = 3) -> tuple[trainscope.Probe, torch.optim.Optimizer, tuple[torch.Tensor, torch.Tensor]]:
    """A probe after a few Adam steps; gradients are left in .grad (no zero_grad after the last)."""
    x, y = _digits()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lf = nn.CrossEntropyLoss()
    probe = trainscope.Probe(model, opt, loss_fn=lf, every=1)
    for _ in range(steps):
        opt.zero_grad()
        lf(model(x[:64]), y[:64]).backward()
        opt.step()
    lf(model(x[:64]), y[:64]).backward()  # gradients present at check time
    return probe, opt, (x[:64], y[:64])


def capture(model: nn.Module, opt: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Everything a check must not change, copied independently of the isolation code."""
    return {
        "params": {n: (id(p), p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()},
        "grads": {n: (id(p.grad), None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()},
        "buffers": {n: (id(b), b.clone()) for n, b in model.named_buffers()},
        "training": {n: m.training for n, m in model.named_modules()},
        "opt": copy.deepcopy(opt.state_dict()) if opt is not None else None,
        "rng": (torch.get_rng_state().clone(), np.random.get_state(), random.getstate()),
    }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["params"].keys() == b["params"].keys()
    for n, (i, v, rg) in a["params"].items():
        j, w, rg2 = b["params"][n]
        assert i == j and rg == rg2 and same_bits(v, w), f"parameter {n} changed"
    for n, (i, g) in a["grads"].items():
        j, h = b["grads"][n]
        assert i == j, f"gradient tensor of {n} replaced"
        assert (g is None and h is None) or (g is not None and h is not None and same_bits(g, h)), f"gradient of {n} changed"
    for n, (i, v) in a["buffers"].items():
        j, w = b["buffers"][n]
        assert i == j and same_bits(v, w), f"buffer {n} changed"
    assert a["training"] == b["training"]
    if a["opt"] is not None:
        sa, sb = a["opt"], b["opt"]
        assert sa["param_groups"] == sb["param_groups"]
        assert sa["state"].keys() == sb["state"].keys()
        for k, st in sa["state"].items():
            for key, v in st.items():
                w = sb["state"][k][key]
                assert (same_bits(v, w) if isinstance(v, torch.Tensor) else v == w), f"optimizer state {k}.{key} changed"
    ta, na, pa = a["rng"]
    tb, nb, pb = b["rng"]
    assert torch.equal(ta, tb), "torch RNG state changed"
    assert all(np.array_equal(u, v) if isinstance(u, np.ndarray) else u == v for u, v in zip(na, nb, strict=True)), "numpy RNG changed"
    assert pa == pb, "python RNG changed"


# ------------------------------------------------------------------------------- isolation
@pytest.mark.parametrize("name", list(CHECKS))
def test_every_check_leaves_everything_bit_identical(name: str) -> None:
    model = _bn_model()
    probe, opt, _ = _trained(model)
    model.train()
    before = capture(model, opt)
    res = run_check(name, probe, steps=20) if name in ("overfit_batch", "input_baseline") else run_check(name, probe)
    assert res.status in ("pass", "warn", "fail", "not_run", "manual")
    assert_same(before, capture(model, opt))
    assert probe.history.meta["checks"][name]["status"] == res.status
    probe.detach()


class _Bomb(nn.Module):
    """Raises on its ``n``-th call: a check that breaks half-way."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("exploded mid-check")
        return x


def test_state_is_restored_when_the_check_raises_half_way() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), _Bomb(10**9), nn.Linear(32, 10))
    probe, opt, _ = _trained(model)
    model[3].n = model[3].calls + 7  # explode on the 7th forward inside the check (mid-training)
    before = capture(model, opt)
    res = run_check("overfit_batch", probe, steps=50)
    assert res.status == "not_run" and "exploded mid-check" in res.evidence
    assert_same(before, capture(model, opt))
    probe.detach()


def test_isolated_restores_arbitrary_damage_even_on_an_exception() -> None:
    model = _bn_model()
    probe, opt, _ = _trained(model)
    before = capture(model, opt)
    with pytest.raises(KeyError), isolated(model, opt, probe):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(3).requires_grad_(False)
        model[1].running_mean.fill_(7.0)
        model[1].num_batches_tracked += 5
        model.eval()
        for p in model.parameters():
            p.grad = None
        opt.param_groups[0]["lr"] = 99.0
        opt.state[next(iter(opt.state))]["exp_avg"].zero_()
        opt.state.clear()
        torch.rand(10), np.random.rand(3), random.random()
        raise KeyError("user code failed")
    assert_same(before, capture(model, opt))
    probe.detach()


# ------------------------------------------------------------------------------- verdicts
def test_overfit_batch_passes_on_a_healthy_model_and_fails_when_it_cannot_fit() -> None:
    x, y = _digits(64)
    good = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    res = run_check("overfit_batch", good, None, nn.CrossEntropyLoss(), (x, y))
    assert res.status == "pass", res.evidence
    dead = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        dead[0].bias.fill_(-100.0)  # nothing passes the ReLU: only the last bias can learn
    res = run_check("overfit_batch", dead, None, nn.CrossEntropyLoss(), (x, y))
    assert res.status == "fail", res.evidence


def test_input_baseline_tells_real_labels_from_random_ones() -> None:
    x, y = _digits(256)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    assert run_check("input_baseline", model, None, nn.CrossEntropyLoss(), (x, y)).status == "pass"
    noise = torch.randint(0, 10, y.shape, generator=torch.Generator().manual_seed(1))
    res = run_check("input_baseline", model, None, nn.CrossEntropyLoss(), (x, noise))
    assert res.status == "fail", res.evidence


def test_batch_mixing_passes_with_batchnorm_and_localizes_a_mixing_op() -> None:
    x, _ = _digits(16)
    bn = _bn_model().train()
    res = run_check("batch_mixing", bn, batch=x)
    assert res.status == "pass", res.evidence
    res = run_check("batch_mixing", CenterOverBatch(), batch=x)
    assert res.status == "fail" and res.layers == ["fc2", "fc1"], res.evidence
    tokens, _ = sequences(12)
    res = run_check("batch_mixing", SeqMixer(), batch=tokens)  # integer inputs: tested from the embedding on
    assert res.status == "fail" and "score" in res.layers, res.evidence
    assert run_check("batch_mixing", nn.Linear(64, 3), batch=x[:1]).status == "not_run"


def test_grad_flow_finds_detached_layers_and_parameters_missing_from_the_optimizer() -> None:
    x, y = _digits(32)
    m = DetachedFirst()
    res = run_check("grad_flow", m, torch.optim.SGD(m.parameters(), lr=0.1), nn.CrossEntropyLoss(), (x, y))
    assert res.status == "fail" and res.layers == ["fc1"] and "fc1.weight" in res.evidence
    m2 = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    res = run_check("grad_flow", m2, torch.optim.SGD(m2[2].parameters(), lr=0.1), nn.CrossEntropyLoss(), (x, y))
    assert res.status == "fail" and "not in the optimizer" in res.evidence and res.layers == ["0"]
    res = run_check("grad_flow", m2, torch.optim.SGD(m2.parameters(), lr=0.1), nn.CrossEntropyLoss(), (x, y))
    assert res.status == "pass"


def test_loss_at_init_input_stats_and_loss_inputs() -> None:
    torch.manual_seed(0)
    x, y = _digits(64)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    ce = nn.CrossEntropyLoss()
    assert run_check("loss_at_init", model, None, ce, (x, y)).status == "pass"
    with torch.no_grad():
        model[2].weight.mul_(40.0)
    assert run_check("loss_at_init", model, None, ce, (x, y)).status == "fail"
    assert run_check("loss_at_init", model, None, nn.MSELoss(), (x, torch.randn(64, 10))).status == "manual"
    assert run_check("input_stats", model, batch=x).status == "pass"
    assert run_check("input_stats", model, batch=x * 50 + 100).status == "warn"
    soft = nn.Sequential(nn.Linear(64, 10), nn.Softmax(dim=1))
    res = run_check("loss_inputs", soft, None, ce, (x, y))
    assert res.status == "fail" and "probabilities" in res.evidence
    assert run_check("loss_inputs", nn.Linear(64, 10), None, ce, (x, y)).status == "pass"


def test_seed_check_reads_torch_initial_seed() -> None:
    torch.manual_seed(1234)
    assert run_check("seed", nn.Linear(2, 2)).status == "pass"
    torch.seed()  # a random, non-reproducible seed
    res = run_check("seed", nn.Linear(2, 2))
    assert res.status == "warn" and "not seeded" in res.evidence
    torch.manual_seed(0)


def test_train_eval_mode_check_uses_the_probes_forward_counts() -> None:
    model = _bn_model()
    probe, _, (x, _) = _trained(model)
    assert run_check("train_eval_mode", probe).status == "pass"
    with torch.no_grad():
        model(x)  # a "validation" pass in train mode
    res = run_check("train_eval_mode", probe)
    assert res.status == "fail" and "train mode" in res.evidence
    assert run_check("train_eval_mode", nn.Linear(2, 2)).status == "pass"  # nothing mode-dependent
    probe.detach()


def test_bad_requests_raise_clear_errors_before_touching_anything() -> None:
    with pytest.raises(ValueError, match="unknown check 'overfit'; checks are: loss_at_init"):
        run_check("overfit", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="needs a batch"):
        run_check("overfit_batch", nn.Linear(2, 2), None, nn.MSELoss())
    with pytest.raises(ValueError, match="needs the loss function"):
        run_check("overfit_batch", nn.Linear(2, 2), batch=(torch.randn(4, 2), torch.randn(4, 2)))
    with pytest.raises(ValueError, match="unexpected keyword"):
        run_check("overfit_batch", nn.Linear(2, 2), None, nn.MSELoss(), (torch.randn(4, 2), torch.randn(4, 2)), stepz=3)
    with pytest.raises(TypeError, match="needs a model"):
        run_check("seed", "model")
    assert run_check("karpathy.seed", nn.Linear(2, 2)).name == "seed"  # item ids work too


# ------------------------------------------------------------------------------- action + state
def test_run_check_action_applies_at_the_next_step_boundary() -> None:
    model = _bn_model()
    probe, opt, _ = _trained(model)
    refused = probe.request("run_check", check="no_such_check")
    assert refused.status == "refused" and "unknown check" in refused.message
    t = probe.request("run_check", check="tobin.overfit_batch")
    assert t.status == "pending" and t.params == {"check": "overfit_batch"}
    before = capture(model, opt)
    opt.step()  # the boundary applies it (gradients from _trained are still there)
    assert t.status == "applied" and t.message.startswith("Overfit one batch: ")
    assert probe.history.meta["checks"]["overfit_batch"]["status"] in ("pass", "warn", "fail")
    ev = [e for e in probe.history.events if e.data.get("action") == "run_check"]
    assert len(ev) == 1 and ev[0].data["status"] == probe.history.meta["checks"]["overfit_batch"]["status"]
    after = capture(model, opt)
    assert after["opt"]["state"][0]["step"] == before["opt"]["state"][0]["step"] + 1  # only the user's own step
    spec = trainscope.actions.REGISTRY["run_check"]
    assert spec.category == "checks" and spec.schema["check"]["choices"] == list(CHECKS)
    probe.detach()


def test_checklist_state_contract_and_statuses() -> None:
    static = checklist_state()
    assert len(static) == len(ITEMS) and {i["source"] for i in static} == {"tobin", "karpathy"}
    for item in static:
        assert {"id", "source", "title", "meaning", "status", "evidence", "automated"} <= set(item)
        assert item["status"] in ("not_run", "manual")
        assert item["automated"] == (item["check"] is not None)
        assert item["check"] is None or item["check"] in CHECKS
    assert set(CHECKS) == {i["check"] for i in static if i["check"]}  # every check is on the list
    model = nn.Sequential(nn.Linear(64, 10), nn.Softmax(dim=1))
    probe, _, _ = _trained(model)
    run_check("seed", probe)
    state = {i["id"]: i for i in checklist_state(probe)}
    assert state["karpathy.seed"]["status"] == "pass"
    assert state["tobin.bug_loss_input"]["status"] == "fail"  # the probabilities_into_loss finding
    assert "probabilities" in state["tobin.bug_loss_input"]["evidence"]
    assert state["karpathy.human_baseline"]["status"] == "manual"
    probe.detach()


class _CenterThenDead(nn.Module):
    """Mixes the batch (subtracts the batch mean) and ends in a ReLU that is 0 everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, 4)
        with torch.no_grad():
            self.fc2.bias.fill_(-100.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return torch.relu(self.fc2(h - h.mean(0, keepdim=True)))


def test_batch_mixing_tests_the_deepest_output_with_a_gradient_when_the_model_output_has_none() -> None:
    """A young BatchNorm network's output ReLU can be 0 for every example in eval mode (SqueezeNet
    early in training): the check used to give up ("nothing to test"); it now tests the deepest
    intermediate output that has a gradient, and still finds mixing there."""
    x, _ = _digits(16)
    dead = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4), nn.ReLU())
    with torch.no_grad():
        dead[2].bias.fill_(-100.0)
    res = run_check("batch_mixing", dead, batch=x)
    assert res.status == "pass" and "up to the output of `2`" in res.evidence, res.evidence
    res = run_check("batch_mixing", _CenterThenDead(), batch=x)
    assert res.status == "fail", res.evidence

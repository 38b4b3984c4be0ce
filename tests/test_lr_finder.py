"""The LR finder: suggestion rules, exact restore (also on divergence and errors), early stop, action."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

import trainscope
from trainscope.lr_finder import consensus, lr_find, minimum, slide, steep, suggest, valley


# ---------------------------------------------------------------------------- rules
def test_steep_minimum_valley_on_crafted_curves() -> None:
    lrs = list(np.logspace(-5, 0, 12))
    losses = [5.0, 5.0, 4.9, 4.0, 2.0, 1.5, 1.4, 1.4, 3.0, 6.0, 9.0, 12.0]
    assert steep(lrs, losses) == pytest.approx(lrs[3])  # the 4.0 -> 2.0 drop
    assert minimum(lrs, losses) == pytest.approx(lrs[6] / 10)
    u = [float((i - 59) ** 2) for i in range(100)]  # strictly down to index 59, then up
    lr100 = list(np.logspace(-6, 1, 100))
    # fastai: lds[59] = 60, max_start = 59 - 60 = -1, sections = 20, idx = -1 + 20 + 10
    assert valley(lr100, u) == pytest.approx(lr100[29])
    # slide walks (r, l = r - 15) left from the end while |g[r] - g[l]| > 0.005: flat up to 84, then
    # rising; g[84] = 0.05 and g[83] = 0, so the last step taken is r = 84, l = 69
    rise = [1.0] * 85 + [1.0 + 0.1 * k * k for k in range(1, 16)]
    assert slide(lr100, rise) == pytest.approx(lr100[69])


def test_steep_uses_log_lr_spacing() -> None:
    lrs = [1e-4, 1e-3, 2e-3, 1e-2, 1e-1]  # uneven spacing in log lr
    losses = [1.0, 0.5, 0.3, 0.2, 0.1]
    # per unit of ln(lr): -0.5/2.30, -0.2/0.69, -0.1/1.61, -0.1/2.30 -> the second interval is steepest
    assert steep(lrs, losses) == pytest.approx(1e-3)


def test_consensus_is_the_log_median_with_its_spread() -> None:
    lr, spread = consensus({"a": 1e-3, "b": 1e-2, "c": 1e-1})
    assert lr == pytest.approx(1e-2) and spread == pytest.approx(2.0)
    lr, spread = consensus({"a": 1e-3, "b": 1e-1})
    assert lr == pytest.approx(1e-2) and spread == pytest.approx(2.0)
    with pytest.raises(ValueError):
        consensus({})


def test_suggest_trims_and_stops_at_nan() -> None:
    lrs = list(np.logspace(-6, 0, 40))
    losses = [2.0 - 0.04 * i for i in range(30)] + [float("nan")] * 10
    out, lr, spread = suggest(lrs, losses, skip_start=4, skip_end=5)
    assert set(out) == {"steep", "valley", "minimum"}
    assert lrs[4] <= out["valley"] <= lrs[29] and math.isfinite(lr) and spread >= 0
    with pytest.raises(ValueError, match="at least 3 points"):
        suggest(lrs[:8], losses[:8], skip_start=0, skip_end=6)
    with pytest.raises(ValueError, match="same length"):
        steep([1e-3, 1e-2, 1e-1], [1.0, 2.0])


# ---------------------------------------------------------------------------- exact restore
def _model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))


def _data(n: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    c = torch.randn(3, 8, generator=g) * 2
    y = torch.randint(0, 3, (n,), generator=g)
    x = c[y] + torch.randn(n, 8, generator=g)
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]


class _Everything:
    """Everything lr_find promises to put back."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        self.sd = copy.deepcopy(model.state_dict())
        self.osd = copy.deepcopy(opt.state_dict())
        self.group_ids = [id(g) for g in opt.param_groups]
        self.state_ids = {id(p): {k: id(v) for k, v in st.items()} for p, st in opt.state.items()}
        self.grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        self.modes = [m.training for m in model.modules()]
        self.rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())

    def check(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        sd = model.state_dict()
        assert sd.keys() == self.sd.keys()
        for k, v in self.sd.items():
            assert torch.equal(sd[k], v), k  # includes BatchNorm running stats and num_batches_tracked
        osd = opt.state_dict()
        assert osd["param_groups"] == self.osd["param_groups"]
        assert osd["state"].keys() == self.osd["state"].keys()
        for k, st in self.osd["state"].items():
            for name, v in st.items():
                assert torch.equal(osd["state"][k][name], v), (k, name)
        assert [id(g) for g in opt.param_groups] == self.group_ids
        assert {id(p): {k: id(v) for k, v in st.items()} for p, st in opt.state.items()} == self.state_ids
        for p, g in zip(model.parameters(), self.grads, strict=True):
            assert (p.grad is None) == (g is None) and (g is None or torch.equal(p.grad, g))
        assert [m.training for m in model.modules()] == self.modes
        assert torch.equal(torch.get_rng_state(), self.rng[0])
        assert np.array_equal(np.random.get_state()[1], self.rng[1]) and random.getstate() == self.rng[2]


def _trained() -> tuple[nn.Module, torch.optim.Optimizer, list[tuple[torch.Tensor, torch.Tensor]]]:
    model, data = _model(), _data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for x, y in data[:3]:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    nn.functional.cross_entropy(model(data[3][0]), data[3][1]).backward()  # gradients left in place
    model[3].eval()  # an odd mode mix, to be restored as found
    return model, opt, data


@pytest.mark.parametrize("end_lr", [1.0, 1e6])
def test_everything_is_bit_identical_after_the_sweep(end_lr: float) -> None:
    model, opt, data = _trained()
    snap = _Everything(model, opt)
    res = lr_find(model, opt, nn.CrossEntropyLoss(), data, num_iter=60, end_lr=end_lr)
    snap.check(model, opt)
    if end_lr > 1e3:
        assert res.stop_reason != "completed" and res.iterations < 60
    assert len(res.lrs) == len(res.losses) == len(res.raw_losses) == res.iterations


def test_everything_is_bit_identical_when_the_sweep_raises() -> None:
    model, opt, data = _trained()
    snap = _Everything(model, opt)
    calls = {"n": 0}

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("boom in the loss")
        return nn.functional.cross_entropy(out, y)

    with pytest.raises(RuntimeError, match="boom"):
        lr_find(model, opt, loss_fn, data)
    snap.check(model, opt)


def test_divergence_stops_as_soon_as_it_is_certain() -> None:
    w = nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([w], lr=0.1)
    script = [1.0] * 30 + [10.0] * 70

    def scripted(it: int) -> object:
        def step_fn(model: nn.Module, batch: object) -> torch.Tensor:
            i = len(seen)
            seen.append(i)
            return w * 0 + script[i]
        seen: list[int] = []
        return step_fn

    fast = lr_find(nn.Identity(), opt, None, [0], num_iter=100, step_fn=scripted(0))  # type: ignore[arg-type]
    assert fast.iterations == 33 and "for 3 steps" in fast.stop_reason
    slow = lr_find(nn.Identity(), opt, None, [0], num_iter=100, step_fn=scripted(0), diverge_patience=1000)  # type: ignore[arg-type]
    assert "smoothed" in slow.stop_reason and slow.iterations > fast.iterations
    nan = lr_find(nn.Identity(), opt, None, [0], num_iter=100,  # type: ignore[arg-type]
                  step_fn=lambda m, b: w * 0 + float("nan"))
    assert nan.iterations == 0 and nan.stop_reason.startswith("non-finite") and nan.suggestion is None
    with pytest.raises(ValueError, match="no suggestion to apply"):
        nan.apply(opt)


def test_linear_mode_and_validation() -> None:
    model, opt, data = _trained()
    res = lr_find(model, opt, nn.CrossEntropyLoss(), data, start_lr=0.01, end_lr=0.1, num_iter=10, mode="linear")
    assert res.lrs == pytest.approx([0.01 + 0.01 * i for i in range(10)])
    before = copy.deepcopy(model.state_dict())
    for kwargs, match in [({"end_lr": 1e-8}, "must be larger"), ({"num_iter": 3}, "num_iter must be >= 6"),
                          ({"rules": ["magic"]}, "rule must be one of"), ({"mode": "log"}, "mode must be one of")]:
        with pytest.raises(ValueError, match=match):
            lr_find(model, opt, nn.CrossEntropyLoss(), data, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs loss_fn"):
        lr_find(model, opt, None, data)
    with pytest.raises(ValueError, match="yielded no batch"):
        lr_find(model, opt, nn.CrossEntropyLoss(), [])
    with pytest.raises(ValueError, match="cannot be restarted"):
        lr_find(model, opt, nn.CrossEntropyLoss(), iter(data[:3]), end_lr=1e-3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_suggestion_trains_well_on_digits(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    loader = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 1024, 64)]

    def fresh() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        return m, torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)

    def train(lr: float) -> float:
        m, o = fresh()
        o.param_groups[0]["lr"] = lr
        for _ in range(3):
            for xb, yb in loader:
                o.zero_grad()
                nn.functional.cross_entropy(m(xb), yb).backward()
                o.step()
        with torch.no_grad():
            return float(nn.functional.cross_entropy(m(x[1024:]), y[1024:]))

    m, o = fresh()
    res = lr_find(m, o, nn.CrossEntropyLoss(), loader)
    assert res.suggestion is not None and 1e-3 < res.suggestion < 1.0, res.suggestions
    assert train(res.suggestion) < 0.5 < train(1e-4)


# ---------------------------------------------------------------------------- with a probe
def test_probe_records_nothing_during_a_direct_sweep() -> None:
    model, opt, data = _trained()
    probe = trainscope.Probe(model, opt, loss_fn=nn.CrossEntropyLoss(), every=1)
    x, y = data[0]
    opt.zero_grad()
    probe.loss_fn(model(x), y).backward()
    opt.step()
    probe.flush()
    n_loss = probe.history.scalar("loss")["count"].sum()
    res = lr_find(model, opt, probe.loss_fn, data, num_iter=20, probe=probe)
    probe.flush()
    ev = [e for e in probe.history.events if e.kind == "lr_find"]  # the dashboard plots it
    assert len(ev) == 1 and ev[0].data["lrs"] == res.lrs and ev[0].data["suggestion"] == res.suggestion
    assert probe.step_count == 1 and probe.history.scalar("loss")["count"].sum() == n_loss
    assert probe.history.samples() == 1 and not probe.errors
    probe.detach()


def test_lr_find_action_mid_training_restores_and_reports() -> None:
    torch.manual_seed(0)
    data = _data()
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)  # lr 0: steps leave the weights alone
    probe = trainscope.Probe(model, opt, loss_fn=nn.CrossEntropyLoss())
    refused = probe.request("lr_find")
    assert refused.status == "refused" and "needs data" in refused.message
    x, y = data[0]
    opt.zero_grad()
    probe.loss_fn(model(x), y).backward()
    opt.step()
    w0 = copy.deepcopy(model.state_dict())
    t = probe.request("lr_find", num_iter=50)
    opt.zero_grad()
    probe.loss_fn(model(x), y).backward()
    opt.step()
    assert t.status == "applied", t.message
    assert all(torch.equal(w0[k], v) for k, v in model.state_dict().items())
    assert probe.step_count == 2 and opt.param_groups[0]["lr"] == 0.0
    ev = [e for e in probe.history.events if e.kind == "lr_find"][-1]
    assert {"lrs", "losses", "suggestion", "suggestions", "spread"} <= set(ev.data)
    assert len(ev.data["lrs"]) == len(ev.data["losses"]) > 10 and ev.data["suggestion"] > 0
    assert len([e for e in probe.history.events if e.kind == "lr_find"]) == 1
    assert "recent training batch" in ev.data["data"]
    t2 = probe.request("lr_find", num_iter=50, apply="one_cycle", total_steps=100)
    opt.zero_grad()
    probe.loss_fn(model(x), y).backward()
    opt.step()
    assert t2.status == "applied" and hasattr(t2.result, "undo")
    sugg = [e for e in probe.history.events if e.kind == "lr_find"][-1].data["suggestion"]
    assert opt.param_groups[0]["lr"] == pytest.approx(sugg / 25)  # one-cycle starts at max_lr / 25
    probe.request("undo", ticket=t2.id)
    opt.step()
    assert opt.param_groups[0]["lr"] == 0.0
    lin = nn.Linear(2, 2)
    no_loss = trainscope.Probe(lin, torch.optim.SGD(lin.parameters(), lr=0.1), attach=False)
    assert no_loss.actions.submit("lr_find", {}).message.startswith("lr_find needs the loss")
    probe.detach()


def test_lr_find_clicked_between_forward_and_loss_is_accepted() -> None:
    """A click arrives on another thread at any moment: between a step's forward and its loss the
    probe must still offer the previous step's complete batch (it once offered only the half
    batch of the step in progress, with no target, and refused the click as "needs data")."""
    torch.manual_seed(0)
    x, y = _data()[0]
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    probe = trainscope.Probe(model, opt, loss_fn=nn.CrossEntropyLoss())
    opt.zero_grad()
    probe.loss_fn(model(x), y).backward()
    opt.step()
    out = model(x)  # step 1 in progress: forward done, loss not yet computed
    assert [b.step for b in probe.recent_batches] == [0] and probe.recent_batches[0].target is y
    t = probe.request("lr_find", num_iter=20)
    assert t.status == "pending", t.message
    opt.zero_grad()
    loss = probe.loss_fn(out, y)  # the batch is complete now: it replaces step 0's
    assert [b.step for b in probe.recent_batches] == [1] and probe.recent_batches[0].target is y
    loss.backward()
    opt.step()
    assert t.status == "applied", t.message
    assert [b.step for b in probe.recent_batches] == [1] and probe.recent_batches[0].target is y
    probe.detach()

"""The default sampling policy: evidence first (dense start, step 0 kept whole, samples after a jump
of a per-step value), then the overhead budget."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from trainscope import Probe
from trainscope import probe as probe_mod
from trainscope.history import History, StepRecord


def _digits_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    return model, x, torch.tensor(d.target)


def _train(model: nn.Module, opt: Any, loss_fn: nn.Module, x: Any, y: Any, steps: int, spike_at: int = -1) -> None:
    g = torch.Generator().manual_seed(0)
    for k in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        xb = x[idx] * (200.0 if k == spike_at else 1.0)
        opt.zero_grad()
        loss_fn(model(xb), y[idx]).backward()
        opt.step()


def test_a_300_step_run_at_defaults_gets_at_least_16_full_samples() -> None:
    model, x, y = _digits_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()
    probe = Probe(model, opt, loss_fn=loss_fn)  # defaults
    _train(model, opt, loss_fn, x, y, 300)
    probe.flush()
    steps, values = probe.history.layer_series("act_std")
    assert probe.history.samples() >= 16, list(steps)
    assert len(steps) == probe.history.samples()
    assert list(steps[:6]) == [0, 1, 2, 3, 4, 5]  # every step at the start
    gaps = np.diff(steps)
    assert (gaps[1:] >= gaps[:-1]).all()  # then intervals that only grow (no jump here)
    assert steps[-1] >= 200  # spread over the whole run, not all at the start
    assert np.isfinite(values).all()
    probe.detach()


def test_the_dense_start_never_shortens_the_budget_interval_later() -> None:
    probe = Probe(nn.Linear(3, 3), attach=False)
    probe._start_step = 0
    probe.every = 40
    assert [probe._interval_after(k) for k in (0, 5, 6, 30, 119, 120, 10_000)] == [1, 1, 2, 10, 39, 40, 40]
    fixed = Probe(nn.Linear(3, 3), every=7, attach=False)  # an explicit interval is kept as given
    assert [fixed._interval_after(k) for k in (0, 5, 1000)] == [7, 7, 7]


def test_step_0_is_sampled_whole_before_the_first_update_and_kept() -> None:
    model, x, y = _digits_mlp()
    with torch.no_grad():
        model[2].weight.mul_(40.0)  # an init far too large at the second Linear
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    probe = Probe(model, opt, loss_fn=loss_fn)
    w0 = [p.detach().clone() for p in model.parameters()]
    first_x = x[:32]
    loss_fn(model(first_x), y[:32]).backward()
    ref = {}
    with torch.no_grad():
        h = first_x
        for name, m in model.named_children():
            h = m(h)
            ref[name] = float(h.std())
    opt.step()
    _train(model, opt, loss_fn, x, y, 40)
    probe.flush()
    rec = probe.history.first_record
    assert rec is not None and rec.step == 0
    assert rec.extra["sample_reason"] == "first_step"
    first = probe.history.meta["first_sample"]
    assert first["step"] == 0 and first["before_first_update"] is True
    assert first["layers"] == ["0", "1", "2", "3", "4"]
    # per-layer forward scale of the initialization on the first batch (population std vs
    # torch's unbiased std: equal to 1e-2 on 32x64 elements)
    for name, std in zip(first["layers"], first["act_std"], strict=True):
        assert std == pytest.approx(ref[name], rel=1e-2)
    assert first["act_std"][2] > 10 * first["act_std"][0]  # the jump at layer "2" is visible
    assert not torch.equal(w0[0], model[0].weight)  # and training went on after it
    probe.detach()


def test_first_record_survives_the_bounded_series_folding_it() -> None:
    from trainscope.layers import classify

    lin = nn.Linear(2, 2)
    h = History([classify("lin", lin)], layer_recent=4, layer_buckets=4)
    for k in range(50):
        metrics = {m: np.full(1, float(k)) for m in probe_mod.LAYER_METRICS}
        h.add_record(StepRecord(k, 0.0, metrics, None, None, [0], [0], None, None))
    assert h.first_record is not None and h.first_record.step == 0
    assert h.first_record.metrics["act_std"][0] == 0.0
    steps, _ = h.layer_series("act_std")
    assert 0 not in steps  # the series itself has folded step 0 into a bucket


def test_a_loss_jump_takes_a_full_sample_at_the_next_step() -> None:
    model, x, y = _digits_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()
    probe = Probe(model, opt, loss_fn=loss_fn)
    probe.flush_interval = 0.0  # a flush every step: the jump is seen at the next boundary
    _train(model, opt, loss_fn, x, y, 140, spike_at=120)
    probe.flush()
    steps = list(probe.history.layer_series("act_std")[0])
    assert 121 in steps, steps  # not on the schedule (117, 156): taken because of the jump
    assert probe.sample_reasons.get("loss_jump", 0) >= 1
    probe.detach()


def test_a_healthy_noisy_loss_triggers_few_samples() -> None:
    model, x, y = _digits_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()
    probe = Probe(model, opt, loss_fn=loss_fn)
    probe.flush_interval = 0.0
    _train(model, opt, loss_fn, x, y, 300)
    probe.flush()
    assert probe.sample_reasons.get("loss_jump", 0) <= 2, probe.sample_reasons
    probe.detach()


def test_a_gradient_norm_jump_in_the_cheap_set_takes_a_sample() -> None:
    model, x, y = _digits_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()
    probe = Probe(model, opt, cheap_every=1)  # no loss module: only the gradient norm is watched
    probe.flush_interval = 0.0
    _train(model, opt, loss_fn, x, y, 140, spike_at=120)
    probe.flush()
    steps = list(probe.history.layer_series("act_std")[0])
    assert 121 in steps, steps
    assert probe.sample_reasons.get("grad_norm_total_jump", 0) >= 1
    probe.detach()


def test_the_first_non_finite_loss_takes_a_sample_whatever_the_interval() -> None:
    model, x, y = _digits_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()
    probe = Probe(model, opt, loss_fn=loss_fn)
    probe.flush_interval = 0.0
    g = torch.Generator().manual_seed(0)
    for k in range(100):
        idx = torch.randint(0, len(x), (32,), generator=g)
        xb = x[idx].clone()
        if k == 90:
            xb[0, 0] = float("nan")
        opt.zero_grad()
        out = loss_fn(model(xb), y[idx])
        if k != 90:
            out.backward()
            opt.step()
        else:
            opt.step()  # a skipped update, as loops with a NaN check do
    probe.flush()
    assert probe.sample_reasons.get("nonfinite_loss", 0) == 1
    steps = list(probe.history.layer_series("act_std")[0])
    assert 91 in steps, steps
    probe.detach()


def test_unsampled_steps_at_defaults_do_no_host_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, y = _digits_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()
    probe = Probe(model, opt, loss_fn=loss_fn)
    probe.flush_interval = 1e9
    _train(model, opt, loss_fn, x, y, 40)  # past the dense start

    def forbidden(*a: Any, **k: Any) -> Any:
        raise AssertionError("host sync inside the probe")

    g = torch.Generator().manual_seed(5)
    sampled = 0
    for _ in range(20):
        idx = torch.randint(0, len(x), (32,), generator=g)
        opt.zero_grad()
        out = model(x[idx])
        sampled += probe._sampling
        with monkeypatch.context() as mp:
            mp.setattr(torch.Tensor, "item", forbidden)
            mp.setattr(torch.Tensor, "tolist", forbidden)
            loss_fn(out, y[idx]).backward()
            if not probe._sampling:
                opt.step()
        if probe._sampling:
            opt.step()
    assert sampled < 20
    assert not probe.errors
    probe.detach()

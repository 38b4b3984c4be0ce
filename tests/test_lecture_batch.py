"""Batch-size growth through gradient accumulation (issue 15, item 4)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

import trainscope
from trainscope.interventions.batch_size import accumulate_, accumulator, batch_growth_, passthrough


def _setup(seed: int = 0, opt: str = "sgd") -> tuple[nn.Module, torch.optim.Optimizer, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    if opt == "sgd":
        o: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        o = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(24)]
    return model, o, data


LOSS = nn.CrossEntropyLoss()


def _train(model: nn.Module, opt: torch.optim.Optimizer, data: list[Any], order: str = "zero_first") -> list[float]:
    loss_fn = LOSS
    out = []
    for x, y in data:
        if order == "zero_first":
            opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if order == "zero_last":
            opt.zero_grad()
        out.append(float(loss.detach()))
    return out


def _state(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("order", ["zero_first", "zero_last"])
def test_k_micro_batches_make_one_step_on_the_mean_gradient(order: str) -> None:
    """k=3 accumulation over batches b1..b3 == one plain step on their concatenation (mean loss)."""
    m1, o1, data = _setup()
    m2, o2, _ = _setup()
    accumulate_(o1, 3)
    _train(m1, o1, data[:6], order)
    for i in range(0, 6, 3):  # the reference: one step per concatenated triple
        x = torch.cat([d[0] for d in data[i:i + 3]])
        y = torch.cat([d[1] for d in data[i:i + 3]])
        o2.zero_grad()
        nn.CrossEntropyLoss()(m2(x), y).backward()
        o2.step()
    for p, q in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    acc = accumulator(o1)
    assert acc is not None and acc.real_steps == 2 and acc.micro == 0


def test_swallowed_steps_change_nothing_and_probe_counts_real_steps() -> None:
    model, opt, data = _setup()
    loss_fn = LOSS
    probe = trainscope.Probe(model, opt, loss_fn=loss_fn)
    try:
        t = probe.request("accumulate", steps=4)
        assert t.status == "pending"
        _train(model, opt, data[:1])  # the boundary that applies it
        assert t.status == "applied", t.message
        assert probe.step_count == 1
        before = [p.detach().clone() for p in model.parameters()]
        micro = _train(model, opt, data[1:4])  # 3 swallowed calls
        assert probe.step_count == 1
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        pending = probe.request("set_lr", lr=0.05)
        assert pending.status == "pending"
        micro += _train(model, opt, data[4:5])  # the 4th: a real step, the request applies there
        assert probe.step_count == 2
        assert pending.status == "applied" and pending.applied_step == 2
        assert opt.param_groups[0]["lr"] == 0.05
        assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        _train(model, opt, data[5:13])
        assert probe.step_count == 4
        ev = [e for e in probe.history.events if e.data.get("action") == "accumulate"]
        assert ev and ev[0].data["params"] == {"steps": 4}
        # losses of the 4 micro-batches of a step are all recorded, averaged into that step
        probe.flush()
        s = probe.history.scalar("loss")
        assert list(s["step"][:4]) == [0, 1, 2, 3]
        assert s["mean"][1] == pytest.approx(sum(micro) / 4, rel=1e-5)
        u = probe.request("undo", ticket=t.id)
        _train(model, opt, data[13:17])  # the undo too waits for the next real step
        assert probe.step_count == 5 and u.status == "applied" and t.status == "undone"
        assert "step" not in opt.__dict__
        _train(model, opt, data[17:20])
        assert probe.step_count == 8  # every call steps again
    finally:
        probe.detach()


def test_undo_restores_the_plain_methods_exactly_and_training_is_identical_afterwards() -> None:
    m1, o1, data = _setup(opt="adam")
    m2, o2, _ = _setup(opt="adam")
    d_before = dict(o1.__dict__)
    a = accumulate_(o1, 2)
    assert "step" in o1.__dict__ and "zero_grad" in o1.__dict__
    _train(m1, o1, data[:4])
    _train(m2, o2, [(torch.cat([data[i][0], data[i + 1][0]]), torch.cat([data[i][1], data[i + 1][1]])) for i in (0, 2)])
    a.undo()
    assert "step" not in o1.__dict__ and "zero_grad" not in o1.__dict__
    assert o1.__dict__.keys() == d_before.keys()
    for p, q in zip(m1.parameters(), m2.parameters(), strict=True):  # same state (up to float reassociation)
        with torch.no_grad():
            p.copy_(q)
    o1.load_state_dict(copy.deepcopy(o2.state_dict()))
    l1 = _train(m1, o1, data[4:10])
    l2 = _train(m2, o2, data[4:10])
    assert l1 == l2
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters(), strict=True))


def test_apply_then_undo_before_training_is_as_if_never_applied() -> None:
    m1, o1, data = _setup()
    m2, o2, _ = _setup()
    rng = torch.get_rng_state()
    accumulate_(o1, 5).undo()
    assert torch.equal(torch.get_rng_state(), rng)
    _train(m1, o1, data[:6])
    _train(m2, o2, data[:6])
    assert _same(_state(m1, o1), _state(m2, o2))


def test_bad_requests_are_refused_and_change_nothing() -> None:
    model, opt, _ = _setup()
    probe = trainscope.Probe(model, opt, loss_fn=LOSS)
    try:
        for params, why in [({"steps": 0}, ">= 1"), ({"steps": 2.5}, "integer"), ({"steps": 10**6}, "<= 4096"),
                            ({"stepz": 2}, "unknown parameter")]:
            t = probe.request("accumulate", **params)
            assert t.status == "refused" and why in t.message, (params, t.message)
        for params, why in [({"every": None, "milestones": None}, "every=N"), ({"milestones": "5,3"}, "increase"),
                            ({"milestones": "a,b"}, "whole numbers"), ({"start": 8, "max_k": 4}, "<= max_k"),
                            ({"factor": 1}, ">= 2"), ({"unit": "epochs"}, "batches, steps")]:
            t = probe.request("batch_schedule", **params)
            assert t.status == "refused" and why in t.message, (params, t.message)
        assert "step" not in opt.__dict__ and accumulator(opt) is None
    finally:
        probe.detach()
    lb = torch.optim.LBFGS(model.parameters())
    with pytest.raises(ValueError, match="LBFGS"):
        accumulate_(lb, 2)
    p2 = trainscope.Probe(nn.Linear(2, 2))
    try:
        t = p2.request("accumulate", steps=2)
        assert t.status == "refused" and "optimizer" in t.message
    finally:
        p2.detach()


def test_batch_schedule_grows_k_at_milestones_and_records_it() -> None:
    model, opt, data = _setup()
    probe = trainscope.Probe(model, opt, loss_fn=LOSS)
    try:
        a = batch_growth_(opt, factor=2, milestones=[4, 8], max_k=8, probe=probe)
        acc = accumulator(opt)
        assert acc is not None and acc.k == 1
        ks = []
        steps_before = probe.step_count
        for x, y in (data * 2)[:20]:
            _train(model, opt, [(x, y)])
            ks.append(acc.k)
        # batches 1-4 step every batch (k=1); from batch 4 k=2; from the first real step on/after 8, k=4
        assert ks[:4] == [1, 1, 1, 2]
        assert ks[7] == 4 and ks[-1] == 4
        assert probe.step_count - steps_before == 4 + 2 + 3  # 4 at k=1, batches 5-8 at k=2, 12 at k=4
        growth = [e for e in probe.history.events if e.data.get("source") == "schedule"]
        assert [e.data["accumulate_to"] for e in growth] == [2, 4]
        ev = [e for e in probe.history.events if e.data.get("action") == "batch_schedule" and "params" in e.data]
        assert ev and ev[0].data["params"]["milestones"] == [4, 8]
        a.undo()
        assert "step" not in opt.__dict__
    finally:
        probe.detach()


def test_every_and_max_k() -> None:
    model, opt, data = _setup()
    batch_growth_(opt, factor=3, every=2, max_k=9, unit="steps")
    acc = accumulator(opt)
    assert acc is not None
    seen = []
    for x, y in data:
        _train(model, opt, [(x, y)])
        seen.append(acc.k)
    assert max(seen) == 9 and seen[0] == 1 and 3 in seen


def test_lr_find_is_not_broken_by_active_accumulation() -> None:
    def run(with_acc: bool) -> Any:
        model, opt, data = _setup()
        loss_fn = LOSS
        probe = trainscope.Probe(model, opt, loss_fn=loss_fn)
        try:
            if with_acc:
                accumulate_(opt, 4, probe=probe)
            _train(model, opt, data[:8])
            snap = _state(model, opt)
            res = trainscope.lr_find(model, opt, loss_fn, data, num_iter=20, probe=probe)
            assert _same(_state(model, opt), snap)  # restored
            if with_acc:
                acc = accumulator(opt)
                assert acc is not None and acc.k == 4 and acc.micro == 0 and "step" in opt.__dict__
                steps = probe.step_count
                _train(model, opt, data[8:12])
                assert probe.step_count == steps + 1  # still accumulating afterwards
            return res
        finally:
            probe.detach()

    plain, acc = run(False), run(True)
    assert acc.iterations == plain.iterations == 20
    # the sweep starts from different weights (8 plain steps vs 2 accumulated ones), but every one of its
    # 20 optimizer steps was real: the loss moves at every iteration at the high learning rates
    assert len(set(acc.raw_losses[-10:])) == 10


def test_checks_that_train_are_not_broken() -> None:
    model, opt, data = _setup()
    loss_fn = LOSS
    probe = trainscope.Probe(model, opt, loss_fn=loss_fn)
    try:
        _train(model, opt, data[:2])
        ref = trainscope.run_check("overfit_batch", probe, record=False, lr=0.01)
        accumulate_(opt, 3, probe=probe)
        _train(model, opt, data[2:4])  # mid-accumulation
        acc = accumulator(opt)
        assert acc is not None and acc.micro == 2
        model2 = copy.deepcopy(model)
        grads = [p.grad.clone() for p in model.parameters()]  # the 2 micro-batches accumulated so far
        res = trainscope.run_check("overfit_batch", probe, record=False, lr=0.01)
        assert res.status == ref.status == "pass", (res.evidence, ref.evidence)
        assert res.details.get("losses") is None or res.details["losses"][-1] < res.details["losses"][0]
        assert acc.micro == 2  # the check's passes did not count as micro-batches
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters(), strict=True))
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    finally:
        probe.detach()


def test_passthrough_and_closure() -> None:
    model, opt, data = _setup()
    accumulate_(opt, 2)
    x, y = data[0]
    before = [p.detach().clone() for p in model.parameters()]
    with passthrough(opt):
        opt.zero_grad()
        nn.CrossEntropyLoss()(model(x), y).backward()
        opt.step()
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    calls = []

    def closure() -> torch.Tensor:
        calls.append(1)
        loss = nn.CrossEntropyLoss()(model(x), y)
        loss.backward()
        return loss

    out = opt.step(closure)  # swallowed: the closure still runs (its backward is the micro-batch)
    assert isinstance(out, torch.Tensor) and calls == [1]


def test_torch_lr_scheduler_before_and_after_keeps_working() -> None:
    import warnings

    model, opt, data = _setup()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # wraps opt.step first
    _train(model, opt, data[:1])
    sched.step()  # mid-training (torch warns when step is re-wrapped before the scheduler's first step)
    a = accumulate_(opt, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "lr_scheduler.step() before optimizer.step()" warning
        for x, y in data[:4]:
            _train(model, opt, [(x, y)])
            sched.step()
    a.undo()
    assert getattr(opt.step, "_wrapped_by_lr_sched", False)  # the scheduler's wrapper is back
    model2, opt2, _ = _setup()
    b = accumulate_(opt2, 2)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)  # wraps ours
    before = [p.detach().clone() for p in model2.parameters()]
    _train(model2, opt2, data[:1])
    sched2.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model2.parameters(), strict=True))  # swallowed
    b.undo()
    _train(model2, opt2, data[1:2])  # ours is under the scheduler's wrapper, now a pass-through
    assert not all(torch.equal(a, b) for a, b in zip(before, model2.parameters(), strict=True))


def test_switch_optimizer_keeps_accumulating() -> None:
    model, opt, data = _setup()
    probe = trainscope.Probe(model, opt, loss_fn=LOSS)
    try:
        accumulate_(opt, 2, probe=probe)
        trainscope.switch_optimizer_(opt, "adam", lr=1e-3, probe=probe)
        assert isinstance(opt, torch.optim.Adam)
        n = probe.step_count
        _train(model, opt, data[:4])
        assert probe.step_count == n + 2
        assert all(int(s["step"]) == 2 for s in opt.state.values())
    finally:
        probe.detach()


def test_dashboard_forms_from_the_schemas_validate() -> None:
    from trainscope.actions import REGISTRY

    model, opt, _ = _setup()
    probe = trainscope.Probe(model, opt, loss_fn=LOSS)
    try:
        for name in ("accumulate", "batch_schedule"):
            spec = REGISTRY[name]
            assert spec.category == "lr" and spec.label
            assert all(f["type"] in {"float", "int", "bool", "str", "choice"} for f in spec.schema.values())
            form = {k: f["default"] for k, f in spec.schema.items() if f.get("default") is not None}  # js defaultParams
            spec.validate(probe, form)
        p = REGISTRY["batch_schedule"].validate(probe, {"factor": 2, "every": 1000, "milestones": "300, 600"})
        assert p["milestones"] == [300, 600] and p["every"] is None  # a form fills every's default too
    finally:
        probe.detach()


def test_accumulation_through_a_probe_ends_when_it_is_detached() -> None:
    m1, o1, data = _setup()
    m2, o2, _ = _setup()
    probe = trainscope.Probe(m1, o1, loss_fn=LOSS)
    accumulate_(o1, 4, probe=probe)
    _train(m1, o1, data[:2])  # 2 micro-batches accumulated
    probe.detach()
    _train(m1, o1, data[2:3])  # ends the accumulation: one real step on the mean of the 3
    assert "step" not in o1.__dict__ and "zero_grad" not in o1.__dict__
    x = torch.cat([d[0] for d in data[:3]])
    y = torch.cat([d[1] for d in data[:3]])
    o2.zero_grad()
    LOSS(m2(x), y).backward()
    o2.step()
    for p, q in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)

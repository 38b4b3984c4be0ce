"""Early stopping, snapshots / roll back, snapshot ensembles, and the action path end to end."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import trainscope
from trainscope.interventions import (
    EarlyStopping,
    early_stopping_,
    rollback_,
    should_stop,
    snapshot_,
    snapshot_ensemble_,
    snapshots,
    switch_optimizer_,
)
from trainscope.interventions._monitor import Monitor


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    model(torch.randn(32, 10)).square().mean().backward()
    opt.step()


def _sd(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _eq(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- the monitor
def test_one_noisy_epoch_neither_stops_training_nor_sets_a_false_best() -> None:
    spike = [1.0, 0.9, 0.8, 0.75, 2.5, 0.7, 0.68, 0.66, 0.64]  # one bad epoch
    dip = [1.0, 0.9, 0.85, 0.3, 0.84, 0.83, 0.82, 0.81, 0.80]  # one lucky epoch
    for series in (spike, dip):
        m = Monitor(patience=2, smoothing=3)
        for v in series:
            m.observe(v)
            assert not m.exhausted, series
    raw = Monitor(patience=2, smoothing=1)  # without smoothing the lucky epoch stops the run
    assert any(raw.observe(v) is False and raw.exhausted for v in dip)
    flat = Monitor(patience=3, smoothing=3)
    for v in [1.0, 0.8, 0.6, 0.61, 0.62, 0.6, 0.63]:
        flat.observe(v)
    assert flat.exhausted and flat.best == pytest.approx(0.61)  # the median of 0.6, 0.61, 0.62


def test_early_stopping_restores_the_best_weights_and_freezes_the_lr() -> None:
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    applied = early_stopping_(model, opt, patience=2, smoothing=1)
    stopper: EarlyStopping = applied.result
    best_state = None
    for i, v in enumerate([1.0, 0.5, 0.6, 0.7]):
        _step(model, opt)
        if i == 1:
            best_state = _sd(model)
        stopped = stopper.observe(v)
    assert stopped and stopper.stopped and should_stop(model)
    assert best_state is not None and _eq(best_state, _sd(model))  # BatchNorm buffers included
    assert snapshots(model).best is stopper.best_snapshot
    _step(model, opt)  # a loop that does not check: the weights stay the best ones
    assert opt.param_groups[0]["lr"] == 0.0
    assert all(torch.equal(model.state_dict()[k], best_state[k]) for k in ("0.weight", "3.bias"))
    applied.undo()
    assert not should_stop(model)
    _step(model, opt)
    assert opt.param_groups[0]["lr"] == 0.0  # undo lifts the hold; the lr stays what the last step set
    assert len(opt._optimizer_step_pre_hooks) == 0


def test_early_stopping_through_the_probe_watches_a_logged_scalar() -> None:
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    probe = trainscope.Probe(model, opt, every=1)
    t = probe.request("early_stopping", monitor="metric", patience=3, smoothing=1)
    values = [1.0, 0.9, 0.8, 0.85, 0.86, 0.87, 0.88, 0.9]
    for v in values:
        probe.log(metric=v)
        _step(model, opt)
    assert t.status == "applied"
    stopper = t.result.result
    assert stopper.stopped and stopper.best == pytest.approx(0.8)
    ev = [e for e in probe.history.events if e.kind == "early_stop"]
    assert len(ev) == 1 and ev[0].data["restored_best"] and ev[0].data["frozen"]
    refused = probe.request("early_stopping", patience=0)
    assert refused.status == "refused" and "patience must be >= 1" in refused.message
    probe.detach()


# ---------------------------------------------------------------------------- snapshots
def test_snapshot_and_rollback_are_exact_and_undoable() -> None:
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _step(model, opt)
    s = snapshot_(model, opt, label="before")
    at_snap = _sd(model)
    opt_at_snap = copy.deepcopy(opt.state_dict())
    ids = [id(p) for p in model.parameters()]
    for _ in range(3):
        _step(model, opt)
    after = _sd(model)
    r = rollback_(model, opt, "before")
    assert _eq(at_snap, _sd(model)) and [id(p) for p in model.parameters()] == ids
    restored = opt.state_dict()
    for k, st in opt_at_snap["state"].items():
        for name, v in st.items():
            assert torch.equal(restored["state"][k][name], v)
    _step(model, opt)  # training continues from the snapshot
    r.undo()
    assert _eq(after, _sd(model))
    assert rollback_(model, opt, s.result.id).details["snapshot"] == s.result.id
    with pytest.raises(ValueError, match="no snapshot 'nope'"):
        rollback_(model, opt, "nope")
    with pytest.raises(ValueError, match="no 'best' snapshot"):
        rollback_(model, opt, "best")


def test_rollback_refuses_an_optimizer_that_changed_class_but_restores_weights_only() -> None:
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _step(model, opt)
    snapshot_(model, opt)
    w = _sd(model)
    switch_optimizer_(opt, "adam")
    _step(model, opt)
    with pytest.raises(ValueError, match="now Adam"):
        rollback_(model, opt)
    rollback_(model, opt, weights_only=True)
    assert _eq(w, _sd(model)) and isinstance(opt, torch.optim.Adam)


def test_snapshot_store_is_bounded() -> None:
    model = nn.Linear(2, 2)
    store = snapshots(model)
    for _ in range(7):
        snapshot_(model)
    assert len(store) == store.max_snapshots == 5
    assert [s.id for s in store.items] == ["s3", "s4", "s5", "s6", "s7"]


# ---------------------------------------------------------------------------- ensembles
def test_snapshot_ensemble_keeps_cycle_ends_and_averages_predictions() -> None:
    torch.manual_seed(0)
    centers = torch.randn(3, 10) * 3
    y = torch.randint(0, 3, (192,))
    x = centers[y] + torch.randn(192, 10)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    applied = snapshot_ensemble_(model, opt, T_0=5, max_snapshots=3)
    ens = applied.result
    kept: list[dict[str, torch.Tensor]] = []
    for t in range(21):
        if t in (5, 10, 15, 20):  # before the step that opens a new cycle
            kept.append({k: v.clone() for k, v in model.state_dict().items()})
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:64]), y[:64]).backward()
        opt.step()
    assert [c for c, _, _ in ens.members] == [1, 2, 3]  # the oldest of 4 dropped
    for (_, _, tensors), ref in zip(ens.members, kept[1:], strict=True):
        assert all(torch.equal(tensors[k], ref[k]) for k in ref)
    probs = ens.predict(x)
    manual = []
    for ref in kept[1:]:
        m = copy.deepcopy(model)
        m.load_state_dict(ref)
        manual.append(m(x).softmax(-1))
    assert torch.allclose(probs, torch.stack(manual).mean(0), atol=1e-6)
    res = ens.evaluate([(x[i:i + 64], y[i:i + 64]) for i in range(0, 192, 64)])
    assert res["n"] == 192 and len(res["members"]) == 3 and res["ensemble_acc"] > 0.8
    assert model.training
    applied.undo()
    assert len(opt._optimizer_step_pre_hooks) == 0


def test_ensemble_through_the_probe_evaluates_on_probe_data() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    data = [(x[:32], y[:32]), (x[32:], y[32:])]
    model = nn.Sequential(nn.Linear(10, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = trainscope.Probe(model, opt, loss_fn=nn.CrossEntropyLoss(), data=data)
    t = probe.request("snapshot_ensemble", T_0=3, eval_batches=2)
    for _ in range(8):
        opt.zero_grad()
        probe.loss_fn(model(x), y).backward()
        opt.step()
    assert t.status == "applied", t.message
    evs = [e for e in probe.history.events if e.kind == "snapshot_ensemble"]
    assert [e.data["members"] for e in evs] == [1, 2]
    assert "ensemble_acc" in evs[-1].data and len(evs[-1].data["member_losses"]) == 2
    assert not [n for n in probe.history.scalar_names() if n == "val_loss"]  # evaluation was not recorded
    probe.detach()


# ---------------------------------------------------------------------------- the action path
def test_every_action_has_a_schema_and_a_category() -> None:
    from trainscope.actions import REGISTRY

    names = {"reinit", "set_lr", "scale_lr", "set_schedule", "one_cycle", "clip_grad", "add_dropout", "set_dropout",
             "remove_dropout", "weight_decay", "l1", "switch_optimizer", "lr_find", "snapshot", "rollback",
             "early_stopping", "snapshot_ensemble"}
    assert names <= set(REGISTRY)
    allowed = {"float", "int", "bool", "str", "choice", "layers", "layer"}
    for n in names:
        spec = REGISTRY[n]
        assert spec.category in {"init", "regularization", "lr", "optimizer", "run"}
        for key, field in spec.schema.items():
            assert field["type"] in allowed, (n, key)
            if field["type"] == "choice":
                assert field["choices"], (n, key)


def test_actions_apply_at_the_boundary_land_on_the_timeline_and_undo() -> None:
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    probe = trainscope.Probe(model, opt)
    _step(model, opt)
    before = _sd(model)
    t = probe.request("reinit", layers=["3"], scheme="xavier_uniform")
    assert t.status == "pending" and _eq(before, _sd(model))  # nothing changes before the boundary
    _step(model, opt)
    assert t.status == "applied"
    ev = next(e for e in probe.history.events if e.data.get("ticket") == t.id)
    assert ev.kind == "intervention" and ev.data["params"]["scheme"] == "xavier_uniform" and ev.data["undoable"]
    u = probe.request("undo", ticket=t.id)
    _step(model, opt)
    assert u.status == "applied" and t.status == "undone"
    bad = probe.request("set_lr", lr="fast")
    assert bad.status == "refused" and "must be a number" in bad.message
    bad = probe.request("set_schedule", kind="cosine_restarts", T_0=0)
    assert bad.status == "refused" and "T_0 must be >= 1" in bad.message
    bad = probe.request("clip_grad", max_norm=1.0, value=0.1)
    assert bad.status == "refused" and "not both" in bad.message
    probe.detach()


def test_direct_calls_with_a_probe_record_events_and_failures_change_nothing() -> None:
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = trainscope.Probe(model, opt)
    a = trainscope.interventions.set_lr_(opt, 0.01, probe=probe)
    a.undo()
    kinds = [(e.kind, e.data.get("action")) for e in probe.history.events]
    assert kinds == [("intervention", "set_lr"), ("undo", "set_lr")]
    failing = probe.request("reinit", scheme="lsuv")  # refused: no batch yet
    assert failing.status == "refused"
    probe.detach()


def test_a_failing_apply_is_reported_and_leaves_the_model_unchanged() -> None:
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # steps do not move the weights
    probe = trainscope.Probe(model, opt, data=[(torch.randn(4, 7), torch.zeros(4))])  # wrong input width
    _step(model, opt)
    before = _sd(model)
    t = probe.request("reinit", scheme="lsuv")
    _step(model, opt)
    assert t.status == "failed" and "RuntimeError" in t.message
    assert _eq(before, _sd(model)) and model.training
    assert not [e for e in probe.history.events if e.kind == "intervention"]
    assert probe.step_count == 2 and not probe.errors
    probe.detach()

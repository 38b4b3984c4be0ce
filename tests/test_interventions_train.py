"""Dropout, regularization, learning-rate schedules and the live optimizer switch."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

import trainscope
from trainscope.interventions import (
    Lookahead,
    add_dropout_,
    clip_grad_,
    l1_,
    one_cycle_,
    remove_dropout_,
    scale_lr_,
    set_dropout_,
    set_lr_,
    set_schedule_,
    switch_optimizer_,
    weight_decay_,
)


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3))


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor | None = None) -> None:
    x = torch.randn(16, 10) if x is None else x
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()


def _pre_hooks(opt: torch.optim.Optimizer) -> int:
    return len(opt._optimizer_step_pre_hooks)


# ---------------------------------------------------------------------------- dropout
def test_add_dropout_keeps_the_module_tree_and_respects_eval_mode() -> None:
    model = _mlp()
    keys = list(model.state_dict())
    names = [n for n, _ in model.named_modules()]
    x = torch.randn(256, 10)
    model.eval()
    ref = model(x)
    model.train()
    out: list[torch.Tensor] = []
    model[2].register_forward_hook(lambda m, a, o: out.append(o))
    a = add_dropout_(model, after=["1"], p=0.5)
    relu_out: list[torch.Tensor] = []
    h = model[1].register_forward_hook(lambda m, a_, o: relu_out.append(o))
    model(x)
    h.remove()
    frac_zero = float((relu_out[0] == 0).float().mean())
    with torch.no_grad():
        raw_zero = float((torch.relu(model[0](x)) == 0).float().mean())
    assert frac_zero == pytest.approx(raw_zero + (1 - raw_zero) * 0.5, abs=0.03)
    model.eval()
    assert torch.equal(model(x), ref)  # no dropout in eval mode
    assert list(model.state_dict()) == keys and [n for n, _ in model.named_modules()] == names
    with pytest.raises(ValueError, match="already has a trainscope dropout"):
        add_dropout_(model, after="1")
    with pytest.raises(ValueError, match="already a dropout module"):
        add_dropout_(model, after=["4"])
    with pytest.raises(ValueError, match="no module named"):
        add_dropout_(model, after=["relu9"])
    with pytest.raises(ValueError, match="p must be <"):
        add_dropout_(model, after=["3"], p=1.0)
    a.undo()
    assert len(model[1]._forward_hooks) == 0


def test_set_and_remove_dropout_cover_own_and_added_dropouts() -> None:
    model = _mlp()
    add_dropout_(model, after=["3"], p=0.3)
    s = set_dropout_(model, 0.25)
    assert model[4].p == 0.25 and "3 (trainscope)" in s.details["changed"]
    r = remove_dropout_(model)
    assert model[4].p == 0.0 and len(model[3]._forward_hooks) == 0
    model.train()
    x = torch.randn(8, 10)
    assert torch.equal(model(x), model(x))  # deterministic: no dropout anywhere
    r.undo()
    assert model[4].p == 0.25 and len(model[3]._forward_hooks) == 1
    s.undo()
    assert model[4].p == 0.1
    bare = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no dropout"):
        set_dropout_(bare, 0.5)


def test_probe_keeps_working_with_added_dropout_and_detach_removes_it() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = trainscope.Probe(model, opt, every=1)
    t = probe.request("add_dropout", after=["1", "3"], p=0.5)
    for _ in range(3):
        _step(model, opt)
    assert t.status == "applied", t.message
    probe.flush()
    assert not probe.errors
    assert probe.history.latest is not None and probe.history.latest.step == 2
    zeros = probe.history.latest.metrics["act_frac_zero"][probe.history.layer_index("1")]
    assert zeros > 0.6  # ReLU zeros plus half of the rest, as the next layer sees it
    probe.detach()
    model.train()
    model(torch.randn(4, 10))  # the first forward after detach drops the hooks
    assert len(model[1]._forward_hooks) == 0 and len(model[3]._forward_hooks) == 0


# ---------------------------------------------------------------------------- regularization
def test_weight_decay_matches_manual_sgd_and_undoes() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w0 = model.weight.detach().clone()
    a = weight_decay_(opt, 0.5)
    x = torch.randn(8, 4)
    opt.zero_grad()
    model(x).sum().backward()
    g = model.weight.grad.clone()
    opt.step()
    assert torch.allclose(model.weight, w0 - 0.1 * (g + 0.5 * w0))
    a.undo()
    assert opt.param_groups[0]["weight_decay"] == 0
    with pytest.raises(ValueError, match="value must be <="):
        weight_decay_(opt, 2.0)


def test_l1_adds_sign_subgradient_to_weights_only() -> None:
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    l1_(opt, 0.01)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    opt.zero_grad()
    model(torch.randn(5, 4)).sum().backward()
    gw, gb = model.weight.grad.clone(), model.bias.grad.clone()
    opt.step()
    assert torch.allclose(model.weight, w0 - (gw + 0.01 * w0.sign()), atol=1e-6)
    assert torch.allclose(model.bias, b0 - gb, atol=1e-6)  # biases are not penalized by default


def test_clip_grad_by_norm_and_value_inside_step_replace_and_undo() -> None:
    model = nn.Linear(20, 20)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    a1 = clip_grad_(opt, max_norm=0.5)
    w = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    (model(torch.randn(32, 20)) * 100).sum().backward()
    opt.step()
    upd = torch.cat([(p.detach() - q).flatten() for p, q in zip(model.parameters(), w, strict=True)])
    assert float(upd.norm()) == pytest.approx(0.5, rel=1e-4)
    assert float(a1.result.last) > 0.5  # the norm before clipping
    a2 = clip_grad_(opt, value=1e-3)
    w = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    (model(torch.randn(32, 20)) * 100).sum().backward()
    opt.step()
    upd = torch.cat([(p.detach() - q).flatten() for p, q in zip(model.parameters(), w, strict=True)])
    assert float(upd.abs().max()) <= 1e-3 + 1e-7
    a2.undo()  # back to the norm clipping
    from trainscope.interventions._control import controller

    ctl = controller(opt, create=False)
    assert ctl is not None and ctl.grad_parts["clip"] is a1.result
    a1.undo()
    assert _pre_hooks(opt) == 0
    with pytest.raises(ValueError, match="not both"):
        clip_grad_(opt, max_norm=1.0, value=0.1)
    with pytest.raises(ValueError, match="max_norm must be >"):
        clip_grad_(opt, max_norm=0.0)


# ---------------------------------------------------------------------------- learning rate
def _lrs(opt: torch.optim.Optimizer, model: nn.Module, n: int, key: str = "lr") -> list[float]:
    seen: list[float] = []
    for _ in range(n):
        _step(model, opt)
        v = opt.param_groups[0][key]
        seen.append(v[0] if isinstance(v, tuple) else v)
    return seen


@pytest.mark.parametrize(
    ("kind", "opts", "formula"),
    [
        ("constant", {}, lambda t: 0.1),
        ("step", {"step_size": 3, "gamma": 0.5}, lambda t: 0.1 * 0.5 ** (t // 3)),
        ("exponential", {"gamma": 0.9}, lambda t: 0.1 * 0.9**t),
        ("inverse_time", {"decay": 0.5}, lambda t: 0.1 / (1 + 0.5 * t)),
    ],
)
def test_simple_schedules(kind: str, opts: dict[str, float], formula: object) -> None:
    model = nn.Linear(10, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    set_schedule_(opt, kind, **opts)
    got = _lrs(opt, model, 10)
    assert got == pytest.approx([formula(t) for t in range(10)])  # type: ignore[operator]


def test_sgdr_matches_torch_warm_restarts() -> None:
    model = nn.Linear(10, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    set_schedule_(opt, "sgdr", T_0=4, T_mult=2, eta_min=0.001)
    got = _lrs(opt, model, 30)
    ref_opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(ref_opt, T_0=4, T_mult=2, eta_min=0.001)
    expected = []
    for t in range(30):
        ref.step(t)
        expected.append(ref_opt.param_groups[0]["lr"])
    assert got == pytest.approx(expected)


def test_one_cycle_lr_and_momentum_follow_fastai() -> None:
    model = nn.Linear(10, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    one_cycle_(opt, max_lr=1.0, total_steps=41, pct_start=0.25)
    lrs, moms = [], []
    for _ in range(45):
        _step(model, opt)
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
    assert lrs[0] == pytest.approx(1 / 25)
    assert lrs[10] == pytest.approx(1.0)  # 25% of 40 steps
    assert max(lrs) == pytest.approx(1.0)
    assert lrs[40] == pytest.approx(1e-5) and lrs[44] == pytest.approx(1e-5)  # held after the cycle
    assert moms[0] == pytest.approx(0.95) and moms[10] == pytest.approx(0.85) and moms[40] == pytest.approx(0.95)
    mid = 10 + 15  # halfway down: sched_cos midpoint
    assert lrs[mid] == pytest.approx(1e-5 + (1 - 1e-5) / 2)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    one_cycle_(adam, max_lr=0.01, total_steps=11)
    _step(model, adam)
    assert adam.param_groups[0]["betas"][0] == pytest.approx(0.95)


def test_schedule_takes_precedence_over_user_scheduler() -> None:
    model = nn.Linear(10, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    set_schedule_(opt, "constant", lr=0.05)
    for _ in range(4):
        w = model.weight.detach().clone()
        opt.zero_grad()
        model(torch.randn(4, 10)).sum().backward()
        g = model.weight.grad.clone()
        opt.step()
        assert torch.allclose(model.weight, w - 0.05 * g)  # the update used the trainscope lr
        sched.step()  # the user's scheduler halves it... and the pre-hook sets it back at the next step


def test_set_and_scale_lr_rescale_an_active_schedule_and_keep_group_ratios() -> None:
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 2))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1}, {"params": model[1].parameters(), "lr": 0.01}])
    a = set_lr_(opt, 0.2)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 0.02])
    a.undo()
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    s = set_schedule_(opt, "exponential", gamma=0.5)
    _step(model, opt, torch.randn(4, 10))
    b = scale_lr_(opt, 10.0)
    assert "rescaled" in b.message
    _step(model, opt, torch.randn(4, 10))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * 0.5 * 10, 0.01 * 0.5 * 10])
    b.undo()
    _step(model, opt, torch.randn(4, 10))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.25)
    s.undo()
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01] and _pre_hooks(opt) == 0
    with pytest.raises(ValueError, match="lr must be >"):
        set_lr_(opt, 0.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        set_schedule_(opt, "warmup_linear")


def test_plateau_reduces_after_patience() -> None:
    model = nn.Linear(10, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    a = set_schedule_(opt, "plateau", factor=0.5, patience=2, smoothing=1, min_delta=0.0)
    for v in [1.0, 0.9, 0.8]:
        a.result.observe(v)
    _step(model, opt)
    assert opt.param_groups[0]["lr"] == 1.0
    for v in [0.85, 0.86]:  # two observations without improvement
        a.result.observe(v)
    _step(model, opt)
    assert opt.param_groups[0]["lr"] == 0.5


def test_schedule_from_a_probe_is_removed_when_the_probe_detaches() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = trainscope.Probe(model, opt)
    t = probe.request("set_schedule", kind="exponential", gamma=0.5)
    _step(model, opt)
    _step(model, opt)
    assert t.status == "applied" and opt.param_groups[0]["lr"] == pytest.approx(0.1)
    _step(model, opt)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    probe.detach()
    _step(model, opt)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # no longer driven
    assert _pre_hooks(opt) == 0


# ---------------------------------------------------------------------------- optimizer switch
def test_switch_keeps_the_object_the_probe_hooks_and_a_user_scheduler() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    probe = trainscope.Probe(model, opt)
    for _ in range(2):
        _step(model, opt)
        sched.step()
    t = probe.request("switch_optimizer", name="adamw", lr=1e-3, weight_decay=0.01)
    _step(model, opt)
    assert t.status == "applied", t.message
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.01
    assert "initial_lr" in opt.param_groups[0]
    n = probe.step_count
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "lr_scheduler.step() before optimizer.step()"
        for _ in range(4):
            _step(model, opt)
            sched.step()
    assert probe.step_count == n + 4  # the probe's step hooks still fire
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.25)  # the user's scheduler still drives it
    assert all("exp_avg" in opt.state[p] for p in model.parameters())
    probe.request("undo", ticket=t.id)
    _step(model, opt)
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["momentum"] == 0.9
    assert probe.history.meta["optimizer"] == "SGD"
    probe.detach()


def test_switch_carries_state_between_families() -> None:
    model = nn.Linear(6, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.99))
    for _ in range(3):
        _step_lin(model, opt)
    m = {p: opt.state[p]["exp_avg"].clone() for p in model.parameters()}
    v = {p: opt.state[p]["exp_avg_sq"].clone() for p in model.parameters()}
    a = switch_optimizer_(opt, "radam")
    assert isinstance(opt, torch.optim.RAdam) and opt.param_groups[0]["lr"] == 1e-2  # same family: lr kept
    for p in model.parameters():
        assert torch.equal(opt.state[p]["exp_avg"], m[p]) and torch.equal(opt.state[p]["exp_avg_sq"], v[p])
    a.undo()
    b = switch_optimizer_(opt, "sgd", momentum=0.9)
    assert opt.param_groups[0]["lr"] == 0.01 and "first moments" in b.message
    for p in model.parameters():
        expected = m[p] / (1 - 0.8**3) / (1 - 0.9)
        assert torch.allclose(opt.state[p]["momentum_buffer"], expected)
    b.undo()
    c = switch_optimizer_(opt, "sgd", momentum=0.0)
    assert "fresh state" in c.message and not opt.state
    c.undo()
    for bad, match in [({"name": "lbfgs"}, "name must be one of"), ({"name": "sgd", "nesterov": True, "momentum": 0.0}, "Nesterov"),
                       ({"name": "adam", "beta1": 1.0}, "beta1 must be <")]:
        with pytest.raises(ValueError, match=match):
            switch_optimizer_(opt, **bad)  # type: ignore[arg-type]
        assert isinstance(opt, torch.optim.Adam)


def _step_lin(model: nn.Linear, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    model(torch.randn(4, model.in_features)).square().mean().backward()
    opt.step()


def test_lookahead_matches_the_algorithm() -> None:
    torch.manual_seed(3)
    target = torch.randn(5)
    w = nn.Parameter(torch.zeros(5))
    opt = Lookahead(torch.optim.SGD([w], lr=0.1), k=3, alpha=0.5)
    fast, slow = torch.zeros(5), torch.zeros(5)
    for t in range(1, 10):
        opt.zero_grad()
        ((w - target) ** 2).sum().backward()
        opt.step()
        fast = fast - 0.1 * 2 * (fast - target)
        if t % 3 == 0:
            slow = slow + 0.5 * (fast - slow)
            fast = slow.clone()
        assert torch.allclose(w.detach(), fast, atol=1e-6), t


def test_ranger_state_dict_round_trip_and_same_trajectory() -> None:
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    a = switch_optimizer_(opt, "ranger", lr=1e-3)
    assert isinstance(opt, Lookahead) and isinstance(opt.base, torch.optim.RAdam)
    assert opt.param_groups[0]["lookahead_k"] == 6 and "ranger" in a.params["name"]
    for _ in range(4):
        _step(model, opt)
    model2 = copy.deepcopy(model)
    opt2 = Lookahead(torch.optim.RAdam(model2.parameters(), lr=1e-3), k=6)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch shares the step tensors otherwise
    assert opt2.base.param_groups is opt2.param_groups and opt2.base.state is opt2.state
    x = torch.randn(16, 10)
    for i in range(5):
        torch.manual_seed(i)  # same dropout masks in both
        _step(model, opt, x)
        torch.manual_seed(i)
        _step(model2, opt2, x)
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)
    assert math.isfinite(float(model(x).detach().sum()))

"""Live head / loss / target fixes (trainscope/interventions/head_fix.py): applied, the loss and the
gradients are those of the fixed program; undone, the program is exactly the user's again; bad
requests are refused with a reason and change nothing."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainscope
from trainscope.actions import REGISTRY


def _mlp(out: int, head: nn.Module | None, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    m = nn.Sequential()
    m.add_module("fc1", nn.Linear(5, 16))
    m.add_module("relu1", nn.ReLU())
    m.add_module("out", nn.Linear(16, out))
    if head is not None:
        m.add_module("head", head)
    return m


def _step(model: nn.Module, opt: torch.optim.Optimizer, lf: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    opt.zero_grad()
    loss = lf(model(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _grads(model: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def _hooks(*mods: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in mods)


def _data(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_registered_through_action_decorator() -> None:
    for name in ("set_output_activation", "set_loss", "standardize_targets"):
        assert name in REGISTRY


def test_set_output_activation_removes_softmax_exactly_and_undo_restores() -> None:
    x, y = _data()
    yb = (y > 0).float().unsqueeze(1)
    model = _mlp(1, nn.Softmax(dim=1))
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lf = nn.MSELoss()
    probe = trainscope.Probe(model, opt, loss_fn=lf)
    try:
        _step(model, opt, lf, x, yb)  # softmax over one unit: the output is 1.0, no gradient reaches anything
        assert torch.equal(model(x), torch.ones(32, 1))
        ref.load_state_dict(model.state_dict())
        n0 = _hooks(model.head, model)
        t = probe.request("set_output_activation", layer="head", to="sigmoid")
        _step(model, opt, lf, x, yb)  # applied at this step's boundary
        assert t.status == "applied", t.message
        # the forward is now the fixed program's: sigmoid(out(...)), and so are the gradients
        fixed = nn.Sequential(*list(ref.children())[:-1], nn.Sigmoid())
        fixed.load_state_dict(model.state_dict(), strict=False)
        assert torch.allclose(model(x), fixed(x))
        g1, g2 = _grads(model, lf(model(x), yb)), _grads(fixed, lf(fixed(x), yb))
        assert all(torch.allclose(a, b) for a, b in zip(g1, g2, strict=True))
        assert any(float(g.abs().max()) > 0 for g in g1)
        assert any(e.kind == "intervention" and e.label for e in probe.history.events)
        u = probe.request("undo", ticket=t.id)
        _step(model, opt, lf, x, yb)
        assert u.status == "applied", u.message
        assert _hooks(model.head, model) == n0
        assert torch.equal(model(x), torch.ones(32, 1))  # the user's program again
    finally:
        probe.detach()


def test_set_loss_cross_entropy_of_probabilities_equals_ce_of_logits() -> None:
    x, y = _data()
    model = _mlp(3, nn.Softmax(dim=1))
    lf = nn.CrossEntropyLoss()  # fed probabilities: the bug
    probe = trainscope.Probe(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=lf)
    try:
        opt = probe.optimizer
        assert opt is not None
        _step(model, opt, lf, x, y)
        n0 = _hooks(lf)
        t = probe.request("set_loss", kind="cross_entropy", input="probabilities")
        _step(model, opt, lf, x, y)
        assert t.status == "applied", t.message
        logits = model.out(model.relu1(model.fc1(x)))
        want = F.cross_entropy(logits, y)
        got = lf(model(x), y)
        assert torch.allclose(got, want, atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(_grads(model, got), _grads(model, F.cross_entropy(
            model.out(model.relu1(model.fc1(x))), y)), strict=True))
        assert _hooks(lf) == n0 + 1
        u = probe.request("undo", ticket=t.id)
        _step(model, opt, lf, x, y)
        assert u.status == "applied"
        assert _hooks(lf) == n0
        assert torch.allclose(lf(model(x), y), F.cross_entropy(model(x), y))  # CE of the probabilities again: the bug
        assert not torch.allclose(lf(model(x), y), F.cross_entropy(model.out(model.relu1(model.fc1(x))), y))
    finally:
        probe.detach()


def test_set_loss_converts_targets_and_undo_is_identical_to_never_applied() -> None:
    x, y = _data()
    onehot = F.one_hot(y, 3).float()

    def run(apply: bool, undo: bool) -> tuple[list[float], dict[str, Any]]:
        model = _mlp(3, None, seed=3)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        lf = nn.MSELoss()  # MSE on one-hot classes
        probe = trainscope.Probe(model, opt, loss_fn=lf)
        losses = []
        try:
            for i in range(8):
                if apply and i == 2:
                    t = probe.request("set_loss", kind="cross_entropy")
                if undo and i == 5:
                    probe.request("undo", ticket=t.id)
                losses.append(_step(model, opt, lf, x, onehot))
                if apply and i == 2:
                    assert t.status == "applied", t.message
                    logits = model(x)
                    assert torch.allclose(lf(logits, onehot), F.cross_entropy(logits, y), atol=1e-6)
        finally:
            probe.detach()
        return losses, model.state_dict()

    plain, sd_plain = run(False, False)
    fixed, _ = run(True, False)
    assert fixed[:2] == plain[:2] and fixed[3] != plain[3]
    # applied then undone: the same training as never applied from the undo on (weights differ by the fixed steps only)
    m = _mlp(3, None, seed=3)
    lf = nn.MSELoss()
    probe = trainscope.Probe(m, torch.optim.SGD(m.parameters(), lr=0.05), loss_fn=lf)
    try:
        n0 = _hooks(lf)
        t = probe.request("set_loss", kind="cross_entropy")
        opt = probe.optimizer
        assert opt is not None
        _step(m, opt, lf, x, onehot)
        probe.request("undo", ticket=t.id)
        _step(m, opt, lf, x, onehot)
        assert torch.allclose(lf(m(x), onehot), F.mse_loss(m(x), onehot))
        assert _hooks(lf) == n0
    finally:
        probe.detach()
    assert _hooks(lf) == 0 and set(sd_plain) == set(m.state_dict())


def test_set_loss_binary_and_no_broadcast() -> None:
    x, y = _data()
    yb = (y > 0).float()
    model = _mlp(1, None)
    lf = nn.CrossEntropyLoss()  # over one unit: always 0
    probe = trainscope.Probe(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=lf)
    try:
        opt = probe.optimizer
        assert opt is not None
        _step(model, opt, lf, x, yb.unsqueeze(1))
        assert float(lf(model(x), yb.unsqueeze(1))) == 0.0
        t = probe.request("set_loss", kind="bce_with_logits")
        _step(model, opt, lf, x, yb.unsqueeze(1))
        assert t.status == "applied", t.message
        assert torch.allclose(lf(model(x), yb.unsqueeze(1)), F.binary_cross_entropy_with_logits(model(x), yb.unsqueeze(1)))
    finally:
        probe.detach()
    # MSE of a (N, 1) prediction against a (N,) target broadcasts to (N, N); set_loss(mse) compares element-wise
    model = _mlp(1, None)
    lf2 = nn.MSELoss()
    probe = trainscope.Probe(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=lf2)
    try:
        opt = probe.optimizer
        assert opt is not None
        with pytest.warns(UserWarning):
            _step(model, opt, lf2, x, yb)
        t = probe.request("set_loss", kind="mse")
        _step(model, opt, lf2, x, yb)
        assert t.status == "applied"
        assert torch.allclose(lf2(model(x), yb), F.mse_loss(model(x), yb.unsqueeze(1)))
    finally:
        probe.detach()


def test_standardize_targets_trains_as_on_standardized_targets_in_user_units() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 5, generator=g)
    y = (x @ torch.randn(5, 1, generator=g)) * 300 + 5000  # raw targets: mean 5000, std ~ 600
    model = _mlp(1, None, seed=4)
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-9)  # at lr 0.05 the raw targets' first step blows the weights up
    lf = nn.MSELoss()
    probe = trainscope.Probe(model, opt, loss_fn=lf)
    try:
        _step(model, opt, lf, x, y)
        t = probe.request("standardize_targets")
        _step(model, opt, lf, x, y)  # applied at this step's boundary (the step itself is still on the raw targets)
        assert t.status == "applied", t.message
        opt.param_groups[0]["lr"] = 0.05
        ev = next(e for e in probe.history.events if e.kind == "intervention" and e.data.get("action") == "standardize_targets")
        mu, sd = float(ev.data["mean"]), float(ev.data["std"])
        assert abs(mu - float(y.mean())) < 1e-3 * abs(mu) and abs(sd - float(y.std())) < 1e-3 * sd
        # the same gradients as training twin on (y - mu) / sd, and its predictions read back in y's units
        twin.load_state_dict(model.state_dict())
        ys = (y - mu) / sd
        g1 = _grads(model, lf(model(x), y))
        g2 = _grads(twin, F.mse_loss(twin(x), ys))
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g1, g2, strict=True))
        with torch.no_grad():
            assert torch.allclose(model(x), twin(x) * sd + mu, rtol=1e-5)
        # a few steps and the predictions are near the targets' scale (the raw run is still near 0)
        for _ in range(30):
            _step(model, opt, lf, x, y)
        with torch.no_grad():
            assert abs(float(model(x).mean()) - float(y.mean())) < 0.2 * float(y.std())
        u = probe.request("undo", ticket=t.id)
        _step(model, opt, lf, x, y)
        assert u.status == "applied"
        with torch.no_grad():
            assert abs(float(model(x).mean())) < 50  # the raw head again
    finally:
        probe.detach()


def _refused(probe: trainscope.Probe, action: str, **params: Any) -> str:
    t = probe.request(action, **params)
    assert t.status == "refused", (action, params, t.status)
    return str(t.message)


def test_refusals_change_nothing() -> None:
    x, y = _data()
    model = _mlp(1, nn.Sigmoid())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lf = nn.BCELoss()
    probe = trainscope.Probe(model, opt, loss_fn=lf)
    try:
        yb = (y > 0).float().unsqueeze(1)
        _step(model, opt, lf, x, yb)
        sd = copy.deepcopy(model.state_dict())
        n0 = _hooks(model, model.head, lf)
        assert "no module named" in _refused(probe, "set_output_activation", layer="nope", to="identity")
        assert "module name" in _refused(probe, "set_output_activation", layer="", to="identity")
        assert "one of" in _refused(probe, "set_output_activation", layer="head", to="gelu")
        assert "one output per class" in _refused(probe, "set_loss", kind="cross_entropy")
        assert "regression losses" in _refused(probe, "standardize_targets")
        assert "one of" in _refused(probe, "set_loss", kind="hinge")
        assert _hooks(model, model.head, lf) == n0
        assert all(torch.equal(a, b) for a, b in zip(sd.values(), model.state_dict().values(), strict=True))
    finally:
        probe.detach()
    # BCE on targets outside [0, 1] (class indices 0..2 through one unit): undefined, refused
    model = _mlp(1, None)
    lf2 = nn.MSELoss()
    probe = trainscope.Probe(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=lf2)
    try:
        opt2 = probe.optimizer
        assert opt2 is not None
        _step(model, opt2, lf2, x, y.float().unsqueeze(1))
        assert "targets in [0, 1]" in _refused(probe, "set_loss", kind="bce_with_logits")
        assert "std" in _refused(probe, "standardize_targets", std=0.0)
    finally:
        probe.detach()
    # a shared activation module is refused (changing it would change every use)
    act = nn.ReLU()
    shared = nn.Sequential(nn.Linear(5, 5), act, nn.Linear(5, 3), act)
    probe = trainscope.Probe(shared, torch.optim.SGD(shared.parameters(), lr=0.1), loss_fn=nn.CrossEntropyLoss())
    try:
        assert "same module" in _refused(probe, "set_output_activation", layer="1", to="identity")
    finally:
        probe.detach()


def test_hook_error_never_reaches_the_loop() -> None:
    x, _ = _data()
    model = _mlp(3, None)
    lf = nn.MSELoss()
    probe = trainscope.Probe(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=lf)
    try:
        opt = probe.optimizer
        assert opt is not None
        onehot = F.one_hot(torch.arange(32) % 3, 3).float()
        _step(model, opt, lf, x, onehot)
        t = probe.request("set_loss", kind="cross_entropy")
        _step(model, opt, lf, x, onehot)
        assert t.status == "applied"
        odd = torch.full((3,), 7.0)  # MSE broadcasts it; as class indices it is undefined: our hook fails
        with pytest.warns(RuntimeWarning, match="head_fix"):
            v = lf(model(x), odd)
        assert torch.allclose(v, F.mse_loss(model(x), odd.expand(32, 3)))  # the user's loss, unchanged
        assert any("head_fix" in e.where for e in probe.errors)
    finally:
        probe.detach()


def test_standardize_inputs_applies_per_feature_and_refuses_twice() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 5, generator=g) * torch.tensor([1.0, 10.0, 100.0, 1000.0, 0.1]) + 500
    y = torch.randint(0, 3, (64,), generator=g)
    model = _mlp(3, None)
    seen: list[torch.Tensor] = []
    model.fc1.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    lf = nn.CrossEntropyLoss()
    probe = trainscope.Probe(model, torch.optim.SGD(model.parameters(), lr=0.01), loss_fn=lf)
    try:
        opt = probe.optimizer
        assert opt is not None
        _step(model, opt, lf, x, y)
        t = probe.request("standardize_inputs")
        _step(model, opt, lf, x, y)
        assert t.status == "applied", t.message
        with torch.no_grad():
            model(x)
        z = seen[-1]
        assert torch.allclose(z.mean(0), torch.zeros(5), atol=1e-3) and torch.allclose(z.std(0), torch.ones(5), atol=1e-3)
        assert "already applied" in _refused(probe, "standardize_inputs")
        u = probe.request("undo", ticket=t.id)
        _step(model, opt, lf, x, y)
        assert u.status == "applied"
        with torch.no_grad():
            model(x)
        assert torch.equal(seen[-1], x)  # the user's inputs again
    finally:
        probe.detach()
    model = _mlp(3, None)
    probe = trainscope.Probe(model, torch.optim.SGD(model.parameters(), lr=0.01), loss_fn=lf)
    try:
        assert "no training batch" in _refused(probe, "standardize_inputs")
    finally:
        probe.detach()


def _train_with_first_fix(model: nn.Module, lf: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int,
                          lr: float = 1e-2) -> tuple[dict[str, Any], Any, torch.Tensor]:
    """Train with a probe at defaults; at the first warning+ finding, request its first intervention.
    Returns the fix, its ticket and the model's output on ``x`` at the end (the probe still attached:
    the live fixes go with it)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    probe = trainscope.Probe(model, opt, loss_fn=lf)
    fix: dict[str, Any] = {}
    ticket = None
    try:
        for step in range(steps):
            i = torch.arange(step * 32, step * 32 + 32) % len(x)
            _step(model, opt, lf, x[i], y[i])
            if step % 10 == 9 and ticket is None:
                sev = [f for f in probe.findings() if f.severity in ("warning", "error")]
                if sev:
                    assert sev[0].interventions, sev[0].as_dict()
                    fix = dict(sev[0].interventions[0], label=sev[0].label)
                    ticket = probe.request(fix["action"], **fix["params"])
        with torch.no_grad():
            out = model(x)
    finally:
        probe.detach()
    return fix, ticket, out


def _binary(n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, 5, generator=g)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).float().unsqueeze(1)


def test_softmax_over_one_unit_first_fix_is_a_sigmoid_that_repairs() -> None:
    x, y = _binary()
    model = _mlp(1, nn.Softmax(dim=1))
    fix, t, out = _train_with_first_fix(model, nn.BCELoss(), x, y, 150)
    assert fix["action"] == "set_output_activation" and fix["params"] == {"layer": "head", "to": "sigmoid"}, fix
    assert t is not None and t.status == "applied", t
    assert float(((out > 0.5).float() == y).float().mean()) > 0.9


def test_probabilities_into_cross_entropy_first_fix() -> None:
    x, yb = _binary()
    y = yb.reshape(-1).long()
    model = _mlp(2, nn.Softmax(dim=1))
    fix, t, _ = _train_with_first_fix(model, nn.CrossEntropyLoss(), x, y, 60)
    assert fix["action"] in ("set_loss", "set_output_activation"), fix
    if fix["action"] == "set_loss":
        assert fix["params"] == {"kind": "cross_entropy", "input": "probabilities"}
    assert t is not None and t.status == "applied", t


def test_unscaled_targets_first_fix_standardizes_them() -> None:
    g = torch.Generator().manual_seed(8)
    x = torch.randn(512, 5, generator=g)
    y = (x @ torch.randn(5, 1, generator=g)) * 50 + 800
    model = _mlp(1, None)
    fix, t, out = _train_with_first_fix(model, nn.MSELoss(), x, y, 200, lr=1e-3)
    assert fix.get("action") == "standardize_targets", fix
    assert t is not None and t.status == "applied", t
    assert 1 - float(((out - y) ** 2).mean() / y.var()) > 0.8


def test_raw_inputs_and_targets_first_fix_standardizes_both() -> None:
    g = torch.Generator().manual_seed(9)
    z = torch.randn(512, 5, generator=g)
    x = z * 50 + 200  # raw features
    y = (z @ torch.randn(5, 1, generator=g)) * 40 + 1000  # raw targets
    model = _mlp(1, None)
    fix, t, out = _train_with_first_fix(model, nn.MSELoss(), x, y, 300, lr=1e-3)
    assert fix.get("action") == "standardize_inputs" and fix["params"] == {"targets": True}, fix
    assert t is not None and t.status == "applied", t
    assert 1 - float(((out - y) ** 2).mean() / y.var()) > 0.8
    # with a ReLU output the affine would cut the targets below their mean: inputs only
    model = _mlp(1, nn.ReLU())
    fix, t, _ = _train_with_first_fix(model, nn.MSELoss(), x, y, 30, lr=1e-3)
    assert fix.get("action") == "standardize_inputs" and fix["params"] == {}, fix


def test_standardize_inputs_with_targets_undo_restores_the_program() -> None:
    g = torch.Generator().manual_seed(10)
    x = torch.randn(64, 5, generator=g) * 30 + 100
    y = torch.randn(64, 1, generator=g) * 20 + 500
    model = _mlp(1, None)
    lf = nn.MSELoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = trainscope.Probe(model, opt, loss_fn=lf)
    try:
        _step(model, opt, lf, x, y)
        n0 = _hooks(model, lf)
        t = probe.request("standardize_inputs", targets=True)
        _step(model, opt, lf, x, y)
        assert t.status == "applied", t.message
        assert _hooks(model, lf) == n0 + 3  # the input pre-hook, the output affine, the loss scale
        with torch.no_grad():
            assert abs(float(model(x).mean()) - float(y.mean())) < 5 * float(y.std())  # predictions in y's units
        u = probe.request("undo", ticket=t.id)
        _step(model, opt, lf, x, y)
        assert u.status == "applied", u.message
        assert _hooks(model, lf) == n0
        snap = copy.deepcopy(model)
        with torch.no_grad():
            assert torch.equal(model(x), snap(x))  # no hook left: the plain module's output
    finally:
        probe.detach()


def test_standardize_targets_on_a_model_returning_a_tuple_says_so() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.fc(x), x

    g = torch.Generator().manual_seed(11)
    x, y = torch.randn(32, 5, generator=g), torch.randn(32, 1, generator=g) * 100 + 300
    model = Two()
    lf = nn.MSELoss()
    opt = torch.optim.SGD(model.parameters(), lr=1e-9)
    probe = trainscope.Probe(model, opt, loss_fn=lf)
    try:
        for _ in range(2):
            opt.zero_grad()
            lf(model(x)[0], y).backward()
            opt.step()
            if probe.step_count == 1:
                t = probe.request("standardize_targets")
        assert t.status == "applied", t.message
        with pytest.warns(RuntimeWarning, match="not a floating tensor"):
            model(x)
        assert any("standardize_targets" in e.where for e in probe.errors)
    finally:
        probe.detach()


def test_standardize_inputs_refuses_keyword_only_inputs() -> None:
    class Kw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 3)

        def forward(self, *, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    model = Kw()
    lf = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = trainscope.Probe(model, opt, loss_fn=lf)
    try:
        x, y = _data()
        opt.zero_grad()
        lf(model(x=x * 100), y).backward()
        opt.step()
        n0 = _hooks(model)
        assert "first positional argument" in _refused(probe, "standardize_inputs")
        assert _hooks(model) == n0
    finally:
        probe.detach()


def test_an_applied_fix_is_not_offered_again_until_undone() -> None:
    x, y = _binary()
    model = _mlp(1, nn.Softmax(dim=1))
    lf = nn.BCELoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = trainscope.Probe(model, opt, loss_fn=lf)

    def offered() -> list[dict[str, Any]]:
        f = next(f for f in probe.findings() if f.label == "head_loss_mismatch")
        return [i for i in f.interventions if i["action"] == "set_output_activation"]

    try:
        for step in range(40):
            i = torch.arange(step * 32, step * 32 + 32) % len(x)
            _step(model, opt, lf, x[i], y[i])
            if step == 9:
                fix = offered()
                assert fix and fix[0]["params"] == {"layer": "head", "to": "sigmoid"}
                t = probe.request("set_output_activation", **fix[0]["params"])
        assert t.status == "applied"
        assert offered() == []
        f = next(f for f in probe.findings() if f.label == "head_loss_mismatch")
        assert "Live fix applied" in f.evidence
        probe.request("undo", ticket=t.id)
        _step(model, opt, lf, x[:32], y[:32])
        assert offered() and offered()[0]["params"]["layer"] == "head"
    finally:
        probe.detach()

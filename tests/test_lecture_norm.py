"""Normalization inserted live (BatchNorm / LayerNorm through hooks, weight norm) and Fixup init:
validated first, applied at the step boundary, on the timeline, undoable."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainscope
from trainscope import actions
from trainscope.interventions import reinit_
from trainscope.interventions.fixup import find_branches
from trainscope.interventions.normalization import added_norms, insert_norm_


def _mlp(depth: int = 3, width: int = 16) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(8, width), nn.Sigmoid()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    layers.append(nn.Linear(width, 3))
    return nn.Sequential(*layers)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def _opt_snapshot(opt: torch.optim.Optimizer) -> list[tuple[list[int], dict[str, object]]]:
    return [([id(p) for p in g["params"]], {k: v for k, v in g.items() if k != "params"}) for g in opt.param_groups]


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())


# ---------------------------------------------------------------------------- the maths
@pytest.mark.parametrize("shape", [(12, 6), (4, 5, 6)])
def test_batch_norm_after_linear_matches_batchnorm_on_the_feature_axis(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(3, 6)
    model = nn.Sequential(lin)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(*shape[:-1], 3)
    insert_norm_(model, ["0"], "batch", optimizer=opt)
    ref = nn.BatchNorm1d(6)
    raw = F.linear(x, lin.weight, lin.bias)
    flat = raw if raw.dim() == 2 else raw.movedim(-1, 1)
    want = ref(flat)
    want = want if raw.dim() == 2 else want.movedim(1, -1)
    assert torch.allclose(model(x), want, atol=1e-6)
    # eval mode follows the host module: running statistics, as nn.BatchNorm1d
    model.eval()
    ref.eval()
    want = ref(flat)
    assert torch.allclose(model(x), want if raw.dim() == 2 else want.movedim(1, -1), atol=1e-6)


def test_batch_and_layer_norm_after_conv_normalize_channels() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    model = nn.Sequential(conv, nn.ReLU())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(5, 3, 7, 7)
    raw = conv(x).detach()
    a = insert_norm_(model, ["0"], "batch", optimizer=opt)
    assert torch.allclose(model[0](x), nn.BatchNorm2d(4)(raw), atol=1e-5)
    a.undo()
    a = insert_norm_(model, ["0"], "layer", optimizer=opt)
    assert torch.allclose(model[0](x), nn.GroupNorm(1, 4)(raw), atol=1e-5)  # LayerNorm over (C, H, W)
    assert a.details["layers"][0]["axis"] == "channels (dim 1)"
    a.undo()
    assert torch.equal(model[0](x), raw)


def test_layer_norm_after_an_activation_is_measured_on_a_batch() -> None:
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(10, 8)
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match="measured on a real batch"):
        insert_norm_(model, ["1"], "layer", optimizer=opt)
    a = insert_norm_(model, ["1"], "layer", optimizer=opt, batch=x)
    assert torch.equal(torch.get_rng_state(), rng)  # the measuring forward left the RNG alone
    h = model[1](model[0](x))
    assert torch.allclose(h, F.layer_norm(torch.sigmoid(model[0](x)), (16,)), atol=1e-6)
    a.undo()


# ---------------------------------------------------------------------------- the contract
def test_insert_norm_keeps_the_module_tree_trains_and_undoes_exactly() -> None:
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    _step(model, opt, x, y)
    keys, params = list(model.state_dict()), [id(p) for p in model.parameters()]
    groups = _opt_snapshot(opt)
    a = insert_norm_(model, ["0", "2"], "batch", optimizer=opt)
    assert list(model.state_dict()) == keys and [id(p) for p in model.parameters()] == params
    assert set(added_norms(model)) == {"0", "2"}
    assert len(opt.param_groups) == 3
    new = opt.param_groups[1]
    assert new["lr"] == 0.1 and new["momentum"] == 0.9 and new["weight_decay"] == 1e-4  # the layer's group
    gamma = new["params"][0]
    before = gamma.detach().clone()
    for _ in range(3):
        _step(model, opt, x, y)
    assert not torch.equal(gamma, before)  # the new scale trains
    a.undo()
    assert list(model.state_dict()) == keys and _hooks(model) == 0 and added_norms(model) == {}
    assert _opt_snapshot(opt) == groups and gamma not in opt.state


def test_request_applies_at_the_boundary_on_the_timeline_and_undo_restores_the_structure() -> None:
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = trainscope.Probe(model, opt, loss_fn=nn.CrossEntropyLoss())
    keys, groups = list(model.state_dict()), _opt_snapshot(opt)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    try:
        _step(model, opt, x, y)
        t = probe.request("insert_norm", after=["0"], kind="layer")
        assert t.status == "pending" and not added_norms(model)  # not before the boundary
        _step(model, opt, x, y)
        assert t.status == "applied" and t.applied_step == 2 and set(added_norms(model)) == {"0"}
        _step(model, opt, x, y)  # trains with it (the new group has Adam state now)
        assert len(opt.param_groups) == 2 and opt.param_groups[1]["params"][0] in opt.state
        u = probe.request("undo", ticket=t.id)
        _step(model, opt, x, y)
        assert u.status == "applied" and t.status == "undone"
        assert list(model.state_dict()) == keys and _opt_snapshot(opt) == groups and not added_norms(model)
        ev = [e for e in probe.history.events if e.data.get("action") == "insert_norm"]
        assert len(ev) == 1 and ev[0].data["params"]["kind"] == "layer" and ev[0].data["params"]["after"] == ["0"]
        assert any(e.kind == "undo" and e.data.get("undid") == t.id for e in probe.history.events)
    finally:
        probe.detach()


def test_applied_and_undone_between_steps_leaves_no_trace() -> None:
    """Apply + undo: training afterwards is bit-identical to a run that never did it (nothing
    random is drawn, the optimizer is back as it was), for every kind."""

    def run(kind: str | None) -> tuple[dict[str, torch.Tensor], list[float]]:
        torch.manual_seed(0)
        model = _mlp()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(1)
        losses = []
        for i in range(5):
            x, y = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
            if kind is not None and i == 2:
                rng = torch.get_rng_state()
                insert_norm_(model, ["0", "2"], kind, optimizer=opt, batch=x).undo()
                assert torch.equal(torch.get_rng_state(), rng)
            losses.append(_step(model, opt, x, y))
        return _state(model), losses

    base = run(None)
    for kind in ("batch", "layer", "weight"):
        got = run(kind)
        assert _same(base[0], got[0]) and base[1] == got[1], kind


def test_refusals_change_nothing() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.LSTM(8, 4), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = trainscope.Probe(model, opt)
    try:
        before, groups, hooks = _state(model), _opt_snapshot(opt), _hooks(model)
        cases = {
            "no module named": {"after": ["nope"]},
            "already followed by a normalization": {"after": ["0"]},
            "already a normalization layer": {"after": ["1"]},
            "returns a tuple": {"after": ["3"]},
            "kind must be one of": {"after": ["4"], "kind": "group"},
            "needs after": {},
        }
        for why, params in cases.items():
            t = probe.request("insert_norm", **params)
            assert t.status == "refused" and why in t.message, (why, t.message)
        assert _same(before, _state(model)) and _opt_snapshot(opt) == groups and _hooks(model) == hooks
    finally:
        probe.detach()
    with pytest.raises(ValueError, match="needs the optimizer"):
        insert_norm_(model, ["4"], "batch")
    a = insert_norm_(model, ["4"], "weight", optimizer=opt)
    with pytest.raises(ValueError, match="already re-parametrized"):
        insert_norm_(model, ["4"], "weight", optimizer=opt)
    a.undo()


def test_weight_norm_swaps_optimizer_refs_and_undo_keeps_the_effective_weight() -> None:
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    _step(model, opt, x, y)
    w = model[2].weight
    keys, order = list(model.state_dict()), [id(p) for p in opt.param_groups[0]["params"]]
    mom = opt.state[w]["momentum_buffer"].clone()
    out = model(x).detach()
    a = insert_norm_(model, ["2"], "weight", optimizer=opt)
    assert torch.allclose(model(x), out, atol=1e-6)  # same function at the start
    pz = model[2].parametrizations.weight
    ids = [id(p) for p in opt.param_groups[0]["params"]]
    assert id(pz.original0) in ids and id(pz.original1) in ids and id(w) not in ids
    for _ in range(3):
        _step(model, opt, x, y)
    eff = model[2].weight.detach().clone()
    out = model(x).detach()
    a.undo()
    assert model[2].weight is w and torch.allclose(w, eff) and torch.allclose(model(x), out, atol=1e-6)
    assert type(model[2]) is nn.Linear and list(model.state_dict()) == keys
    assert [id(p) for p in opt.param_groups[0]["params"]] == order
    assert torch.equal(opt.state[w]["momentum_buffer"], mom)


def test_copies_keep_the_normalization_and_it_costs_nothing_when_off() -> None:
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = trainscope.Probe(model, opt)
    probe_hooks = _hooks(model)
    probe.detach()
    assert _hooks(model) == 0 and probe_hooks > 0  # nothing of ours before it is applied
    insert_norm_(model, ["0"], "batch", optimizer=opt)
    x = torch.randn(6, 8)
    model.eval()
    twin = copy.deepcopy(model)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    again = pickle.loads(pickle.dumps(model))
    for m in (twin, loaded, again):
        assert torch.equal(m(x), model(x))
        assert set(added_norms(m)) == {"0"}


def test_the_action_has_a_schema_for_the_dashboard() -> None:
    spec = actions.REGISTRY["insert_norm"]
    assert spec.category == "normalization"
    assert spec.schema["kind"]["choices"] == ["batch", "layer", "weight"]
    assert spec.schema["after"]["type"] == "layers"
    assert "fixup" in actions.REGISTRY["reinit"].schema["scheme"]["choices"]


# ---------------------------------------------------------------------------- Fixup
class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, d)
        self.fc2 = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.fc2(F.relu(self.fc1(x))))


class _ResNet(nn.Module):
    def __init__(self, blocks: int = 4, untraceable: bool = False) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.blocks = nn.Sequential(*[_Block(16) for _ in range(blocks)])
        self.head = nn.Linear(16, 3)
        self.untraceable = untraceable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.untraceable and bool(x.isnan().any()):  # data-dependent control flow: fx cannot trace it
            x = torch.nan_to_num(x)
        return self.head(self.blocks(F.relu(self.stem(x))))


@pytest.mark.parametrize("untraceable", [False, True])
def test_fixup_finds_branches_zeroes_scales_and_undoes(untraceable: bool) -> None:
    torch.manual_seed(0)
    net = _ResNet(4, untraceable)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    _step(net, opt, x, y)
    branches = find_branches(net)
    assert [b.layers for b in branches] == [[f"blocks.{i}.fc1", f"blocks.{i}.fc2"] for i in range(4)]
    before, groups, keys = _state(net), _opt_snapshot(opt), list(net.state_dict())
    mom = opt.state[net.head.weight]["momentum_buffer"].clone()
    a = reinit_(net, "fixup", optimizer=opt)
    assert a.details["L"] == 4 and a.details["classifier"] == "head"
    for i in range(4):
        assert torch.count_nonzero(net.blocks[i].fc2.weight) == 0
    assert torch.count_nonzero(net.head.weight) == 0
    # L^(-1/(2m-2)) with L=4, m=2: 1/2 -> std of He-normal (sqrt(2/16)) halved
    std = torch.cat([net.blocks[i].fc1.weight.flatten() for i in range(4)]).std().item()
    assert abs(std - (2 / 16) ** 0.5 * 0.5) < 0.03, std
    assert list(net.state_dict()) == keys and len(opt.param_groups) == 2
    assert len(opt.param_groups[1]["params"]) == 4 * 5  # per branch: 2 biases per layer + 1 multiplier
    for _ in range(5):
        _step(net, opt, x, y)
    assert any(float(p.detach().abs()) > 0 for p in opt.param_groups[1]["params"])  # the scalars train
    a.undo()
    assert _same(before, _state(net)) and _opt_snapshot(opt) == groups and _hooks(net) == 0
    assert torch.equal(opt.state[net.head.weight]["momentum_buffer"], mom)


def test_fixup_through_the_probe_and_its_refusals() -> None:
    torch.manual_seed(0)
    plain = _mlp()
    opt = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    _step(plain, opt, torch.randn(4, 8), torch.randint(0, 3, (4,)))
    before, groups = _state(plain), _opt_snapshot(opt)
    with pytest.raises(ValueError, match="no residual branch found"):
        reinit_(plain, "fixup", optimizer=opt)
    assert _same(before, _state(plain)) and _opt_snapshot(opt) == groups and _hooks(plain) == 0
    probe = trainscope.Probe(plain, opt)
    try:
        t = probe.request("reinit", scheme="fixup")
        assert t.status == "pending"  # the branches are traced at the boundary, on the training thread
        _step(plain, opt, torch.randn(4, 8), torch.randint(0, 3, (4,)))
        assert t.status == "failed" and "no residual branch found" in t.message
        t = probe.request("reinit", scheme="fixup", layers=["0"])
        assert t.status == "refused" and "leave layers at 'all'" in t.message
        assert len(opt.param_groups) == 1
    finally:
        probe.detach()
    assert _hooks(plain) == 0
    normed = _ResNet(2)
    normed.blocks[0].fc1 = nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16))
    with pytest.raises(ValueError, match="without normalization"):
        reinit_(normed, "fixup")
    with pytest.raises(ValueError, match="leave layers at 'all'"):
        reinit_(_ResNet(2), "fixup", ["blocks"])
    net = _ResNet(2)
    probe = trainscope.Probe(net, torch.optim.SGD(net.parameters(), lr=0.1))
    try:
        t = probe.request("reinit", scheme="fixup")
        _step(net, probe.optimizer, torch.randn(4, 8), torch.randint(0, 3, (4,)))  # type: ignore[arg-type]
        assert t.status == "applied", t.message
        assert "2 residual branch" in t.message
        assert probe.request("undo", ticket=t.id).status == "pending"
    finally:
        probe.detach()


def test_the_request_check_never_runs_the_model() -> None:
    """A request can come from the dashboard's thread while training runs: its check must not run
    a forward (nor trace the model); the output size after an activation is measured at the
    boundary, on the training thread."""
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = trainscope.Probe(model, opt, loss_fn=nn.CrossEntropyLoss())
    calls: list[int] = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        x, y = torch.randn(8, 8), torch.randint(0, 3, (8,))
        _step(model, opt, x, y)
        n = len(calls)
        t = probe.request("insert_norm", after=["1"], kind="layer")
        assert t.status == "pending" and len(calls) == n
        _step(model, opt, x, y)
        assert t.status == "applied", t.message
        assert t.message.startswith("LayerNorm after 1")
    finally:
        probe.detach()

"""Re-initialization: schemes, identity, optimizer state, LSUV, data-dependent init, validation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import trainscope
from trainscope.interventions import detect_nonlinearity, reinit_


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 3) -> None:
    for _ in range(steps):
        x = torch.randn(16, model[0].in_features)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reinit_keeps_identity_resets_state_and_undoes_exactly() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, opt)
    ids = [id(p) for p in model.parameters()]
    before = _state(model)
    state_before = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()}
    applied = reinit_(model, "kaiming_normal", ["0"], optimizer=opt)
    assert [id(p) for p in model.parameters()] == ids
    assert not torch.equal(model[0].weight, before["0.weight"])
    assert torch.count_nonzero(model[0].bias) == 0
    assert torch.equal(model[2].weight, before["2.weight"])  # untouched layer
    assert model[0].weight not in opt.state and model[0].bias not in opt.state
    assert model[2].weight in opt.state
    _train(model, opt, 1)  # the optimizer still works on the same parameters
    assert model[0].weight in opt.state
    applied.undo()
    assert torch.equal(model[0].weight, before["0.weight"]) and torch.equal(model[0].bias, before["0.bias"])
    for p in model[0].parameters():  # the optimizer state of the re-initialized tensors is back
        for k, v in state_before[id(p)].items():
            assert torch.equal(opt.state[p][k], v)
    with pytest.raises(RuntimeError, match="already undone"):
        applied.undo()


@pytest.mark.parametrize(
    ("scheme", "opts", "expected_std"),
    [
        ("normal", {"std": 0.05}, 0.05),
        ("uniform", {"std": 0.05}, 0.05),
        ("xavier_uniform", {}, math.sqrt(2 / (256 + 1024))),
        ("xavier_normal", {"gain": 2.0}, 2.0 * math.sqrt(2 / (256 + 1024))),
        ("kaiming_normal", {"nonlinearity": "relu"}, math.sqrt(2 / 256)),
        ("kaiming_uniform", {"nonlinearity": "relu", "mode": "fan_out"}, math.sqrt(2 / 1024)),
        ("kaiming_normal", {"nonlinearity": "tanh"}, 5 / 3 / math.sqrt(256)),
    ],
)
def test_scheme_statistics(scheme: str, opts: dict[str, object], expected_std: float) -> None:
    model = nn.Sequential(nn.Linear(256, 1024))
    reinit_(model, scheme, **opts)
    w = model[0].weight.detach()
    assert abs(float(w.std()) - expected_std) / expected_std < 0.03
    assert abs(float(w.mean())) < 0.1 * expected_std
    assert torch.count_nonzero(model[0].bias) == 0


def test_orthogonal_and_constant_and_zeros() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32))
    reinit_(model, "orthogonal", "0")
    w = model[0].weight.detach()
    assert torch.allclose(w @ w.T, torch.eye(32), atol=1e-5)
    with pytest.warns(UserWarning, match="symmetry"):
        a = reinit_(model, "constant", value=0.1)
    assert "symmetry" in a.message
    assert torch.all(model[2].weight == 0.1) and torch.all(model[0].weight == 0.1)
    with pytest.warns(UserWarning, match="identical"):
        reinit_(model, "zeros", ["2"])
    assert torch.count_nonzero(model[2].weight) == 0


def test_nonlinearity_detection() -> None:
    model = nn.Sequential(
        nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Tanh(),
        nn.Linear(4, 4), nn.Dropout(0.1), nn.LeakyReLU(0.2),
        nn.Linear(4, 4), nn.Linear(4, 4),
        nn.Linear(4, 2),
    )
    assert detect_nonlinearity(model, model[0])[:2] == ("tanh", 0.0)
    assert detect_nonlinearity(model, model[3])[:2] == ("leaky_relu", pytest.approx(0.2))
    nl, _, how = detect_nonlinearity(model, model[6])
    assert nl == "relu" and how.startswith("assumed")
    assert detect_nonlinearity(model, model[8])[0] == "linear"
    applied = reinit_(model, "kaiming_normal")
    by_layer = {d["layer"]: d["nonlinearity"] for d in applied.details["layers"]}
    assert by_layer == {"0": "tanh", "3": "leaky_relu(0.2)", "6": "relu", "7": "relu", "8": "linear"}


def test_invalid_requests_change_nothing() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _state(model)
    for kwargs, match in [
        ({"scheme": "he"}, "scheme must be one of"),
        ({"layers": ["3"]}, "no module named '3'"),
        ({"layers": ["1"]}, "has no weight matrix"),
        ({"scheme": "normal", "std": -1.0}, "std must be >"),
        ({"scheme": "kaiming_normal", "mode": "fan_middle"}, "mode must be one of"),
        ({"bogus": 1}, "unknown parameter"),
        ({"scheme": "lsuv"}, "needs a real batch"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            reinit_(model, optimizer=opt, **kwargs)  # type: ignore[arg-type]
        assert _same(before, _state(model))
    probe = trainscope.Probe(model, opt)
    t = probe.request("reinit", scheme="kaiming_normal", layers=["fc9"])
    assert t.status == "refused" and "no module named 'fc9'" in t.message
    t = probe.request("reinit", scheme="lsuv")
    assert t.status == "refused" and "real batch" in t.message
    model(torch.randn(4, 8)).sum().backward()
    opt.step()  # a step boundary: nothing was queued, nothing is applied
    assert not probe.actions.pending()
    assert not [e for e in probe.history.events if e.kind == "intervention"]
    probe.detach()


def _deep(depth: int = 8, width: int = 64, act: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(20, width)]
    for _ in range(depth - 1):
        layers += [act(), nn.Linear(width, width)]
    return nn.Sequential(*layers)


def _layer_stds(model: nn.Module, x: torch.Tensor, cls: type[nn.Module] = nn.Linear) -> list[float]:
    stds: list[float] = []
    hs = [m.register_forward_hook(lambda m, a, o: stds.append(float(o.std()))) for m in model.modules() if isinstance(m, cls)]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return stds


def test_lsuv_gives_unit_variance_in_every_layer() -> None:
    model = _deep()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)  # the vanishing-activations init
            nn.init.zeros_(m.bias)
    x = torch.randn(128, 20)
    assert _layer_stds(model, x)[-1] < 1e-6
    applied = reinit_(model, "lsuv", batch=(x, torch.zeros(128)))
    stds = _layer_stds(model, x)
    assert len(stds) == 8
    assert all(abs(s - 1) < 0.1 for s in stds), stds
    assert [d["layer"] for d in applied.details["layers"]] == [str(i) for i in range(0, 16, 2)]
    assert all(abs(d["std_after"] - 1) < 0.1 for d in applied.details["layers"])
    assert model.training  # train / eval flags restored
    applied.undo()
    assert _layer_stds(model, x)[-1] < 1e-6


def test_lsuv_through_the_probe_uses_the_recent_batch_and_lands_on_the_timeline() -> None:
    model = _deep(depth=5, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    probe = trainscope.Probe(model, opt, every=1)
    x = torch.randn(64, 20)
    steps_before = None
    for i in range(3):
        if i == 1:
            t = probe.request("reinit", scheme="lsuv")
            steps_before = probe.step_count
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    assert t.status == "applied", t.message
    assert t.applied_step == steps_before + 1
    ev = [e for e in probe.history.events if e.kind == "intervention"]
    assert len(ev) == 1 and ev[0].data["action"] == "reinit" and len(ev[0].data["layers"]) == 5
    assert probe.step_count == 3  # the calibration forwards were not counted
    probe.detach()


def test_data_dependent_init_normalizes_every_unit() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    x = torch.randn(64, 3, 8, 8) * 5 + 2
    reinit_(model, "data_dependent", batch=x, between_layers=False)  # the within-layer step alone
    outs: dict[str, torch.Tensor] = {}
    model[0].register_forward_hook(lambda m, a, o: outs.__setitem__("conv", o))
    model[3].register_forward_hook(lambda m, a, o: outs.__setitem__("fc", o))
    with torch.no_grad():
        model(x)
    conv, fc = outs["conv"], outs["fc"]
    assert torch.allclose(conv.mean(dim=(0, 2, 3)), torch.zeros(8), atol=1e-4)
    assert torch.allclose(conv.std(dim=(0, 2, 3), unbiased=False), torch.ones(8), atol=1e-3)
    assert torch.allclose(fc.mean(0), torch.zeros(10), atol=1e-4)
    assert torch.allclose(fc.std(0, unbiased=False), torch.ones(10), atol=1e-3)


def _rates(model: nn.Module, x: torch.Tensor, draws: int = 8) -> torch.Tensor:
    """rms(dL/dW) / rms(W) of every Linear, L = outputs times random Gaussian gradients (averaged)."""
    ws = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    out = model(x)
    acc = torch.zeros(len(ws))
    for _ in range(draws):
        gs = torch.autograd.grad(out, ws, torch.randn_like(out), retain_graph=True)
        acc += torch.stack([(g.square().mean() / w.detach().square().mean()).sqrt() for g, w in zip(gs, ws, strict=True)])
    return acc / draws


def test_data_dependent_between_layer_step_equalizes_the_layers_rates_of_change() -> None:
    """Krähenbühl et al.'s between-layer step: layers of very different widths end up learning at
    the same relative rate (their ratios spread over 1.6 decades after the within-layer step
    alone), the output keeps unit scale, and the parameter objects and .grad are untouched."""
    torch.manual_seed(0)
    widths = [20, 256, 32, 512, 64, 10]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    x = torch.randn(256, 20) * 3 + 1
    ids = [id(p) for p in model.parameters()]
    reinit_(model, "data_dependent", batch=x, between_layers=False)
    alone = _rates(model, x).log10()
    applied = reinit_(model, "data_dependent", batch=x)
    both = _rates(model, x).log10()
    info = applied.details["between_layers"]
    assert float(alone.max() - alone.min()) > 1.0
    assert float(both.max() - both.min()) < 0.1, both
    assert info["applied"] and 1 <= info["iterations"] <= 10
    assert info["ratio_spread_decades"][0] > 1.0 and info["ratio_spread_decades"][1] < 0.1
    with torch.no_grad():
        assert float(model(x).std(0).mean()) == pytest.approx(1.0, rel=0.1)
    assert [id(p) for p in model.parameters()] == ids and all(p.grad is None for p in model.parameters())


class _Rescaler(nn.Module):
    """Multiplies its input by ||W||^k of another layer: breaks positive homogeneity on purpose."""

    def __init__(self, ref: nn.Linear, k: float) -> None:
        super().__init__()
        self.ref = [ref]  # a plain list: not a submodule
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float(self.ref[0].weight.detach().norm()) ** self.k


def test_data_dependent_between_layer_step_is_undone_where_it_cannot_work() -> None:
    torch.manual_seed(0)
    first = nn.Linear(20, 64)
    model = nn.Sequential(first, nn.ReLU(), _Rescaler(first, -3.0), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    x = torch.randn(128, 20)
    applied = reinit_(model, "data_dependent", batch=x)
    info = applied.details["between_layers"]
    assert info["applied"] is False and info["reason"].startswith("undone:")
    # what stays is exactly the within-layer result: unit-variance units in the last layer
    with torch.no_grad():
        out = model(x)
    assert torch.allclose(out.std(0, unbiased=False), torch.ones(3), atol=1e-3)


def test_data_init_failure_restores_everything() -> None:
    model = _deep(depth=3)
    before = _state(model)
    with pytest.raises(RuntimeError):
        reinit_(model, "lsuv", batch=torch.randn(8, 7))  # wrong input width: the forward fails
    assert _same(before, _state(model))
    assert model.training

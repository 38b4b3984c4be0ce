"""Lottery-ticket pruning: magnitude masks kept through training, rewind to θ₀ / a snapshot,
iterative rounds, exact undo, validated first, on the timeline."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainscope
from trainscope import actions
from trainscope.interventions.normalization import insert_norm_
from trainscope.interventions.pruning import masks, prune_, sparsity


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def _opt_state(opt: torch.optim.Optimizer) -> dict[int, dict[str, torch.Tensor]]:
    return {id(p): {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in st.items()}
            for p, st in opt.state.items()}


def _same_opt(a: dict[int, dict[str, object]], b: dict[int, dict[str, object]]) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        if a[k].keys() != b[k].keys():
            return False
        for n in a[k]:
            x, y = a[k][n], b[k][n]
            if isinstance(x, torch.Tensor):
                if not (isinstance(y, torch.Tensor) and torch.equal(x, y)):
                    return False
            elif x != y:
                return False
    return True


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_global_and_layer_scopes_remove_the_smallest_magnitudes_cumulatively() -> None:
    torch.manual_seed(0)
    model = _net()
    ws = [model[i].weight.detach().clone() for i in (0, 2, 4)]
    prune_(model, 0.5, scope="layer", rewind="none")
    for i, w in zip((0, 2, 4), ws, strict=True):
        m = masks(model)[str(i)]
        assert int(m.sum()) == w.numel() - round(0.5 * w.numel())
        assert w.abs()[m == 0].max() <= w.abs()[m == 1].min()  # the smallest went
    prune_(model, 0.5, scope="layer", rewind="none")  # a second round: half of the survivors
    for i, w in zip((0, 2, 4), ws, strict=True):
        alive = w.numel() - round(0.5 * w.numel())
        assert int(masks(model)[str(i)].sum()) == alive - round(0.5 * alive)
    torch.manual_seed(0)
    model = _net()
    ws = [model[i].weight.detach().clone() for i in (0, 2, 4)]
    prune_(model, 0.8, scope="global", rewind="none")
    allw = torch.cat([w.abs().flatten() for w in ws])
    allm = torch.cat([masks(model)[str(i)].flatten() for i in (0, 2, 4)])
    assert int((allm == 0).sum()) == round(0.8 * allw.numel())
    assert allw[allm == 0].max() <= allw[allm == 1].min()
    assert abs(sparsity(model)["total"] - 0.8) < 1e-3
    assert len({round(sparsity(model)[str(i)], 3) for i in (0, 2, 4)}) > 1  # global: layers differ


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3),
    lambda ps: torch.optim.Adam(ps, lr=1e-2),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
])
def test_masks_hold_through_training_and_pruned_state_is_zeroed(make: object) -> None:
    torch.manual_seed(0)
    model = _net()
    opt = make(model.parameters())  # type: ignore[operator]
    x, y = _data()
    for _ in range(3):
        _step(model, opt, x, y)
    w = model[2].weight
    prune_(model, 0.7, optimizer=opt, rewind="none")
    assert model[2].parametrizations.weight.original is w  # the same Parameter: optimizer refs stay valid
    m = masks(model)["2"]
    for v in opt.state[w].values():
        if isinstance(v, torch.Tensor) and v.shape == w.shape:
            assert torch.count_nonzero(v[m == 0]) == 0
    for _ in range(5):
        _step(model, opt, x, y)
    assert torch.count_nonzero(model[2].weight[m == 0]) == 0
    assert torch.count_nonzero(w[m == 0]) == 0  # the trained tensor itself stays sparse
    assert torch.count_nonzero(w[m == 1]) == int(m.sum())


def test_rewind_to_init_via_the_probe_and_exact_undo() -> None:
    torch.manual_seed(0)
    model = _net()
    theta0 = _state(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    probe = trainscope.Probe(model, opt, loss_fn=nn.CrossEntropyLoss())
    x, y = _data()
    try:
        for _ in range(4):
            _step(model, opt, x, y)
        probe.log(val_acc=0.5)
        keys = list(model.state_dict())
        t = probe.request("prune", amount=0.8, rewind="init")
        assert t.status == "pending" and not masks(model)
        rng = torch.get_rng_state()
        _step(model, opt, x, y)
        assert t.status == "applied", t.message
        assert torch.equal(torch.get_rng_state(), rng)
        for i in (0, 2, 4):
            m = masks(model)[str(i)]
            assert torch.equal(model[i].weight, theta0[f"{i}.weight"] * m)  # survivors back at θ₀
            assert torch.equal(model[i].bias, theta0[f"{i}.bias"])
            assert model[i].parametrizations.weight.original not in opt.state  # fresh start
        ev = next(e for e in probe.history.events if e.data.get("action") == "prune")
        assert ev.data["round"] == 1 and abs(ev.data["sparsity"] - 0.8) < 1e-3
        assert [d["layer"] for d in ev.data["layers"]] == ["0", "2", "4"]
        assert ev.data["metrics"]["val_acc"] == 0.5 and ev.data["params"]["rewind"] == "init"
        probe.flush()
        s = probe.history.scalar("sparsity")
        assert len(s["mean"]) and abs(float(s["mean"][-1]) - 0.8) < 1e-3
        # undo right away (plain API): weights, masks and optimizer exactly as before the round
        mid, mid_opt = _state(model), _opt_state(opt)
        a = prune_(model, 0.5, optimizer=opt, rewind="none")
        assert abs(sparsity(model)["total"] - 0.9) < 1e-3  # round 2: half of the 20 % left
        a.undo()
        assert _same(mid, _state(model)) and _same_opt(mid_opt, _opt_state(opt))
        u = probe.request("undo", ticket=t.id)
        _step(model, opt, x, y)
        assert u.status == "applied", u.message
        assert t.status == "undone" and not masks(model)
        assert list(model.state_dict()) == keys and type(model[0]) is nn.Linear
        probe.flush()
        assert float(probe.history.scalar("sparsity")["mean"][-1]) == 0.0  # the dashboard sees it go
    finally:
        probe.detach()


def test_apply_then_undo_between_steps_leaves_no_trace() -> None:
    def run(prune: bool) -> tuple[dict[str, torch.Tensor], dict[int, dict[str, object]], list[float]]:
        torch.manual_seed(0)
        model = _net()
        init = copy.deepcopy(model.state_dict())
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        x, y = _data()
        losses = []
        for i in range(6):
            if prune and i == 3:
                rng = torch.get_rng_state()
                a = prune_(model, 0.6, optimizer=opt, init=init)
                b = prune_(model, 0.5, scope="layer", optimizer=opt, rewind="none")  # round 2
                with pytest.raises(RuntimeError, match="undo it first"):
                    a.undo()  # round 1 cannot be undone under round 2
                b.undo()
                assert abs(sparsity(model)["total"] - 0.6) < 1e-3  # round 1's masks are back
                a.undo()
                assert torch.equal(torch.get_rng_state(), rng)
            losses.append(_step(model, opt, x, y))
        order = {id(p): i for i, p in enumerate(model.parameters())}
        st = {order[k]: v for k, v in _opt_state(opt).items()}
        return _state(model), st, losses

    base, got = run(False), run(True)
    assert _same(base[0], got[0]) and _same_opt(base[1], got[1]) and base[2] == got[2]


def test_rewind_to_a_snapshot_step() -> None:
    torch.manual_seed(0)
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = trainscope.Probe(model, opt, track_init=False)
    x, y = _data()
    try:
        _step(model, opt, x, y)
        probe.request("snapshot", label="early")
        _step(model, opt, x, y)  # the snapshot is taken at this boundary (step 2)
        early = _state(model)
        for _ in range(3):
            _step(model, opt, x, y)
        t = probe.request("prune", amount=0.5, rewind="init")
        assert t.status == "refused" and "track_init" in t.message
        t = probe.request("prune", amount=0.5, rewind=7)
        assert t.status == "refused" and "no snapshot taken at step 7" in t.message and "step 2" in t.message
        a = prune_(model, 0.5, rewind=2, probe=probe)
        for i in (0, 2, 4):
            assert torch.equal(model[i].weight, early[f"{i}.weight"] * masks(model)[str(i)])
        a.undo()
        a = prune_(model, 0.5, rewind="early", probe=probe)  # by label
        assert torch.equal(model[0].bias, early["0.bias"])
        a.undo()
    finally:
        probe.detach()


def test_refusals_change_nothing() -> None:
    torch.manual_seed(0)
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = _data()
    _step(model, opt, x, y)
    probe = trainscope.Probe(model, opt)
    insert_norm_(model, ["4"], "weight", optimizer=opt)
    try:
        before, opt_before = _state(model), _opt_state(opt)
        cases = {
            "amount must be < 1": {"amount": 1.0},
            "amount must be > 0": {"amount": 0.0},
            "no module named": {"layers": ["nope"]},
            "holds no Linear / Conv": {"layers": ["1"]},
            "re-parametrized by something else": {"layers": ["2", "4"]},
            "scope must be one of": {"scope": "row"},
            "rewind must be": {"rewind": "s99"},
            "rewind step must be >= 0": {"rewind": -1},
        }
        for why, params in cases.items():
            t = probe.request("prune", **params)
            assert t.status == "refused" and why in t.message, (why, t.message)
        with pytest.raises(ValueError, match="needs θ₀"):
            prune_(model, 0.5, layers=["0"])
        with pytest.raises(ValueError, match="init= matches no parameter"):
            prune_(model, 0.5, layers=["0"], init={"x": torch.zeros(1)})
        assert _same(before, _state(model)) and _same_opt(opt_before, _opt_state(opt)) and not masks(model)
        a = prune_(model, 0.5, rewind="none", probe=probe)  # "all" leaves the weight-normed layer out, saying so
        assert set(masks(model)) == {"0", "2"} and "left out" in a.message and ": 4" in a.message
        a.undo()
        assert _same(before, _state(model)) and _same_opt(opt_before, _opt_state(opt))
    finally:
        probe.detach()


def test_tied_weights_are_refused() -> None:
    emb = nn.Embedding(10, 6)
    head = nn.Linear(6, 10, bias=False)
    head.weight = emb.weight  # tied, as an LM head and its input embedding
    model = nn.Sequential(emb, nn.Linear(6, 6), head)
    before = _state(model)
    with pytest.raises(ValueError, match="tied weights"):
        prune_(model, 0.5, rewind="none")
    assert _same(before, _state(model)) and not masks(model)
    prune_(model, 0.5, layers=["1"], rewind="none").undo()


def test_prune_action_has_a_schema_for_the_dashboard() -> None:
    spec = actions.REGISTRY["prune"]
    assert spec.category == "pruning"
    assert spec.schema["scope"]["choices"] == ["global", "layer"]
    assert spec.schema["amount"]["default"] == 0.8 and spec.schema["rewind"]["default"] == "init"


@pytest.mark.kernel
@pytest.mark.slow
def test_lecture_notebook_shows_each_tool_working(tmp_path: Path) -> None:
    """examples/lecture_norm_prune.ipynb on the digits: BatchNorm inserted live recovers a deep
    sigmoid MLP stuck at chance, Fixup trains a 32-block residual MLP the default init cannot,
    and the 80 %-pruned, rewound ticket matches the dense network."""
    from .test_examples import _run_notebook

    path = Path(__file__).parent.parent / "examples" / "lecture_norm_prune.ipynb"
    nb = _run_notebook(path, {}, tmp_path)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    bn = re.search(r"RESULT batchnorm: plain val_acc ([\d.]+), BatchNorm inserted at epoch \d+ val_acc ([\d.]+)", text)
    fx = re.search(r"RESULT fixup: default init val_acc ([\d.]+), Fixup val_acc ([\d.]+)", text)
    lt = re.search(r"RESULT lottery: dense val_acc ([\d.]+), 80% ticket val_acc ([\d.]+), 90% ticket val_acc ([\d.]+)",
                   text)
    assert bn and fx and lt, text
    assert float(bn[1]) < 0.2 < 0.85 < float(bn[2])  # chance is 0.1
    assert float(fx[1]) < 0.3 < 0.85 < float(fx[2])
    dense, t80, t90 = float(lt[1]), float(lt[2]), float(lt[3])
    assert dense > 0.9 and t80 >= dense - 0.02 and t90 >= dense - 0.04
    assert "insert_norm applied" in text and "reinit applied: Fixup: 32 residual branch(es)" in text
    assert re.search(r"timeline step \d+: round 2, sparsity 90\.0%", text)
    assert re.search(r"applied -> \{.*'total': 0\.8\}", text), text  # undoing round 2 brings round 1's masks back

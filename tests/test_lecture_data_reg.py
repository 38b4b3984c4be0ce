"""Data-level regularization live on the user's loop: mixup, input noise, label smoothing (issue 15, item 2)."""

from __future__ import annotations

import copy
import random
import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainscope
from trainscope.interventions.data_reg import _seed, input_noise_, label_smoothing_, mixup_, state


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 4))


def _data(n: int = 10, batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(batch, 5, generator=g), torch.randint(0, 4, (batch,), generator=g)) for _ in range(n)]


def _train(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: nn.Module, data: list[Any]) -> list[float]:
    out = []
    model.train()
    for x, y in data:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        out.append(float(loss.detach()))
    return out


def _hooks(*mods: nn.Module) -> tuple[int, ...]:
    return tuple(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in mods)


def _rng() -> tuple[Any, ...]:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def _same_rng(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def _draws(seed: int, alpha: float, n: int) -> tuple[float, torch.Tensor]:
    s = _seed("mixup", seed)
    lam = float(np.random.default_rng(s).beta(alpha, alpha))
    return lam, torch.randperm(n, generator=torch.Generator().manual_seed(s))


def test_mixup_mixes_inputs_and_class_index_losses_as_the_paper() -> None:
    model, loss_fn = _net(), nn.CrossEntropyLoss()
    x, y = _data(1)[0]
    mixup_(model, loss_fn, alpha=0.4, seed=7)
    lam, perm = _draws(7, 0.4, 8)
    seen: list[torch.Tensor] = []
    h = model[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    loss = loss_fn(model(x), y)
    h.remove()
    xm = lam * x + (1 - lam) * x[perm]
    torch.testing.assert_close(seen[0], xm)
    with torch.no_grad():
        out = model(xm)  # no_grad: an evaluation call, not mixed again
    expected = lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[perm])
    torch.testing.assert_close(loss.detach(), expected)
    assert 0 < lam < 1


def test_mixup_with_label_smoothing_and_soft_targets() -> None:
    model, loss_fn = _net(), nn.CrossEntropyLoss()
    x, y = _data(1)[0]
    label_smoothing_(loss_fn, 0.1)
    assert loss_fn.label_smoothing == 0.1
    mixup_(model, loss_fn, alpha=1.0, seed=1)
    lam, perm = _draws(1, 1.0, 8)
    loss = loss_fn(model(x), y)
    with torch.no_grad():
        out = model(lam * x + (1 - lam) * x[perm])
    exp = lam * F.cross_entropy(out, y, label_smoothing=0.1) + (1 - lam) * F.cross_entropy(out, y[perm], label_smoothing=0.1)
    torch.testing.assert_close(loss.detach(), exp)
    # regression / soft targets: the targets are mixed
    m2, mse = _net(), nn.MSELoss()
    t = torch.randn(8, 4)
    mixup_(m2, mse, alpha=1.0, seed=2)
    lam2, perm2 = _draws(2, 1.0, 8)
    l2 = mse(m2(x), t)
    with torch.no_grad():
        out2 = m2(lam2 * x + (1 - lam2) * x[perm2])
    torch.testing.assert_close(l2.detach(), F.mse_loss(out2, lam2 * t + (1 - lam2) * t[perm2]))


def test_evaluation_calls_are_untouched_and_off_costs_nothing() -> None:
    model, loss_fn = _net(), nn.CrossEntropyLoss()
    x, y = _data(1)[0]
    base = _hooks(model, loss_fn)
    ref_eval = loss_fn(model.eval()(x), y)
    model.train()
    with torch.no_grad():
        ref_nograd = model(x)
    a = mixup_(model, loss_fn, 0.2)
    b = input_noise_(model, 0.5)
    assert _hooks(model, loss_fn) != base
    model.eval()
    torch.testing.assert_close(loss_fn(model(x), y), ref_eval, rtol=0, atol=0)
    model.train()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref_nograd, rtol=0, atol=0)
    b.undo()
    a.undo()
    assert _hooks(model, loss_fn) == base
    t = mixup_(model, loss_fn, 0.0)  # a request with 0: off, no hooks
    assert _hooks(model, loss_fn) == base and t.message == "mixup off"


def test_probe_request_applies_at_boundary_and_records_the_mixed_loss() -> None:
    model, loss_fn = _net(), nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = _data(6)
    probe = trainscope.Probe(model, opt, loss_fn=loss_fn)
    probe_only = _hooks(model, loss_fn)
    try:
        t = probe.request("mixup", alpha=0.3, seed=5)
        assert t.status == "pending" and _hooks(model, loss_fn) == probe_only  # nothing until the boundary
        _train(model, opt, loss_fn, data[:1])
        assert t.status == "applied", t.message
        ev = [e for e in probe.history.events if e.data.get("action") == "mixup"]
        assert ev and ev[0].data["params"]["alpha"] == 0.3 and ev[0].data["undoable"]
        losses = _train(model, opt, loss_fn, data[1:3])
        probe.flush()
        rec = probe.history.scalar("loss")["mean"]
        assert rec[-1] == pytest.approx(losses[-1], rel=1e-6)  # the probe records the loss that was backpropagated
        b = probe.recent_batches[-1]
        assert torch.equal(b.args[0], data[2][0])  # the user's batch, not the mixed one
        assert state(model, loss_fn)["mixup"] == 0.3
        off = probe.request("mixup", alpha=0)
        _train(model, opt, loss_fn, data[3:4])
        assert off.status == "applied" and state(model, loss_fn)["mixup"] == 0.0
        assert _hooks(model, loss_fn) == probe_only  # only the probe's own hooks
        probe.request("undo", ticket=off.id)
        _train(model, opt, loss_fn, data[4:5])
        assert state(model, loss_fn)["mixup"] == 0.3
    finally:
        probe.detach()
    assert _hooks(model, loss_fn) == (0, 0)  # detaching the probe removes ours too


def test_refusals_change_nothing() -> None:
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = trainscope.Probe(model, opt)  # no loss_fn
    probe_only = _hooks(model)
    try:
        for name, params, why in [("mixup", {"alpha": 0.2}, "loss module"), ("label_smoothing", {"eps": 0.1}, "loss module"),
                                  ("mixup", {"alpha": -1}, ">= 0"), ("input_noise", {"std": "big"}, "number"),
                                  ("label_smoothing", {"eps": 1.0}, "< 1")]:
            t = probe.request(name, **params)
            assert t.status == "refused" and why in t.message, (name, t.message)
        assert _hooks(model) == probe_only
    finally:
        probe.detach()
    # the loop computes F.cross_entropy: the probe saw steps whose batch never reached its loss module
    loss_fn = nn.CrossEntropyLoss()
    probe = trainscope.Probe(model, opt, loss_fn=loss_fn)
    try:
        for x, y in _data(2):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        t = probe.request("mixup", alpha=0.2)
        assert t.status == "refused" and "F.cross_entropy" in t.message
    finally:
        probe.detach()
    # token ids cannot be mixed or noised
    emb = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2))
    o2 = torch.optim.SGD(emb.parameters(), lr=0.1)
    probe = trainscope.Probe(emb, o2, loss_fn=loss_fn)
    try:
        ids, y = torch.randint(0, 10, (6, 3)), torch.randint(0, 2, (6,))
        loss_fn(emb(ids), y).backward()
        o2.step()
        for name, params in [("mixup", {"alpha": 0.2}), ("input_noise", {"std": 0.1})]:
            t = probe.request(name, **params)
            assert t.status == "refused" and "not a floating batch" in t.message, t.message
    finally:
        probe.detach()
    with pytest.raises(ValueError, match="classification losses"):
        label_smoothing_(nn.MSELoss(), 0.1)
    with pytest.raises(TypeError, match=r"F\.cross_entropy cannot be hooked"):
        mixup_(model, F.cross_entropy, 0.2)  # type: ignore[arg-type]


def test_unpaired_forwards_stop_mixing_and_say_so() -> None:
    model, loss_fn = _net(), nn.CrossEntropyLoss()
    mixup_(model, loss_fn, 0.2)
    x, y = _data(1)[0]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(3):
            F.cross_entropy(model(x), y)  # the loss module is never called
    assert any("stopped mixing" in str(m.message) for m in w)
    out = model(x)
    with torch.no_grad():
        assert torch.equal(out, model.eval()(x))  # no longer mixed
    assert state(model, loss_fn)["mixup"] == 0.0


def test_undo_leaves_model_optimizer_and_rng_as_if_never_applied() -> None:
    data = _data(12)

    def run(intervene: str | None) -> tuple[Any, ...]:
        torch.manual_seed(11)
        np.random.seed(11)
        random.seed(11)
        model, loss_fn = _net(), nn.CrossEntropyLoss()
        model.insert(1, nn.Dropout(0.2))  # the user's own randomness
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        base = _hooks(model, loss_fn)
        _train(model, opt, loss_fn, data[:3])
        if intervene == "apply_undo":
            for a in (mixup_(model, loss_fn, 0.4), input_noise_(model, 0.3), label_smoothing_(loss_fn, 0.2)):
                a.undo()
        applied = []
        if intervene == "train_between":
            applied = [mixup_(model, loss_fn, 0.4), input_noise_(model, 0.3), label_smoothing_(loss_fn, 0.2)]
        _train(model, opt, loss_fn, data[3:6])
        for a in reversed(applied):
            a.undo()
        assert _hooks(model, loss_fn) == base and loss_fn.label_smoothing == 0.0
        rng = _rng()
        _train(model, opt, loss_fn, data[6:])
        return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), rng

    plain, undone, between = run(None), run("apply_undo"), run("train_between")
    # applied and undone before training: model, optimizer and RNG exactly as if never applied
    assert all(torch.equal(plain[0][k], undone[0][k]) for k in plain[0])
    assert all(torch.equal(a, b) for k in plain[1]["state"] for a, b in zip(plain[1]["state"][k].values(), undone[1]["state"][k].values(), strict=True))
    assert _same_rng(plain[2], undone[2])
    # trained with them in between: the weights differ (they trained on mixed, noisy data) but the user's RNG
    # streams (dropout, numpy, random) are exactly where they would be without them
    assert _same_rng(plain[2], between[2])
    assert not all(torch.equal(plain[0][k], between[0][k]) for k in plain[0])


def test_input_noise_is_gaussian_on_training_calls_only() -> None:
    seen: list[torch.Tensor] = []

    class Rec(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.detach().clone())
            return x

    m = Rec()
    x = torch.zeros(200, 50)
    a = input_noise_(m, 0.5, seed=3)
    m(x.requires_grad_(False))
    noise = seen[-1]
    assert abs(float(noise.std()) - 0.5) < 0.02 and abs(float(noise.mean())) < 0.02
    m(x)
    assert not torch.equal(seen[-1], noise)  # fresh noise every call
    with torch.no_grad():
        m(x)
    assert torch.equal(seen[-1], x)
    m.eval()
    m(x)
    assert torch.equal(seen[-1], x)
    a.undo()
    m.train()
    m(x)
    assert torch.equal(seen[-1], x)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_label_smoothing_on_nll_equals_cross_entropys(reduction: str) -> None:
    logits = torch.randn(7, 5, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 4, -100, 2])
    nll = nn.NLLLoss(reduction=reduction)
    a = label_smoothing_(nll, 0.15)
    got = nll(F.log_softmax(logits, 1), y)
    exp = F.cross_entropy(logits, y, label_smoothing=0.15, reduction=reduction)
    torch.testing.assert_close(got, exp)
    a.undo()
    torch.testing.assert_close(nll(F.log_softmax(logits, 1), y), F.cross_entropy(logits, y, reduction=reduction))
    assert _hooks(nll) == (0,)


def test_label_smoothing_on_binary_targets() -> None:
    bce = nn.BCEWithLogitsLoss()
    z, t = torch.randn(9), torch.randint(0, 2, (9,)).float()
    label_smoothing_(bce, 0.2)
    torch.testing.assert_close(bce(z, t), F.binary_cross_entropy_with_logits(z, t * 0.8 + 0.1))
    ce = nn.CrossEntropyLoss(label_smoothing=0.05)
    a = label_smoothing_(ce, 0.3)
    b = label_smoothing_(ce, 0.0)  # a second request with 0: off
    assert ce.label_smoothing == 0.0
    with pytest.raises(RuntimeError, match="undo it first"):
        a.undo()
    b.undo()
    assert ce.label_smoothing == 0.3
    a.undo()
    assert ce.label_smoothing == 0.05


def test_checks_and_lr_find_see_the_plain_data() -> None:
    data = _data(8)

    def run(on: bool) -> tuple[str, list[float]]:
        model, loss_fn = _net(), nn.CrossEntropyLoss()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        probe = trainscope.Probe(model, opt, loss_fn=loss_fn)
        try:
            _train(model, opt, loss_fn, data[:1])
            if on:
                mixup_(model, loss_fn, 0.4, probe=probe)
                input_noise_(model, 0.5, probe=probe)
            res = trainscope.run_check("overfit_batch", probe, record=False, steps=30)
            lr = trainscope.lr_find(model, opt, loss_fn, data, num_iter=12, probe=probe)
            return res.evidence, lr.raw_losses
        finally:
            probe.detach()

    assert run(True) == run(False)


@pytest.mark.kernel
@pytest.mark.slow
def test_lecture_notebook_mixup_narrows_the_gap_and_growing_the_batch_matches_decay(tmp_path: Any) -> None:
    """examples/lecture_data_reg.ipynb on scikit-learn digits, executed in a real kernel (~30 s of work on one
    thread): mixup narrows the train/val loss gap; the grown batch ends where the decayed LR does, in fewer steps."""
    import re
    from pathlib import Path

    from .test_examples import _run_notebook

    path = Path(__file__).parent.parent / "examples" / "lecture_data_reg.ipynb"
    nb = _run_notebook(path, {}, tmp_path)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    gaps = {m[0]: float(m[1]) for m in re.findall(r"^(plain|mixup 0\.2)\s.*gap: loss ([\d.]+)", text, re.M)}
    assert set(gaps) == {"plain", "mixup 0.2"}, text
    assert gaps["mixup 0.2"] < 0.9 * gaps["plain"], gaps
    assert "applied at step 1" in text
    fin = {m[0]: (float(m[1]), float(m[2]), float(m[3]), int(m[4])) for m in re.findall(
        r"^(constant|decay|grow)\s+train loss ([\d.]+) val loss ([\d.]+) acc ([\d.]+) optimizer steps (\d+)", text, re.M)}
    assert set(fin) == {"constant", "decay", "grow"}, text
    decay, grow = fin["decay"], fin["grow"]
    assert abs(grow[0] - decay[0]) < 0.25 * decay[0], fin  # same final training loss
    assert abs(grow[2] - decay[2]) <= 0.02, fin  # same validation accuracy
    assert grow[3] < 0.5 * decay[3] and decay[3] == fin["constant"][3], fin  # in fewer optimizer steps
    assert "effective batch x5" in text and "effective batch x25" in text


def test_dashboard_forms_from_the_schemas_validate() -> None:
    from trainscope.actions import REGISTRY

    model, loss_fn = _net(), nn.CrossEntropyLoss()
    probe = trainscope.Probe(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=loss_fn)
    try:
        for name in ("mixup", "input_noise", "label_smoothing"):
            spec = REGISTRY[name]
            assert spec.category == "regularization" and spec.label
            assert all(f["type"] in {"float", "int"} for f in spec.schema.values())
            form = {k: f["default"] for k, f in spec.schema.items() if f.get("default") is not None}  # js defaultParams
            assert spec.validate(probe, form)[next(iter(spec.schema))] > 0
    finally:
        probe.detach()


def test_a_one_example_batch_is_left_alone_silently() -> None:
    model, loss_fn = _net(), nn.CrossEntropyLoss()
    x, y = _data(1)[0]
    with torch.no_grad():
        ref = model(x[:1])
    mixup_(model, loss_fn, 0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model(x[:1])
        loss = loss_fn(out, y[:1])
    assert torch.equal(out.detach(), ref)
    torch.testing.assert_close(loss.detach(), F.cross_entropy(ref, y[:1]))

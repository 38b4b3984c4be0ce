"""Reliability of the LR finder and of restores (issue 11: items 5, 6, 10, 12; issue 14: item 8).

* everything the optimizer trains is put back, also tensors outside ``model`` (item 5);
* a sweep over a shuffled ``DataLoader`` leaves the global RNGs as they were, so a run with a
  sweep in the middle reproduces one without, bit for bit (item 6);
* a Ctrl-C during the restore of ``lr_find`` or of a check is held until the restore is done
  (item 10);
* a converged model is not declared diverged after 2 iterations; advice fits the curve; the
  ``(dict of keyword inputs, target)`` batches that ``run_check`` accepts work in ``lr_find``
  (item 12);
* disagreeing rules are called disagreeing, with the rule to trust and why; one cycled batch is
  flagged as fragile (issue 14, item 8).
"""

from __future__ import annotations

import os
import random
import signal
import threading
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import trainscope
from trainscope.checklists import isolation
from trainscope.interventions import _state
from trainscope.lr_finder import (
    agreement,
    descended,
    divergence_limit,
    judge,
    lr_find,
    noise_level,
    rise_lr,
    warmup_iterations,
)


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def _xy(n: int = 256, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(3, 8, generator=g) * 2
    y = torch.randint(0, 3, (n,), generator=g)
    return c[y] + torch.randn(n, 8, generator=g), y


class _TempCE(nn.Module):
    """A cross-entropy with a learnable temperature (trained by the same optimizer)."""

    def __init__(self) -> None:
        super().__init__()
        self.log_t = nn.Parameter(torch.zeros(()))

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out * self.log_t.exp(), y)


# ---------------------------------------------------------------------------- item 5
def test_lr_find_restores_parameters_the_optimizer_trains_outside_the_model() -> None:
    model, loss_fn = _mlp(), _TempCE()
    head = nn.Parameter(torch.ones(3))  # a tensor kept outside both modules, trained too
    opt = torch.optim.Adam(list(model.parameters()) + list(loss_fn.parameters()) + [head], lr=1e-3)
    x, y = _xy()
    loss_fn(model(x[:32]) * head, y[:32]).backward()  # leave gradients in place, outside params included
    before = [t.detach().clone() for t in (loss_fn.log_t, head)]
    grads = [t.grad.clone() for t in (loss_fn.log_t, head)]  # type: ignore[union-attr]

    def step_fn(m: nn.Module, batch: Any) -> torch.Tensor:
        return loss_fn(m(batch[0]) * head, batch[1])

    res = lr_find(model, opt, None, [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)], num_iter=50,
                  step_fn=step_fn)
    assert res.iterations > 10
    for t, b, g in zip((loss_fn.log_t, head), before, grads, strict=True):
        assert torch.equal(t.detach(), b)  # log_t went 0 -> -18 before the fix
        assert t.grad is not None and torch.equal(t.grad, g)


def test_the_lr_find_action_restores_parameters_outside_the_model() -> None:
    model, loss_fn = _mlp(), _TempCE()
    opt = torch.optim.SGD(list(model.parameters()) + list(loss_fn.parameters()), lr=0.0)
    probe = trainscope.Probe(model, opt, loss_fn=loss_fn)
    x, y = _xy()
    opt.zero_grad()
    loss_fn(model(x[:32]), y[:32]).backward()
    opt.step()
    t0 = loss_fn.log_t.detach().clone()
    t = probe.request("lr_find", num_iter=40)
    opt.zero_grad()
    loss_fn(model(x[:32]), y[:32]).backward()
    opt.step()  # lr 0: the step itself moves nothing
    assert t.status == "applied", t.message
    assert torch.equal(loss_fn.log_t.detach(), t0)
    probe.detach()


# ---------------------------------------------------------------------------- item 6
def _train(with_sweep: bool) -> list[torch.Tensor]:
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(5)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    x, y = _xy()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(3):
        if epoch == 1 and with_sweep:
            lr_find(model, opt, nn.CrossEntropyLoss(), loader, num_iter=20)
        for xb, yb in loader:  # the shuffle order and the dropout masks come from the global RNG
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    return [p.detach().clone() for p in model.parameters()] + [
        torch.tensor(random.random()), torch.tensor(np.random.rand())]


def test_a_run_with_a_sweep_over_a_shuffled_loader_reproduces_one_without() -> None:
    a, b = _train(False), _train(True)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


# ---------------------------------------------------------------------------- item 10
@pytest.fixture
def sigint_raises() -> Any:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal or a kernel
    yield
    signal.signal(signal.SIGINT, old)


def _interrupt_inside(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> list[int]:
    """Send SIGINT from inside ``cls.name`` (a second Ctrl-C arriving while it runs)."""
    orig = getattr(cls, name)
    sent: list[int] = []

    def patched(self: Any, *a: Any, **k: Any) -> Any:
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)
        return orig(self, *a, **k)

    monkeypatch.setattr(cls, name, patched)
    return sent


def test_ctrl_c_during_the_lr_find_restore_waits_until_everything_is_back(
        sigint_raises: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = _xy()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    sent = _interrupt_inside(monkeypatch, _state.ModelCapture, "restore")
    with pytest.raises(KeyboardInterrupt):
        lr_find(model, opt, nn.CrossEntropyLoss(), [(x[:64], y[:64])], num_iter=30)
    assert sent
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in sd.items())  # BatchNorm statistics too
    assert opt.param_groups[0]["lr"] == 0.01 and not opt.state  # optimizer restored after the model
    assert torch.equal(torch.get_rng_state(), rng)


def test_ctrl_c_during_a_check_restore_waits_until_everything_is_back(
        sigint_raises: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = _xy()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sent = _interrupt_inside(monkeypatch, isolation.StateSnapshot, "_restore_tensors")
    with pytest.raises(KeyboardInterrupt):
        trainscope.run_check("overfit_batch", model, opt, nn.CrossEntropyLoss(), (x[:32], y[:32]), steps=20)
    assert sent
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in sd.items())
    assert all(m.training for m in model.modules())


def test_the_deferral_is_a_no_op_off_the_main_thread() -> None:
    out: list[str] = []

    def run() -> None:
        with _state.interrupts_deferred():
            out.append("ran")

    th = threading.Thread(target=run)
    th.start()
    th.join()
    assert out == ["ran"]


# ---------------------------------------------------------------------------- item 12: converged model
def _converged() -> tuple[nn.Module, torch.optim.Optimizer, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A BatchNorm MLP trained to a loss of ~1e-6 on separable data with a few hard points: its
    per-batch losses then differ by 10-30x, as a converged network's do."""
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 2, (512,), generator=g)
    x = torch.randn(512, 8, generator=g)
    x[:, 0] += (y * 2 - 1) * 3.0
    x[:8, 0] = (y[:8] * 2 - 1) * 0.05  # hard points near the boundary
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 64), nn.BatchNorm1d(64),
                          nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 512, 32)]
    for _ in range(100):
        for xb, yb in batches:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    with torch.no_grad():
        ls = [float(nn.functional.cross_entropy(model(a), b)) for a, b in batches]
    order = sorted(range(len(ls)), key=ls.__getitem__)
    order = [order[0], order[-1], *order[1:-1]]  # a shuffle that starts with the easiest batch, then the hardest
    assert max(ls) < 1e-3 and max(ls) > 8 * min(ls), ls
    return model, opt, [batches[i] for i in order]


def test_a_converged_model_is_not_declared_diverged_by_its_noise() -> None:
    model, opt, batches = _converged()
    res = lr_find(model, opt, nn.CrossEntropyLoss(), batches)
    assert res.iterations > 60, (res.iterations, res.stop_reason)  # it stopped after 2 before the fix
    assert res.rise_lr is not None and res.rise_lr > 1e-3
    assert res.descended is False
    assert "lower start_lr" not in res.advice and "converged" in res.note
    assert res.suggestion is not None and res.suggestion == pytest.approx(res.rise_lr / 10)
    assert "upper bound" in res.advice and "converged" in res.summary()


def test_the_advice_to_lower_start_lr_is_given_when_it_fits() -> None:
    w = nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([w], lr=0.1)
    seen: list[int] = []

    def rising(m: nn.Module, b: Any) -> torch.Tensor:  # the loss doubles from the first step on
        seen.append(1)
        return w * 0 + 2.0 ** len(seen)

    res = lr_find(nn.Identity(), opt, None, [0], num_iter=100, step_fn=rising)  # type: ignore[arg-type]
    assert res.suggestion is None and res.iterations < 20
    assert "lower start_lr" in res.advice and "too large" in res.advice


def test_divergence_rules_are_pure_and_noise_aware() -> None:
    assert warmup_iterations(100) == 10 and warmup_iterations(6) == 3 and warmup_iterations(10000) == 20
    assert noise_level([1.0]) == 0.0 and noise_level([1.0, 3.0]) == pytest.approx(2 ** 0.5)
    # a clean curve: fastai's 4x rule
    assert divergence_limit(0.5, 0.01, 4.0) == 2.0
    # a converged, noisy one: 4x best would be inside the noise
    assert divergence_limit(1e-6, 3e-6, 4.0) == pytest.approx(1e-5)
    flat = [3e-6, 1e-6, 8e-6, 2e-6, 4e-6] * 4
    assert not descended(flat, [3e-6] * 20, 5)
    assert descended([2.3] * 5 + [1.0] * 15, [2.3] * 5 + [1.0] * 15, 5)
    lrs = [10 ** (-7 + i * 0.4) for i in range(20)]
    assert rise_lr(lrs, flat, [3e-6] * 15 + [1e-3] * 5, 5) == lrs[15]
    assert rise_lr(lrs, flat, [3e-6] * 20, 5) is None


# ---------------------------------------------------------------------------- item 12: batch forms
class _KwModel(nn.Module):
    """A Hugging Face style model: keyword inputs only."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, *, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = (inputs_embeds * attention_mask.unsqueeze(-1)).sum(1) / attention_mask.sum(1, keepdim=True)
        return self.body(h)


def test_lr_find_accepts_the_batch_forms_run_check_accepts() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = _xy(512)
    seq = x.unsqueeze(1) + 0.1 * torch.randn(512, 4, 8, generator=g)  # 4 "tokens" per example
    batches = [({"inputs_embeds": seq[i:i + 32], "attention_mask": torch.ones(32, 4)}, y[i:i + 32])
               for i in range(0, 512, 32)]
    model = _KwModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = lr_find(model, opt, nn.CrossEntropyLoss(), batches)  # raised TypeError before
    assert res.iterations > 20 and res.descended and res.suggestion is not None, res.summary()
    check = trainscope.run_check("loss_at_init", model, opt, nn.CrossEntropyLoss(), batches[0])
    assert check.status != "not_run", check.evidence
    # positional inputs as a tuple, and a dict with 'inputs' / 'target', by the same policy
    two = nn.Bilinear(4, 4, 3)
    x1, x2, y = torch.randn(32, 4), torch.randn(32, 4), torch.randint(0, 3, (32,))
    o2 = torch.optim.SGD(two.parameters(), lr=0.1)
    assert lr_find(two, o2, nn.CrossEntropyLoss(), [((x1, x2), y)], num_iter=10).iterations == 10
    assert lr_find(two, o2, nn.CrossEntropyLoss(), [{"inputs": (x1, x2), "target": y}], num_iter=10).iterations == 10
    with pytest.raises(TypeError, match="'inputs' key"):
        lr_find(model, opt, nn.CrossEntropyLoss(), [batches[0][0]])
    with pytest.raises(ValueError, match="sequence of 3 items"):
        lr_find(two, o2, nn.CrossEntropyLoss(), [(x1, x2, y)])


# ---------------------------------------------------------------------------- issue 14 item 8
def test_disagreeing_rules_are_called_so_with_the_rule_to_trust() -> None:
    lr, trusted, agree, text = agreement({"steep": 0.00076, "valley": 0.11, "minimum": 0.89})
    assert not agree and trusted == "valley" and lr == pytest.approx(0.11)
    assert "DISAGREE" in text and "agree within" not in text
    assert "Trust valley" in text and "steep (0.00076) is off because" in text and "minimum lies within a decade" in text
    lr, trusted, agree, text = agreement({"steep": 1e-4, "valley": 0.11, "minimum": 50.0})
    assert not agree and "no rule is reliable" in text
    lr, trusted, agree, text = agreement({"steep": 0.05, "valley": 0.11, "minimum": 0.3})
    assert agree and trusted is None and lr == pytest.approx(0.11) and "agree" in text


def test_the_action_message_says_plainly_whether_the_rules_agree() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    probe = trainscope.Probe(model, opt, loss_fn=nn.CrossEntropyLoss())
    x, y = _xy()
    opt.zero_grad()
    probe.loss_fn(model(x[:32]), y[:32]).backward()
    opt.step()
    t = probe.request("lr_find", num_iter=60)
    opt.zero_grad()
    probe.loss_fn(model(x[:32]), y[:32]).backward()
    opt.step()
    assert t.status == "applied", t.message
    ev = [e for e in probe.history.events if e.kind == "lr_find"][-1]
    assert "agree within" not in t.message
    assert ("the rules agree" in t.message) == bool(ev.data["agree"])
    assert ev.data["distinct_batches"] == 1 and "fragile" in t.message and "ONE batch" in t.message
    assert any("fragile" in w for w in ev.data["warnings"])
    probe.detach()


def test_judge_flags_one_cycled_batch_and_is_pure() -> None:
    from trainscope.lr_finder import LRFinderResult

    lrs = [10 ** (-7 + 8 * i / 99) for i in range(100)]
    losses = [2.0 - 1.5 * i / 70 if i < 70 else 0.5 + (i - 70) * 0.01 for i in range(100)]
    res = LRFinderResult(lrs=lrs, losses=losses, raw_losses=list(losses), iterations=100, distinct_batches=1)
    judge(res, ("steep", "valley", "minimum"), num_iter=100, start_lr=1e-7)
    assert res.descended is True and res.suggestion is not None
    assert len(res.warnings) == 1 and "ONE batch" in res.warnings[0]
    again = LRFinderResult(lrs=lrs, losses=losses, raw_losses=list(losses), iterations=100, distinct_batches=None)
    judge(again, ("steep", "valley", "minimum"), num_iter=100, start_lr=1e-7)
    assert again.warnings == [] and again.suggestion == res.suggestion

"""The probe: correct statistics on any module structure, no effect on training, strict hook hygiene."""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainscope
from trainscope import Probe
from trainscope.recorder import payload as payload_mod

from .conftest import make_mlp


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    loss_fn: nn.Module | None = None,
    bs: int = 32,
    val_every: int = 0,
) -> list[float]:
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(123)
    losses = []
    for s in range(steps):
        idx = torch.randint(0, len(x), (bs,), generator=g)
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if val_every and (s + 1) % val_every == 0:
            model.eval()
            with torch.no_grad():
                loss_fn(model(x), y)
            model.train()
    return losses


def hook_counts(model: nn.Module) -> list[int]:
    return [
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    ]


# ------------------------------------------------------------------------- correctness of values
def test_activation_and_gradient_stats_equal_references(
    blobs: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = blobs
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt, every=1)
    # reference: the same step with manual hooks on a copy
    ref_model = copy.deepcopy(model)
    outs: dict[int, torch.Tensor] = {}
    grads: dict[int, torch.Tensor] = {}

    def capture(i: int) -> Any:
        def hook(mod: nn.Module, a: Any, o: torch.Tensor) -> None:
            outs[i] = o.detach().clone()
            o.register_hook(lambda g: grads.__setitem__(i, g.clone()))

        return hook

    for i, m in enumerate(ref_model):
        m.register_forward_hook(capture(i))
    xb, yb = x[:64], y[:64]
    F.cross_entropy(ref_model(xb), yb).backward()
    ref_w = [p.detach().clone() for p in model.parameters()]

    opt.zero_grad()
    F.cross_entropy(model(xb), yb).backward()
    ref_gn = [p.grad.detach().clone() for p in model.parameters()]
    opt.step()
    probe.flush()
    rec = probe.history.latest
    assert rec is not None and rec.step == 0
    for i in range(3):
        o, g = outs[i], grads[i]
        assert rec.metrics["act_mean"][i] == pytest.approx(o.mean().item(), rel=1e-5, abs=1e-7)
        assert rec.metrics["act_std"][i] == pytest.approx(o.std(unbiased=False).item(), rel=1e-4)
        assert rec.metrics["act_abs_max"][i] == pytest.approx(o.abs().max().item(), rel=1e-6)
        assert rec.metrics["act_frac_zero"][i] == pytest.approx((o == 0).float().mean().item())
        assert rec.metrics["ograd_mean"][i] == pytest.approx(g.mean().item(), rel=1e-4, abs=1e-9)
        assert rec.metrics["ograd_std"][i] == pytest.approx(g.std(unbiased=False).item(), rel=1e-4)
    # parameter statistics of layer 0 (weight + bias)
    w0, b0 = ref_w[0], ref_w[1]
    gw, gb = ref_gn[0], ref_gn[1]
    new_w = [p.detach() for p in model.parameters()]
    assert rec.metrics["grad_norm"][0] == pytest.approx(
        math.sqrt(gw.square().sum() + gb.square().sum()), rel=1e-5
    )
    wn = math.sqrt(new_w[0].square().sum() + new_w[1].square().sum())
    assert rec.metrics["weight_norm"][0] == pytest.approx(wn, rel=1e-5)
    upd = math.sqrt((new_w[0] - w0).square().sum() + (new_w[1] - b0).square().sum())
    assert rec.metrics["update_ratio"][0] == pytest.approx(upd / wn, rel=1e-4)
    assert rec.metrics["dist_init"][0] == pytest.approx(upd, rel=1e-4)  # one step from init
    assert np.isnan(rec.metrics["weight_norm"][1])  # ReLU has no parameters
    assert rec.forward_order == [0, 1, 2] and rec.backward_order == [2, 1, 0]


def test_histograms_count_every_element(blobs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = blobs
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    probe = Probe(model, opt, every=1)
    train(model, opt, x, y, 2, bs=64)
    probe.flush()
    rec = probe.history.latest
    assert rec is not None and rec.act_hist is not None and rec.ograd_hist is not None
    numel = [64 * 32, 64 * 32, 64 * 32, 64 * 32, 64 * 5]
    np.testing.assert_allclose(rec.act_hist.sum(axis=1), numel, rtol=1e-5)
    np.testing.assert_allclose(rec.ograd_hist.sum(axis=1), numel, rtol=1e-5)


def test_inplace_relu_stats_are_pre_and_post_activation() -> None:
    model = nn.Sequential(nn.Linear(10, 50), nn.ReLU(inplace=True), nn.Linear(50, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt, every=1)
    x = torch.randn(128, 10)
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()
    probe.flush()
    m = probe.history.latest.metrics  # type: ignore[union-attr]
    assert m["act_min"][0] < 0  # Linear output seen before the in-place ReLU overwrote it
    assert m["act_min"][1] == 0 and 0.3 < m["act_frac_zero"][1] < 0.7
    # the gradient w.r.t. the Linear output is zero wherever the ReLU was off
    assert 0.3 < m["ograd_frac_zero"][0] < 0.7


class Twice(nn.Module):
    """A shared module called twice per forward, outputs as tuple and dict, a frozen layer."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(8, 8)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(8, 3)
        self.pair = PairOut()
        self.dictout = DictOut()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.shared(self.shared(x)))
        a, b = self.pair(h)
        d = self.dictout(self.frozen(a + b))
        return self.head(d["out"])


class PairOut(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, x - 1


class DictOut(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        return {"out": torch.relu(x), "aux": None}


def test_shared_tuple_dict_and_frozen_modules() -> None:
    model = Twice()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    probe = Probe(model, opt, every=1)
    names = probe.history.layer_names
    assert set(names) == {"shared", "frozen", "head", "pair", "dictout"}
    x = torch.randn(16, 8)
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()
    probe.flush()
    m = probe.history.latest.metrics  # type: ignore[union-attr]
    i = names.index
    assert probe.history.latest.act_hist[i("shared")].sum() == pytest.approx(2 * 16 * 8)  # type: ignore[index]
    assert np.isfinite(m["act_mean"][i("pair")]) and np.isfinite(m["act_mean"][i("dictout")])
    assert np.isnan(m["grad_norm"][i("frozen")])  # frozen: no gradient
    assert m["weight_norm"][i("frozen")] > 0
    assert m["ograd_std"][i("frozen")] > 0  # its output still receives gradient
    assert probe.errors == []


def test_transformer_block_including_attention() -> None:
    model = nn.Sequential(
        nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True),
        nn.Flatten(),
        nn.Linear(16 * 6, 4),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = Probe(model, opt, every=1)
    x = torch.randn(8, 6, 16)
    for _ in range(2):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    probe.flush()
    names = probe.history.layer_names
    assert "0.self_attn" in names and "0.norm1" in names and "0.linear1" in names
    m = probe.history.latest.metrics  # type: ignore[union-attr]
    attn = names.index("0.self_attn")
    assert (
        np.isfinite(m["act_std"][attn]) and m["grad_norm"][attn] > 0
    )  # in_proj_weight is owned by MHA
    assert abs(m["act_mean"][names.index("0.norm1")]) < 0.2  # LayerNorm output
    assert probe.errors == []


def test_float64_model_is_measured_not_dropped() -> None:
    """A double-precision model: every statistic in fp32, equal to a float64 reference (the sum of
    squares once refused to narrow and the probe switched itself off)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt, every=1)
    x = torch.randn(20, 6, dtype=torch.float64)
    with torch.no_grad():
        h = model[1](model[0](x))  # the Tanh output, before the step changes the weights
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()
    probe.flush()
    assert probe.errors == []
    m = probe.history.latest.metrics  # type: ignore[union-attr]
    tanh = probe.history.layer_names.index("1")
    assert m["act_std"][tanh] == pytest.approx(float(h.std(unbiased=False)), rel=1e-5)
    assert m["act_abs_max"][tanh] == pytest.approx(float(h.abs().max()), rel=1e-6)


def test_conv_units_and_dead_channels() -> None:
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 2))
    with torch.no_grad():
        model[0].bias[:3] = -100.0  # channels 0..2 can never fire
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = Probe(model, opt, every=1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(16, 1, 8, 8)).sum().backward()
        opt.step()
    probe.flush()
    rec = probe.history.latest
    assert rec is not None
    assert rec.dead_units[1].tolist() == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]  # ReLU layer, per channel
    assert rec.metrics["act_dead_frac"][1] == pytest.approx(0.5)
    # the conv is followed by a ReLU module, which shows its dead units: no redundant conv mask
    # (from the second sample on, once the forward order is known); neither for the last layer
    assert np.isnan(rec.metrics["act_dead_frac"][0]) and np.isnan(rec.metrics["act_dead_frac"][3])


def test_functional_relu_dead_units_seen_on_the_linear() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(5, 10)
            self.fc2 = nn.Linear(10, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(F.relu(self.fc1(x)))

    model = Net()
    with torch.no_grad():
        model.fc1.bias[:4] = -50.0
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = Probe(model, opt, every=1)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(32, 5)).sum().backward()
        opt.step()
    probe.flush()
    assert probe.history.latest.metrics["act_dead_frac"][0] == pytest.approx(0.4)  # type: ignore[union-attr]


def test_saturation_of_tanh() -> None:
    model = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 1))
    with torch.no_grad():
        model[0].weight.mul_(50)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    probe = Probe(model, opt, every=1)
    opt.zero_grad()
    model(torch.randn(64, 4)).sum().backward()
    opt.step()
    probe.flush()
    assert probe.history.latest.metrics["act_frac_sat"][1] > 0.8  # type: ignore[union-attr]
    assert np.isnan(probe.history.latest.metrics["act_frac_sat"][0])  # type: ignore[union-attr]


# ------------------------------------------------------------------------- training unchanged
@pytest.mark.parametrize(
    "kwargs", [{}, {"every": 1, "cheap_every": 1}, {"every": 3, "budget": 0.05}]
)
def test_probe_does_not_change_training(
    digits: tuple[torch.Tensor, torch.Tensor], kwargs: dict[str, Any]
) -> None:
    x, y = digits

    def run(with_probe: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(7)
        model = nn.Sequential(
            nn.Linear(64, 64),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(64),
            nn.Dropout(0.2),
            nn.Linear(64, 10),
        )
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        loss_fn = nn.CrossEntropyLoss()
        p = Probe(model, opt, loss_fn=loss_fn, **kwargs) if with_probe else None
        train(model, opt, x, y, 25, loss_fn=loss_fn, val_every=10)
        if p is not None:
            p.detach()
        return {k: v.clone() for k, v in model.state_dict().items()}

    a, b = run(False), run(True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-identical, BatchNorm buffers included


def test_detach_leaves_model_and_optimizer_exactly_as_found() -> None:
    model = make_mlp()
    loss_fn = nn.MSELoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = (
        hook_counts(model),
        dict(vars(model)).keys(),
        len(opt._optimizer_step_pre_hooks),
        len(opt._optimizer_step_post_hooks),
    )
    probe = Probe(model, opt, loss_fn=loss_fn, every=2)
    train(model, opt, torch.randn(64, 20), torch.randn(64, 5), 5, loss_fn=loss_fn)
    probe.detach()
    after = (
        hook_counts(model),
        dict(vars(model)).keys(),
        len(opt._optimizer_step_pre_hooks),
        len(opt._optimizer_step_post_hooks),
    )
    assert before == after
    assert len(loss_fn._forward_hooks) == len(loss_fn._forward_pre_hooks) == 0
    assert not probe.is_attached
    # the recorded data survives detach, and the probe can attach again
    assert probe.history.samples() >= 3
    probe.attach()
    assert probe.is_attached
    probe.detach()


def test_hooks_exist_only_around_sampled_steps() -> None:
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt, every=4)
    counts = []
    for _ in range(9):
        counts.append(sum(len(m._forward_hooks) for m in model.modules()))
        opt.zero_grad()
        model(torch.randn(8, 20)).sum().backward()
        opt.step()
    n = len(probe.layers) + 2  # the layers' hooks and the root's two completion hooks
    assert counts == [n, 0, 0, 0, n, 0, 0, 0, n]  # steps 0, 4, 8 sampled
    probe.detach()


def test_no_host_sync_on_unsampled_steps_and_one_transfer_per_sampled_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = make_mlp()
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt, loss_fn=loss_fn, every=5)
    probe.flush_interval = 1e9  # no time-based scalar flush in this test
    transfers: list[int] = []
    real = payload_mod.Pending.__init__

    def counting(self: Any, flat: torch.Tensor, meta: dict[str, Any]) -> None:
        transfers.append(probe.step_count)
        real(self, flat, meta)

    def forbidden(*a: Any, **k: Any) -> Any:
        raise AssertionError("host sync inside the probe")

    monkeypatch.setattr(payload_mod.Pending, "__init__", counting)
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    for _ in range(11):
        opt.zero_grad()
        out = model(x)
        with monkeypatch.context() as mp:  # the probe must not call item()/tolist() in hooks
            mp.setattr(torch.Tensor, "item", forbidden)
            mp.setattr(torch.Tensor, "tolist", forbidden)
            loss = loss_fn(out, y)
            loss.backward()
            opt.step()
    # transfers happen at the boundaries of sampled steps 0, 5, 10 only (step_count after the step)
    assert transfers == [1, 6, 11]
    probe.flush()
    assert len(probe.history.scalar("loss")["mean"]) == 11  # every step's loss, batched
    probe.detach()


def test_gradient_accumulation_counts_optimizer_steps() -> None:
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt, every=1)
    for _ in range(3):
        opt.zero_grad()
        for _ in range(4):  # 4 micro-batches per optimizer step
            model(torch.randn(8, 20)).sum().backward()
        opt.step()
    probe.flush()
    assert probe.step_count == 3
    rec = probe.history.latest
    assert rec is not None and rec.step == 2
    assert rec.act_hist[0].sum() == pytest.approx(4 * 8 * 32)  # type: ignore[index]


def test_validation_forwards_kept_apart(blobs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = blobs
    model = make_mlp()
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt, loss_fn=loss_fn, every=1)
    opt.zero_grad()
    loss_fn(model(x[:32]), y[:32]).backward()
    model.eval()
    with torch.no_grad():
        val = loss_fn(model(x), y).item()  # 512 examples: must not enter the training stats
    model.train()
    opt.step()
    probe.flush()
    rec = probe.history.latest
    assert rec is not None and rec.act_hist[0].sum() == pytest.approx(32 * 32)  # type: ignore[index]
    vl = probe.history.scalar("val_loss")
    assert vl["mean"].tolist() == pytest.approx([val])
    assert probe.forward_modes["eval"] == 1 and probe.forward_modes["train"] == 1


def test_log_attribution_and_tensor_values() -> None:
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt)
    probe.log(val_loss=2.5)  # before anything: step 0
    for _ in range(2):
        opt.zero_grad()
        loss = model(torch.randn(4, 20)).pow(2).mean()
        probe.log(acc=torch.tensor(0.5))  # during the step
        loss.backward()
        opt.step()
        probe.log(loss=loss)  # after opt.step(): the step that just finished
    probe.flush()
    h = probe.history
    assert h.scalar("loss")["first"].tolist() == [0, 1]
    assert h.scalar("acc")["first"].tolist() == [0, 1]
    assert h.scalar("val_loss")["first"].tolist() == [0]
    with pytest.raises(ValueError, match="scalar"):
        probe.log(x=torch.ones(3))
    with pytest.raises(TypeError):
        probe.log(x="high")  # type: ignore[arg-type]


def test_logged_values_of_one_step_are_averaged_whatever_their_type_and_order() -> None:
    """The scalar buffer is columnar (one stack per name at a flush); mixing floats and tensors of
    several dtypes, repeating a step and buffering an earlier step after a later one (as a late
    val_loss is) must still give one mean per step, in step order."""
    probe = Probe(nn.Linear(3, 1))  # manual steps; nothing flushes before probe.flush()
    probe._put_scalar(1, "m", torch.tensor(10.0, dtype=torch.float64))
    probe._put_scalar(0, "m", 1.0)
    probe._put_scalar(1, "m", torch.tensor(20.0, dtype=torch.float16))
    probe._put_scalar(0, "m", torch.tensor(3.0))
    probe._put_scalar(0, "m", 5.0)
    probe.log(other=torch.tensor(7.0))
    probe.flush()
    s = probe.history.scalar("m")
    assert s["first"].tolist() == [0, 1]
    assert s["mean"].tolist() == pytest.approx([3.0, 15.0])
    assert probe.history.scalar("other")["mean"].tolist() == [7.0]
    probe._put_scalar(2, "m", float("nan"))
    probe.flush()
    assert math.isnan(probe.history.scalar("m")["mean"][-1])


def test_manual_steps_without_optimizer() -> None:
    model = nn.Linear(3, 1)
    probe = Probe(model, every=1)
    for _ in range(3):
        model.zero_grad()
        model(torch.randn(5, 3)).sum().backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
        probe.step()
    probe.flush()
    assert probe.step_count == 3
    assert probe.history.latest.metrics["update_ratio"][0] > 0  # type: ignore[union-attr]



@pytest.mark.parametrize("with_optimizer", [True, False])
def test_a_forced_sample_measures_the_update_too(with_optimizer: bool) -> None:
    """``sample_next()`` from a boundary callback (how the findings panel asks for fresh data)
    records a complete step, update/weight ratio included, not only the hooks' statistics."""
    torch.manual_seed(0)
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt if with_optimizer else None, every=1000)
    x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    asked: list[int] = []

    def ask(p: Probe) -> None:
        if p.step_count in (5, 9) and p.step_count not in asked:
            asked.append(p.step_count)
            p.sample_next()

    probe.on_step(ask)
    for _ in range(12):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if not with_optimizer:
            probe.step()
    probe.flush()
    steps, ratios = probe.history.layer_series("update_ratio")
    assert asked == [5, 9] and {5, 9} <= set(steps.tolist()), steps
    linear = [i for i, m in enumerate(probe.history.layers) if m.type == "Linear"]
    for k in (5, 9):
        ratio = ratios[steps.tolist().index(k)][linear]
        assert np.all(np.isfinite(ratio)) and np.all(ratio > 0), (k, ratio)


# ------------------------------------------------------------------------- non-finite values
class NaNAt(nn.Module):
    def __init__(self, at_step: int) -> None:
        super().__init__()
        self.calls = 0
        self.at = at_step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.at:
            x = x.clone()
            x[0, 0] = float("nan")
        return x


def test_first_nonfinite_layer_in_forward_and_backward_order() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), NaNAt(2), nn.Linear(8, 8), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: weights stay finite
    probe = Probe(model, opt, every=1)
    for _ in range(4):
        opt.zero_grad()
        model(torch.randn(16, 4)).sum().backward()
        opt.step()
    probe.flush()
    h = probe.history
    rec = h.latest
    assert rec is not None
    assert rec.first_nonfinite_forward == 2  # the NaN-producing module, not the ones after it
    assert rec.metrics["act_nonfinite"][2] == 1  # exact count once non-finite values were seen
    assert rec.act_hist[2][trainscope.stats.NAN] == 1  # type: ignore[index]
    assert rec.metrics["act_nonfinite"][1] == 0
    steps, nf = h.layer_series("act_nonfinite")
    assert nf[steps == 2, 2][0] != 0  # step 2 (first NaN) flagged even before counting exactly


# ------------------------------------------------------------------------- failures never reach the loop
def test_internal_error_is_recorded_warned_once_and_training_continues(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt, every=1)

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("stats exploded")

    monkeypatch.setattr(trainscope.stats, "summarize", boom)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(5):
            opt.zero_grad()
            model(torch.randn(8, 20)).sum().backward()
            opt.step()
    ours = [str(x.message) for x in w if "trainscope" in str(x.message)]
    # one warning per failing place, each once: the per-layer forward part is switched off; the
    # input summary degrades per batch (noted once, tried again on later batches)
    assert len(ours) == 2 and all("stats exploded" in m for m in ours), ours
    assert sum("switched off" in m for m in ours) == 1
    assert {e.where for e in probe.errors} == {"inputs", "forward"}
    assert sum(e.where == "inputs" for e in probe.errors) == 1
    assert not probe._enabled["forward"] and probe._enabled["inputs"]
    assert probe.step_count == 5
    probe.flush()
    assert probe.history.latest is not None  # parameter statistics still recorded
    assert np.isfinite(probe.history.latest.metrics["grad_norm"][0])


def test_broken_callback_and_subscriber_do_not_break_training() -> None:
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt, every=1)
    probe.on_step(lambda p: 1 / 0)
    probe.history.subscribe(lambda u: [][1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(8, 20)).sum().backward()
            opt.step()
    assert probe.step_count == 3
    assert any("callback" in e.where for e in probe.errors)
    assert probe.history.subscriber_errors


# ------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_clearly_and_attaches_nothing() -> None:
    model = make_mlp()
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        Probe(lambda x: x)  # type: ignore[arg-type]
    other = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="does not own any parameter"):
        Probe(model, torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(ValueError, match=r"matches no module.*e\.g\.: model, 0, 1, 2"):
        Probe(model, include="encoder.*")
    with pytest.raises(ValueError, match="matches no module"):
        Probe(model, exclude=nn.Conv2d)
    with pytest.raises(ValueError, match="every"):
        Probe(model, every=0)
    with pytest.raises(ValueError, match="budget"):
        Probe(model, budget=3)
    with pytest.raises(TypeError, match="loss module"):
        Probe(model, loss_fn=F.cross_entropy)  # type: ignore[arg-type]
    assert sum(hook_counts(model)) == 0
    p = Probe(model)
    with pytest.raises(RuntimeError, match="already attached"):
        p.attach()
    with pytest.raises(RuntimeError, match="already has an attached"):
        Probe(model)
    p.detach()
    assert sum(hook_counts(model)) == 0


def test_include_exclude_by_name_type_and_regex() -> None:
    model = make_mlp()
    assert [x.name for x in Probe(model, include=nn.Linear, attach=False).layers] == ["0", "2", "4"]
    assert [x.name for x in Probe(model, exclude="re:^[13]$", attach=False).layers] == [
        "0",
        "2",
        "4",
    ]
    assert [x.name for x in Probe(model, include=["0", "4"], attach=False).layers] == ["0", "4"]


def test_context_manager_and_paused() -> None:
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Probe(model, opt, every=1) as probe:
        with probe.paused():
            opt.zero_grad()
            model(torch.randn(4, 20)).sum().backward()
            opt.step()
        assert probe.step_count == 0  # steps inside paused() are not counted
    assert not probe.is_attached and sum(hook_counts(model)) == 0


def test_budget_rule_grows_the_interval_when_sampling_is_expensive() -> None:
    model = make_mlp()
    probe = Probe(model, every=1, budget=0.05, attach=False)
    assert Probe(model, attach=False).budget == 0.02  # the default adapts; an explicit every does not
    assert Probe(model, every=10, attach=False).budget is None
    probe._dur_plain.extend([0.010] * 16)
    probe._work_plain.extend([0.008] * 16)
    probe._work_sampled.extend([0.028] * 8)  # 20 ms extra per sampled step
    probe._adapt_interval()
    assert probe.every == 40  # 20 ms / (5% of 10 ms)
    probe._work_sampled.clear()
    probe._work_sampled.extend([0.0081] * 8)
    probe._adapt_interval()
    assert probe.every == 1


def test_budget_keeps_measured_overhead_in_check(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    model = nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = Probe(model, opt, every=1, budget=0.05)
    train(model, opt, x, y, 80, bs=64)
    assert (
        isinstance(probe.every, int) and probe.every > 1
    )  # every step would cost far more than 5%
    assert probe.overhead is not None


def test_unnormalized_inputs_and_loss_inputs_are_summarized() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1))
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt, loss_fn=loss_fn, every=1)
    x = torch.randn(32, 3) * 50 + 200
    opt.zero_grad()
    loss_fn(model(x), torch.randint(0, 4, (32,))).backward()
    opt.step()
    probe.flush()
    rec = probe.history.latest
    assert rec is not None
    assert rec.inputs["mean"] == pytest.approx(x.mean().item(), rel=1e-4)
    assert rec.inputs["std"] == pytest.approx(x.std(unbiased=False).item(), rel=1e-3)
    np.testing.assert_allclose(rec.inputs["channel_mean"], x.mean(0).numpy(), rtol=1e-4)
    li = rec.loss_inputs
    assert li["loss"] == "CrossEntropyLoss" and li["pred_shape"] == (32, 4)
    assert li["pred_rowsum_dev"] < 1e-5 and li["pred_min"] >= 0  # probabilities fed to the loss
    assert li["target_dtype"] == "int64"


def test_missing_zero_grad_leaves_a_trace() -> None:
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = Probe(model, opt, every=1)
    for _ in range(3):  # no zero_grad
        model(torch.randn(4, 20)).sum().backward()
        opt.step()
    probe.flush()
    assert probe.history.latest.extra["grad_norm_before_backward"] > 0  # type: ignore[union-attr]


@pytest.mark.gpu
def test_cuda_model_statistics_match_cpu() -> None:
    torch.manual_seed(0)
    cpu = make_mlp()
    gpu = copy.deepcopy(cpu).cuda()
    x = torch.randn(64, 20)
    res = []
    for m, xx in ((cpu, x), (gpu, x.cuda())):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        p = Probe(m, opt, every=1)
        for _ in range(3):
            opt.zero_grad()
            m(xx).sum().backward()
            opt.step()
        p.flush()
        res.append(p.history.latest.metrics)  # type: ignore[union-attr]
        p.detach()
    for k in ("act_mean", "act_std", "grad_norm", "update_ratio"):
        np.testing.assert_allclose(res[0][k], res[1][k], rtol=1e-3, atol=1e-6)


def test_model_with_probe_can_be_deepcopied_and_pickled(tmp_path: Any) -> None:
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.MSELoss()
    probe = Probe(model, opt, loss_fn=loss_fn, every=1)
    clone = copy.deepcopy(model)  # e.g. an EMA model or a best-weights snapshot
    copy.deepcopy(opt)
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    before = probe.forward_modes["train"]
    clone(torch.randn(2, 20)).sum().backward()  # the copy is not probed
    loaded(torch.randn(2, 20))
    assert probe.forward_modes["train"] == before
    opt.zero_grad()
    loss_fn(model(torch.randn(4, 20)), torch.randn(4, 5)).backward()
    opt.step()
    assert probe.step_count == 1 and probe.errors == []
    probe.detach()


def test_the_recorder_imports_only_the_floors_below_it() -> None:
    """The recording engine (trainscope/recorder/) reads no service, no façade and no Jupyter
    layer: every import in it, module- or function-level, TYPE_CHECKING included, is a floor."""
    import ast
    from pathlib import Path

    allowed = {"run", "metrics", "stats", "layers", "history", "_params", "_hooks", "_lossextra", "recorder"}
    root = Path(trainscope.__file__).parent / "recorder"
    seen: set[str] = set()
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                pkg = ("recorder." if node.level == 1 else "") + (node.module or "")
                names = [pkg] if node.module else [a.name for a in node.names]
                seen.update(n.split(".")[0] for n in names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trainscope"):
                seen.add((node.module or "").split(".")[1])
            elif isinstance(node, ast.Import):
                seen.update(a.name.split(".")[1] for a in node.names if a.name.startswith("trainscope."))
    assert {"run", "stats", "history", "recorder"} <= seen  # the walk found the real imports
    assert seen <= allowed, f"the recorder imports {sorted(seen - allowed)}"


def test_step_payload_one_transfer_gives_back_the_same_named_arrays() -> None:
    """A StepPayload's named device tensors, the cheap rows and the scalars travel in one flat
    copy and come back under the same names, shapes and values."""
    from trainscope.recorder.payload import StepPayload, start_transfer

    p: StepPayload[torch.Tensor] = StepPayload(step=3, reason="schedule")
    p.act, p.act_meta = torch.arange(18.0).reshape(2, 9), [(0, 10), (1, 20)]
    p.act_masks = {1: torch.tensor([1.0, 0.0, 1.0])}
    p.grad_masks = {1: torch.tensor([0.0, 0.0, 1.0])}
    p.carried = torch.tensor(2.5)
    scalars = {"loss": ([3, 3, 2], [torch.tensor(1.0), torch.tensor(3.0), 0.5])}
    pending = start_transfer(4, p, [(1, torch.ones(4)), (2, torch.zeros(4))], scalars)
    buf = pending.result()
    host = pending.meta.host(buf)
    assert host is not None and host.step == 3 and host.reason == "schedule" and host.full
    assert set(host.named()) == {"act", "amask1", "gmask1", "carried"}
    np.testing.assert_array_equal(host.act, np.arange(18.0).reshape(2, 9))
    assert host.act_meta == [(0, 10), (1, 20)]
    np.testing.assert_array_equal(host.act_masks[1], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(host.grad_masks[1], [0.0, 0.0, 1.0])
    assert float(host.carried) == 2.5 and host.prow is None
    rows = pending.meta.param_rows(buf)
    assert rows is not None
    np.testing.assert_array_equal(rows[0], [1, 2])
    np.testing.assert_array_equal(rows[1], [[1.0] * 4, [0.0] * 4])
    steps, values = pending.meta.scalars(buf)["loss"]  # sorted by step, one value per step
    np.testing.assert_array_equal(steps, [2, 3])
    np.testing.assert_allclose(values, [0.5, 2.0])


def test_an_exchange_strategy_gets_every_sampled_payload_and_decides_what_is_recorded() -> None:
    """The recorder hands each sampled step's payload to its exchange strategy (how
    DistributedProbe combines ranks) and records what comes back; ``full=False`` records none."""
    from trainscope.recorder.payload import StepPayload

    class Keep:
        def __init__(self, record: bool) -> None:
            self.record, self.seen = record, []

        def exchange(self, k: int, payload: StepPayload[torch.Tensor]) -> StepPayload[torch.Tensor]:
            self.seen.append((k, sorted(payload.named())))
            if self.record:
                payload.extra = {"via": "strategy"}
                return payload
            return StepPayload(step=k, full=False)

        def agree_schedule(self) -> bool:
            return False

        def defer_sample(self) -> bool:
            return False

    for record in (True, False):
        model = make_mlp()
        loss_fn = nn.CrossEntropyLoss()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        probe = Probe(model, opt, loss_fn=loss_fn, every=2)
        strategy = Keep(record)
        probe.use_exchange(strategy)
        x, y = torch.randn(16, 20), torch.randint(0, 5, (16,))
        for _ in range(5):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        probe.flush()
        assert [k for k, _ in strategy.seen] == [0, 2, 4]
        assert "act" in strategy.seen[0][1] and "grad" in strategy.seen[0][1]
        assert probe.history.samples() == (3 if record else 0)
        if record:
            assert probe.history.latest.extra["via"] == "strategy"
        assert len(probe.history.scalar("loss")["mean"]) == 5  # scalars flow either way
        probe.detach()

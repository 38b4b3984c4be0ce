"""torch.compile and bf16 autocast: what the probe records there, checked against references."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

import trainscope
from trainscope.history import LAYER_METRICS

STEPS = 9
EVERY = 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 5)
    )


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(STEPS, 64, 20, generator=g), torch.randint(0, 5, (STEPS, 64), generator=g)


def _train(
    fwd, opt, probe, steps: int = STEPS, autocast: bool = False
) -> list[dict[str, np.ndarray]]:
    x, y = _data()
    recs = []
    for s in range(steps):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = fwd(x[s])
            loss = nn.functional.cross_entropy(out.float(), y[s])
        probe.log(loss=loss)
        loss.backward()
        opt.step()
        probe.flush()
        rec = probe.history.latest
        if rec is not None and rec.step == s:
            recs.append({m: np.array(v) for m, v in rec.metrics.items()})
    return recs


def _eager_reference() -> list[dict[str, np.ndarray]]:
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    return _train(m, opt, trainscope.Probe(m, opt, every=EVERY))


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _compiled(how: str, backend: str = "aot_eager"):
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    if how == "probe_the_compiled_module":
        fwd = torch.compile(m, backend=backend)
        probe = trainscope.Probe(fwd, opt, every=EVERY)
    else:
        probe = trainscope.Probe(m, opt, every=EVERY)
        fwd = torch.compile(m, backend=backend)
    return fwd, opt, probe


@pytest.mark.parametrize("how", ["probe_the_compiled_module", "compile_the_probed_model"])
def test_compiled_model_statistics_match_eager(how) -> None:
    ref = _eager_reference()
    torch._dynamo.reset()
    fwd, opt, probe = _compiled(how)
    if how == "probe_the_compiled_module":
        assert probe.history.layer_names[0] == "_orig_mod.0"
    recs = _train(fwd, opt, probe)
    assert probe.errors == []
    # parameter, activation and output-gradient statistics: all equal to eager execution
    assert len(recs) == len(ref) == len(range(0, STEPS, EVERY))
    for a, b in zip(ref, recs, strict=True):
        for metric in LAYER_METRICS:
            np.testing.assert_allclose(
                b[metric], a[metric], rtol=1e-5, atol=1e-7, equal_nan=True, err_msg=metric
            )
    # sampled and unsampled steps alternate without recompiling after the first of each
    graphs = _graphs()
    _train(fwd, opt, probe)
    assert _graphs() == graphs, "toggling the sampling hooks keeps recompiling"


@pytest.mark.slow
def test_inductor_compiled_model_records_parameters_and_activations() -> None:
    torch._dynamo.reset()
    ref = _eager_reference()
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    fwd = torch.compile(m)  # inductor: C++ kernels built with the system compiler
    probe = trainscope.Probe(fwd, opt, every=EVERY)
    t0 = time.perf_counter()
    recs = _train(fwd, opt, probe)
    assert probe.errors == [] and time.perf_counter() - t0 < 600
    assert len(recs) == len(ref)
    for a, b in zip(ref, recs, strict=True):
        for metric in LAYER_METRICS:
            # inductor fuses and reorders floating-point work: equal to eager up to rounding
            np.testing.assert_allclose(
                b[metric], a[metric], rtol=2e-4, atol=1e-6, equal_nan=True, err_msg=metric
            )


def test_bf16_autocast_end_to_end() -> None:
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    probe = trainscope.Probe(m, opt, every=EVERY, loss_fn=None)
    seen: dict[int, torch.Tensor] = {}
    x, y = _data()

    def capture(i: int):
        def hook(mod: nn.Module, args: object, out: torch.Tensor) -> None:
            seen[i] = out.detach().clone()

        return hook

    handles = [mod.register_forward_hook(capture(i)) for i, mod in enumerate(m)]
    losses = []
    for s in range(STEPS):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x[s])
            loss = nn.functional.cross_entropy(out.float(), y[s])
        probe.log(loss=loss)
        loss.backward()
        opt.step()
        probe.flush()
        losses.append(float(loss.detach()))
        if s % EVERY:
            continue
        rec = probe.history.latest
        assert rec is not None and rec.step == s
        assert seen[0].dtype == torch.bfloat16  # autocast really ran the Linear layers in bf16
        for i, t in seen.items():
            v = t.double().numpy().reshape(-1)  # fp64 reference of the very same bf16 activations
            assert rec.metrics["act_mean"][i] == pytest.approx(v.mean(), rel=1e-5, abs=1e-6)
            assert rec.metrics["act_std"][i] == pytest.approx(v.std(), rel=1e-4, abs=1e-6)
            assert rec.metrics["act_min"][i] == v.min() and rec.metrics["act_max"][i] == v.max()
            assert rec.metrics["act_frac_zero"][i] == pytest.approx((v == 0).mean(), abs=1e-9)
            assert rec.metrics["act_nonfinite"][i] == 0
        for metric in ("act_std", "ograd_std", "grad_norm", "weight_norm"):
            assert np.isfinite(rec.metrics[metric][[0, 2, 4]]).all(), metric
        assert rec.act_hist is not None and rec.ograd_hist is not None
        np.testing.assert_allclose(
            rec.act_hist.sum(axis=1), [seen[i].numel() for i in range(len(m))], rtol=1e-5
        )
    for h in handles:
        h.remove()
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    # and the whole run is close to the fp32 run (bf16 keeps ~3 significant digits)
    ref = _eager_reference()
    got = _bf16_records()
    for a, b in zip(ref, got, strict=True):
        for metric in ("act_mean", "act_std", "ograd_std", "grad_norm", "weight_norm"):
            np.testing.assert_allclose(
                b[metric], a[metric], rtol=5e-2, atol=2e-3, equal_nan=True, err_msg=metric
            )


def _bf16_records() -> list[dict[str, np.ndarray]]:
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    return _train(m, opt, trainscope.Probe(m, opt, every=EVERY), autocast=True)


def test_fullgraph_compile_is_refused_with_a_clear_error() -> None:
    m = _model()
    fwd = torch.compile(m, backend="aot_eager", fullgraph=True)
    with pytest.raises(ValueError, match="fullgraph=True"):
        trainscope.Probe(fwd, torch.optim.SGD(m.parameters(), lr=0.1))
    assert not m[0]._forward_hooks and not fwd._forward_pre_hooks  # nothing was attached

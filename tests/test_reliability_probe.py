"""Reliability of the recording engine (issue 11: 12a, 13, 14, 15; issue 13: tied weights).

Each test reproduces a defect found by the reliability review (``reviews/reliability``) or on real
architectures, and asserts the healthy outcome.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import trainscope
from trainscope import Probe

from .conftest import make_mlp


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: Any = None) -> None:
    opt.zero_grad()
    out = model(x)
    loss = nn.functional.cross_entropy(out, y) if y is not None else out.float().pow(2).mean()
    loss.backward()
    opt.step()


# --------------------------------------------------------------------------- 12a findings("warning")
def test_findings_takes_the_severity_positionally_as_the_docs_write_it() -> None:
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt, every=1)
    for _ in range(3):
        _step(model, opt, torch.randn(16, 20), torch.randint(0, 5, (16,)))
    positional = probe.findings("warning")  # README: probe.findings("warning")
    keyword = probe.findings(min_severity="warning")
    assert [f.label for f in positional] == [f.label for f in keyword]
    assert all(f.severity in ("warning", "error") for f in positional)
    probe.detach()


# --------------------------------------------------------------------------- 14 per-tensor degrade
def test_an_empty_batch_does_not_switch_off_input_statistics() -> None:
    model = nn.Sequential(nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.MSELoss()
    probe = Probe(model, opt, loss_fn=loss_fn, every=1)
    opt.zero_grad()
    loss_fn(model(torch.zeros(0, 8)), torch.zeros(0, 3)).backward()  # an empty batch
    opt.step()
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model(torch.randn(16, 8)), torch.randn(16, 3)).backward()
        opt.step()
    probe.flush()
    rec = probe.history.latest
    assert rec is not None and rec.step == 3
    assert rec.inputs and rec.inputs["numel"] == 16 * 8  # input statistics still recorded
    assert rec.loss_inputs and rec.loss_inputs["pred_shape"] == (16, 3)
    assert probe._enabled["inputs"], "one empty batch switched the input statistics off"
    probe.detach()


def _embedding_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Flatten(), nn.Linear(8, 2))


def test_a_sparse_gradient_is_measured_and_other_parameters_keep_their_statistics() -> None:
    model = _embedding_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt, every=1)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        idx = torch.randint(0, 10, (4, 2), generator=g)
        opt.zero_grad()
        model(idx).sum().backward()
        sparse_grad = model[0].weight.grad
        assert sparse_grad is not None and sparse_grad.is_sparse
        expected = float(sparse_grad.to_dense().norm())
        opt.step()
    probe.flush()
    assert probe._enabled["params"], "one sparse gradient switched all parameter statistics off"
    rec = probe.history.latest
    assert rec is not None and rec.step == 2
    names = [layer.name for layer in probe.layers]
    lin, emb = names.index("2"), names.index("0")
    assert rec.metrics["weight_norm"][lin] == pytest.approx(float(model[2].weight.detach().norm().pow(2)
                                                                 + model[2].bias.detach().norm().pow(2)) ** 0.5, rel=1e-5)
    assert np.isfinite(rec.metrics["grad_norm"][lin])
    # the sparse gradient itself is measured exactly (duplicate indices summed), not dropped
    assert rec.metrics["grad_norm"][emb] == pytest.approx(expected, rel=1e-5)
    assert rec.metrics["grad_nonfinite"][emb] == 0
    assert not [e for e in probe.errors if "params" in e.where]
    probe.detach()


def test_a_tensor_that_cannot_be_measured_degrades_alone_and_is_noted_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any per-tensor failure (an exotic layout or dtype) marks that tensor's statistics as not
    measured, says so once, and leaves the other parameters' statistics on."""
    from trainscope import stats as S

    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt, every=1)
    bad = model[2].weight
    real_foreach = torch._foreach_norm
    real_norm = S._tensor_norm

    def foreach(ts: Any, *a: Any, **k: Any) -> Any:
        if any(t is bad for t in ts):
            raise RuntimeError("cannot measure this tensor")
        return real_foreach(ts, *a, **k)

    def one(t: torch.Tensor) -> torch.Tensor:
        if t is bad:
            raise RuntimeError("cannot measure this tensor")
        return real_norm(t)

    monkeypatch.setattr(torch, "_foreach_norm", foreach)
    monkeypatch.setattr(S, "_tensor_norm", one)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            _step(model, opt, torch.randn(16, 20), torch.randint(0, 5, (16,)))
        probe.flush()
    assert probe._enabled["params"]
    rec = probe.history.latest
    assert rec is not None and rec.step == 2
    names = [layer.name for layer in probe.layers]
    first, second = names.index("0"), names.index("2")
    assert np.isfinite(rec.metrics["weight_norm"][first])
    # the layer still reports its bias; the weight's norm is left out, not turned into NaN/inf
    assert rec.metrics["weight_norm"][second] == pytest.approx(float(model[2].bias.detach().norm()), rel=1e-5)
    assert rec.metrics["grad_nonfinite"][second] == 0
    notes = [w for w in caught if "2.weight" in str(w.message)]
    assert len(notes) == 1, [str(w.message) for w in caught]
    assert sum("2.weight" in e.error for e in probe.errors) == 1
    probe.detach()


# --------------------------------------------------------------------------- 15 aborted forward
class Flaky(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 3)
        self.fail_next = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("data error half-way")
        return self.b(h)


def _flaky_run(fail: bool, accumulate: int = 1) -> tuple[Probe, nn.Module]:
    torch.manual_seed(0)
    model = Flaky()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    probe = Probe(model, opt, loss_fn=loss_fn, every=1)
    g = torch.Generator().manual_seed(1)
    for k in range(6):
        xs = [torch.randn(16, 8, generator=g) for _ in range(accumulate)]
        ys = [torch.randint(0, 3, (16,), generator=g) for _ in range(accumulate)]
        if fail and k == 3:
            model.fail_next = True
            with pytest.raises(RuntimeError):
                model(xs[0] * 1000)  # a bad batch: the forward fails after layer a
        opt.zero_grad()
        for j in range(accumulate):
            if fail and k == 4 and j == 1:  # a micro-batch that fails between two good ones
                model.fail_next = True
                with pytest.raises(RuntimeError):
                    model(xs[j] * 1000)
            loss_fn(model(xs[j]), ys[j]).backward()
        opt.step()
    probe.flush()
    return probe, model


@pytest.mark.parametrize("accumulate", [1, 3])
def test_a_forward_that_raises_half_way_leaves_no_trace_in_the_next_record(accumulate: int) -> None:
    failed, mf = _flaky_run(True, accumulate)
    clean, mc = _flaky_run(False, accumulate)
    assert all(torch.equal(a, b) for a, b in zip(mf.state_dict().values(), mc.state_dict().values(), strict=True))
    ia = [x.name for x in failed.layers].index("a")
    for metric in ("act_max", "act_mean", "act_std", "act_abs_max"):
        sf, vf = failed.history.layer_series(metric)
        sc, vc = clean.history.layer_series(metric)
        assert list(sf) == list(sc)
        np.testing.assert_allclose(vf[:, ia], vc[:, ia], rtol=1e-5, err_msg=metric)
    # the first-forward checks ran on the good forward: no gradient "left over" from the failed one
    for rf, rc in ((failed.history.latest, clean.history.latest),):
        assert rf is not None and rc is not None
        assert rf.extra.get("grad_norm_before_forward") == rc.extra.get("grad_norm_before_forward")
    hf, hc = failed.history.histograms("act")[1], clean.history.histograms("act")[1]
    np.testing.assert_allclose(hf, hc)  # counts: the good micro-batches, all of them, only them
    sf_in = failed.history.scalar("grad_norm_before_forward")["mean"]
    sc_in = clean.history.scalar("grad_norm_before_forward")["mean"]
    np.testing.assert_allclose(sf_in, sc_in, rtol=1e-6)
    assert not failed.errors
    failed.detach()
    clean.detach()


def test_the_recent_batch_is_the_one_that_trained_not_the_failed_one() -> None:
    torch.manual_seed(0)
    model = Flaky()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    probe = Probe(model, opt, loss_fn=loss_fn, every=1)
    good, bad, y = torch.randn(4, 8), torch.randn(4, 8) * 1000, torch.randint(0, 3, (4,))
    model.fail_next = True
    with pytest.raises(RuntimeError):
        model(bad)
    opt.zero_grad()
    loss_fn(model(good), y).backward()
    opt.step()
    assert probe.recent_batches[-1].args[0] is good
    assert probe.recent_batches[-1].target is y
    probe.detach()


# --------------------------------------------------------------------------- tied weights
class TiedLM(nn.Module):
    """Embedding + GRU + a head whose weight *is* the embedding's (GPT-2 / T5 style tying)."""

    def __init__(self, vocab: int = 30, dim: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab)
        self.head.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.emb(tokens))
        out: torch.Tensor = self.head(h)
        return out


def test_a_tied_weight_is_counted_once_and_shown_under_every_owner() -> None:
    torch.manual_seed(0)
    model = TiedLM()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = Probe(model, opt, every=1)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        tok = torch.randint(0, 30, (8, 12), generator=g)
        opt.zero_grad()
        logits = model(tok[:, :-1])
        nn.functional.cross_entropy(logits.reshape(-1, 30), tok[:, 1:].reshape(-1)).backward()
        shared_grad = float(model.emb.weight.grad.norm())  # type: ignore[union-attr]
        opt.step()
    probe.flush()
    rec = probe.history.latest
    assert rec is not None
    names = [x.name for x in probe.layers]
    emb, head = names.index("emb"), names.index("head")
    w = float(model.emb.weight.detach().norm())
    assert rec.metrics["weight_norm"][emb] == pytest.approx(w, rel=1e-5)
    head_w = (w**2 + float(model.head.bias.detach().norm()) ** 2) ** 0.5
    assert rec.metrics["weight_norm"][head] == pytest.approx(head_w, rel=1e-5)
    assert rec.metrics["grad_norm"][emb] == pytest.approx(shared_grad, rel=1e-5)
    assert rec.metrics["grad_norm"][head] >= shared_grad * (1 - 1e-5)
    for m in ("update_ratio", "dist_init", "grad_nonfinite"):
        assert np.isfinite(rec.metrics[m][head]) and np.isfinite(rec.metrics[m][emb]), m
    # counted once: the whole-model gradient norm has the shared weight once
    expected_total = float(
        torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]).norm()  # type: ignore[union-attr]
    )
    total = probe.history.scalar("grad_norm_total")["mean"][-1]
    assert total == pytest.approx(expected_total, rel=1e-5)
    assert probe.param_in_optimizer.get("head.weight") is True
    assert probe.param_in_optimizer.get("emb.weight") is True
    found = {f.label for f in probe.findings("warning")}
    assert "frozen_parameters" not in found
    probe.detach()


# --------------------------------------------------------------------------- 13 plain Probe under DDP
def _ddp_worker(rank: int, world: int, init_file: str, logdir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        result: dict[str, Any] = {"rank": rank}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            probe = trainscope.Probe(ddp, opt, every=1, logdir=logdir)
            g = torch.Generator().manual_seed(rank)
            for _ in range(4):
                opt.zero_grad()
                ddp(torch.randn(8, 6, generator=g)).pow(2).mean().backward()
                opt.step()
            probe.detach()
        result["writer"] = probe.run_writer is not None
        result["samples"] = probe.history.samples()
        result["meta"] = {k: probe.history.meta.get(k) for k in ("rank", "world_size")}
        result["warnings"] = [str(w.message) for w in caught if "trainscope" in str(w.message)]
        result["errors"] = [e.error for e in probe.errors]
        dist.barrier()
    except BaseException as e:  # report, then let the test fail on it
        result = {"rank": rank, "crash": f"{type(e).__name__}: {e}"}
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
        dist.destroy_process_group()


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="gloo is not available"
)
def test_plain_probe_on_every_ddp_rank_writes_from_rank_0_only(tmp_path: Path) -> None:
    logdir = tmp_path / "run"
    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(
        _ddp_worker,
        args=(2, str(tmp_path / "init"), str(logdir), str(out)),
        nprocs=2,
        join=True,
    )
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    assert "crash" not in r0 and "crash" not in r1, (r0, r1)
    assert r0["writer"] and not r1["writer"]
    assert r0["samples"] == 4 and r1["samples"] == 4  # every rank still records in memory
    assert r0["meta"] == {"rank": 0, "world_size": 2}
    assert r1["meta"] == {"rank": 1, "world_size": 2}
    assert not r0["errors"] and not r1["errors"]
    assert any("DistributedProbe" in w for w in r1["warnings"])  # says what combines the ranks
    run = trainscope.open(str(logdir))
    assert run.history.samples() == 4
    assert run.history.meta.get("rank") == 0

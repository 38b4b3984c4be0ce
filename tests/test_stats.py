"""Statistics: values equal straightforward references; histograms never drop non-finite values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from trainscope import stats as S


def _summary(x: torch.Tensor, **kw: object) -> S.ActSummary:
    row, _ = S.summarize(x, **kw)  # type: ignore[arg-type]
    return S.finalize_summaries(row.numpy()[None], np.array([0]), np.array([x.numel()]), 1)


def test_summary_matches_reference() -> None:
    x = torch.randn(64, 32).relu_() * 3 - 0.5
    s = _summary(x)
    assert s.mean[0] == pytest.approx(x.mean().item(), rel=1e-5, abs=1e-6)
    assert s.std[0] == pytest.approx(x.std(unbiased=False).item(), rel=1e-4)
    assert s.min[0] == pytest.approx(x.min().item())
    assert s.max[0] == pytest.approx(x.max().item())
    assert s.abs_max[0] == pytest.approx(x.abs().max().item())
    assert s.frac_zero[0] == pytest.approx(
        (x == 0).float().mean().item()
    )  # exact below HIST_SAMPLE
    assert s.nonfinite[0] == 0
    assert np.isnan(s.frac_sat[0])


def test_large_tensor_fractions_are_close_estimates() -> None:
    x = torch.randn(400_000)
    x[x < 0.3] = 0.0
    s = _summary(x)
    true = (x == 0).float().mean().item()
    assert abs(s.frac_zero[0] - true) < 0.02  # 16k-element subsample: s.e. ~0.004
    assert s.mean[0] == pytest.approx(x.mean().item(), rel=1e-4)


def test_saturation_count_for_tanh_bounds() -> None:
    x = torch.tanh(torch.randn(10_000) * 5)
    s = _summary(x, bounds=(0.0, 1.0, 0.98))
    assert s.frac_sat[0] == pytest.approx((x.abs() >= 0.98).float().mean().item())


def test_bf16_input_is_summarized_in_fp32() -> None:
    x = torch.randn(1000, 100) * 100
    xb = x.to(torch.bfloat16)
    s = _summary(xb)
    ref = xb.float()
    assert s.mean[0] == pytest.approx(ref.mean().item(), rel=1e-3, abs=1e-2)
    assert s.std[0] == pytest.approx(ref.std(unbiased=False).item(), rel=1e-3)
    assert np.isfinite(s.std[0])


def test_nonfinite_detected_exactly_and_counted_in_exact_mode() -> None:
    x = torch.randn(100)
    x[3] = math.nan
    x[7] = math.inf
    x[9] = -math.inf
    fast = _summary(x)
    assert fast.nonfinite[0] == -1  # present, count unknown: never reported as 0
    exact = _summary(x, exact_nonfinite=True)
    assert exact.nonfinite[0] == 3
    assert (exact.nan[0], exact.posinf[0], exact.neginf[0]) == (1, 1, 1)


@pytest.mark.parametrize("n", [1_000, S._SPLIT_EXTREMA, 4 * S._SPLIT_EXTREMA])
def test_extrema_are_exact_on_both_paths(n: int) -> None:
    """Small tensors take aminmax, large fp32 CPU tensors amin + amax: the same answers,
    non-contiguous layouts and non-finite values included."""
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n // 8, 8, generator=g) * 7
    for t in (x, x.t(), x[:, ::2]):
        s = _summary(t)
        assert (s.min[0], s.max[0]) == (t.min().item(), t.max().item())
    y = x.clone()
    y[5, 3] = math.inf
    y[7, 1] = -math.inf
    s = _summary(y.t())
    assert (s.min[0], s.max[0]) == (-math.inf, math.inf) and s.nonfinite[0] == -1
    y[2, 2] = math.nan
    s = _summary(y)
    assert np.isnan(s.min[0]) and np.isnan(s.max[0]) and s.nonfinite[0] == -1


def test_histogram_codes_cover_every_value_class() -> None:
    x = torch.tensor([-math.inf, -1e9, -1.0, -1e-12, 0.0, 1e-12, 1.0, 1e9, math.inf, math.nan])
    codes = S.hist_codes(x).tolist()
    assert codes[0] == S.NEG_INF and codes[8] == S.POS_INF and codes[9] == S.NAN
    assert codes[4] == S.ZERO
    assert codes[1] == 1 and codes[7] == S.POS_INF - 1  # finite overflow -> outermost bins
    assert codes[3] == S.ZERO - 1 and codes[5] == S.ZERO + 1  # tiny values -> innermost bins
    assert codes[2] == 2 * S.ZERO - codes[6]  # symmetric


def _reference_bin(v: float) -> int:
    """The documented bin of one value, from the definition (float64 arithmetic)."""
    if math.isnan(v):
        return S.NAN
    if v == 0:
        return S.ZERO
    if math.isinf(v):
        return S.POS_INF if v > 0 else S.NEG_INF
    m = math.floor(S.BINS_PER_DECADE * (math.log10(abs(v)) - S.LOG_MIN))
    m = min(max(m, 0), S.NMAG - 1)
    return S.ZERO + (m + 1 if v > 0 else -(m + 1))


def test_histogram_codes_match_the_definition_and_are_exact_on_edges() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20_000, generator=g) * torch.exp(torch.randn(20_000, generator=g) * 9)
    got = S.hist_codes(x).tolist()
    ref = [_reference_bin(v) for v in x.double().tolist()]
    assert got == ref
    # the fp32 edges themselves: an element equal to an edge opens its bin (positive side) and
    # closes it (negative side: |x| in [e_k, e_k+1) either way); one ulp below stays below
    e = torch.from_numpy(S._MAG_EDGES[1:-1].astype(np.float32))
    below = torch.nextafter(e, torch.zeros_like(e))
    k = torch.arange(1, S.NMAG)
    assert S.hist_codes(e).tolist() == (S.ZERO + 1 + k).tolist()
    assert S.hist_codes(below).tolist() == (S.ZERO + k).tolist()
    assert S.hist_codes(-e).tolist() == (S.ZERO - 1 - k).tolist()
    assert S.hist_codes(-below).tolist() == (S.ZERO - k).tolist()
    sub = torch.tensor([1e-45, -1e-45, 3.4e38, -3.4e38, -0.0])
    assert S.hist_codes(sub).tolist() == [S.ZERO + 1, S.ZERO - 1, S.POS_INF - 1, 1, S.ZERO]


def test_histogram_bins_a_random_part_of_the_subsample() -> None:
    """Large tensors: the binned part is the random head of the fixed subsample (not its first
    elements in memory order); small ones: an even stride of all elements."""
    x = torch.arange(200_000, dtype=torch.float32)
    idx = S._sample_index(x.numel(), x.device)
    head = idx[: S.HIST_BIN_SAMPLE]
    assert torch.equal(head, head.sort().values) and head.max() > 150_000 and head.min() < 50_000
    assert len(set(idx.tolist())) == S.HIST_SAMPLE
    _, h = S.summarize(x, hist=True)
    assert h is not None and int(h.sum()) == S.HIST_BIN_SAMPLE
    expect = torch.bincount(S.hist_codes(x[head]), minlength=S.NBINS)
    assert torch.equal(h, expect)
    y = torch.linspace(-5, 5, 10_000)
    _, hy = S.summarize(y, hist=True)
    assert hy is not None and int(hy.sum()) == len(range(0, 10_000, 3))


def test_histogram_scaled_counts_sum_to_numel_and_keep_nonfinite() -> None:
    x = torch.randn(100_000)
    x[:1000] = 0.0
    x[5] = math.nan
    row, h = S.summarize(x, hist=True)
    assert h is not None
    summ = S.finalize_summaries(row.numpy()[None], np.array([0]), np.array([x.numel()]), 1)
    scaled = S.scale_histograms(h.numpy()[None], summ)[0]
    assert scaled.sum() == pytest.approx(x.numel(), rel=1e-4)
    assert scaled[S.NAN] >= 1  # a single NaN outside the subsample still shows
    assert scaled[S.ZERO] == pytest.approx(1000, rel=0.1)


def test_histogram_does_not_touch_global_rng() -> None:
    state = torch.get_rng_state()
    S.summarize(torch.randn(200_000), hist=True)
    S.summarize(torch.randn(300_000), hist=True)
    after = torch.get_rng_state()
    # randn above consumed the RNG; compare against a replay without the probe calls
    torch.set_rng_state(state)
    torch.randn(200_000)
    torch.randn(300_000)
    assert torch.equal(torch.get_rng_state(), after)


def test_unit_masks() -> None:
    x = torch.zeros(8, 4, 5, 5)
    x[:, 1] = 1.0
    x[0, 3, 0, 0] = 2.0
    assert S.unit_mask(x, 1, positive=True).tolist() == [0, 1, 0, 1]
    g = torch.zeros(6, 3)
    g[2, 0] = -1e-9
    assert S.unit_mask(g, 1, positive=False).tolist() == [1, 0, 0]


def test_combining_calls_equals_concatenation() -> None:
    a, b = torch.randn(50, 7), torch.randn(30, 7) * 2 + 1
    ra, _ = S.summarize(a)
    rb, _ = S.summarize(b)
    s = S.finalize_summaries(
        torch.stack([ra, rb]).numpy(), np.array([0, 0]), np.array([a.numel(), b.numel()]), 1
    )
    ab = torch.cat([a, b])
    assert s.mean[0] == pytest.approx(ab.mean().item(), rel=1e-5)
    assert s.std[0] == pytest.approx(ab.std(unbiased=False).item(), rel=1e-4)
    assert s.n[0] == ab.numel()


def test_parameter_rows_and_per_layer_metrics_equal_a_direct_computation() -> None:
    """ParamTracker's fused row and its grouped host metrics, against torch done by hand: layers
    owned out of parameter order, a layer without gradients, a NaN gradient, a layer without
    parameters."""
    from trainscope._params import ParamTracker

    torch.manual_seed(0)
    mods = nn.ModuleList([nn.Linear(5, 4), nn.Linear(4, 3), nn.Linear(3, 2)])
    owner = {id(mods[0]): 2, id(mods[1]): 0, id(mods[2]): 1}  # layer 3 owns nothing
    pt = ParamTracker(mods, owner, nlayers=4)
    pt.keep_init()
    init = [p.detach().clone() for p in mods.parameters()]
    rows, refs = [], []
    for step in range(3):
        for m in mods:
            for p in m.parameters():
                p.grad = torch.randn_like(p)
        mods[1].weight.grad = None  # layer 0: no gradient for the weight,
        mods[1].bias.grad = None  # nor the bias
        if step == 1:
            mods[0].weight.grad[0, 0] = float("nan")  # layer 2: a NaN gradient
        pt.take_snapshot()
        before = [p.detach().clone() for p in mods.parameters()]
        with torch.no_grad():
            for p in mods.parameters():
                p.add_(torch.randn_like(p), alpha=0.01 * (step + 1))
        rows.append(pt.row(init=True).numpy())  # type: ignore[union-attr]
        now = list(mods.parameters())

        def group(ts: list[torch.Tensor | None], m: int) -> float:
            k = [2 * m, 2 * m + 1]
            present = [ts[j] for j in k if ts[j] is not None]
            if not present:
                return float("nan")
            return math.sqrt(sum(float(t.double().square().sum()) for t in present))  # type: ignore[union-attr]

        ref = np.full((4, 4), np.nan)
        for m, layer in ((0, 2), (1, 0), (2, 1)):
            w = group([p.detach() for p in now], m)
            ref[layer] = [
                w,
                group([p.grad for p in now], m),
                group([b - p.detach() for b, p in zip(before, now, strict=True)], m) / w,
                group([p.detach() - i for p, i in zip(now, init, strict=True)], m),
            ]
        refs.append(ref)
    got = pt.metrics(np.stack(rows))
    for k in range(3):
        np.testing.assert_allclose(got[k, :, :4], refs[k], rtol=1e-5, equal_nan=True)
    # non-finite gradient flags: -1 ("some") on layer 2 at step 1 only, NaN where no gradient
    nf = got[:, :, 4]
    assert nf[1, 2] == -1 and nf[0, 2] == 0 and nf[2, 2] == 0 and nf[1, 1] == 0
    assert np.isnan(nf[:, 0]).all() and np.isnan(nf[:, 3]).all()
    assert np.isnan(got[:, 3, :4]).all()  # layer 3 owns no parameters
    tot = pt.totals(np.stack(rows))
    assert np.isnan(tot["grad_norm_total"][1]) and np.isfinite(tot["grad_norm_total"][[0, 2]]).all()


def test_subsample_is_the_same_fixed_sample_on_every_layout() -> None:
    """Contiguous tensors are gathered with index_select, others with take (a reshape would copy
    the whole tensor): both must give the same elements in the same logical order."""
    x = torch.randn(8, 16, 20, 20)
    idx = S._sample_index(x.numel(), x.device)
    assert torch.equal(S.subsample(x), x.reshape(-1)[idx])
    y = x.permute(0, 2, 3, 1)  # non-contiguous
    assert not y.is_contiguous()
    assert torch.equal(S.subsample(y), y.reshape(-1)[idx])
    small = torch.randn(10, 10)
    assert torch.equal(S.subsample(small), small.reshape(-1))


def test_statistics_record_no_graph_and_restore_grad_mode() -> None:
    x = torch.randn(40, 30, requires_grad=True)
    y = x * 2  # a non-leaf, as a module output is
    row, h = S.summarize(y, hist=True)
    assert not row.requires_grad and row.grad_fn is None and h is not None and torch.is_grad_enabled()
    with torch.no_grad():
        S.summarize(y)
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()

    @S.without_grad
    def boom(t: torch.Tensor) -> None:
        assert not torch.is_grad_enabled()
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        boom(y)
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("contiguous", [True, False])
def test_summary_of_every_float_dtype_is_fp32_and_right(dtype: torch.dtype, contiguous: bool) -> None:
    g = torch.Generator().manual_seed(7)
    base = (torch.randn(300, 120, generator=g) * 3).to(dtype)
    x = base if contiguous else base.t()
    x[0, 0] = 0.0
    row, h = S.summarize(x, bounds=(0.0, 1.0, 0.98), exact_nonfinite=True, hist=True)
    assert row.dtype == torch.float32 and h is not None
    ref = x.double()
    r = row.double()
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2
    assert float(r[0]) == pytest.approx(float(ref.sum()), rel=tol, abs=tol * float(ref.abs().sum()))
    assert float(r[1]) == pytest.approx(float(ref.square().sum()), rel=tol)
    assert (float(r[2]), float(r[3])) == (float(ref.min()), float(ref.max()))
    sub = S.subsample(x)
    assert int(r[4]) == int((sub != 0).sum()) and int(r[5]) == int((sub.abs() >= 0.98).sum())
    assert r[6:9].tolist() == [0.0, 0.0, 0.0]
    assert int(r[9]) == int((sub < 0).sum())  # sub_neg (act_frac_neg)

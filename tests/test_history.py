"""History: bounded memory however long the run, exact bucket summaries, subscribers."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from trainscope.history import LAYER_METRICS, Downsampled, History, StepRecord, Update
from trainscope.layers import LayerInfo
from trainscope.stats import NBINS


def _layers(n: int) -> list[LayerInfo]:
    return [LayerInfo(f"l{i}", "Linear", "linear", 10, 10, False, None, False) for i in range(n)]


def _record(step: int, L: int, rng: np.random.Generator) -> StepRecord:
    return StepRecord(
        step=step,
        time=0.0,
        metrics={m: rng.random(L) for m in LAYER_METRICS},
        act_hist=rng.random((L, NBINS)).astype(np.float32),
        ograd_hist=rng.random((L, NBINS)).astype(np.float32),
        forward_order=list(range(L)),
        backward_order=list(range(L))[::-1],
        first_nonfinite_forward=None,
        first_nonfinite_backward=None,
    )


def test_downsampled_keeps_recent_raw_and_exact_bucket_summaries() -> None:
    d = Downsampled(recent=8, buckets=4)
    values = np.arange(100, dtype=float) ** 1.5
    for s, v in enumerate(values):
        d.append(s, v)
    a = d.arrays()
    # the 8 most recent points are raw
    assert list(a["first"][-8:]) == list(range(92, 100))
    np.testing.assert_allclose(a["mean"][-8:], values[-8:].astype(np.float32), rtol=1e-6)
    # every bucket's min / max / mean is that of the raw points it covers, and nothing is lost
    for first, last, mean, lo, hi, cnt in zip(
        a["first"], a["last"], a["mean"], a["min"], a["max"], a["count"], strict=True
    ):
        covered = values[int(first) : int(last) + 1]
        assert len(covered) == cnt
        assert mean == pytest.approx(covered.mean(), rel=1e-5)
        assert lo == pytest.approx(covered.min(), rel=1e-6) and hi == pytest.approx(
            covered.max(), rel=1e-6
        )
    assert a["count"].sum() == 100
    assert len(d) <= 8 + 4 + 1


def test_scalar_memory_is_flat_over_a_long_stream() -> None:
    h = History(_layers(3), scalar_recent=256, scalar_buckets=64)
    for s in range(2000):
        h.add_scalars(s, {"loss": 1.0 / (s + 1), "lr": 0.1})
    before = h.memory_bytes()
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    for s in range(2000, 200_000):
        h.add_scalars(s, {"loss": 1.0 / (s + 1), "lr": 0.1})
    snap1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(st.size_diff for st in snap1.compare_to(snap0, "filename"))
    assert h.memory_bytes() == before
    assert grown < 200_000  # bytes: no per-point growth (198k points appended)
    a = h.scalar("loss")
    assert a["count"].sum() == 200_000
    assert len(a["step"]) <= 256 + 64 + 1


def test_layer_and_histogram_memory_flat_for_many_records() -> None:
    L = 12
    h = History(_layers(L), layer_recent=16, layer_buckets=16, hist_recent=8, hist_buckets=8)
    rng = np.random.default_rng(0)
    for s in range(50):
        h.add_record(_record(s, L, rng))
    m0 = h.memory_bytes()
    for s in range(50, 3000):
        h.add_record(_record(s, L, rng))
    assert h.memory_bytes() == m0
    steps, vals = h.layer_series("act_std")
    assert vals.shape[1] == L and len(steps) <= 16 + 16 + 1
    hs, counts = h.histograms("act")
    assert counts.shape[1:] == (L, NBINS) and len(hs) <= 8 + 8 + 1
    assert h.samples() == 3000


def test_subscribers_are_called_and_isolated_from_errors() -> None:
    h = History(_layers(1))
    seen: list[Update] = []
    sub = h.subscribe(seen.append)

    def broken(u: Update) -> None:
        raise RuntimeError("reader bug")

    h.subscribe(broken)
    h.add_event("note", "hello", step=3)
    assert seen and seen[-1].events and seen[-1].step == 3
    assert h.subscriber_errors and "reader bug" in h.subscriber_errors[0]
    sub.remove()
    h.add_event("note", "again")
    assert len(seen) == 1


def test_unknown_metric_is_a_clear_error() -> None:
    h = History(_layers(1))
    with pytest.raises(KeyError, match="unknown metric"):
        h.layer_series("act_meen")


def test_dead_window_or_of_activity() -> None:
    h = History(_layers(1), dead_window=3)
    m = h.update_units(0, np.array([1, 0, 0, 0]))
    assert m.tolist() == [False, True, True, True]
    h.update_units(0, np.array([0, 1, 0, 0]))
    m = h.update_units(0, np.array([0, 0, 0, 0]))
    assert m.tolist() == [False, False, True, True]
    m = h.update_units(0, np.array([0, 0, 0, 0]))  # the first sample left the window
    assert m.tolist() == [True, False, True, True]


@pytest.mark.parametrize("shape", [(), (3, 2)])
@pytest.mark.parametrize("chunks", [[1, 1, 5, 300, 7, 64, 1000, 3, 2000], [5000], [9, 9, 9, 9]])
def test_extend_equals_append_one_by_one(shape: tuple[int, ...], chunks: list[int]) -> None:
    rng = np.random.default_rng(1)
    total = sum(chunks)
    steps = np.cumsum(rng.integers(1, 3, total))
    values = rng.normal(size=(total, *shape)).astype(np.float32)
    a = Downsampled(shape, recent=64, buckets=16)
    b = Downsampled(shape, recent=64, buckets=16)
    for k, v in zip(steps, values, strict=True):
        a.append(int(k), v)
    i = 0
    for c in chunks:
        b.extend(steps[i : i + c], values[i : i + c])
        i += c
    aa, bb = a.arrays(), b.arrays()
    assert a.total == b.total == total
    for key in aa:
        np.testing.assert_allclose(aa[key], bb[key], rtol=1e-6, err_msg=key)

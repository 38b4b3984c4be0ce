"""Pure payload helpers of the dashboard: decimation, smoothing, heatmap images, table cells."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainscope.history import LAYER_METRICS, History
from trainscope.stats import NAN, NBINS, POS_INF, ZERO
from trainscope.widgets._health import cell_status, column_status
from trainscope.widgets._series import (
    bin_label,
    ema,
    envelope,
    hist_image,
    jsonable_number,
    mean_decimate,
    minmax_decimate,
    nice_ticks,
    tick_format,
)
from trainscope.widgets._throttle import Throttle


def test_minmax_decimate_keeps_every_bucket_extreme_in_time_order() -> None:
    rng = np.random.default_rng(0)
    x = np.arange(100_000, dtype=np.float64)
    y = rng.normal(size=100_000)
    y[12_345] = 50.0  # a spike must survive
    y[77_777] = -40.0
    dx, dy = minmax_decimate(x, y, 1000)
    assert len(dx) <= 1000 and dx.dtype == np.float32 and dy.dtype == np.float32
    assert np.all(np.diff(dx) >= 0), "points stay in time order"
    assert dy.max() == pytest.approx(50.0) and dy.min() == pytest.approx(-40.0)
    k = math.ceil(100_000 / 500)  # points per bucket
    assert dx[0] < k and dx[-1] >= 100_000 - k  # the first and the last bucket are both there
    # every output point is an input point
    assert np.all(dy == y[dx.astype(np.int64)].astype(np.float32))


def test_minmax_decimate_small_series_and_nan_gaps() -> None:
    x, y = np.arange(10.0), np.arange(10.0)
    dx, _ = minmax_decimate(x, y, 1000)
    assert np.array_equal(dx, x.astype(np.float32))
    y2 = np.full(5000, np.nan)
    y2[:10] = 1.0
    _, d2 = minmax_decimate(np.arange(5000.0), y2, 100)
    assert np.isnan(d2).any() and np.nanmax(d2) == 1.0
    with pytest.raises(ValueError, match="same length"):
        minmax_decimate(np.arange(3.0), np.arange(4.0))


def test_envelope_turns_buckets_into_min_max_pairs() -> None:
    h = History(scalar_recent=8, scalar_buckets=4)
    for s in range(40):
        h.add_scalars(s, {"loss": float(s % 7)})
    series = h.scalar("loss")
    x, y = envelope(series)
    assert y.max() == 6.0 and y.min() == 0.0  # old points are bucketed but their range is kept
    assert np.all(np.diff(x) >= 0)
    raw = series["count"] == 1
    assert np.array_equal(y[-raw.sum() :], series["mean"][raw])


def test_mean_decimate_weighted_and_multi_line() -> None:
    x = np.arange(10.0)
    y = np.stack([np.arange(10.0), np.full(10, 2.0)], axis=1)
    xm, ym, w = mean_decimate(x, y, None, 5)
    assert len(xm) == 5 and ym.shape == (5, 2)
    assert np.allclose(ym[:, 1], 2.0) and np.allclose(ym[:, 0], [0.5, 2.5, 4.5, 6.5, 8.5])
    assert w.sum() == 10


def _ema_reference(y: np.ndarray, count: np.ndarray, window: float) -> np.ndarray:
    beta = 1 - 1 / window
    s = d = 0.0
    out = []
    for v, c in zip(y, count, strict=True):
        if math.isfinite(v):
            w = beta ** max(c, 1)
            s, d = w * s + (1 - w) * v, w * d + (1 - w)
        out.append(s / d if d > 0 else math.nan)
    return np.array(out)


@pytest.mark.parametrize("window", [3.0, 50.0, 800.0])
def test_ema_matches_the_recursive_definition(window: float) -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(size=3000)
    y[::101] = np.nan
    y[7] = np.inf
    count = np.where(rng.random(3000) < 0.2, rng.integers(1, 5000, 3000), 1)
    got = ema(y, count, window)
    ref = _ema_reference(y, count, window)
    assert np.allclose(got, ref, rtol=1e-9, atol=1e-12, equal_nan=True)


def test_hist_image_crops_to_used_bins_and_flags_non_finite_rows() -> None:
    counts = np.zeros((3, NBINS))
    counts[0, ZERO + 10] = 5
    counts[1, ZERO + 20] = 5
    counts[2, ZERO] = 1
    img = hist_image(counts)
    assert img["bins"][0] == ZERO and img["bins"][-1] == ZERO + 20  # cropped, zero kept
    assert not any(img["special"])
    data = np.frombuffer(img["values"], np.uint8).reshape(img["rows"], img["cols"])
    assert (
        data[img["bins"].index(ZERO + 10), 0] == 255 and data[img["bins"].index(ZERO + 10), 1] == 0
    )
    counts[2, NAN] = 3
    counts[1, POS_INF] = 1
    img2 = hist_image(counts)
    assert img2["bins"][-2:] == [POS_INF, NAN] and img2["special"][-2:] == [True, True]
    assert img2["labels"][-2:] == ["+Inf", "NaN"]
    with pytest.raises(ValueError):
        hist_image(np.zeros((3, 7)))


def test_bin_labels_are_readable_and_symmetric() -> None:
    assert bin_label(ZERO) == "0"
    pos = [bin_label(b) for b in range(ZERO + 1, POS_INF)]
    neg = [bin_label(b) for b in range(ZERO - 1, 0, -1)]
    assert neg == ["−" + p for p in pos]
    assert "1.5" in pos and "68" in pos


def test_jsonable_number_and_cell_status() -> None:
    assert jsonable_number(0.123456) == 0.1235
    assert jsonable_number(float("nan")) is None
    assert jsonable_number(float("-inf")) == "-inf"
    assert cell_status("update_ratio", 1e-3) == 0
    assert cell_status("update_ratio", 5e-2) == 1
    assert cell_status("update_ratio", 1.0) == 2
    assert cell_status("act_dead_frac", 0.6) == 2
    assert cell_status("act_std", float("nan")) is None
    assert cell_status("grad_norm", float("inf")) == 2
    assert list(column_status("act_frac_zero", np.array([0.1, 0.7, 0.99, np.nan]))) == [0, 1, 2, -1]


def test_throttle() -> None:
    t = Throttle(0.5)
    assert t.due(100.0) and not t.due(100.2) and t.due(100.6)
    assert not t.ready(100.7)
    t.reset()
    assert t.ready(0.0)
    with pytest.raises(ValueError):
        Throttle(0)


def test_history_layer_histograms_equal_the_full_copy() -> None:
    """The per-layer accessor the heatmaps use (History.layer_histograms) returns exactly the
    slice of History.histograms, raw and bucketed points alike."""
    from trainscope.history import StepRecord
    from trainscope.layers import LayerInfo

    layers = [LayerInfo(f"l{i}", "Linear", "linear", 1, 1, False, None, False) for i in range(3)]
    h = History(layers, hist_recent=4, hist_buckets=4)
    rng = np.random.default_rng(0)
    for step in range(40):
        metrics = {m: np.zeros(3) for m in LAYER_METRICS}
        hist = rng.integers(0, 50, size=(3, NBINS)).astype(np.float64)
        h.add_record(
            StepRecord(step, 0.0, metrics, hist, hist * 2, [0, 1, 2], [2, 1, 0], None, None)
        )
    steps, full = h.histograms("ograd")
    for i in range(3):
        s_i, c_i = h.layer_histograms("ograd", i)
        assert np.array_equal(s_i, steps) and np.array_equal(c_i, full[:, i, :])
    with pytest.raises(KeyError):
        h.layer_histograms("weights", 0)


@pytest.mark.parametrize(
    ("lo", "hi"),
    [
        (6.48e-6, 6.64e-6),
        (1.648e-6, 1.731e-6),
        (0.2731, 0.2735),
        (0.0, 1.0),
        (0.95, 0.97),
        (-2.0, 2.0),
        (1e5, 3e5),
        (3.0, 3000.0),
    ],
)
def test_tick_format_tells_adjacent_ticks_apart_in_few_characters(lo: float, hi: float) -> None:
    """The LR finder's loss axis on a memorized model spans 6.48e-6 .. 6.64e-6: its labels used to
    read 0.00000664 and be clipped.  d3's "~g" / "~e" are Python's "g" / "e" with zeros trimmed."""
    ticks = nice_ticks(lo, hi)
    fmt = tick_format(ticks)
    spec = fmt.replace("~", "")
    labels = [format(float(t), spec) for t in ticks]
    assert len(set(labels)) == len(labels), (fmt, labels)
    for x, t in zip(labels, ticks, strict=True):  # exact: 1.725e-6 is not written 1.73e-6
        assert float(x) == pytest.approx(float(t), rel=1e-9, abs=1e-12 * max(abs(lo), abs(hi))), (fmt, labels)
    assert all(len(x) <= 9 for x in labels), (fmt, labels)
    if max(abs(lo), abs(hi)) < 1e-3 or max(abs(lo), abs(hi)) >= 1e5:
        assert fmt.endswith("e")


def test_heatmap_colour_bar_ticks_match_the_cell_encoding() -> None:
    """The colour bar's ticks (drawn by the browser, computed here) sit where a cell holding
    that share of its column is coloured: 10 % of the values in a bin -> the "10%" tick."""
    from trainscope.widgets._series import COLOR_SCALE, hist_image
    from trainscope.widgets.heatmap import Heatmap

    ticks = {label: level for level, label in COLOR_SCALE["ticks"]}
    assert list(ticks) == ["0.1%", "1%", "10%", "100%"] and ticks["100%"] == 1.0
    for share, label in ((0.001, "0.1%"), (0.01, "1%"), (0.1, "10%"), (1.0, "100%")):
        counts = np.zeros((1, NBINS))
        counts[0, ZERO + 5] = share * 1000
        counts[0, ZERO + 6] = (1 - share) * 1000
        img = hist_image(counts)
        v = img["values"][img["bins"].index(ZERO + 5)]
        assert abs((v - 1) / 254 - ticks[label]) <= 0.5 / 254
    w = Heatmap()
    w.show(img, title="t")
    assert w.spec["scale"]["unit"] == "share of the column's values" and w.spec["scale"]["ticks"]

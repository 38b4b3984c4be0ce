"""The one metric vocabulary (trainscope.metrics): history, dashboard table and report read it."""

from __future__ import annotations

import numpy as np
import pytest

from trainscope import history, metrics, report
from trainscope.widgets import _health


def test_history_columns_come_from_the_vocabulary() -> None:
    assert history.LAYER_METRICS == tuple(m.name for m in metrics.LAYER)
    assert history.PARAM_METRICS == tuple(m.name for m in metrics.LAYER if m.source == "param")
    assert len(set(history.LAYER_METRICS)) == len(history.LAYER_METRICS)


def test_dashboard_and_report_columns_come_from_the_vocabulary() -> None:
    assert [c["key"] for c in _health.COLUMNS] == [m.name for m in metrics.table_metrics()]
    assert all(metrics.get(c["key"]).table for c in _health.COLUMNS)
    assert [k for k, _ in report._TABLE_METRICS] == [m.name for m in metrics.report_metrics()]
    assert {k for k, _, _ in report._HEATMAPS} == {m.name for m in metrics.LAYER if m.heatmap}


@pytest.mark.parametrize(
    ("name", "values", "expected"),
    [
        ("act_dead_frac", [0.0, 0.1, 0.11, 0.5, 0.51, np.nan], [0, 0, 1, 1, 2, -1]),
        ("act_frac_zero", [0.59, 0.6, 0.94, 0.95], [0, 1, 1, 2]),  # inclusive thresholds
        ("act_std", [1.0, 1e-2, 0.009, 1e-4, 0.9e-4, 11.0, 1e3, 1.1e3, np.inf], [0, 0, 1, 1, 2, 1, 1, 2, 2]),
        ("grad_norm", [0.0, 1e-9, 1e9], [1, 0, 0]),
        ("update_ratio", [0.0, 1e-3, 1e-4, 1e-2, 2e-2, 1e-5, 1e-1, 2e-1, -1.0], [1, 0, 0, 0, 1, 1, 1, 2, 2]),
        ("dist_init", [1e9, -np.inf, np.nan], [0, 2, -1]),  # no thresholds: only inf / NaN
    ],
)
def test_health_thresholds(name: str, values: list[float], expected: list[int]) -> None:
    got = metrics.column_status(name, np.array(values))
    assert got.tolist() == expected
    assert _health.column_status(name, np.array(values)).tolist() == expected


def test_unknown_metric_is_named() -> None:
    with pytest.raises(KeyError, match="unknown metric 'act_nope'; metrics are act_mean"):
        metrics.get("act_nope")


def test_act_frac_neg_is_recorded_per_layer() -> None:
    """The statistic added through the vocabulary (metrics.py + stats.py): the share of negative
    outputs, exact for tensors up to stats.HIST_SAMPLE elements."""
    import torch
    from torch import nn

    import trainscope

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2), nn.ReLU())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = trainscope.Probe(model, opt, every=1)
    x = torch.randn(16, 4)
    seen = {}
    handles = [m.register_forward_hook(lambda mod, a, out, n=n: seen.__setitem__(n, out.detach()))
               for n, m in model.named_children()]
    model(x).sum().backward()
    opt.step()
    probe.flush()
    for h in handles:
        h.remove()
    rec = probe.history.first_record or probe.history.latest
    assert rec is not None
    names = probe.history.layer_names
    got = dict(zip(names, rec.metrics["act_frac_neg"].tolist(), strict=True))
    for n, out in seen.items():
        assert got[n] == pytest.approx(float((out < 0).float().mean()), abs=1e-6), n
    assert got["3"] == 0.0  # a ReLU output is never negative
    probe.detach()


def test_runs_written_before_a_metric_was_added_still_load() -> None:
    from trainscope.history import Downsampled
    from trainscope.runlog import _format as F

    old = Downsampled((3, len(history.LAYER_METRICS) - 1), recent=4, buckets=4)
    rng = np.random.default_rng(0)
    for step in range(20):  # past the recent window: buckets too
        old.append(step, rng.normal(size=(3, len(history.LAYER_METRICS) - 1)))
    before = old.arrays()
    st = old.state_dict()
    F._widen_layer_series(st, len(history.LAYER_METRICS))
    new = Downsampled.from_state(st)
    after = new.arrays()
    assert new.shape == (3, len(history.LAYER_METRICS))
    np.testing.assert_array_equal(after["step"], before["step"])
    np.testing.assert_array_equal(after["mean"][..., :-1], before["mean"])
    assert np.isnan(after["mean"][..., -1]).all()

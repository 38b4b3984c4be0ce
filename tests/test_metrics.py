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

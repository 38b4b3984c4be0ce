"""The one metric vocabulary: every per-layer statistic trainscope records, named once.

Floor 0 of the package (see ``docs/architecture.md``): imports nothing from trainscope.  From
:data:`LAYER` derive the history's columns (:data:`trainscope.history.LAYER_METRICS`,
``PARAM_METRICS``), the dashboard's layer table (``widgets/_health.py``: columns and colours) and
the report's table and heat maps.  A new per-layer statistic is one :class:`Metric` here plus its
computation (``stats.py`` for activations / output gradients, ``_params.py`` for parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "LAYER",
    "LAYER_NAMES",
    "NONFINITE_NAMES",
    "PARAM_NAMES",
    "Health",
    "Metric",
    "column_status",
    "get",
    "heatmap_metrics",
    "report_metrics",
    "table_metrics",
]


@dataclass(frozen=True)
class Health:
    """When a value is worth a look (status 1) or bad (status 2); 0 otherwise.

    A value above ``bad_above`` / below ``bad_below`` is bad, above ``warn_above`` / below
    ``warn_below`` worth a look (``inclusive``: at the threshold counts too).  ``zero``: the status
    of an exact 0 (``None``: judged like any value).  NaN is "not applicable" (-1), an infinity bad.
    These are display hints; the diagnosis (``trainscope.diagnostics``) has its own evidence rules.
    """

    warn_above: float | None = None
    bad_above: float | None = None
    warn_below: float | None = None
    bad_below: float | None = None
    inclusive: bool = False
    zero: int | None = None

    def status(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        st = np.zeros(v.shape, dtype=np.int64)
        with np.errstate(invalid="ignore"):
            above = np.greater_equal if self.inclusive else np.greater
            below = np.less_equal if self.inclusive else np.less
            for level, hi, lo in ((1, self.warn_above, self.warn_below), (2, self.bad_above, self.bad_below)):
                hit = np.zeros(v.shape, dtype=bool)
                if hi is not None:
                    hit |= above(v, hi)
                if lo is not None:
                    hit |= below(v, lo)
                st = np.where(hit, level, st)
            if self.zero is not None:
                st = np.where(v == 0, self.zero, st)
        st = np.where(np.isinf(v), 2, st)
        return np.where(np.isnan(v), -1, st).astype(np.int64)


@dataclass(frozen=True)
class Metric:
    """One per-layer statistic.

    ``source``: ``"act"`` (module outputs, training forwards; ``field`` names the
    ``stats.ActSummary`` attribute), ``"ograd"`` (gradients w.r.t. the outputs, same), ``"mask"``
    (per-unit activity masks) or ``"param"`` (the module's own parameters, also recorded at every
    cheap step).  ``label``: the dashboard's column header; ``short``: the report's; ``fmt``:
    ``num`` / ``sci`` / ``pct`` / ``count``; ``log_scale``: plotted on a log axis; ``table``: a
    column of the dashboard's layer table; ``report``: a column of the report's layer table;
    ``heatmap``: the report's heat map title (``None``: no heat map).
    """

    name: str
    source: str
    field: str
    label: str
    title: str
    fmt: str = "num"
    short: str = ""
    log_scale: bool = False
    health: Health | None = None
    table: bool = False
    report: bool = False
    heatmap: str | None = None


_DEAD = Health(warn_above=0.1, bad_above=0.5)
_ZERO = Health(warn_above=0.6, bad_above=0.95, inclusive=True)
_SAT = Health(warn_above=0.2, bad_above=0.5)
_STD = Health(warn_below=1e-2, warn_above=1e1, bad_below=1e-4, bad_above=1e3)
_GRAD = Health(zero=1)
_UPDATE = Health(warn_below=1e-4, warn_above=1e-2, bad_below=1e-5, bad_above=1e-1, zero=1)
"""``||Δθ|| / ||θ||`` per step: healthy around 1e-3 (1e-4 .. 1e-2)."""

LAYER: tuple[Metric, ...] = (
    # activations (module outputs), training forwards only
    Metric("act_mean", "act", "mean", "act mean", "mean of the layer's output", short="act mean",
           table=True, report=True),
    Metric("act_std", "act", "std", "act std",
           "standard deviation of the output (shrinking/exploding by depth: init)", short="act std",
           log_scale=True, health=_STD, table=True, report=True, heatmap="Activation std"),
    Metric("act_min", "act", "min", "act min", "smallest output element"),
    Metric("act_max", "act", "max", "act max", "largest output element"),
    Metric("act_abs_max", "act", "abs_max", "act |max|", "largest output magnitude", log_scale=True),
    Metric("act_frac_zero", "act", "frac_zero", "% zero", "share of exactly-zero outputs",
           fmt="pct", short="zeros", health=_ZERO, table=True, report=True,
           heatmap="Fraction of zero activations"),
    Metric("act_frac_sat", "act", "frac_sat", "saturated",  # bounded activations only, else NaN
           "share of outputs at the bounds of tanh / sigmoid-like activations", fmt="pct",
           short="saturated", health=_SAT, table=True, report=True),
    Metric("act_nonfinite", "act", "nonfinite", "non-finite act",  # exact; -1: some, not counted
           "non-finite output elements (-1: at least one, not counted)", fmt="count",
           short="non-finite act", report=True),
    Metric("act_dead_frac", "mask", "dead_frac", "dead",
           "share of units that never fired over the dead-unit window", fmt="pct", short="dead",
           health=_DEAD, table=True, report=True),
    # gradients with respect to the module outputs
    Metric("ograd_mean", "ograd", "mean", "out-grad mean", "mean of the output gradient"),
    Metric("ograd_std", "ograd", "std", "out-grad std", "standard deviation of the output gradient",
           short="out-grad std", log_scale=True, report=True),
    Metric("ograd_abs_max", "ograd", "abs_max", "out-grad |max|", "largest output-gradient magnitude",
           log_scale=True),
    Metric("ograd_frac_zero", "ograd", "frac_zero", "out-grad % zero",
           "share of exactly-zero output-gradient elements", fmt="pct"),
    Metric("ograd_nonfinite", "ograd", "nonfinite", "non-finite out-grad",
           "non-finite output-gradient elements", fmt="count"),
    # the module's own parameters (NaN for modules without any)
    Metric("weight_norm", "param", "weight_norm", "weight norm", "norm of the layer's parameters",
           fmt="sci", short="|W|", log_scale=True, table=True, report=True),
    Metric("grad_norm", "param", "grad_norm", "grad norm",
           "norm of the layer's parameter gradient", fmt="sci", short="|grad W|", log_scale=True,
           health=_GRAD, table=True, report=True, heatmap="Gradient norm per layer"),
    Metric("update_ratio", "param", "update_ratio", "update/weight",
           "||Δθ|| / ||θ|| per step; healthy around 1e-3 (1e-4 .. 1e-2)", fmt="sci",
           short="update ratio", log_scale=True, health=_UPDATE, table=True, report=True,
           heatmap="Update / weight ratio per layer"),
    Metric("dist_init", "param", "dist_init", "dist from init",
           "||θ − θ_0|| (θ_0: the parameters when the probe attached)", fmt="sci", log_scale=True),
    Metric("grad_nonfinite", "param", "grad_nonfinite", "non-finite grad",
           "non-finite gradient elements (exact)", fmt="count", short="non-finite grad",
           report=True),
    Metric("act_frac_neg", "act", "frac_neg", "% negative", "share of negative outputs", fmt="pct"),
)
"""Every per-layer metric, in the history's column order (new ones go at the end)."""

_BY_NAME = {m.name: m for m in LAYER}
LAYER_NAMES: tuple[str, ...] = tuple(m.name for m in LAYER)
PARAM_NAMES: tuple[str, ...] = tuple(m.name for m in LAYER if m.source == "param")
NONFINITE_NAMES: tuple[str, ...] = tuple(m.name for m in LAYER if m.name.endswith("_nonfinite"))


def get(name: str) -> Metric:
    """The :class:`Metric` called ``name`` (``KeyError`` naming the known ones otherwise)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; metrics are {', '.join(LAYER_NAMES)}") from None


def table_metrics() -> list[Metric]:
    """The dashboard layer table's columns, in display order."""
    order = ("act_mean", "act_std", "act_frac_zero", "act_dead_frac", "act_frac_sat", "grad_norm",
             "weight_norm", "update_ratio")
    rest = [m for m in LAYER if m.table and m.name not in order]
    return [_BY_NAME[n] for n in order] + rest


def report_metrics() -> list[Metric]:
    """The report's layer-table columns: the dashboard's order, then the non-finite counts."""
    order = ("act_mean", "act_std", "act_frac_zero", "act_dead_frac", "act_frac_sat", "ograd_std",
             "weight_norm", "grad_norm", "update_ratio", "act_nonfinite", "grad_nonfinite")
    rest = [m for m in LAYER if m.report and m.name not in order]
    return [_BY_NAME[n] for n in order] + rest


def heatmap_metrics() -> list[Metric]:
    """The report's per-layer heat maps."""
    return [m for m in LAYER if m.heatmap is not None]


def column_status(name: str, v: np.ndarray) -> np.ndarray:
    """Health of a column of values of metric ``name``: 0 fine, 1 look, 2 bad, -1 not applicable
    (NaN).  Metrics without thresholds are fine unless infinite."""
    m = _BY_NAME.get(name)
    health = m.health if m is not None and m.health is not None else Health()
    return health.status(v)

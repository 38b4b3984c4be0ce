"""Offline reports and figures of a run: one self-contained HTML file, and PNG figures.

>>> trainscope.report.write_report(probe, "report.html")          # doctest: +SKIP
>>> trainscope.report.write_report(trainscope.open("runs/"), "compare.html")   # doctest: +SKIP
>>> trainscope.report.save_png(probe, "loss.png")                 # doctest: +SKIP
>>> trainscope.report.save_figures(run, "figures/")               # doctest: +SKIP

The HTML report holds the curves, the layer table, heatmaps, the findings, the checklist results
and the interventions timeline.  Charts are inline SVG and heatmaps inline PNG (``data:`` URIs);
there is no script, stylesheet, font or image fetched from anywhere, so it opens offline and can
be attached to an issue.  Every user-provided string (module names, metric names, event labels and
data, run names, titles) is HTML-escaped.  PNG figures are drawn by :mod:`trainscope._raster`
(pure numpy + zlib); matplotlib is not needed.

Sources: a :class:`~trainscope.Probe`, a :class:`~trainscope.History`, a run
(:class:`~trainscope.runlog.Run`, or its path), or a list of those / a
:class:`~trainscope.runlog.RunSet` -- several runs are overlaid.
"""

from __future__ import annotations

from ._figures import figure_png, save_figures, save_png
from ._html import report_html, runs_overview_html, write_report
from ._sources import _HEATMAPS as _HEATMAPS  # the metric tables, read by tests/test_metrics.py
from ._sources import _TABLE_METRICS as _TABLE_METRICS
from ._sources import PALETTE as PALETTE
from ._sources import esc as esc

__all__ = [
    "figure_png",
    "report_html",
    "runs_overview_html",
    "save_figures",
    "save_png",
    "write_report",
]

# The package's layout (each module imports only the ones listed before it):
#   _sources    what can be reported on; palette; the metric tables; esc()
#   _charts     the chart model and its layout into drawing primitives
#   _backends   primitives -> inline SVG / numpy raster (PNG)
#   _runcharts  the charts of one or several runs
#   _html       the HTML report (report_html, runs_overview_html, write_report)
#   _figures    the PNG figures (figure_png, save_png, save_figures)

"""trainscope's Jupyter layer: the live dashboard (anywidget + bqplot + ipywidgets).

Imported lazily by :func:`trainscope.watch` / :func:`trainscope.show`; the core never imports it.
"""

from __future__ import annotations

from ._static import check_built

check_built()  # a clear message instead of anywidget's FileNotFoundError on an unbuilt checkout

from .api import show, watch  # noqa: E402
from .controls import Controls  # noqa: E402
from .curves import Curves  # noqa: E402
from .dashboard import Dashboard  # noqa: E402
from .header import Header  # noqa: E402
from .heatmap import Heatmap  # noqa: E402
from .landscape_panel import LandscapePanel, landscape_panel  # noqa: E402
from .layer_table import LayerTable  # noqa: E402
from .layer_views import DepthCurves, LayerCurves  # noqa: E402
from .lr_finder_panel import LRFinderPanel  # noqa: E402

__all__ = [
    "Controls",
    "Curves",
    "Dashboard",
    "DepthCurves",
    "Header",
    "Heatmap",
    "LRFinderPanel",
    "LandscapePanel",
    "LayerCurves",
    "LayerTable",
    "landscape_panel",
    "show",
    "watch",
]

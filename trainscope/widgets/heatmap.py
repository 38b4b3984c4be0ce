"""A small canvas heatmap for histograms (over time, or by depth)."""

from __future__ import annotations

import anywidget
import traitlets as t

from ._static import CSS, esm


class Heatmap(anywidget.AnyWidget):
    """A ``rows x cols`` uint8 image drawn on a canvas with a perceptual colour map.

    Rows are value bins (bottom = lowest), columns are steps or layers.  ``0`` cells are empty;
    rows flagged ``special`` (the -Inf / +Inf / NaN bins) are painted in red.
    """

    _esm = esm("heatmap")
    _css = CSS

    spec = t.Dict().tag(sync=True)
    """
    Everything but the pixels: ``{"title", "rows", "cols", "row_labels", "special",
    "col_labels" (one per column), "x_label", "y_label", "empty" (text when there is no data),
    "highlight" (column index or -1)}``.

    - Type: ``dict``
    - Default: ``{}``
    """

    values = t.Bytes(b"").tag(sync=True)
    """
    ``rows * cols`` bytes, row-major, row 0 = lowest bin (sent as a binary buffer).

    - Type: ``bytes``
    - Default: ``b""``
    """

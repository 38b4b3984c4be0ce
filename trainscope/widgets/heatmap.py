"""A small canvas heatmap for histograms (over time, or by depth)."""

from __future__ import annotations

from typing import Any

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
    "highlight" (column index or -1), "scale" (the colour bar: ``{"k", "unit", "ticks"}``, see
    :func:`~trainscope.widgets._series.hist_image`)}``.

    - Type: ``dict``
    - Default: ``{}``
    """

    values = t.Bytes(b"").tag(sync=True)
    """
    ``rows * cols`` bytes, row-major, row 0 = lowest bin (sent as a binary buffer).

    - Type: ``bytes``
    - Default: ``b""``
    """

    def show(
        self,
        img: dict[str, Any] | None,
        *,
        title: str,
        empty: str = "",
        col_labels: list[str] | None = None,
        x_label: str = "",
        highlight: int = -1,
    ) -> None:
        """Draw an image from :func:`~trainscope.widgets._series.hist_image` (one message);
        ``img=None`` shows ``empty`` instead."""
        with self.hold_sync():
            if img is None:
                self.spec = {"title": title, "rows": 0, "cols": 0, "empty": empty}
                self.values = b""
                return
            self.spec = {
                "title": title,
                "rows": img["rows"],
                "cols": img["cols"],
                "row_labels": img["labels"],
                "special": img["special"],
                "col_labels": col_labels or [],
                "x_label": x_label,
                "y_label": "value (log-magnitude bins)",
                "highlight": highlight,
                "scale": img.get("scale") or {},
            }
            self.values = img["values"]

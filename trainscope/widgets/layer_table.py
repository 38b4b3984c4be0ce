"""Layer table: every probed layer in forward order with its live health, sortable, selectable."""

from __future__ import annotations

from typing import Any

import anywidget
import traitlets as t

from ._static import CSS, esm


class LayerTable(anywidget.AnyWidget):
    """Per-layer health at the latest sampled step.

    Clicking a row sends ``{"kind": "select", "layer": name}``; the dashboard answers by setting
    :attr:`selected` and showing that layer's detail.  Sorting happens in the browser.
    """

    _esm = esm("layer_table")
    _css = CSS

    columns: t.List[dict[str, Any]] = t.List().tag(sync=True)
    """
    Column definitions: ``{"key", "label", "fmt" ("num" | "pct" | "sci"), "title"}``.

    - Type: ``list[dict]``
    - Default: ``[]``
    """

    rows: t.List[dict[str, Any]] = t.List().tag(sync=True)
    """
    One entry per layer in forward order: ``{"name", "type", "kind", "values": [...],
    "status": [...]}`` where ``values`` follow :attr:`columns` (numbers, ``None`` for not
    applicable, ``"inf"`` / ``"-inf"`` for infinities) and ``status`` is 0 (fine), 1 (look at
    it), 2 (bad) or ``None`` per value.  Thresholds live in Python (``layer_health``).

    - Type: ``list[dict]``
    - Default: ``[]``
    """

    step = t.Int(-1).tag(sync=True)
    """
    Step of the sampled record shown (-1: nothing sampled yet).

    - Type: ``int``
    - Default: ``-1``
    """

    selected = t.Unicode("").tag(sync=True)
    """
    Name of the selected layer (``""``: none).

    - Type: ``str``
    - Default: ``""``
    """

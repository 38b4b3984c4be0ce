"""Header: run state, step / epoch, speed, ETA, the probe's own overhead, click delivery."""

from __future__ import annotations

import anywidget
import traitlets as t

from ._static import CSS, esm


class Header(anywidget.AnyWidget):
    """One line of run facts; receives no messages from the browser."""

    _esm = esm("header")
    _css = CSS

    state = t.Dict().tag(sync=True)
    """
    Everything the header shows, sent as one small JSON payload per update.

    - Type: ``dict`` with keys ``title``, ``run_state`` (``"waiting"``, ``"running"``,
      ``"idle"``, ``"finished"``, ``"interrupted"``, ``"error"``, ``"detached"``, ``"saved run"``),
      ``step``, ``epoch``, ``total_steps``, ``steps_per_s``, ``eta_s``, ``overhead`` (the
      probe's measured fraction of step time), ``ui_overhead``, ``loss``, ``val_loss``, ``lr``,
      ``delivery`` (``{"name", "live", "note"}``), ``cell_running``, ``last_ack``, ``errors``.
    - Default: ``{}``
    """

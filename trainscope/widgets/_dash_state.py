"""The dashboard's state, declared once for the parts of :class:`~trainscope.widgets.Dashboard`.

:class:`~trainscope.widgets.dashboard.Dashboard` is assembled from three layers, each in its own
module, imports pointing down only:

* ``_dash_state`` (this module): the attributes every part reads (set by ``Dashboard.__init__``),
  the lock helper and the error note;
* ``_dash_views``: the pushes that draw the header, curves, layer table, per-layer views,
  controls and diagnosis (called with the lock held);
* ``_dash_clicks``: browser -> Python (``submit`` / ``cancel`` / ``select``, messages), the
  acknowledgements and the long-action watchdog;
* ``dashboard``: construction, the update loop (``_on_step`` / ``_tick``), the cell lifecycle
  and the public lifecycle (``refresh`` / ``detach`` / ``close``).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ipywidgets as W

    from ..history import History
    from ..probe import Probe
    from . import _delivery
    from ._acks import AckStore
    from ._throttle import Throttle
    from .controls import Controls
    from .curves import Curves
    from .header import Header
    from .heatmap import Heatmap
    from .landscape_panel import LandscapePanel
    from .layer_table import LayerTable
    from .layer_views import DepthCurves, LayerCurves
    from .lr_finder_panel import LRFinderPanel

__all__ = ["DashboardState"]


class DashboardState:
    """What the dashboard's parts share (declarations only; ``Dashboard.__init__`` sets them)."""

    probe: Probe | None
    histories: list[History]
    total_steps: int | None
    steps_per_epoch: int | None
    closed: bool
    _detached: bool
    _owns_probe: bool
    _lock: threading.RLock
    _light: Throttle
    _curves_throttle: Throttle
    _heavy: Throttle
    _slow: Throttle
    _dirty: dict[str, bool]
    _diag_version: tuple[int, ...] | None
    _acks: AckStore
    _seen_ids: deque[str]
    _submitted: bool
    _cell_running: bool
    _cell_error: str | None
    _bg_seen: float
    _bg_status: str | None
    _rate: tuple[float, int, float] | None
    _steps_per_s: float | None
    _ui_frac: float | None
    _ui_seconds: float
    _tickets_sent: float
    _timer: threading.Timer | None
    _boundary: float
    _curves_stale: bool
    _watchdog: threading.Thread | None
    _busy: dict[str, Any] | None
    _registry_key: tuple[Any, ...]
    _table_step: int
    _view_keys: dict[str, Any]
    _diag_cost: float
    update_count: int
    errors: list[str]
    _title: str
    header: Header
    curves: Curves
    table: LayerTable
    act_map: Heatmap
    grad_map: Heatmap
    depth_map: Heatmap
    depth: DepthCurves
    layer_curves: LayerCurves
    lr_finder: LRFinderPanel
    landscape: LandscapePanel
    controls: Controls
    _tab_content: list[W.Widget]
    tabs: W.Tab
    _delivery: _delivery.Delivery
    _subscriptions: list[Any]

    @property
    def history(self) -> History:
        """The history shown in the per-layer views (the probe's, or the first saved run)."""
        return self.histories[0]

    # ------------------------------------------------------------------ internals: locking
    @contextlib.contextmanager
    def _locked(self, timeout: float) -> Any:
        ok = self._lock.acquire(timeout=timeout)
        try:
            yield ok
        finally:
            if ok:
                self._lock.release()

    def _note_error(self, where: str, e: BaseException) -> None:
        if len(self.errors) < 100:
            self.errors.append(f"{where}: {type(e).__name__}: {e}")

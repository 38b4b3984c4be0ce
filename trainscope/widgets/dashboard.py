"""The dashboard: composes the parts and keeps them in step with a probe or a saved history.

Live mode (from a :class:`~trainscope.Probe`)
---------------------------------------------
* ``history.subscribe`` only marks what changed; nothing is sent per step.
* ``probe.on_step`` (training thread, every step boundary) does, in order: a stop check for
  background runs, the click-delivery pump (``trainscope._delivery``; a time check when nothing
  is due), applying requests a pump just delivered, and -- when a throttle is due -- one update.
  When nothing is due this costs a few microseconds (``benchmarks/dashboard_overhead.py``).
* Updates are throttled by wall-clock time: header and curves at most every ``update_interval``
  seconds (default 0.2 s, 5 Hz; never faster than 10 Hz), the layer table and the visible
  per-layer view at most every ``detail_interval`` seconds, the diagnosis less often still.
  Lines carry at most 1000 float32 points; each mark is updated in one ``hold_sync`` message.
* Browser messages are validated (``_messages``) and submitted to ``probe.actions``; the
  handlers do nothing else, so they are safe in a kernel subshell thread.  Every request is
  acknowledged through ``Controls.tickets`` (pending -> applied at step N / refused / failed).
* The IPython ``post_run_cell`` hook (``_live``) flushes the probe and sends the final state
  when the cell ends -- normally or with an exception -- so the widget is never stale.

Read-only mode (from a :class:`~trainscope.History`, or several to overlay their curves)
--------------------------------------------------------------------------------------
Draws once (and on :meth:`Dashboard.refresh`); actions are refused with the reason.

The parts of the class (imports pointing down): ``_dash_state`` declares the shared state,
``_dash_views`` draws (the ``_push_*`` methods), ``_dash_clicks`` handles requests,
acknowledgements and long actions; this module builds the widgets and runs the update loop.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import ipywidgets as W

from ..actions import Ticket
from ..history import History, Update
from ..probe import Probe
from . import _background, _delivery, _live
from ._acks import AckStore
from ._dash_clicks import DashboardClicks
from ._health import COLUMNS
from ._panels import register_optional_actions
from ._throttle import Throttle
from .controls import Controls
from .curves import Curves
from .header import Header
from .heatmap import Heatmap
from .landscape_panel import LandscapePanel
from .layer_table import LayerTable
from .layer_views import DepthCurves, LayerCurves
from .lr_finder_panel import LRFinderPanel

__all__ = ["TABS", "Dashboard"]

TABS = ("Curves", "Layers", "Depth", "Weights", "LR finder", "Landscape")
_MAX_TICKETS = 50


def _error_state(error: BaseException | None) -> str | None:
    if error is None:
        return None
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if isinstance(error, _background.StopTraining):
        return "stopped"
    return f"error: {type(error).__name__}"


class Dashboard(DashboardClicks, W.VBox):
    """Live training dashboard (from a :class:`~trainscope.Probe`) or a saved run's
    (from one or more :class:`~trainscope.History`).

    Parameters
    ----------
    source
        A probe (live), a history, or a list of histories (read-only; curves are overlaid,
        the first one is shown in the per-layer views).
    names
        Run names for overlaid histories.
    delivery
        How clicks reach Python while a cell runs: ``"auto"`` (detect), ``"subshell"``,
        ``"pump"``, ``"ui_poll"`` or ``"none"`` (see :mod:`trainscope._delivery`).
    update_interval
        Seconds between header / curve updates while training (0.1 .. 60; default 0.2).
    detail_interval
        Seconds between layer-table / per-layer view updates (default 1.0).
    total_steps, steps_per_epoch
        For the epoch and ETA in the header (``steps_per_epoch`` defaults to ``len(probe.data)``
        when the probe has sized data, ``epoch`` to the last logged ``epoch`` scalar).
    title
        Header title (default: the model's class name).
    """

    def __init__(
        self,
        source: Probe | History | Sequence[History],
        *,
        names: Sequence[str] | None = None,
        delivery: str = "auto",
        update_interval: float = 0.2,
        detail_interval: float = 1.0,
        total_steps: int | None = None,
        steps_per_epoch: int | None = None,
        title: str | None = None,
    ) -> None:
        probe, histories = self._sources(source)
        if not isinstance(update_interval, (int, float)) or not 0.1 <= update_interval <= 60:
            raise ValueError(
                f"update_interval is in seconds between 0.1 (10 Hz, the most Jupyter handles "
                f"comfortably) and 60; got {update_interval!r}"
            )
        if (
            not isinstance(detail_interval, (int, float))
            or not update_interval <= detail_interval <= 600
        ):
            raise ValueError(
                f"detail_interval must be between update_interval and 600 seconds, got {detail_interval!r}"
            )
        for label, v in (("total_steps", total_steps), ("steps_per_epoch", steps_per_epoch)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{label} must be a positive int or None, got {v!r}")
        self.probe: Probe | None = probe
        self.histories: list[History] = histories
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.closed = False
        self._detached = False
        self._owns_probe = False  # True when watch() created the probe (detached on re-watch)
        self._lock = threading.RLock()
        self._light = Throttle(update_interval)
        self._curves_throttle = Throttle(max(update_interval, 0.5))  # curves: at most 2 Hz
        self._heavy = Throttle(detail_interval)
        self._slow = Throttle(max(2.0, 2 * detail_interval))
        self._dirty = {
            "scalars": True,
            "record": True,
            "events": True,
            "views": True,
            "tickets": False,
            "diagnosis": False,
        }
        self._diag_version: tuple[int, ...] | None = None
        self._acks = AckStore(_MAX_TICKETS)
        self._seen_ids: deque[str] = deque(maxlen=1000)
        self._submitted = False
        self._cell_running = False
        self._cell_error: str | None = None
        self._bg_seen = -math.inf
        self._bg_status: str | None = None
        self._rate: tuple[float, int, float] | None = None  # (time, step, ui seconds)
        self._steps_per_s: float | None = None
        self._ui_frac: float | None = None
        self._ui_seconds = 0.0
        self._tickets_sent = -math.inf
        self._timer: threading.Timer | None = None
        self._boundary = time.monotonic()  # the last step boundary seen (training thread)
        self._curves_stale = False  # curves changed while their tab was hidden
        self._watchdog: threading.Thread | None = None
        self._busy: dict[str, Any] | None = None  # an action holding the training loop
        self._registry_key: tuple[Any, ...] = ()
        self._table_step = -2
        self._view_keys: dict[str, Any] = {}
        self._diag_cost = 0.0
        self.update_count = 0
        self.errors: list[str] = []

        # ---- the parts
        meta_title = title or str(histories[0].meta.get("model") or "model")
        self._title = meta_title if probe is not None else f"{meta_title} (saved run)"
        self.header = Header()
        self.curves = Curves(len(histories), names)
        self.curves.lock = self._lock  # its log toggle may be handled in a kernel subshell
        self.table = LayerTable(columns=COLUMNS)
        self.act_map = Heatmap(layout=W.Layout(width="100%"))
        self.grad_map = Heatmap(layout=W.Layout(width="100%"))
        self.depth_map = Heatmap(layout=W.Layout(width="100%"))
        self.depth = DepthCurves()
        self.layer_curves = LayerCurves()
        self.lr_finder = LRFinderPanel(
            lambda action, params: self.submit(action, params, source="ui")
        )
        self.landscape = LandscapePanel(histories[0] if probe is None else probe, follow=False, submit=None
                                        if probe is None else lambda a, p: self.submit(a, p, source="ui"))
        self.controls = Controls()
        layers_tab = W.VBox(
            [
                self.table,
                W.HBox(
                    [
                        W.Box([self.act_map], layout=W.Layout(flex="1 1 340px", min_width="300px")),
                        W.Box(
                            [self.grad_map], layout=W.Layout(flex="1 1 340px", min_width="300px")
                        ),
                    ],
                    layout=W.Layout(width="100%", flex_flow="row wrap"),
                ),
            ],
            layout=W.Layout(width="100%"),
        )
        depth_tab = W.HBox(
            [
                W.Box([self.depth], layout=W.Layout(flex="1 1 380px", min_width="340px")),
                W.Box([self.depth_map], layout=W.Layout(flex="1 1 380px", min_width="340px")),
            ],
            layout=W.Layout(width="100%", flex_flow="row wrap"),
        )
        # hidden tabs keep their width (styles.css): bqplot laid figures out at zero size inside
        # Lumino's display: none and filled the console with NaN transforms / negative sizes
        self._tab_content: list[W.Widget] = [
            self.curves,
            layers_tab,
            depth_tab,
            self.layer_curves,
            self.lr_finder,
            self.landscape,
        ]
        self.tabs = W.Tab(children=list(self._tab_content), titles=list(TABS))
        super().__init__([self.header, self.tabs, self.controls], layout=W.Layout(width="100%"))
        self.add_class("trainscope-dashboard")

        # ---- browser -> Python (only these; every handler just validates and enqueues)
        self.controls.on_msg(self._on_msg)
        self.table.on_msg(self._on_msg)
        self.tabs.observe(self._on_tab, names="selected_index")

        self._delivery: _delivery.Delivery = _delivery.NoDelivery()
        self._subscriptions: list[Any] = []
        if probe is not None:
            register_optional_actions()
            self._delivery = _delivery.get_delivery(delivery)
            for w in (
                self.controls,
                self.table,
                self.tabs,
                self.lr_finder.apply_lr,
                self.lr_finder.apply_cycle,
                self.landscape.btn1,
                self.landscape.btn2,
                self.curves.log_toggle,
            ):
                self._delivery.route(w)
            self._subscriptions = [
                self.history.subscribe(self._on_update),
                probe.on_step(self._on_step),
                _Unsubscribe(probe.actions.on_change(self._on_ticket)),
            ]
            for t in list(probe.actions.tickets)[-_MAX_TICKETS:]:
                self._remember(t)
            _live.install()
        else:
            self.controls.read_only = "This is a saved run: there is no live training to act on."
        _live.register(self)
        self.refresh(force=True)

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _sources(source: Any) -> tuple[Probe | None, list[History]]:
        if isinstance(source, Probe):
            return source, [source.history]
        if isinstance(source, History):
            return None, [source]
        if (
            isinstance(source, (list, tuple))
            and source
            and all(isinstance(h, History) for h in source)
        ):
            return None, list(source)
        raise TypeError(
            "Dashboard shows a trainscope.Probe (live) or a trainscope.History / list of histories "
            f"(saved runs); got {type(source).__name__}. Use trainscope.watch(model, optimizer) "
            "to attach to a model."
        )

    @property
    def delivery(self) -> str:
        """Name of the click-delivery strategy in use."""
        return self._delivery.name

    # ------------------------------------------------------------------ public API (lifecycle)
    def refresh(self, *, force: bool = False) -> None:
        """Redraw everything now (any thread; waits for an update in progress)."""
        if self.closed:
            return
        with self._locked(5.0) as ok:
            if not ok:
                return
            self._push_header()
            self._push_curves(force=force)
            self._push_table(force=force)
            self._push_views(force=force)
            self._push_controls()
            self._push_diagnosis(force=force)
            self._push_tickets()

    def detach(self) -> None:
        """Stop following the probe and detach it from the model (hooks removed); the
        dashboard keeps showing the final state."""
        if self.probe is None or self._detached:
            return
        with contextlib.suppress(Exception):
            self.probe.flush()
        self._unsubscribe()
        with contextlib.suppress(Exception):
            self.probe.detach()
        self._detached = True
        self.controls.read_only = "The probe is detached; nothing is recorded or applied any more."
        self.refresh(force=True)

    def close(self) -> None:
        """Close the widgets and stop following the probe (the probe stays attached)."""
        if "closed" not in self.__dict__:  # construction failed half-way (bad arguments)
            super().close()
            return
        if self.closed:
            return
        self._unsubscribe()
        self.closed = True
        _live.unregister(self)
        for w in (
            self.header,
            self.table,
            self.act_map,
            self.grad_map,
            self.depth_map,
            self.controls,
            self.landscape,
        ):
            with contextlib.suppress(Exception):
                w.close()
        super().close()

    # convenience pass-throughs for ``scope = trainscope.watch(...)``
    def log(self, **values: Any) -> None:
        """``probe.log(...)``: record scalars (``loss=``, ``val_loss=``, ``acc=``...)."""
        if self.probe is None:
            raise RuntimeError("a saved run's dashboard has no probe to log to")
        self.probe.log(**values)

    def request(self, action: str, /, **params: Any) -> Ticket:
        """``probe.request(...)``: queue an action from Python (shown in the activity list)."""
        if self.probe is None:
            raise RuntimeError("a saved run's dashboard has no probe to act on")
        return self.probe.request(action, **params)


    def _unsubscribe(self) -> None:
        for s in self._subscriptions:
            with contextlib.suppress(Exception):
                s.remove()
        self._subscriptions = []
        if self._timer is not None:
            self._timer.cancel()

    # ------------------------------------------------------------------ data in (cheap)
    def _on_update(self, update: Update) -> None:
        if update.scalars:
            self._dirty["scalars"] = True
        if update.record:
            self._dirty["record"] = True
        if update.events:
            self._dirty["events"] = True

    def _on_step(self, probe: Probe) -> None:
        """At every step boundary, on the training thread: must be cheap when nothing is due."""
        t0 = time.perf_counter()
        _background.check_stop()
        if threading.current_thread() is threading.main_thread():
            if not self._cell_running:  # first step of this cell
                self._cell_running = True
                self._cell_error = self._bg_status = None
                self._start_watchdog()
            self._delivery.pump()
        else:
            self._bg_seen = time.monotonic()
            self._bg_status = None
        if self._submitted:
            self._submitted = False
            probe.actions.apply_pending()
        now = time.monotonic()
        if self._light.ready(now) and self._lock.acquire(blocking=False):
            try:
                self._tick(now)
            except Exception as e:
                self._note_error("update", e)
            finally:
                self._lock.release()
        if self._busy is not None:
            self._busy = None  # the action that held the loop is done: say so at once
            self._push_busy()
        self._boundary = time.monotonic()
        self._ui_seconds += time.perf_counter() - t0


    def _tick(self, now: float) -> None:
        self._light.touch(now)
        self.update_count += 1
        self._push_header()
        if (self._dirty["scalars"] or self._dirty["events"]) and self._curves_throttle.ready(now):
            self._curves_throttle.touch(now)
            self._push_curves()
        if self._dirty["tickets"]:
            self._push_tickets()
        if self._heavy.ready(now) and (
            self._dirty["record"] or self._dirty["views"] or self._dirty["events"]
        ):
            self._heavy.touch(now)
            self._push_table()
            self._push_views()
            self._push_controls()
        if self._slow.ready(now) or (self._dirty["diagnosis"] and self._heavy.ready(now)):
            self._slow.touch(now)
            self._heavy.touch(now)
            self._dirty["diagnosis"] = False
            self._push_diagnosis()

    # ------------------------------------------------------------------ cell lifecycle (hooks)
    def _cell_finished(self, error: BaseException | None) -> None:
        """``post_run_cell``: flush the probe and push the final state (also after errors)."""
        if self.closed:
            return
        trained = self._cell_running
        self._cell_running = False
        if trained:
            self._cell_error = _error_state(error)
            if self.probe is not None and self.probe.is_attached:
                try:
                    self.probe.flush()
                except Exception as e:
                    self._note_error("flush", e)
        if trained or any(self._dirty[k] for k in ("scalars", "record", "events", "tickets")):
            self.refresh(force=trained)

    def _background_finished(self, run: _background.BackgroundRun) -> None:
        if self.probe is None or self.closed or self._bg_seen == -math.inf:
            return
        self._bg_status = run.status
        self._bg_seen = -math.inf
        if self.probe.is_attached:
            with contextlib.suppress(Exception):
                self.probe.flush()
        self.refresh(force=True)


class _Unsubscribe:
    """Adapts ``ActionQueue.on_change``'s remover to the ``.remove()`` handle shape."""

    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def remove(self) -> None:
        self._fn()

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
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import numpy as np

from .. import _background, _delivery
from ..actions import REGISTRY, Ticket
from ..history import History, Update
from ..probe import Probe
from . import _live
from ._acks import AckStore
from ._health import COLUMNS, layer_rows
from ._messages import MessageError, parse_message
from ._panels import action_specs, checklist_payload, findings_payload, register_optional_actions
from ._series import hist_image, jsonable_number
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
_MAX_PENDING = 100
_ids = itertools.count(1)


def _error_state(error: BaseException | None) -> str | None:
    if error is None:
        return None
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if isinstance(error, _background.StopTraining):
        return "stopped"
    return f"error: {type(error).__name__}"


class Dashboard(W.VBox):
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
    def history(self) -> History:
        """The history shown in the per-layer views (the probe's, or the first saved run)."""
        return self.histories[0]

    @property
    def delivery(self) -> str:
        """Name of the click-delivery strategy in use."""
        return self._delivery.name

    # ------------------------------------------------------------------ public API
    def submit(
        self,
        action: str,
        params: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        source: str = "ui",
    ) -> Ticket | None:
        """Request an action exactly as a click does (validated, queued for the next step).

        Returns the :class:`~trainscope.actions.Ticket`, or ``None`` when the dashboard refused
        the request itself (read-only, detached, duplicate id, too many pending); the reason
        is shown in the activity list either way.
        """
        rid = id or f"ui{next(_ids)}-{uuid.uuid4().hex[:6]}"
        if self.probe is None:
            self._refuse(
                rid, action, "read-only dashboard (a saved run): there is no training to act on"
            )
            return None
        if self._detached or not self.probe.is_attached:
            self._refuse(
                rid,
                action,
                "the probe is detached; attach it again (probe.attach()) to act on training",
            )
            return None
        if rid in self._seen_ids:
            reason = f"duplicate request id {rid!r}: this request was already received"
            self._refuse(rid, action, reason, key=f"{rid}#dup{next(_ids)}")
            return None
        self._seen_ids.append(rid)
        if len(self.probe.actions.pending()) >= _MAX_PENDING:
            self._refuse(
                rid, action, f"{_MAX_PENDING} requests are already waiting for the next step"
            )
            return None
        ticket = self.probe.actions.submit(action, dict(params or {}), source=source, id=rid)
        self._submitted = True
        return ticket

    def cancel(self, ticket_id: str) -> Ticket | None:
        """Cancel a request exactly as the Cancel button does (any thread): a queued one is
        dropped; a long action holding the training (the LR finder, a check that trains) stops
        at its next iteration and puts everything back (see :meth:`ActionQueue.cancel`).

        Returns the ticket, or ``None`` when it cannot be cancelled (the reason is shown in the
        activity list)."""
        rid = str(ticket_id)[:64]
        if self.probe is None:
            self._refuse(rid, "cancel", "read-only dashboard (a saved run): nothing runs to cancel",
                         key=f"cancel:{rid}")
            return None
        try:
            t = self.probe.actions.cancel(rid)
        except ValueError as e:
            self._refuse(rid, "cancel", str(e), key=f"cancel:{rid}#{next(_ids)}")
            return None
        if t.status == "pending":  # running: it stops at its next iteration
            self._busy = self._applying(0.0) or self._busy
            self._push_busy()
        return t

    def select(self, layer: str, *, show: bool = False) -> None:
        """Select a layer (its detail in the Layers tab, highlighted elsewhere)."""
        if layer not in self.history.layer_names:
            self._refuse(f"sel{next(_ids)}", "select", f"no layer named {layer!r}")
            return
        with self._locked(2.0):
            self.table.selected = layer
            if show:
                self.tabs.selected_index = 1
            self._dirty["views"] = True
            self._push_views(force=True)

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

    # ------------------------------------------------------------------ internals: locking
    @contextlib.contextmanager
    def _locked(self, timeout: float) -> Any:
        ok = self._lock.acquire(timeout=timeout)
        try:
            yield ok
        finally:
            if ok:
                self._lock.release()

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

    # ------------------------------------------------------------------ long actions
    def _start_watchdog(self) -> None:
        """A thread that notices when an action holds the training loop (an LR sweep, a check)
        and says so with the elapsed time; the loop itself cannot, it is busy running it."""
        if self._watchdog is not None and self._watchdog.is_alive():
            return
        self._watchdog = threading.Thread(
            target=self._watch_loop, name="trainscope-dashboard-watchdog", daemon=True
        )
        self._watchdog.start()

    def _watch_loop(self) -> None:
        while not self.closed and self._cell_running:
            time.sleep(0.5)
            try:
                busy = self._applying()
                if busy is None and self._busy is None:
                    continue
                self._busy = busy
                self._push_busy()
            except Exception as e:  # never let this thread die noisily
                self._note_error("watchdog", e)
        if self._busy is not None:
            self._busy = None
            with contextlib.suppress(Exception):
                self._push_busy()

    def _applying(self, after: float = 0.5) -> dict[str, Any] | None:
        """The request being applied right now on the training thread, if it has taken more
        than ``after`` seconds: ``{"id", "label", "action", "seconds", "progress",
        "cancellable"}`` (``progress``: ``{"done", "total", "text"}`` when the action reports it;
        such an action can be cancelled)."""
        probe = self.probe
        if probe is None:
            return None
        stalled = time.monotonic() - self._boundary
        if stalled < after:
            return None
        queued = {id(t) for t in probe.actions.pending()}
        try:
            recent = list(probe.actions.tickets)[-20:]
        except RuntimeError:  # changed while copied: next time
            return None
        for t in reversed(recent):
            if t.status == "pending" and id(t) not in queued:  # taken off the queue: running
                spec = REGISTRY.get(t.action)
                prog = t.progress
                return {
                    "id": t.id,
                    "action": t.action,
                    "label": spec.label if spec is not None else t.action,
                    "seconds": round(min(stalled, time.time() - t.t_submit), 1),
                    "progress": None
                    if prog is None
                    else {"done": prog[0], "total": prog[1], "text": prog[2]},
                    "cancellable": prog is not None,
                    "cancel_requested": t.cancel_requested,
                }
        return None

    def _push_busy(self) -> None:
        with self._locked(0.5) as ok:
            if not ok or self.closed:
                return
            self.controls.busy = dict(self._busy) if self._busy else {}
            self._push_header()

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

    def _note_error(self, where: str, e: BaseException) -> None:
        if len(self.errors) < 100:
            self.errors.append(f"{where}: {type(e).__name__}: {e}")

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

    # ------------------------------------------------------------------ browser -> Python
    def _on_msg(self, widget: Any, content: Any, buffers: Any = None) -> None:
        """Custom messages from the browser (any thread): validate, then submit or select."""
        try:
            msg = parse_message(content)
        except MessageError as e:
            self._refuse(e.id or f"bad{next(_ids)}", e.action or "?", f"malformed message: {e}")
            return
        if msg.kind == "select":
            self.select(msg.layer, show=widget is self.controls)
            return
        if msg.kind == "cancel":
            self.cancel(msg.id)
            return
        self.submit(msg.action, msg.params, id=msg.id or None, source="ui")

    def _on_tab(self, change: dict[str, Any]) -> None:
        self._dirty["views"] = True
        with self._locked(2.0) as ok:
            if ok:
                if change.get("new") == 0 and self._curves_stale:
                    self._push_curves(force=True)
                self._push_views()

    # ------------------------------------------------------------------ acknowledgements
    def _on_ticket(self, t: Ticket) -> None:
        if t.status == "pending" and t.progress is not None:
            # a long action reports progress (at most every 0.25 s) from the training thread: say
            # so now, and let a Cancel click in where clicks only arrive when pumped
            self._busy = self._applying(0.0) or self._busy
            if threading.current_thread() is threading.main_thread():
                with contextlib.suppress(Exception):
                    self._delivery.pump()
            self._push_busy()
        self._remember(t)
        if t.status != "pending":
            self._dirty["diagnosis"] = True  # a check ran or the training changed: re-diagnose soon
        self._push_tickets_soon()

    def _remember(self, t: Ticket) -> None:
        self._acks.remember(t)
        self._dirty["tickets"] = True

    def _refuse(self, rid: str, action: str, reason: str, key: str | None = None) -> None:
        step = self.probe.step_count if self.probe is not None else None
        self._acks.refuse(rid, action, reason, step, key)
        self._dirty["tickets"] = True
        self._push_tickets_soon()

    def _push_tickets_soon(self) -> None:
        """Acks go out at once, at most every 50 ms (a flood of clicks cannot flood Jupyter)."""
        if self.closed:
            return
        if time.monotonic() - self._tickets_sent >= 0.05 and self._lock.acquire(blocking=False):
            try:
                self._push_tickets()
            finally:
                self._lock.release()
            return
        if self._timer is None or not self._timer.is_alive():
            self._timer = threading.Timer(0.06, self._flush_tickets_later)
            self._timer.daemon = True
            self._timer.start()

    def _flush_tickets_later(self) -> None:
        with self._locked(2.0) as ok:
            if ok and self._dirty["tickets"] and not self.closed:
                self._push_tickets()

    def _push_tickets(self) -> None:
        self._dirty["tickets"] = False
        self.controls.tickets = self._acks.newest_first()
        self._tickets_sent = time.monotonic()

    # ------------------------------------------------------------------ pushes (hold the lock)
    def _run_state(self, step: int) -> str:
        if self.probe is None:
            return "saved run"
        if self._detached:
            return "detached"
        if self._cell_running:
            return "running"
        if time.monotonic() - self._bg_seen < 2.0:
            return "running (background)"
        if self._bg_status is not None:
            return f"{self._bg_status} (background)"
        if self._cell_error:
            return self._cell_error
        if self.total_steps and step >= self.total_steps:
            return "finished"
        return "waiting for the first step" if step == 0 else "idle"

    def _epoch(self, step: int) -> float | None:
        spe = self.steps_per_epoch
        if spe is None and self.probe is not None:
            with contextlib.suppress(Exception):
                spe = len(self.probe.data) if self.probe.data is not None else None  # type: ignore[arg-type]
        if spe:
            return round(step / spe, 2)
        ep = self.history.scalars.get("epoch")
        if ep is not None and ep.total:
            return float(ep.last(1)[1][-1])
        return None

    def _last(self, name: str, h: History | None = None) -> float | None:
        s = (h or self.history).scalars.get(name)
        if s is None or not s.total:
            return None
        return float(s.last(1)[1][-1])

    def _push_header(self) -> None:
        h = self.history
        probe = self.probe
        step = probe.step_count if probe is not None else max(h.step + 1, 0)
        now = time.monotonic()
        if self._rate is not None:
            t_prev, s_prev, ui_prev = self._rate
            dt = now - t_prev
            if dt >= 0.05:
                rate = (step - s_prev) / dt
                ui = (self._ui_seconds - ui_prev) / dt
                a = 0.3 if self._steps_per_s is not None else 1.0
                self._steps_per_s = (
                    rate if self._steps_per_s is None else (1 - a) * self._steps_per_s + a * rate
                )
                self._ui_frac = ui if self._ui_frac is None else 0.7 * self._ui_frac + 0.3 * ui
                self._rate = (now, step, self._ui_seconds)
        else:
            self._rate = (now, step, self._ui_seconds)
        running = self._cell_running or now - self._bg_seen < 2.0
        sps = self._steps_per_s if running else None
        eta = None
        if self.total_steps and sps and sps > 0 and step < self.total_steps:
            eta = (self.total_steps - step) / sps
        last = self._acks.latest()
        overhead = None
        if probe is not None:
            with contextlib.suppress(Exception):
                overhead = probe.overhead
        self.header.state = {
            "title": self._title,
            "run_state": self._run_state(step),
            "step": step,
            "epoch": self._epoch(step),
            "total_steps": self.total_steps,
            "steps_per_s": jsonable_number(sps, 3),
            "eta_s": jsonable_number(eta, 3),
            "overhead": jsonable_number(overhead, 3),
            "ui_overhead": jsonable_number(self._ui_frac, 3) if running else None,
            "loss": jsonable_number(self._last("loss")),
            "val_loss": jsonable_number(self._last("val_loss")),
            "lr": jsonable_number(self._last("lr")),
            "delivery": self._delivery.describe()
            if probe is not None
            else {"name": "read-only", "live": False, "note": ""},
            "cell_running": bool(self._cell_running),
            "busy": dict(self._busy) if self._busy else None,
            "last_ack": {k: last.get(k) for k in ("label", "status", "message", "applied_step")}
            if last
            else None,
            "errors": len(probe.errors) if probe is not None else 0,
            "layers": len(h.layers),
            "samples": h.samples(),
        }

    def _push_curves(self, force: bool = False) -> None:
        if (self.tabs.selected_index or 0) != 0:
            # a hidden plot is laid out at zero size (bqplot logs NaN transforms): the curves
            # wait, marked dirty, and are drawn when their tab is shown again (_on_tab)
            self._dirty["scalars"] = True
            self._curves_stale = True
            return
        self._curves_stale = False
        self._dirty["scalars"] = False
        events = self._dirty["events"]
        self.curves.update(
            self.histories,
            force=force or events,
            steps=self.probe.step_count if self.probe is not None else None,
        )

    def _order(self) -> list[int]:
        h = self.history
        return [i for i in h.forward_order if i < len(h.layers)]

    def _selected_index(self) -> int | None:
        name = self.table.selected
        if not name:
            return None
        try:
            return self.history.layer_index(name)
        except KeyError:
            return None

    def _push_table(self, force: bool = False) -> None:
        self._dirty["record"] = False
        h = self.history
        rec = h.latest
        step = rec.step if rec is not None else -1
        if not force and step == self._table_step:
            return
        self._table_step = step
        rows = layer_rows(h)
        with self.table.hold_sync():
            self.table.rows = rows
            self.table.step = step
            if not self.table.selected and rows:
                # start on the first layer with parameters, so the detail is never empty
                first = next((r for r in rows if r["n_params"] > 0), rows[0])
                self.table.selected = first["name"]

    def _push_views(self, force: bool = False) -> None:
        """Update the per-layer view that is visible (the others wait until shown)."""
        self._dirty["views"] = False
        h = self.history
        tab = self.tabs.selected_index or 0
        sel = self._selected_index()
        order = self._order()
        key = (tab, sel, h.samples(), h.step, len(h.events))
        if not force and self._view_keys.get("views") == key:
            return
        self._view_keys["views"] = key
        if tab == 1:
            self._push_layer_maps(sel)
        elif tab == 2:
            self.depth.update(h, order, sel)
            self._push_depth_map(order, sel)
        elif tab == 3:
            self.layer_curves.update(h, order, sel)
        elif tab == 4:
            self.lr_finder.update(
                h, read_only=bool(self.controls.read_only), registry=list(REGISTRY)
            )
        elif tab == 5:
            self.landscape.update()

    def _push_layer_maps(self, sel: int | None) -> None:
        h = self.history
        name = h.layers[sel].name if sel is not None else ""
        for kind, widget, what in (
            ("act", self.act_map, "outputs"),
            ("ograd", self.grad_map, "output gradients"),
        ):
            steps, counts = np.zeros(0), np.zeros((0, 0))
            if sel is not None:  # this layer only: cheap however many layers there are
                steps, counts = h.layer_histograms(kind, sel)
            if sel is None or len(steps) == 0 or not np.any(counts):
                widget.show(
                    None,
                    title=f"{what} of {name or '(no layer)'} over time",
                    empty="no histograms recorded yet",
                )
                continue
            img = hist_image(counts)
            widget.show(
                img,
                title=f"{what} of {name} over time",
                col_labels=[f"step {int(s)}" for s in steps],
                x_label=f"{len(steps)} records in order (steps not to scale)",
            )

    def _push_depth_map(self, order: list[int], sel: int | None) -> None:
        h = self.history
        rec = h.latest
        if rec is None or rec.act_hist is None or not order:
            self.depth_map.show(
                None,
                title="output distribution by depth",
                empty="no histograms recorded yet",
            )
            return
        img = hist_image(np.asarray(rec.act_hist)[order])
        self.depth_map.show(
            img,
            title=f"output distribution by depth (step {rec.step})",
            col_labels=[h.layers[i].name for i in order],
            x_label="layer (forward order)",
            highlight=order.index(sel) if sel is not None and sel in order else -1,
        )

    def _push_controls(self) -> None:
        key = tuple((name, id(spec)) for name, spec in REGISTRY.items())
        names = [self.history.layers[i].name for i in self._order()]
        with self.controls.hold_sync():
            if key != self._registry_key:
                self._registry_key = key
                self.controls.actions = action_specs()
            if names != self.controls.layers:
                self.controls.layer_params = [
                    int(self.history.layers[i].n_params) for i in self._order()
                ]
                self.controls.layers = names
            d = (
                self._delivery.describe()
                if self.probe is not None
                else {"name": "read-only", "live": False, "note": ""}
            )
            if d != self.controls.delivery:
                self.controls.delivery = d

    def _push_diagnosis(self, force: bool = False) -> None:
        """Findings and checklist (guarded: those modules may be absent or fail)."""
        h = self.history
        version = (h.samples(), h.step, len(h.events), len(self._acks))
        if not force and version == self._diag_version:
            return
        self._diag_version = version
        t0 = time.perf_counter()
        findings = findings_payload(self.probe, h)
        checklist = checklist_payload(self.probe)
        with self.controls.hold_sync():
            self.controls.findings = findings
            self.controls.checklist = checklist
        self._diag_cost = time.perf_counter() - t0
        # keep the diagnosis under ~1% of wall time however slow it is
        self._slow.interval = max(2.0, 2 * self._heavy.interval, 100 * self._diag_cost)


class _Unsubscribe:
    """Adapts ``ActionQueue.on_change``'s remover to the ``.remove()`` handle shape."""

    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def remove(self) -> None:
        self._fn()

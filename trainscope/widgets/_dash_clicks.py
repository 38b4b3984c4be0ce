"""The dashboard's click path: requests in, acknowledgements out, long actions shown.

Browser messages are validated (``_messages``) and submitted to ``probe.actions``; the handlers
do nothing else, so they are safe in a kernel subshell thread.  Every request is acknowledged
through ``Controls.tickets`` (pending -> applied at step N / refused / failed), at most every
50 ms.  A watchdog thread says when an action holds the training loop (an LR sweep, a check),
with its progress and a Cancel button.  See :mod:`._dash_state`.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import uuid
from typing import Any

from ..actions import REGISTRY, Ticket
from ._dash_views import DashboardViews
from ._messages import MessageError, parse_message

__all__ = ["DashboardClicks"]

_MAX_PENDING = 100
_ids = itertools.count(1)


class DashboardClicks(DashboardViews):
    """Requests, acknowledgements and long actions (mixed into :class:`Dashboard`)."""


    # ------------------------------------------------------------------ public API (requests)
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
            # the header first: the two are separate comm messages and the browser may draw
            # between them; the state badge must never say "running" beside a busy banner
            self._push_header()
            self.controls.busy = dict(self._busy) if self._busy else {}

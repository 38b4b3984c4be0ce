"""Requests to change a running training, applied on the training thread at a step boundary.

The path every action takes, whether it comes from a dashboard click or a Python call:

1. :meth:`ActionQueue.submit` (any thread) looks the action up in the whitelist
   (:data:`REGISTRY`), validates its arguments *now* -- an invalid request is refused with the
   reason and changes nothing -- and enqueues it.  Message handlers do nothing else.
2. At the next step boundary the probe calls :meth:`ActionQueue.apply_pending` on the training
   thread.  Each action's ``apply`` runs there, all-or-nothing; its result is recorded on the
   run's timeline (:meth:`History.add_event`) and, when it returns something with ``undo()``,
   can be undone with the built-in ``undo`` action.
3. Every state change of a :class:`Ticket` (pending -> applied at step N / refused / failed /
   undone) is reported to the ``on_change`` subscribers (the dashboard's acknowledgements).

Actions are registered with :func:`register_action` (interventions, checks, the LR finder).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .probe import Probe

__all__ = ["REGISTRY", "ActionQueue", "ActionSpec", "Ticket", "Undoable", "register_action"]


class Undoable(Protocol):
    def undo(self) -> None: ...


Validator = Callable[["Probe", dict[str, Any]], dict[str, Any]]
Applier = Callable[["Probe", dict[str, Any]], Any]


@dataclass(frozen=True)
class ActionSpec:
    """A whitelisted action.

    ``validate(probe, params) -> params`` returns the cleaned arguments or raises ``ValueError``
    / ``TypeError`` with a message for the user.  ``apply(probe, params)`` changes the training;
    it returns an object with ``undo()`` for undoable actions (or ``None``), and may return a
    ``(undoable, summary_dict)`` pair to add details to the timeline.
    """

    name: str
    label: str
    validate: Validator
    apply: Applier
    description: str = ""
    needs_step_boundary: bool = True
    category: str = "other"
    schema: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Parameters for UI forms: ``{name: {"type": "float"|"int"|"bool"|"str"|"choice"|"layers"|
    "layer", "default": ..., "min": ..., "max": ..., "log": bool, "choices": [...], "help": str}}``.
    The dashboard renders a form from it; ``validate`` stays the authority."""


REGISTRY: dict[str, ActionSpec] = {}


def register_action(
    name: str,
    *,
    validate: Validator,
    apply: Applier,
    label: str | None = None,
    description: str = "",
    needs_step_boundary: bool = True,
    category: str = "other",
    schema: Mapping[str, Mapping[str, Any]] | None = None,
) -> ActionSpec:
    """Add an action to the whitelist (replacing one of the same name)."""
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"action names are short identifiers, got {name!r}")
    spec = ActionSpec(
        name,
        label or name.replace("_", " "),
        validate,
        apply,
        description,
        needs_step_boundary,
        category,
        dict(schema or {}),
    )
    REGISTRY[name] = spec
    return spec


@dataclass
class Ticket:
    """The life of one request."""

    id: str
    action: str
    params: dict[str, Any]
    source: str
    status: str = "pending"  # pending | applied | refused | failed | undone
    message: str = ""
    submitted_step: int = 0
    applied_step: int | None = None
    event_id: int | None = None
    t_submit: float = field(default_factory=time.time)
    t_done: float | None = None
    result: Any = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (what the dashboard shows)."""
        return {
            "id": self.id,
            "action": self.action,
            "params": _jsonable(self.params),
            "source": self.source,
            "status": self.status,
            "message": self.message,
            "submitted_step": self.submitted_step,
            "applied_step": self.applied_step,
            "event_id": self.event_id,
            "latency_ms": None
            if self.t_done is None
            else round((self.t_done - self.t_submit) * 1000, 1),
            "undoable": hasattr(self.result, "undo") and self.status == "applied",
        }

    def raise_for_status(self) -> Ticket:
        """Raise ``ValueError`` / ``RuntimeError`` if the request was refused or failed."""
        if self.status == "refused":
            raise ValueError(f"{self.action} refused: {self.message}")
        if self.status == "failed":
            raise RuntimeError(f"{self.action} failed: {self.message}")
        return self


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


class ActionQueue:
    """Thread-safe queue of validated requests for one probe."""

    def __init__(self, probe: Probe, *, keep: int = 500) -> None:
        self._probe = probe
        self._lock = threading.Lock()
        self._queue: deque[Ticket] = deque()
        self.tickets: deque[Ticket] = deque(maxlen=keep)
        self._ids = itertools.count(1)
        self._listeners: dict[int, Callable[[Ticket], None]] = {}
        self._listener_ids = itertools.count()
        self.listener_errors: list[str] = []

    # -------------------------------------------------------------- subscription
    def on_change(self, callback: Callable[[Ticket], None]) -> Callable[[], None]:
        """Call ``callback(ticket)`` on every status change; returns a function that unsubscribes."""
        key = next(self._listener_ids)
        self._listeners[key] = callback

        def remove() -> None:
            self._listeners.pop(key, None)

        return remove

    def _changed(self, t: Ticket) -> None:
        for cb in list(self._listeners.values()):
            try:
                cb(t)
            except Exception as e:
                if len(self.listener_errors) < 100:
                    self.listener_errors.append(f"{type(e).__name__}: {e}")

    # -------------------------------------------------------------- requests
    def submit(
        self,
        action: str,
        params: Mapping[str, Any] | None = None,
        *,
        source: str = "python",
        id: str | None = None,
    ) -> Ticket:
        """Validate and enqueue a request; never raises for bad requests (see ``Ticket.status``)."""
        raw = dict(params or {})
        t = Ticket(
            id=str(id) if id is not None else f"a{next(self._ids)}",
            action=str(action),
            params=raw,
            source=source,
            submitted_step=self._probe.step_count,
        )
        spec = REGISTRY.get(action) if isinstance(action, str) else None
        if spec is None:
            known = ", ".join(sorted(REGISTRY)) or "none registered"
            return self._finish(t, "refused", f"unknown action {action!r}; known actions: {known}")
        try:
            t.params = spec.validate(self._probe, raw)
        except (ValueError, TypeError, KeyError) as e:
            return self._finish(t, "refused", str(e).strip("'\""))
        except Exception as e:  # a validator bug must not break the caller either
            return self._finish(t, "refused", f"could not validate: {type(e).__name__}: {e}")
        with self._lock:
            self._queue.append(t)
            self.tickets.append(t)
        self._changed(t)
        return t

    def pending(self) -> list[Ticket]:
        with self._lock:
            return list(self._queue)

    def apply_pending(self) -> list[Ticket]:
        """Apply every queued request, in order (call on the training thread, between steps)."""
        done: list[Ticket] = []
        while True:
            with self._lock:
                if not self._queue:
                    break
                t = self._queue.popleft()
            done.append(self._apply(t))
        return done

    def _apply(self, t: Ticket) -> Ticket:
        spec = REGISTRY.get(t.action)
        probe = self._probe
        if spec is None:
            return self._finish(t, "failed", "action was unregistered before it could be applied")
        try:
            out = spec.apply(probe, t.params)
        except Exception as e:
            return self._finish(t, "failed", f"{type(e).__name__}: {e}")
        details: dict[str, Any] = {}
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
            out, details = out
        t.result = out
        t.applied_step = probe.step_count
        ev = probe.history.add_event(
            "intervention" if t.action != "undo" else "undo",
            spec.label,
            step=probe.step_count,
            action=t.action,
            params=_jsonable(t.params),
            ticket=t.id,
            source=t.source,
            undoable=hasattr(out, "undo"),
            **_jsonable(details),
        )
        t.event_id = ev.id
        msg = details.get("message", "") if isinstance(details, dict) else ""
        return self._finish(t, "applied", str(msg) or f"applied at step {t.applied_step}")

    def _finish(self, t: Ticket, status: str, message: str) -> Ticket:
        t.status = status
        t.message = message
        t.t_done = time.time()
        if status != "pending":
            with self._lock:
                if t not in self.tickets:
                    self.tickets.append(t)
        self._changed(t)
        return t

    def find(self, ticket_id: str) -> Ticket | None:
        with self._lock:
            for t in self.tickets:
                if t.id == ticket_id:
                    return t
        return None


# ------------------------------------------------------------------ built-in: undo
def _validate_undo(probe: Probe, params: dict[str, Any]) -> dict[str, Any]:
    target = params.get("ticket")
    if not isinstance(target, str) or not target:
        raise ValueError("undo needs ticket=<id of an applied action>")
    t = probe.actions.find(target)
    if t is None:
        raise ValueError(f"no action with ticket id {target!r}")
    if t.status != "applied" or not hasattr(t.result, "undo"):
        raise ValueError(f"action {target!r} ({t.action}) is {t.status} and cannot be undone")
    return {"ticket": target}


def _apply_undo(probe: Probe, params: dict[str, Any]) -> tuple[None, dict[str, Any]]:
    t = probe.actions.find(params["ticket"])
    if t is None or t.status != "applied" or not hasattr(t.result, "undo"):
        raise RuntimeError("the action is no longer undoable")
    t.result.undo()
    t.status = "undone"
    t.message = f"undone at step {probe.step_count}"
    probe.actions._changed(t)
    return None, {"undid": t.id, "undid_action": t.action}


register_action(
    "undo",
    validate=_validate_undo,
    apply=_apply_undo,
    label="Undo",
    description="Undo an applied intervention (restores what it changed).",
    category="timeline",
    schema={"ticket": {"type": "str", "help": "id of the applied action to undo"}},
)

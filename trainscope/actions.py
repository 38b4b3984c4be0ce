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
   undone / cancelled) is reported to the ``on_change`` subscribers (the dashboard's
   acknowledgements).

Long actions (the LR finder, the checks that train) hold the training loop while they run. From
inside their ``apply`` they call :func:`progress` (the dashboard shows "Training paused: LR finder
37/100") and poll :func:`cancel_requested`; :meth:`ActionQueue.cancel` sets that flag from any
thread. A long action that sees it stops at its next iteration, puts everything back exactly as
when it finishes normally, and its ticket ends ``cancelled``. A queued request that has not
started is simply dropped.

Actions are registered with :func:`register_action` (interventions, checks, the LR finder).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .run import MAX_DEPTH, jsonable

if TYPE_CHECKING:
    from .run import RunContext

__all__ = [
    "MAX_DEPTH",
    "REGISTRY",
    "ActionQueue",
    "ActionSpec",
    "Cancelled",
    "Ticket",
    "Undoable",
    "cancel_requested",
    "nesting_depth",
    "note",
    "progress",
    "register_action",
]

# MAX_DEPTH (from trainscope.run): deepest nesting of lists / dicts accepted in a request's
# parameters (no action needs more than 2 or 3); deeper requests are refused before anything
# recurses over them.

_LOCAL = threading.local()


def note(text: str) -> None:
    """From inside a validator: add a remark to the pending ticket's message (e.g. that the
    re-initialized ``lm_head`` shares its weight with the input embedding).  Outside a
    validation it does nothing."""
    notes = getattr(_LOCAL, "notes", None)
    if notes is not None and len(notes) < 10:
        notes.append(str(text))


PROGRESS_EVERY = 0.25
"""Seconds between two progress notifications of one running action (the dashboard's
acknowledgements); the ticket's ``progress`` itself is always current."""


class Cancelled(Exception):
    """Raised by a long action that stopped because its request was cancelled (after putting
    everything back); the action queue records the ticket as ``cancelled`` with this message."""


def _running() -> tuple[ActionQueue, Ticket] | None:
    cur: tuple[ActionQueue, Ticket] | None = getattr(_LOCAL, "running", None)
    return cur


def progress(done: int, total: int, text: str = "") -> None:
    """From inside a running action's ``apply``: ``done`` of ``total`` iterations are done.

    The ticket's ``progress`` is updated at once; its listeners (the dashboard) hear about it at
    most every :data:`PROGRESS_EVERY` seconds. An action that reports progress must also poll
    :func:`cancel_requested` (the dashboard offers Cancel for it). Outside an action it does
    nothing."""
    cur = _running()
    if cur is None:
        return
    queue, t = cur
    t.progress = (int(done), int(total), str(text)[:200])
    now = time.monotonic()
    if now - t._progress_sent >= PROGRESS_EVERY or done >= total:
        t._progress_sent = now
        queue._changed(t)


def cancel_requested() -> bool:
    """From inside a running action's ``apply``: whether its request was cancelled (then stop at
    this iteration, restore what the action changed, and return or raise :class:`Cancelled`).
    Outside an action: ``False``."""
    cur = _running()
    if cur is None or not cur[1].cancel_requested:
        return False
    cur[1]._cancel_seen = True
    return True


def nesting_depth(v: Any, limit: int = MAX_DEPTH) -> int:
    """Depth of nested lists / tuples / dicts in ``v``, counted without recursion; stops counting
    past ``limit`` (returns ``limit + 1`` then), so a 100,000-level input costs ``limit`` steps."""
    depth = 0
    level: list[Any] = [v]
    while level:
        nxt: list[Any] = []
        containers = False
        for x in level:
            if isinstance(x, (str, int, float)) or x is None:
                continue
            if isinstance(x, (dict, Mapping)):
                nxt.extend(x.values())
                containers = True
            elif isinstance(x, (list, tuple)):
                nxt.extend(x)
                containers = True
        if not containers:
            break
        depth += 1
        if depth > limit:
            return depth
        level = nxt
    return depth


class Undoable(Protocol):
    def undo(self) -> None: ...


Validator = Callable[["RunContext", dict[str, Any]], dict[str, Any]]
Applier = Callable[["RunContext", dict[str, Any]], Any]


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
    status: str = "pending"  # pending | applied | refused | failed | undone | cancelled
    message: str = ""
    submitted_step: int = 0
    applied_step: int | None = None
    event_id: int | None = None
    t_submit: float = field(default_factory=time.time)
    t_done: float | None = None
    result: Any = None
    progress: tuple[int, int, str] | None = None
    """``(done, total, what)`` while a long action runs (see :func:`progress`)."""
    cancel_requested: bool = False
    """Set by :meth:`ActionQueue.cancel` while the action runs."""
    _progress_sent: float = field(default=-math.inf, repr=False, compare=False)
    _cancel_seen: bool = field(default=False, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (what the dashboard shows)."""
        return {
            "id": self.id,
            "action": self.action,
            "params": jsonable(self.params),
            "source": self.source,
            "status": self.status,
            "message": self.message,
            "submitted_step": self.submitted_step,
            "applied_step": self.applied_step,
            "event_id": self.event_id,
            "latency_ms": None
            if self.t_done is None
            else round((self.t_done - self.t_submit) * 1000, 1),
            "undoable": self.status == "applied" and _undoable(self.result),
            "progress": None
            if self.progress is None or self.status != "pending"
            else {"done": self.progress[0], "total": self.progress[1], "text": self.progress[2]},
            "cancel_requested": self.cancel_requested,
        }

    def raise_for_status(self) -> Ticket:
        """Raise ``ValueError`` / ``RuntimeError`` if the request was refused or failed."""
        if self.status == "refused":
            raise ValueError(f"{self.action} refused: {self.message}")
        if self.status == "failed":
            raise RuntimeError(f"{self.action} failed: {self.message}")
        return self


def _cancel_text(t: Ticket, detail: str) -> str:
    at = f" at {t.progress[0]:,}/{t.progress[1]:,}" if t.progress is not None else ""
    return f"cancelled{at}: {detail}" if detail else f"cancelled{at}; everything it changed was put back"


def _undoable(result: Any) -> bool:
    if not hasattr(result, "undo"):
        return False
    flag = getattr(result, "undoable", True)
    return bool(flag)


class ActionQueue:
    """Thread-safe queue of validated requests for one probe."""

    def __init__(self, probe: RunContext, *, keep: int = 500) -> None:
        self._probe = probe
        self._lock = threading.Lock()
        self._queue: deque[Ticket] = deque()
        self.tickets: deque[Ticket] = deque(maxlen=keep)
        self._by_id: dict[str, Ticket] = {}  # every id in the ticket store and the queue
        self._stored: set[int] = set()  # id() of the tickets in ``tickets``
        self._ids = itertools.count(1)
        self._listeners: dict[int, Callable[[Ticket], None]] = {}
        self._listener_ids = itertools.count()
        self.listener_errors: list[str] = []
        self._current: Ticket | None = None  # the request being applied right now

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
        """Validate and enqueue a request; never raises for bad requests (see ``Ticket.status``).

        Ids are unique over the whole ticket store and the queue: a request whose ``id`` is
        already known is refused (its refusal is reported but not stored, so ``find`` and undo
        keep pointing at the original), and generated ids skip any id a caller already used.
        """
        try:
            raw = dict(params or {})
        except (TypeError, ValueError) as e:
            raw, bad = {}, f"parameters must be keyword arguments (a dict), got {type(params).__name__}: {e}"
        else:
            bad = ""
        with self._lock:
            if id is None:
                rid = self._fresh_id("a")
                dup = False
            else:
                rid = str(id)
                dup = self._known(rid)
        t = Ticket(id=rid, action=str(action)[:200], params=raw, source=source, submitted_step=self._probe.step_count)
        if dup:
            t.params = {}
            return self._finish(
                t,
                "refused",
                f"request id {rid!r} is already used by another request; every request needs a new id",
                store=False,
            )
        if bad:
            return self._finish(t, "refused", bad)
        if nesting_depth(raw) > MAX_DEPTH:
            t.params = {}
            return self._finish(
                t,
                "refused",
                f"parameters nest deeper than {MAX_DEPTH} levels of lists / objects; no action takes "
                "more than a list of names",
            )
        spec = REGISTRY.get(action) if isinstance(action, str) else None
        if spec is None:
            known = ", ".join(sorted(REGISTRY)) or "none registered"
            return self._finish(t, "refused", f"unknown action {str(action)[:100]!r}; known actions: {known}")
        notes: list[str] = []
        _LOCAL.notes = notes
        try:
            t.params = spec.validate(self._probe, raw)
        except (ValueError, TypeError, KeyError) as e:
            return self._finish(t, "refused", str(e).strip("'\""))
        except RecursionError:
            return self._finish(t, "refused", "parameters nest too deeply")
        except Exception as e:  # a validator bug must not break the caller either
            return self._finish(t, "refused", f"could not validate: {type(e).__name__}: {e}")
        finally:
            _LOCAL.notes = None
        if notes:
            t.message = "; ".join(notes)
        with self._lock:
            self._queue.append(t)
            self._store(t)
        self._changed(t)
        return t

    def new_id(self, prefix: str = "a") -> str:
        """A request id no stored or queued request uses (``prefix`` + a counter); subclasses that
        choose ids themselves (per-rank prefixes) should take them from here."""
        with self._lock:
            return self._fresh_id(prefix)

    def _fresh_id(self, prefix: str) -> str:
        rid = f"{prefix}{next(self._ids)}"
        while self._known(rid):
            rid = f"{prefix}{next(self._ids)}"
        return rid

    def _known(self, rid: str) -> bool:
        """Is ``rid`` the id of a stored or queued ticket (hold the lock)?"""
        t = self._by_id.get(rid)
        if t is None:
            return False
        if len(self._stored) != len(self.tickets):
            self._stored = {id(x) for x in self.tickets}
        if id(t) in self._stored or any(x is t for x in self._queue):
            return True
        del self._by_id[rid]  # the store was cleared or trimmed from outside
        return False

    def _store(self, t: Ticket) -> None:
        """Keep ``t`` in the bounded ticket store and the id index (hold the lock)."""
        if len(self._stored) != len(self.tickets):  # the store was changed from outside: resync
            self._stored = {id(x) for x in self.tickets}
        if id(t) in self._stored:
            return
        if self.tickets.maxlen is not None and len(self.tickets) >= self.tickets.maxlen:
            old = self.tickets.popleft()
            self._stored.discard(id(old))
            if self._by_id.get(old.id) is old and old.status != "pending":  # pending ones are still queued
                del self._by_id[old.id]
        self.tickets.append(t)
        self._stored.add(id(t))
        self._by_id.setdefault(t.id, t)
        if len(self._by_id) > 2 * (self.tickets.maxlen or 500) + len(self._queue):
            live = list(self.tickets) + list(self._queue)
            self._by_id = {x.id: x for x in reversed(live)}

    def pending(self) -> list[Ticket]:
        with self._lock:
            return list(self._queue)

    def cancel(self, ticket_id: str) -> Ticket:
        """Cancel a request (any thread).

        A queued request is dropped (``cancelled``, nothing changed). A long action that is running
        (one that reports :func:`progress`) stops at its next iteration and restores what it
        changed, exactly as when it finishes normally; its ticket then ends ``cancelled``. Raises
        ``ValueError`` saying why when there is no such request or it has already finished."""
        rid = str(ticket_id)[:64]
        with self._lock:
            t = self._by_id.get(rid)
            queued = t is not None and any(x is t for x in self._queue)
            if queued:
                self._queue = deque(x for x in self._queue if x is not t)
            elif t is not None and t is self._current:
                t.cancel_requested = True
        if t is None:
            raise ValueError(f"no request with id {rid!r} to cancel")
        if queued:
            return self._finish(t, "cancelled", "cancelled before it started: nothing was changed")
        if t is self._current:
            self._changed(t)
            return t
        raise ValueError(
            f"request {rid!r} ({t.action}) is {t.status}"
            + (" and not running here" if t.status == "pending" else "")
            + ": only a queued request or a running long action can be cancelled"
        )

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
        outer = getattr(_LOCAL, "running", None)
        _LOCAL.running = (self, t)
        self._current = t
        try:
            out = spec.apply(probe, t.params)
        except Cancelled as e:
            return self._finish(t, "cancelled", str(e) or _cancel_text(t, ""))
        except Exception as e:
            if t._cancel_seen:
                return self._finish(t, "cancelled", _cancel_text(t, f"{type(e).__name__}: {e}"))
            return self._finish(t, "failed", f"{type(e).__name__}: {e}")
        finally:
            self._current = None
            _LOCAL.running = outer
        details: dict[str, Any] = {}
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
            out, details = out
        if t._cancel_seen and not _undoable(out):  # it stopped early and changed nothing
            return self._finish(t, "cancelled", _cancel_text(t, str(details.get("message", ""))))
        t.result = out
        if hasattr(out, "ticket_id"):
            out.ticket_id = t.id
        releases = getattr(out, "on_release", None)
        if isinstance(releases, list):  # its undo state was released to bound memory: tell the listeners
            releases.append(lambda: self._changed(t))
        t.applied_step = probe.step_count
        ev = probe.history.add_event(
            "intervention" if t.action != "undo" else "undo",
            spec.label,
            step=probe.step_count,
            action=t.action,
            params=jsonable(t.params),
            ticket=t.id,
            source=t.source,
            undoable=hasattr(out, "undo"),
            **jsonable(details),
        )
        t.event_id = ev.id
        msg = details.get("message", "") if isinstance(details, dict) else ""
        return self._finish(t, "applied", str(msg) or f"applied at step {t.applied_step}")

    def _finish(self, t: Ticket, status: str, message: str, *, store: bool = True) -> Ticket:
        t.status = status
        t.message = message
        t.t_done = time.time()
        if status != "pending" and store:
            with self._lock:
                self._store(t)
        self._changed(t)
        return t

    def find(self, ticket_id: str) -> Ticket | None:
        """The stored ticket with this id (ids are unique in the store)."""
        with self._lock:
            t = self._by_id.get(ticket_id)
            if len(self._stored) != len(self.tickets):
                self._stored = {id(x) for x in self.tickets}
            if t is not None and id(t) in self._stored:
                return t
            for t in reversed(self.tickets):
                if t.id == ticket_id:
                    return t
        return None


# ------------------------------------------------------------------ built-in: undo
def _validate_undo(probe: RunContext, params: dict[str, Any]) -> dict[str, Any]:
    target = params.get("ticket")
    if not isinstance(target, str) or not target:
        raise ValueError("undo needs ticket=<id of an applied action>")
    t = probe.actions.find(target)
    if t is None:
        raise ValueError(f"no action with ticket id {target!r}")
    if t.status != "applied" or not hasattr(t.result, "undo"):
        raise ValueError(f"action {target!r} ({t.action}) is {t.status} and cannot be undone")
    why = _undo_blocker(t)
    if why:
        raise ValueError(f"cannot undo {t.action} ({target}): {why}")
    return {"ticket": target}


def _undo_blocker(t: Ticket) -> str | None:
    blocker = getattr(t.result, "undo_blocker", None)
    return blocker() if callable(blocker) else None


def _apply_undo(probe: RunContext, params: dict[str, Any]) -> tuple[None, dict[str, Any]]:
    t = probe.actions.find(params["ticket"])
    if t is None or t.status != "applied" or not hasattr(t.result, "undo"):
        raise RuntimeError("the action is no longer undoable")
    why = _undo_blocker(t)  # re-checked at the boundary: something may have been applied since
    if why:
        raise RuntimeError(f"cannot undo {t.action} ({t.id}): {why}")
    t.result.undo()
    t.status = "undone"
    t.message = f"undone at step {probe.step_count}"
    probe.actions._changed(t)
    return None, {"undid": t.id, "undid_action": t.action}


def register_undo() -> None:
    """Put ``undo`` on the whitelist (:func:`trainscope.builtins.register_builtins` calls it first)."""
    register_action(
        "undo",
        validate=_validate_undo,
        apply=_apply_undo,
        label="Undo",
        description="Undo an applied intervention (restores what it changed).",
        category="timeline",
        schema={"ticket": {"type": "str", "help": "id of the applied action to undo"}},
    )

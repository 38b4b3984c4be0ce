"""The acknowledgements the Activity list shows: one entry per request, newest last."""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import OrderedDict
from typing import Any

from ..actions import REGISTRY, Ticket

__all__ = ["AckStore"]


class AckStore:
    """Thread-safe, bounded record of requests and their outcome (any thread may write).

    Tickets of the probe's action queue are stored as ``Ticket.as_dict()`` plus a ``label``;
    requests the dashboard refused itself (malformed, read-only, duplicate...) get a record of the
    same shape with ``status == "refused"``.
    """

    def __init__(self, keep: int = 50) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # which ticket each entry shows: a later request (or a malformed message) that reuses an
        # id gets an entry of its own instead of overwriting the first one's
        self._owner: dict[str, weakref.ref[Ticket] | None] = {}
        self._dups = itertools.count(1)

    def _put(self, key: str, d: dict[str, Any], owner: Ticket | None) -> None:
        with self._lock:
            if key in self._items:
                ref = self._owner.get(key)
                same = owner is not None and ref is not None and ref() is owner
                if not same:
                    key = f"{key}#dup{next(self._dups)}"
            self._items[key] = d
            self._owner[key] = weakref.ref(owner) if owner is not None else None
            self._items.move_to_end(key)
            while len(self._items) > self.keep:
                old, _ = self._items.popitem(last=False)
                self._owner.pop(old, None)

    def remember(self, t: Ticket) -> None:
        d = t.as_dict()
        spec = REGISTRY.get(t.action)
        d["label"] = spec.label if spec is not None else t.action
        self._put(t.id, d, t)

    def refuse(
        self, rid: str, action: str, reason: str, step: int | None, key: str | None = None
    ) -> None:
        self._put(
            key or rid,
            {
                "id": rid,
                "action": str(action)[:64],
                "label": str(action)[:64],
                "params": {},
                "source": "ui",
                "status": "refused",
                "message": reason,
                "submitted_step": step,
                "applied_step": None,
                "event_id": None,
                "latency_ms": None,
                "undoable": False,
            },
            None,
        )

    def newest_first(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(d) for d in reversed(self._items.values())]

    def latest(self) -> dict[str, Any] | None:
        with self._lock:
            return dict(next(reversed(self._items.values()))) if self._items else None

    def __len__(self) -> int:
        return len(self._items)

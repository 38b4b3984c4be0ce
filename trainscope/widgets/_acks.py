"""The acknowledgements the Activity list shows: one entry per request, newest last."""

from __future__ import annotations

import threading
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

    def _put(self, key: str, d: dict[str, Any]) -> None:
        with self._lock:
            self._items[key] = d
            self._items.move_to_end(key)
            while len(self._items) > self.keep:
                self._items.popitem(last=False)

    def remember(self, t: Ticket) -> None:
        d = t.as_dict()
        spec = REGISTRY.get(t.action)
        d["label"] = spec.label if spec is not None else t.action
        self._put(t.id, d)

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
        )

    def newest_first(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(d) for d in reversed(self._items.values())]

    def latest(self) -> dict[str, Any] | None:
        with self._lock:
            return dict(next(reversed(self._items.values()))) if self._items else None

    def __len__(self) -> int:
        return len(self._items)

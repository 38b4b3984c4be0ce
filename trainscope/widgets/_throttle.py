"""Wall-clock throttle: decide cheaply, at every step boundary, whether an update is due."""

from __future__ import annotations

import time


class Throttle:
    """True at most once per ``interval`` seconds (fastprogress's ``update_every`` idea).

    ``due()`` costs one ``time.monotonic()`` call and a comparison, so it can run at every
    optimizer step.  ``touch()`` records that an update just happened by another path.
    """

    __slots__ = ("_last", "interval")

    def __init__(self, interval: float) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.interval = float(interval)
        self._last = -float("inf")

    def due(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if now - self._last >= self.interval:
            self._last = now
            return True
        return False

    def ready(self, now: float | None = None) -> bool:
        """Like :meth:`due` without consuming it."""
        now = time.monotonic() if now is None else now
        return now - self._last >= self.interval

    def touch(self, now: float | None = None) -> None:
        self._last = time.monotonic() if now is None else now

    def reset(self) -> None:
        self._last = -float("inf")

"""Append what a :class:`~trainscope.history.History` records to a run directory.

The writer subscribes to the history.  Its callback runs on the thread that recorded the data (the
training thread) and only *collects* what is new -- a few small array copies, no I/O; a background
thread encodes and appends it to the current segment every ``flush_interval`` seconds, and
compacts the directory when the segment grows past its budget.  Nothing here syncs a device or
raises into the training loop: an I/O error (disk full, directory removed, file too large) is
recorded in :attr:`RunWriter.errors` (and in ``probe.errors`` of the probe that owns the writer),
reported once as a ``RuntimeWarning``, and the writer stops for good: it unsubscribes from the
history and drops what it had queued, so a failed writer holds no memory however long training
goes on; a half-written record is cut off, so what was written stays readable.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import platform
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from .._version import __version__
from ..history import Event, History, StepRecord, Update
from . import _format as F

__all__ = ["RunWriter"]

_LIVE: weakref.WeakSet[RunWriter] = weakref.WeakSet()


def _close_all() -> None:  # pragma: no cover - runs at interpreter exit
    for w in list(_LIVE):
        try:
            w.close()
        except Exception:
            pass


atexit.register(_close_all)


class RunWriter:
    """Write a run directory for ``history`` (see :mod:`trainscope.runlog` for the format).

    Parameters
    ----------
    path
        The run directory.  Created if missing; it must not already hold a run.
    history
        The history to mirror (usually ``probe.history``; ``Probe(..., logdir=path)`` does this).
    flush_interval
        Seconds between appends to disk.  A process that is killed loses at most this much.
    segment_bytes
        Compact when the current segment grows past ``max(segment_bytes, size of the last
        snapshot)``: the directory then holds the two newest snapshots and their segments (the
        older pair is the fallback should the newest snapshot be damaged), so its size stays
        bounded however long the run: at most ``2 * snapshot + 2 * max(segment_bytes,
        snapshot)``, a snapshot being about the history's memory.
    fsync
        Also ``fsync`` every append (survives power loss, not just process death; slower).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        history: History,
        *,
        flush_interval: float = 1.0,
        segment_bytes: int = 8 << 20,
        fsync: bool = False,
    ) -> None:
        if not isinstance(history, History):
            raise TypeError(f"RunWriter needs a trainscope History, got {type(history).__name__}")
        if not (isinstance(flush_interval, (int, float)) and flush_interval > 0):
            raise ValueError(
                f"flush_interval is a positive number of seconds, got {flush_interval!r}"
            )
        if not (isinstance(segment_bytes, int) and segment_bytes >= 4096):
            raise ValueError(f"segment_bytes must be an int >= 4096, got {segment_bytes!r}")
        self.path = os.fspath(path)
        self.history = history
        self.flush_interval = float(flush_interval)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.errors: list[str] = []
        self._failure_callbacks: list[Callable[[str], None]] = []
        self.stats = {"records": 0, "bytes": 0, "flushes": 0, "compactions": 0, "missed_records": 0}
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise NotADirectoryError(f"logdir {self.path!r} exists and is not a directory")
        os.makedirs(self.path, exist_ok=True)
        segs, snaps = F.list_seqs(self.path)
        if os.path.exists(os.path.join(self.path, F.META_FILE)) or segs or snaps:
            raise FileExistsError(
                f"logdir {self.path!r} already holds a trainscope run; runs are never overwritten. "
                "Pass a new directory (e.g. logdir='runs/exp-2'), or delete the old run first."
            )
        self._lock = threading.Lock()  # collected items and 'seen' counters
        self._io = threading.Lock()  # the segment file
        self._queue: list[tuple[Any, ...]] = []
        self._seen_scalars: dict[str, int] = {}
        self._seen_samples = 0
        self._seen_params = 0
        self._last_event = 0
        self._layer_names: list[str] | None = None
        self._meta_json = b""
        self._closed = False
        self._failed = False
        self._seq = 0
        self._fd: int | None = None
        self._seg_bytes = 0
        self._snap_bytes = 0
        self.last_flush = time.time()

        with history.lock:
            state = history.state_dict()
            has_data = bool(state["scalars"]) or history.samples() > 0 or len(history.events) > 0
        info = {
            "format": F.FORMAT,
            "version": F.VERSION,
            "created": time.time(),
            "pid": os.getpid(),
            "host": platform.node(),
            "trainscope": __version__,
            "history_config": state["config"],
        }
        F.atomic_write(os.path.join(self.path, F.META_FILE), F.dumps(info) + b"\n")
        if has_data:  # start from what the history already holds
            with history.lock, self._lock:
                self._extract_locked()
                self._queue.clear()
                src = self._snapshot_source()
            self._write_snapshot(src, 0)
        self._open_segment(0)
        self._collect()  # layers and meta go first
        self._sub = history.subscribe(self._on_update)
        self._wake = threading.Event()
        self._thread = threading.Thread(
            target=_writer_loop,
            args=(weakref.ref(self), self._wake),
            name="trainscope-runlog",
            daemon=True,
        )
        self._thread.start()
        _LIVE.add(self)

    # ------------------------------------------------------------------ collecting (training thread)
    def _on_update(self, update: Update) -> None:
        if not (self._closed or self._failed):
            self._collect()

    def _collect(self) -> None:
        with self.history.lock, self._lock:
            if not self._failed:
                self._extract_locked()

    def _extract_locked(self) -> None:
        """Queue everything the history holds that is not queued yet (history lock held)."""
        h = self.history
        names = h.layer_names
        if names != self._layer_names:
            self._queue.append(("layers", F.layers_to_json(h.layers)))
            self._layer_names = names
            self._seen_samples = 0
            self._seen_params = 0
        for name in list(h.scalars):
            seen = self._seen_scalars.get(name, 0)
            if h.scalars[name].total > seen:
                steps, values, total = h.scalar_tail(name, seen)
                self._queue.append(("scalars", name, steps, values))
                self._seen_scalars[name] = total
        steps, rows, total = h.param_tail(self._seen_params)
        if total > self._seen_params:
            self._queue.append(("params", steps, rows))
            self._seen_params = total
        n = h.samples()
        if n > self._seen_samples and h.latest is not None:
            self.stats["missed_records"] += n - self._seen_samples - 1
            self._queue.append(("record", h.latest, list(h.forward_order)))
            self._seen_samples = n
        if h.events and h.events[-1].id > self._last_event:
            new: list[Event] = []
            for ev in reversed(h.events):
                if ev.id <= self._last_event:
                    break
                new.append(ev)
            self._queue.extend(("event", ev) for ev in reversed(new))
            self._last_event = h.events[-1].id

    # ------------------------------------------------------------------ writing (writer thread)
    def flush(self) -> None:
        """Collect and append everything recorded so far, now (any thread)."""
        if self._closed or self._failed:
            return
        self._collect()
        self._flush_once()

    def _flush_once(self) -> None:
        with self._io:
            if self._failed or self._fd is None:
                return
            try:
                with self._lock:
                    items, self._queue = self._queue, []
                self._write_items(items)
                self._maybe_write_meta()
                self.stats["flushes"] += 1
                self.last_flush = time.time()
                if self._seg_bytes >= max(self.segment_bytes, self._snap_bytes):
                    self._compact()
            except Exception as e:
                self._fail(e)

    def _maybe_write_meta(self) -> None:
        meta = F.dumps(F.to_json(self.history.meta, None))
        if meta != self._meta_json:
            self._append(F.encode({"t": "meta", "meta": F.to_json(self.history.meta, None)}))
            self._meta_json = meta

    def _write_items(self, items: list[tuple[Any, ...]]) -> None:
        chunks: list[bytes] = []
        scal: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}

        def flush_scalars() -> None:
            if not scal:
                return
            names = list(scal)
            steps = np.concatenate([np.concatenate(scal[n][0]) for n in names]).astype(np.int64)
            values = np.concatenate([np.concatenate(scal[n][1]) for n in names]).astype(np.float64)
            counts = [int(sum(len(x) for x in scal[n][0])) for n in names]
            chunks.append(
                F.encode(
                    {"t": "scalars", "names": names, "counts": counts},
                    {"steps": steps, "values": values},
                )
            )
            scal.clear()

        for item in items:
            kind = item[0]
            if kind == "scalars":
                _, name, steps, values = item
                s = scal.setdefault(name, ([], []))
                s[0].append(np.asarray(steps))
                s[1].append(np.asarray(values))
                continue
            flush_scalars()  # keep the order of scalars relative to layer resets
            if kind == "layers":
                chunks.append(F.encode({"t": "layers", "layers": item[1]}))
            elif kind == "record":
                rec: StepRecord = item[1]
                header, arrays = F.record_to_parts(rec, item[2])
                chunks.append(F.encode(header, arrays))
                self.stats["records"] += 1
            elif kind == "params":
                chunks.append(
                    F.encode(
                        {"t": "params"},
                        {
                            "steps": np.asarray(item[1], np.int64),
                            "rows": np.asarray(item[2], np.float32),
                        },
                    )
                )
            elif kind == "event":
                chunks.append(F.encode({"t": "event", **F.event_to_json(item[1])}))
        flush_scalars()
        if chunks:
            self._append(b"".join(chunks))

    def _append(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view[: 1 << 20])
            view = view[n:]
        if self.fsync:
            os.fsync(self._fd)
        self._seg_bytes += len(data)
        self.stats["bytes"] += len(data)

    def _open_segment(self, seq: int) -> None:
        fn = os.path.join(self.path, F.seg_name(seq))
        fd = os.open(fn, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        os.write(fd, F.SEGMENT_MAGIC)
        if self.fsync:
            os.fsync(fd)
            F.fsync_dir(self.path)
        self._fd, self._seq, self._seg_bytes = fd, seq, len(F.SEGMENT_MAGIC)

    def _close_segment(self) -> None:
        if self._fd is not None:
            os.fsync(
                self._fd
            )  # the segment is final: make it durable before the snapshot replaces it
            os.close(self._fd)
            self._fd = None

    def _snapshot_source(self) -> dict[str, Any]:
        """Copies of everything a snapshot holds (call with the history lock held)."""
        h = self.history
        return {
            "state": h.state_dict(),
            "layers": list(h.layers),
            "meta": F.to_json(h.meta, None),
            "events": list(h.events),
            "latest": h.latest,
            "samples": h.samples(),
        }

    def _write_snapshot(self, src: dict[str, Any], seq: int) -> None:
        data = F.snapshot_bytes(
            src["state"],
            layers=src["layers"],
            meta=src["meta"],
            events=src["events"],
            latest=src["latest"],
            info={"seq": seq, "time": time.time(), "samples": src["samples"]},
        )
        path = os.path.join(self.path, F.snap_name(seq))
        F.atomic_write(path, data)
        try:  # verify: read back exactly as a reader will (a codec or disk fault shows up now)
            F.check_snapshot(F.load_snapshot(path))
        except Exception as e:
            _unlink(path)
            raise OSError(
                f"the snapshot {F.snap_name(seq)} just written does not read back "
                f"({type(e).__name__}: {e}); it was removed, the older files are kept"
            ) from e
        self._snap_bytes = len(data)

    def _compact(self) -> None:
        """Fold everything so far into one snapshot and start a new segment (I/O lock held).

        Order makes every crash point safe: (1) the current segment N receives everything up to
        the snapshot's state and is closed; (2) the next segment N+1 is created; (3) files older
        than N are removed; (4) snapshot N+1 is written to a temporary file, synced, renamed and
        read back.  Snapshot N (or the start of the run) with segments N and N+1 is always a
        complete chain, so a reader never sees a gap or a duplicate whatever step was
        interrupted, and a snapshot that is damaged later (a bad disk, a partial copy) falls back
        to the older pair with nothing lost.
        """
        old = self._seq
        seq = old + 1
        h = self.history
        with h.lock, self._lock:  # copies only; the training thread waits for nothing else
            self._extract_locked()
            items, self._queue = self._queue, []
            src = self._snapshot_source()
        self._write_items(items)  # (1) the segment now ends exactly at the snapshot's state
        self._close_segment()
        self._open_segment(seq)  # (2)
        # every segment starts with the layer list and meta, so that it can be read on its own
        # should both snapshots before it be lost
        self._append(F.encode({"t": "layers", "layers": F.layers_to_json(src["layers"])}))
        self._meta_json = b""
        self._maybe_write_meta()
        segs, snaps = F.list_seqs(self.path)  # (3)
        for s in segs:
            if s < old:
                _unlink(os.path.join(self.path, F.seg_name(s)))
        for s in snaps:
            if s < old:
                _unlink(os.path.join(self.path, F.snap_name(s)))
        self._write_snapshot(src, seq)  # (4)
        self.stats["compactions"] += 1

    def on_failure(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(message)`` once when writing fails and the writer stops (the probe that
        owns the writer records it in ``probe.errors``)."""
        self._failure_callbacks.append(callback)

    def _fail(self, e: BaseException) -> None:
        """Stop for good after an I/O error: hold no data any more, keep what was written
        readable, and say so once (``errors``, the owning probe's ``errors``, one warning)."""
        first = not self._failed
        self._failed = True
        with self._lock:
            self._queue = []  # nothing will ever drain it
        sub = getattr(self, "_sub", None)
        if sub is not None:  # no more updates: nothing is collected for it any more
            sub.remove()
        if self._fd is not None:
            with contextlib.suppress(OSError):  # cut off a half-written record
                os.ftruncate(self._fd, self._seg_bytes)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if not first:
            return
        msg = f"{type(e).__name__}: {e}"
        self.errors.append(msg)
        for cb in list(self._failure_callbacks):
            with contextlib.suppress(Exception):  # reporting must never fail the writer
                cb(msg)
        warnings.warn(
            f"trainscope: writing the run directory {self.path!r} failed and stopped "
            f"({msg}); training continues, and what was written before stays readable. "
            "Details: writer.errors",
            RuntimeWarning,
            stacklevel=2,
        )

    # ------------------------------------------------------------------ lifecycle
    @property
    def closed(self) -> bool:
        return self._closed

    def directory_bytes(self) -> int:
        """Total size of the run directory's files now."""
        total = 0
        for n in os.listdir(self.path):
            try:
                total += os.path.getsize(os.path.join(self.path, n))
            except OSError:
                pass
        return total

    def close(self) -> None:
        """Append everything, mark the run finished and stop (idempotent)."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._sub.remove()
        self._wake.set()
        with self._io:
            try:
                if self._fd is not None and not self._failed:
                    self._append(F.encode({"t": "end", "time": time.time()}))
                self._close_segment()
            except Exception as e:
                self._fail(e)
        _LIVE.discard(self)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if self._fd is not None:
                os.close(self._fd)
        except Exception:
            pass

def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _writer_loop(ref: Callable[[], RunWriter | None], wake: threading.Event) -> None:
    while True:
        w = ref()
        if w is None or w._closed or w._failed:
            return
        interval = w.flush_interval
        w._flush_once()
        del w
        if wake.wait(interval):
            return

"""Run directories: a crash-safe, size-bounded record of a run on disk.

``Probe(model, optimizer, logdir="runs/exp1")`` appends everything the probe records to
``runs/exp1``; ``trainscope.open("runs/exp1")`` reads it back into a
:class:`~trainscope.history.History` (and follows it live while another process writes it).

Layout (format version 1)
-------------------------
::

    runs/exp1/
      meta.json            {"format": "trainscope-run", "version": 1, "created", "pid", "host",
                            "trainscope", "history_config"}            written once, atomically
      snap-00000003.npz    the History's exact bounded state before segment 3       (optional)
      seg-00000003.log     append-only records after that snapshot

A **segment** starts with the 8 bytes ``b"TSLOG\\x001\\n"`` followed by records::

    record  = magic b"\\xd3TR1" | u32 body length | u32 CRC-32 of body | body     (little endian)
    body    = u32 header length | header (UTF-8 JSON) | zero pad to 8 | array bytes
    header  = {"t": type, ..., "a": [[name, numpy dtype str, shape, offset], ...]}

Record types: ``layers`` (the tracked layers; resets per-layer series), ``meta`` (history.meta),
``scalars`` (``names``/``counts`` + arrays ``steps`` int64 and ``values`` float64, in append
order), ``record`` (one sampled step: ``metrics`` (L, M) float32 in ``metric_names`` order,
``act_hist``/``ograd_hist`` (L, 100) float32, ``dead<i>`` bit-packed masks, and the JSON fields of
:class:`~trainscope.history.StepRecord`), ``event`` (a timeline entry), ``end`` (closed cleanly).

A **snapshot** is an ``.npz``: ``__doc__`` (JSON: config, layers, meta, events, latest record,
series tables) plus the arrays of every downsampled series (``Downsampled.state_dict``).

Guarantees
----------
* **Crash safety.**  Records are appended with ``write(2)`` every ``flush_interval`` seconds
  (default 1 s) by a background thread, so a killed process loses at most that interval.  A reader
  accepts a record only when all its bytes are present and its CRC-32 matches: a record being
  written, or torn by a kill, is never returned (a live reader retries it; a dead writer's torn
  tail is counted in ``Run.stats`` and ignored).  Snapshots are written to a temporary file,
  ``fsync``-ed and renamed, so a snapshot is either complete or absent.
* **Bounded size.**  When the segment outgrows ``max(segment_bytes, last snapshot)``, the writer
  *compacts*: the segment is completed and closed, a snapshot of the history's bounded state (the
  same downsampling as in memory) is written, a new segment starts and older files are deleted.
  Steady state: one snapshot + one segment, about twice the history's memory plus
  ``segment_bytes`` (8 MiB by default), however long the run.  Every crash point of a compaction
  leaves a readable directory (see :meth:`RunWriter._compact`).
* **Exact replay.**  Reading a directory reproduces the live history's series exactly (same
  buckets, same values), because the snapshot is the history's own state and records are replayed
  through the same downsampling.
"""

from __future__ import annotations

from ._format import FORMAT, VERSION
from .reader import Run, RunSet, follow, open_run
from .writer import RunWriter

__all__ = ["FORMAT", "VERSION", "Run", "RunSet", "RunWriter", "follow", "open_run"]

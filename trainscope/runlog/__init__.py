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
      snap-00000002.npz    the previous snapshot, kept as the fallback          (optional)
      seg-00000002.log     the records from snapshot 2 to snapshot 3
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
  *compacts*: the segment is completed and closed, a new segment starts (beginning with the layer
  list and meta), files older than the previous snapshot are deleted, and a snapshot of the
  history's bounded state (the same downsampling as in memory) is written and read back.
  Steady state: two snapshots and their two segments, at most ``2 * snapshot + 2 *
  max(segment_bytes, snapshot)`` (a snapshot is about the history's memory; ``segment_bytes`` is
  8 MiB by default), however long the run.  Every crash point of a compaction leaves a readable
  directory (see :meth:`RunWriter._compact`).
* **Damage is reported, never silent, never duplicated.**  Every field is type-checked on read
  (a crafted directory cannot put strings where numbers belong).  A record with a bad checksum or
  a damaged length field is skipped and reading resumes at the next valid record (one record
  lost); a damaged newest snapshot falls back to the previous one with nothing lost; a missing
  segment or snapshot is named with what it cost.  All of it lands in ``Run.errors`` (file,
  byte offset, reason); a record that fails to apply is skipped once, never re-applied.  Only a
  damaged ``meta.json`` stops opening, with a ``ValueError`` that names it.
* **A failing disk costs no memory.**  After an I/O error the writer stops for good: it drops its
  queue and unsubscribes (memory stays flat however long training goes on), cuts off the
  half-written record, and says so once (warning, ``writer.errors``, ``probe.errors``).
* **Exact replay.**  Reading a directory reproduces the live history's series exactly (same
  buckets, same values), because the snapshot is the history's own state and records are replayed
  through the same downsampling.
"""

from __future__ import annotations

from ._format import FORMAT, VERSION
from .reader import Run, RunSet, follow, open_run
from .writer import RunWriter

__all__ = ["FORMAT", "VERSION", "Run", "RunSet", "RunWriter", "follow", "open_run"]

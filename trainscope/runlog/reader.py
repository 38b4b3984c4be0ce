"""Read a run directory into a :class:`~trainscope.history.History`, once or following it live."""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ..history import History, Update
from . import _format as F
from ._display_slot import _display
from ._display_slot import (
    set_display as set_display,  # trainscope/__init__ fills the slot through here
)

__all__ = ["Run", "RunSet", "follow", "open_run"]

_MAX_RELOADS = 3  # per refresh: a writer compacting faster than we read makes us start over
_MAX_ERRORS = 100  # run.errors keeps the first ones (and says that more were left out)
_QUIET_S = 2.0  # a file the writer creates right after another one is "missing" after this long


class Run:
    """A saved (or still running) run, read into :attr:`history`.

    Parameters
    ----------
    path
        A run directory written by ``Probe(..., logdir=path)`` or :class:`RunWriter`.

    Notes
    -----
    :meth:`refresh` reads whatever was appended since the last call (complete, checksum-valid
    records only: a record the writer is still writing is left for the next call) and notifies the
    history's subscribers, so a dashboard showing :attr:`history` redraws.  :meth:`follow` calls it
    from a background thread.

    Damage never raises out of reading and is never silent: every field is type-checked, and
    whatever was skipped or lost is described in :attr:`errors` (file, offset, what was wrong,
    what it cost): a damaged record is skipped and reading resynchronises on the next valid one;
    a damaged newest snapshot falls back to the older snapshot the writer keeps (nothing lost);
    a missing segment is named.  Only a damaged ``meta.json`` makes opening fail, with a
    ``ValueError`` that names it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        meta_file = os.path.join(self.path, F.META_FILE)
        if not os.path.isdir(self.path):
            raise FileNotFoundError(f"no run directory at {self.path!r}")
        if not os.path.exists(meta_file):
            raise FileNotFoundError(
                f"{self.path!r} is not a trainscope run directory (it has no {F.META_FILE}); "
                "runs are written by Probe(..., logdir=...)"
            )
        self.errors: list[str] = []
        self._reported: set[str] = set()
        self.info: dict[str, Any] = _read_meta(meta_file)
        version = self.info.get("version", 0)
        if not F.is_int(version):
            raise ValueError(f"{meta_file}: 'version' must be an integer, got {version!r}")
        if int(version) > F.VERSION:
            raise ValueError(
                f"{self.path!r} was written by a newer trainscope (format version "
                f"{version}, this one reads {F.VERSION}); upgrade trainscope to read it"
            )
        try:
            self._config, dropped = F.check_history_config(self.info.get("history_config", {}))
        except ValueError as e:
            raise ValueError(
                f"{meta_file} is damaged or crafted: {e}. It is written once when the run starts; "
                "without a valid history_config the run cannot be read"
            ) from None
        if dropped:
            self._error(f"{F.META_FILE}: unknown history_config keys ignored: {', '.join(dropped)}")
        self.name = os.path.basename(os.path.normpath(self.path))
        self.history = History(**self._config)  # type: ignore[arg-type]
        self.finished = False
        self.stats = {"records": 0, "skipped_bytes": 0, "torn_tails": 0, "reloads": 0}
        self._lock = threading.RLock()
        self._fh: Any = None
        self._seq = 0
        self._buf = b""
        self._offset = 0  # file offset of _buf's first byte
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._reload()
        self.refresh()

    def _error(self, msg: str, key: str | None = None) -> None:
        """Add to :attr:`errors` (once per ``key``; at most ``_MAX_ERRORS`` are listed)."""
        if key is not None:
            if key in self._reported:
                return
            if len(self._reported) < 10_000:
                self._reported.add(key)
        if len(self.errors) < _MAX_ERRORS:
            self.errors.append(msg)
        elif len(self.errors) == _MAX_ERRORS:
            self.errors.append("(more errors were left out)")

    # ------------------------------------------------------------------ reading
    @property
    def torn_tail_bytes(self) -> int:
        """Bytes at the end of the current segment that do not form a complete record (yet)."""
        return len(self._buf)

    def refresh(self) -> bool:
        """Read what was appended since the last call; returns whether anything changed."""
        with self._lock:
            flags: set[str] = set()
            try:
                self._refresh_locked(flags)
            except Exception as e:  # a damaged file must not break the notebook
                self._error(f"{F.seg_name(self._seq)}: {type(e).__name__}: {e}", key=str(e))
        if flags:
            h = self.history
            h.notify(
                Update(
                    step=h.step,
                    scalars="scalars" in flags,
                    record="record" in flags,
                    events="events" in flags,
                )
            )
        return bool(flags)

    def _seg_path(self, seq: int) -> str:
        return os.path.join(self.path, F.seg_name(seq))

    def _refresh_locked(self, flags: set[str]) -> None:
        reloads = 0
        while True:
            if self._fh is None:
                try:
                    fh = open(self._seg_path(self._seq), "rb")  # kept open across calls
                except FileNotFoundError:
                    segs, snaps = F.list_seqs(self.path)
                    if any(s > self._seq for s in snaps) and reloads < _MAX_RELOADS:
                        reloads += 1  # we fell behind a compaction: start over from a snapshot
                        self._reload()
                        flags.update(("scalars", "record", "events"))
                        continue
                    if self._skip_missing(segs):
                        continue
                    self._check_missing_tail()
                    return
                head = fh.read(len(F.SEGMENT_MAGIC))
                if len(head) < len(F.SEGMENT_MAGIC):  # being created: try again later
                    fh.close()
                    return
                if head != F.SEGMENT_MAGIC:
                    fh.close()
                    raise ValueError(f"{self._seg_path(self._seq)} is not a trainscope segment")
                self._fh, self._buf, self._offset = fh, b"", len(F.SEGMENT_MAGIC)
            next_exists = os.path.exists(self._seg_path(self._seq + 1))  # before reading to the end
            chunk = self._fh.read()
            if chunk:
                self._buf += chunk
            res = F.scan(self._buf)
            # consume first: a record that fails to apply is reported and skipped, never re-read
            base = self._offset
            self._buf = self._buf[res.end :]
            self._offset = base + res.end
            self.stats["skipped_bytes"] += res.skipped
            name = F.seg_name(self._seq)
            for p in res.problems:
                off, _, rest = p.partition(": ")
                at = int(off.split()[1]) + base if off.startswith("offset ") else base
                self._error(f"{name} at byte {at}: {rest}", key=f"{name}:{at}")
            for header, arrays in res.records:
                try:
                    self._apply(header, arrays, flags)
                except Exception as e:
                    t = header.get("t") if isinstance(header, dict) else None
                    self._error(
                        f"{name}: a {t!r} record was skipped ({type(e).__name__}: {e})",
                        key=f"{name}:{t}:{e}",
                    )
            if next_exists:  # this segment is final: move on
                if self._buf:
                    self.stats["torn_tails"] += 1
                    self._error(
                        f"{name}: its last {len(self._buf)} bytes (from byte {self._offset}) do "
                        "not form a complete record although a newer segment exists; skipped "
                        "(a damaged record, or a segment cut short)",
                        key=f"{name}:tail",
                    )
                self._fh.close()
                self._fh, self._buf, self._seq = None, b"", self._seq + 1
                continue
            if self._gap() and reloads < _MAX_RELOADS:
                reloads += 1
                self._reload()
                flags.update(("scalars", "record", "events"))
                continue
            return

    def _gap(self) -> bool:
        """Files newer than the next segment exist although it does not: we fell behind a
        compaction and must start over from the newest snapshot."""
        segs, snaps = F.list_seqs(self.path)
        return any(s > self._seq + 1 for s in segs + snaps) or any(s > self._seq for s in segs)

    def _reload(self) -> None:
        """(Re)build the history from the newest readable snapshot; continue from its segment.

        A damaged snapshot falls back to the next older one (the writer keeps one older snapshot
        with its segments, so one damaged snapshot loses nothing), then to the first segment;
        :attr:`errors` says which file was damaged and exactly what that cost."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._buf = b""
        segs, snaps = F.list_seqs(self.path)
        h = self.history
        snap = None
        seq = segs[0] if segs else 0
        damaged = []
        for s in reversed(snaps):
            try:
                snap = F.load_snapshot(os.path.join(self.path, F.snap_name(s)))
                F.check_snapshot(snap)
                seq = s
                break
            except FileNotFoundError:
                continue
            except Exception as e:
                snap = None
                damaged.append(f"{F.snap_name(s)} is damaged ({type(e).__name__}: {_clip(e)})")
        if damaged:
            last = max(segs) if segs else seq
            missing = [F.seg_name(k) for k in range(seq, last + 1) if k not in segs]
            if snap is not None:
                cost = f"read the older {F.snap_name(seq)} and the segments after it instead" + (
                    f"; the records of the missing {', '.join(missing)} are lost"
                    if missing
                    else "; nothing is lost"
                )
            elif segs and segs[0] == 0 and not missing:
                cost = "no snapshot is readable: the run is read from its first segment"
                if any(d.startswith(F.snap_name(0)) for d in damaged):
                    cost += f" ({F.snap_name(0)} held what was recorded before logging started: that is lost)"
                else:
                    cost += "; nothing is lost"
            else:
                cost = (
                    "no snapshot is readable: everything recorded before "
                    f"{F.seg_name(seq) if segs else 'the first segment'} is lost"
                )
            self._error("; ".join(damaged) + "; " + cost, key="snap:" + ",".join(damaged))
        elif snap is None and segs and segs[0] > 0:
            self._error(
                f"no snapshot before {F.seg_name(seq)} (deleted?): everything recorded before "
                "that segment is lost",
                key=f"nosnap:{seq}",
            )
        with h.lock:
            if snap is not None:
                h.set_layers(snap["layers"])
                h.load_state_dict(snap["state"])
                h.meta.clear()
                h.meta.update(snap["meta"])
                h.events.clear()
                h.events.extend(snap["events"])
                h.latest = snap["latest"]
            else:
                h.set_layers([])
                h.load_state_dict(History(**self._config).state_dict())  # type: ignore[arg-type]
                h.meta.clear()
                h.events.clear()
                h.latest = None
        self._seq = seq
        self.stats["reloads"] += 1
        self._skip_missing(segs)

    def _skip_missing(self, segs: list[int]) -> bool:
        """When segment ``_seq`` is gone but later ones exist, report it and move on to the next
        one (its records are lost; nothing else is).  Returns whether it moved."""
        later = [s for s in segs if s > self._seq]
        if self._seq in segs or not later:
            return False
        gone = [F.seg_name(k) for k in range(self._seq, later[0])]
        self._error(
            f"{', '.join(gone)} missing: the records written there are lost; "
            f"reading continues with {F.seg_name(later[0])}",
            key="missing:" + ",".join(gone),
        )
        self._seq = later[0]
        return True

    def _check_missing_tail(self) -> None:
        """The segment to read next does not exist and nothing newer does: normal for a moment
        while a writer starts, damage once the directory has been quiet for a while."""
        try:
            newest = max(
                os.path.getmtime(os.path.join(self.path, n))
                for n in os.listdir(self.path)
                if n == F.META_FILE or F.parse_seq(n, F.SNAP_PREFIX, F.SNAP_SUFFIX) is not None
            )
        except (OSError, ValueError):
            return
        if time.time() - newest < _QUIET_S:
            return
        name = F.seg_name(self._seq)
        after = (
            f"after {F.snap_name(self._seq)}"
            if os.path.exists(os.path.join(self.path, F.snap_name(self._seq)))
            else "in this run"
        )
        self._error(
            f"{name} is missing: whatever was recorded {after} is lost (deleted, or the writer "
            "could not create it)",
            key="missing:" + name,
        )

    def _apply(
        self, header: dict[str, Any], arrays: dict[str, np.ndarray], flags: set[str]
    ) -> None:
        t = header.get("t")
        h = self.history
        self.stats["records"] += 1
        if t == "scalars":
            F.check_scalars(header, arrays)
            steps, values = arrays["steps"], arrays["values"]
            off = 0
            with h.lock:
                for name, cnt in zip(header["names"], header["counts"], strict=True):
                    st, va = steps[off : off + cnt], values[off : off + cnt]
                    off += cnt
                    if not cnt:
                        continue
                    start = 0
                    if name not in h.scalars:
                        h.add_scalars(int(st[0]), {name: float(va[0])})
                        start = 1
                    ds = h.scalars[name]
                    for s, v in zip(st[start:].tolist(), va[start:].tolist(), strict=True):
                        ds.append(s, v)
                    h.step = max(h.step, int(st.max()))
            flags.add("scalars")
        elif t == "record":
            rec = F.record_from_parts(header, arrays)
            with h.lock:
                F.check_record(rec, header, len(h.layers))
                h.add_record(rec)
                hfo = header.get("history_forward_order")
                if hfo:
                    h.forward_order = [int(i) for i in hfo]
            flags.add("record")
        elif t == "params":
            F.check_params(arrays, len(h.layers))
            h.add_param_rows(arrays["steps"], arrays["rows"])
            flags.add("record")
        elif t == "event":
            ev = F.event_from_json(header)
            with h.lock:
                h.events.append(ev)
            flags.add("events")
        elif t == "layers":
            h.set_layers(F.layers_from_json(header["layers"]))
            flags.add("record")
        elif t == "meta":
            meta = F.from_json(header.get("meta", {}), {})
            F.need(isinstance(meta, dict), "a meta record must hold an object", meta)
            with h.lock:
                h.meta.update(meta)
        elif t == "end":
            self.finished = True

    # ------------------------------------------------------------------ following
    @property
    def following(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def follow(self, interval: float = 0.5) -> Run:
        """Keep :attr:`history` up to date from a background thread (every ``interval`` s) until
        the run finishes or :meth:`stop` is called.  Returns ``self``."""
        if not (isinstance(interval, (int, float)) and interval > 0):
            raise ValueError(f"interval is a positive number of seconds, got {interval!r}")
        if self.following:
            return self
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_follow_loop,
            args=(weakref.ref(self), self._stop, float(interval)),
            name=f"trainscope-follow-{self.name}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop following (the history keeps what it has)."""
        if self._stop is not None:
            self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None

    def close(self) -> None:
        """Stop following and close the open segment file."""
        self.stop()
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if self._stop is not None:
                self._stop.set()
            if self._fh is not None:
                self._fh.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ display and export
    # The reader does not display: the composition root (trainscope/__init__.py) hands it the
    # Jupyter layer's functions through set_display().
    def show(self, *, refresh_every: float = 0.5) -> Any:
        """Display the dashboard on this run's history (read-only).  While the run is followed,
        the dashboard is redrawn at most every ``refresh_every`` seconds after new records arrive
        (from a background thread, so it keeps up while the notebook is idle)."""
        return _display("show")(self, refresh_every=refresh_every)

    def _ipython_display_(self) -> None:  # pragma: no cover - exercised in notebooks
        _display("display")(self)

    def _repr_html_(self) -> str:
        return str(_display("html")([self]))

    def report(self, path: str | os.PathLike[str], **kwargs: Any) -> str:
        """Write a self-contained offline HTML report of this run (see :func:`trainscope.report.write_report`)."""
        return str(_display("report")(self, path, **kwargs))

    def __repr__(self) -> str:
        state = "finished" if self.finished else ("following" if self.following else "open")
        return f"<trainscope Run {self.name!r}: step {self.history.step}, {self.history.samples()} samples, {state}>"


class RunSet(Sequence[Run]):
    """Several runs, overlaid for comparison (curves share axes; one colour per run)."""

    def __init__(self, runs: Iterable[Run]) -> None:
        self.runs = list(runs)
        if not self.runs:
            raise ValueError("a RunSet needs at least one run")

    def __len__(self) -> int:
        return len(self.runs)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, str):
            for r in self.runs:
                if r.name == i:
                    return r
            raise KeyError(f"no run named {i!r}; runs are: {', '.join(r.name for r in self.runs)}")
        return self.runs[i]

    def __iter__(self) -> Iterator[Run]:
        return iter(self.runs)

    @property
    def histories(self) -> dict[str, History]:
        return {r.name: r.history for r in self.runs}

    def refresh(self) -> bool:
        changed = [r.refresh() for r in self.runs]  # every run, no short-circuit
        return any(changed)

    def follow(self, interval: float = 0.5) -> RunSet:
        for r in self.runs:
            if not r.finished:
                r.follow(interval)
        return self

    def stop(self) -> None:
        for r in self.runs:
            r.stop()

    def _repr_html_(self) -> str:
        return str(_display("html")(self.runs))

    def show(self, *, refresh_every: float = 0.5) -> Any:
        """Display the runs overlaid in one dashboard (read-only), redrawn while any is followed."""
        return _display("show")(self, refresh_every=refresh_every)

    def _ipython_display_(self) -> None:  # pragma: no cover - exercised in notebooks
        _display("display")(self)

    def report(self, path: str | os.PathLike[str], **kwargs: Any) -> str:
        return str(_display("report")(self.runs, path, **kwargs))

    def __repr__(self) -> str:
        return f"<trainscope RunSet: {', '.join(r.name for r in self.runs)}>"


def _clip(e: BaseException, n: int = 160) -> str:
    s = str(e)
    return s if len(s) <= n else s[: n - 3] + "..."


def _read_meta(meta_file: str) -> dict[str, Any]:
    """``meta.json`` as a dict, or a ValueError that names the file and what is wrong with it."""
    with open(meta_file, "rb") as f:
        raw = f.read()
    try:
        info = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"{meta_file} is damaged: it is not valid JSON ({e}; {len(raw)} bytes). It is "
            "written once when the run starts and describes how to read the rest; restore it "
            "from a copy of the run"
        ) from None
    if not isinstance(info, dict) or info.get("format") != F.FORMAT:
        raise ValueError(
            f'{meta_file} is not a trainscope run description (no "format": "{F.FORMAT}")'
        )
    return info


def _follow_loop(ref: Callable[[], Run | None], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        run = ref()
        if run is None:
            return
        try:
            changed = run.refresh()
        except Exception as e:  # pragma: no cover - refresh guards itself
            run.errors.append(f"{type(e).__name__}: {e}")
            changed = False
        if run.finished and not changed:
            return
        del run


def follow(path: str | os.PathLike[str], interval: float = 0.5) -> Run:
    """Open a run and keep its history updated from a background thread while it is written.

    The returned :class:`Run`'s ``history`` is an ordinary :class:`History`: pass it to
    ``trainscope.show`` (or display the run) and the dashboard redraws as new records arrive.
    """
    return Run(path).follow(interval)


def _is_run(path: str) -> bool:
    return os.path.isfile(os.path.join(path, F.META_FILE))


def open_run(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    follow: bool | str = "auto",
    interval: float = 0.5,
) -> Run | RunSet:
    """Open one run directory (a :class:`Run`), several (a :class:`RunSet`), or a directory whose
    sub-directories are runs (a :class:`RunSet` of them, sorted by name).

    ``follow="auto"`` keeps following every run that has not finished (written by a live process);
    ``True`` / ``False`` force it on or off.
    """
    if follow not in (True, False, "auto"):
        raise ValueError(f"follow must be True, False or 'auto', got {follow!r}")
    if isinstance(path, (str, os.PathLike)):
        p = os.fspath(path)
        if _is_run(p):
            run = Run(p)
            if follow is True or (follow == "auto" and not run.finished):
                run.follow(interval)
            return run
        if os.path.isdir(p):
            subs = sorted(os.path.join(p, n) for n in os.listdir(p) if _is_run(os.path.join(p, n)))
            if subs:
                return open_run(subs, follow=follow, interval=interval)
            raise FileNotFoundError(
                f"{p!r} is neither a trainscope run directory nor a directory of runs (no {F.META_FILE} found)"
            )
        raise FileNotFoundError(f"no run directory at {p!r}")
    paths = list(path)
    if not paths:
        raise ValueError("open_run needs at least one path")
    runs = []
    for q in paths:
        r = open_run(q, follow=follow, interval=interval)
        runs.extend(r.runs if isinstance(r, RunSet) else [r])
    return RunSet(runs)

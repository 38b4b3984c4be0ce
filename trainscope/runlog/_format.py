"""On-disk format of a run directory: framed records, snapshots, atomic file replacement.

See :mod:`trainscope.runlog` for the layout.  Everything here is pure (bytes in, objects out), so
the writer, the reader and the tests share one codec.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import numpy as np

from ..history import LAYER_METRICS, Event, StepRecord
from ..layers import LayerInfo

FORMAT = "trainscope-run"
VERSION = 1
SEGMENT_MAGIC = b"TSLOG\x001\n"  # 8 bytes at the start of every segment file
RECORD_MAGIC = b"\xd3TR1"  # 4 bytes at the start of every record
_HEAD = struct.Struct("<4sII")  # magic, body length, crc32(body)
HEAD_SIZE = _HEAD.size  # 12
MAX_BODY = 1 << 30  # a length field above this is corruption, not a record

META_FILE = "meta.json"
SEG_PREFIX, SEG_SUFFIX = "seg-", ".log"
SNAP_PREFIX, SNAP_SUFFIX = "snap-", ".npz"


def seg_name(seq: int) -> str:
    return f"{SEG_PREFIX}{seq:08d}{SEG_SUFFIX}"


def snap_name(seq: int) -> str:
    return f"{SNAP_PREFIX}{seq:08d}{SNAP_SUFFIX}"


def parse_seq(name: str, prefix: str, suffix: str) -> int | None:
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return None
    mid = name[len(prefix) : len(name) - len(suffix)]
    return int(mid) if mid.isdigit() and len(mid) == 8 else None


def list_seqs(path: str) -> tuple[list[int], list[int]]:
    """``(segment seqs, snapshot seqs)`` present in a run directory, sorted."""
    segs, snaps = [], []
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return [], []
    for n in names:
        s = parse_seq(n, SEG_PREFIX, SEG_SUFFIX)
        if s is not None:
            segs.append(s)
        s = parse_seq(n, SNAP_PREFIX, SNAP_SUFFIX)
        if s is not None:
            snaps.append(s)
    return sorted(segs), sorted(snaps)


# ------------------------------------------------------------------------------ atomic writes
def fsync_dir(path: str) -> None:
    """Make a rename or unlink in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:  # a full disk must not leave a partial temporary file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.replace(tmp, path)
    if fsync:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


# ------------------------------------------------------------------------------ JSON with arrays
def to_json(obj: Any, arrays: dict[str, np.ndarray] | None, prefix: str = "") -> Any:
    """A JSON-able copy of ``obj``; numpy arrays move to ``arrays`` (``{"__a__": key}`` left
    behind; inlined as lists when ``arrays`` is None), dicts with non-string keys and tuples are
    tagged so they round-trip exactly."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        if arrays is None:
            return to_json(obj.tolist(), None)
        key = f"{prefix}{len(arrays)}"
        arrays[key] = obj
        return {"__a__": key}
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            if "__a__" in obj or "__d__" in obj or "__t__" in obj:
                return {"__d__": [[k, to_json(v, arrays, prefix)] for k, v in obj.items()]}
            return {k: to_json(v, arrays, prefix) for k, v in obj.items()}
        return {
            "__d__": [
                [to_json(k, arrays, prefix), to_json(v, arrays, prefix)] for k, v in obj.items()
            ]
        }
    if isinstance(obj, tuple):
        return {"__t__": [to_json(v, arrays, prefix) for v in obj]}
    if isinstance(obj, (list, set, frozenset)):
        return [to_json(v, arrays, prefix) for v in obj]
    try:  # tensors and other objects that know how to become a number
        if hasattr(obj, "item") and getattr(obj, "numel", lambda: 2)() == 1:
            return float(obj.item())
    except Exception:
        pass
    return repr(obj)


def from_json(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """Inverse of :func:`to_json`."""
    if isinstance(obj, list):
        return [from_json(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if len(obj) == 1:
            if "__a__" in obj:
                return arrays[obj["__a__"]]
            if "__t__" in obj:
                return tuple(from_json(v, arrays) for v in obj["__t__"])
            if "__d__" in obj:
                return {
                    _hashable(from_json(k, arrays)): from_json(v, arrays) for k, v in obj["__d__"]
                }
        return {k: from_json(v, arrays) for k, v in obj.items()}
    return obj


def _hashable(k: Any) -> Any:
    return tuple(_hashable(x) for x in k) if isinstance(k, list) else k


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()


# ------------------------------------------------------------------------------ records
def encode(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """One framed record: ``magic | body length | crc32(body) | body``.

    ``body = u32 header length | header JSON | zero padding to 8 | array bytes``; the header's
    ``"a"`` entry lists ``[name, dtype, shape, offset]`` of every array in the blob.
    """
    arrays = arrays or {}
    table = []
    blobs = []
    off = 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        table.append([name, a.dtype.str, list(a.shape), off])
        b = a.tobytes()
        pad = (-len(b)) % 8
        blobs.append(b + b"\0" * pad)
        off += len(b) + pad
    h = dumps({**header, "a": table})
    pre = struct.pack("<I", len(h)) + h
    pre += b"\0" * ((-len(pre)) % 8)
    body = pre + b"".join(blobs)
    return _HEAD.pack(RECORD_MAGIC, len(body), zlib.crc32(body)) + body


def decode_body(body: bytes | memoryview) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    mv = memoryview(body)
    (hlen,) = struct.unpack_from("<I", mv, 0)
    header = json.loads(bytes(mv[4 : 4 + hlen]))
    start = 4 + hlen
    start += (-start) % 8
    arrays: dict[str, np.ndarray] = {}
    for name, dtype, shape, off in header.pop("a", []):
        dt = np.dtype(dtype)
        n = int(np.prod(shape)) if shape else 1
        a = np.frombuffer(mv, dtype=dt, count=n, offset=start + off).reshape(shape)
        arrays[name] = a.copy()
    return header, arrays


class ScanResult:
    """Outcome of :func:`scan`: complete records, where parsing stopped and why."""

    __slots__ = ("end", "records", "skipped", "status")

    def __init__(self) -> None:
        self.records: list[tuple[dict[str, Any], dict[str, np.ndarray]]] = []
        self.end = 0  # offset just after the last complete record (or skipped garbage)
        self.status = "clean"  # clean | partial (an incomplete record at the end)
        self.skipped = 0  # bytes of corrupt data skipped (resynchronised on the next magic)


def scan(buf: bytes | memoryview, start: int = 0) -> ScanResult:
    """Parse every complete, checksum-valid record in ``buf[start:]``.

    A record whose bytes are not all there yet -- or whose checksum fails and that is followed by
    nothing valid -- is the *tail*: it is left unparsed (``status == "partial"``) so a live reader
    retries it later, and is never returned half-written.  A record that fails its checksum and
    is followed by a valid one is corruption; it is skipped (``skipped`` counts the bytes).
    """
    mv = memoryview(buf)
    res = ScanResult()
    pos = start
    n = len(mv)
    while pos < n:
        if n - pos < HEAD_SIZE:
            res.status = "partial"
            break
        magic, blen, crc = _HEAD.unpack_from(mv, pos)
        if magic != RECORD_MAGIC or blen > MAX_BODY:
            nxt = _find_valid(mv, pos + 1)
            if nxt is None:
                res.status = "partial"
                break
            res.skipped += nxt - pos
            pos = nxt
            continue
        end = pos + HEAD_SIZE + blen
        if end > n:
            res.status = "partial"
            break
        body = mv[pos + HEAD_SIZE : end]
        if zlib.crc32(body) != crc:
            nxt = _find_valid(mv, pos + 1)
            if nxt is None:
                res.status = "partial"
                break
            res.skipped += nxt - pos
            pos = nxt
            continue
        try:
            res.records.append(decode_body(body))
        except Exception:  # checksum fine but not ours: skip it rather than fail the reader
            res.skipped += end - pos
        pos = end
    res.end = pos
    return res


def _find_valid(mv: memoryview, start: int) -> int | None:
    """Offset of the next complete, checksum-valid record at or after ``start``."""
    data = mv.obj if isinstance(mv.obj, (bytes, bytearray)) else bytes(mv)
    i = start
    while True:
        i = data.find(RECORD_MAGIC, i)
        if i < 0 or len(data) - i < HEAD_SIZE:
            return None
        _, blen, crc = _HEAD.unpack_from(data, i)
        end = i + HEAD_SIZE + blen
        if blen <= MAX_BODY and end <= len(data) and zlib.crc32(mv[i + HEAD_SIZE : end]) == crc:
            return i
        i += 1


# ------------------------------------------------------------------------------ typed records
def layers_to_json(layers: list[LayerInfo]) -> list[dict[str, Any]]:
    return [asdict(x) for x in layers]


def layers_from_json(items: list[dict[str, Any]]) -> list[LayerInfo]:
    out = []
    for d in items:
        d = dict(d)
        if d.get("bounds") is not None:
            d["bounds"] = tuple(d["bounds"])
        out.append(LayerInfo(**d))
    return out


def record_to_parts(
    rec: StepRecord, forward_order: list[int] | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A :class:`StepRecord` as a header and arrays (metrics as one ``(L, M)`` float32 array)."""
    arrays: dict[str, np.ndarray] = {}
    L = len(next(iter(rec.metrics.values()))) if rec.metrics else 0
    arrays["metrics"] = (
        np.stack(
            [
                np.asarray(rec.metrics.get(m, np.full(L, np.nan)), dtype=np.float32)
                for m in LAYER_METRICS
            ],
            axis=1,
        )
        if L
        else np.zeros((0, len(LAYER_METRICS)), np.float32)
    )
    if rec.act_hist is not None:
        arrays["act_hist"] = np.asarray(rec.act_hist, dtype=np.float32)
    if rec.ograd_hist is not None:
        arrays["ograd_hist"] = np.asarray(rec.ograd_hist, dtype=np.float32)
    dead = []
    for i, mask in rec.dead_units.items():
        m = np.asarray(mask, dtype=bool).reshape(-1)
        arrays[f"dead{int(i)}"] = np.packbits(m)
        dead.append([int(i), int(m.size)])
    header = {
        "t": "record",
        "step": int(rec.step),
        "time": float(rec.time),
        "metric_names": list(LAYER_METRICS),
        "forward_order": [int(i) for i in rec.forward_order],
        "backward_order": [int(i) for i in rec.backward_order],
        "ffwd": rec.first_nonfinite_forward,
        "fbwd": rec.first_nonfinite_backward,
        "dead": dead,
        "inputs": to_json(rec.inputs, arrays, "in"),
        "loss_inputs": to_json(rec.loss_inputs, arrays, "li"),
        "extra": to_json(rec.extra, arrays, "ex"),
        "history_forward_order": None if forward_order is None else [int(i) for i in forward_order],
    }
    return header, arrays


def record_from_parts(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> StepRecord:
    names = header.get("metric_names", list(LAYER_METRICS))
    mat = arrays["metrics"]
    metrics = {}
    for m in LAYER_METRICS:
        if m in names:
            metrics[m] = mat[:, names.index(m)].astype(np.float64)
        else:
            metrics[m] = np.full(mat.shape[0], np.nan)
    dead = {}
    for i, size in header.get("dead", []):
        dead[int(i)] = np.unpackbits(arrays[f"dead{int(i)}"], count=int(size)).astype(bool)
    return StepRecord(
        step=int(header["step"]),
        time=float(header["time"]),
        metrics=metrics,
        act_hist=arrays.get("act_hist"),
        ograd_hist=arrays.get("ograd_hist"),
        forward_order=list(header.get("forward_order", [])),
        backward_order=list(header.get("backward_order", [])),
        first_nonfinite_forward=header.get("ffwd"),
        first_nonfinite_backward=header.get("fbwd"),
        dead_units=dead,
        inputs=from_json(header.get("inputs", {}), arrays),
        loss_inputs=from_json(header.get("loss_inputs", {}), arrays),
        extra=from_json(header.get("extra", {}), arrays),
    )


def event_to_json(ev: Event) -> dict[str, Any]:
    data = to_json(ev.data, None)  # events carry small data: arrays become lists
    return {
        "id": int(ev.id),
        "step": int(ev.step),
        "kind": str(ev.kind),
        "label": str(ev.label),
        "time": float(ev.time),
        "data": data,
    }


def event_from_json(d: dict[str, Any]) -> Event:
    return Event(
        id=int(d["id"]),
        step=int(d["step"]),
        kind=str(d["kind"]),
        label=str(d["label"]),
        data=from_json(d.get("data", {}), {}),
        time=float(d.get("time", math.nan)),
    )


# ------------------------------------------------------------------------------ snapshots
_NOT_SERIES = ("config", "step", "forward_order", "scalars")


def snapshot_bytes(
    state: dict[str, Any],
    *,
    layers: list[LayerInfo],
    meta: dict[str, Any],
    events: list[Event],
    latest: StepRecord | None,
    info: dict[str, Any],
) -> bytes:
    """An ``.npz`` holding a History's exact state, its layers, meta, events and latest record."""
    arrays: dict[str, np.ndarray] = {}
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "info": info,
        "config": state["config"],
        "step": state["step"],
        "forward_order": state["forward_order"],
        "layers": layers_to_json(layers),
        "meta": to_json(meta, arrays, "meta"),
        "events": [event_to_json(e) for e in events],
        "series": {},
    }
    series: dict[str, Any] = {k: v for k, v in state.items() if k not in _NOT_SERIES}
    names = list(state["scalars"])
    doc["scalar_names"] = names
    for i, n in enumerate(names):
        series[f"sc{i}"] = state["scalars"][n]
    for key, st in series.items():
        doc["series"][key] = to_json(st, arrays, f"{key}.")
    if latest is not None:
        h, a = record_to_parts(latest)
        doc["latest"] = h
        for k, v in a.items():
            arrays[f"latest.{k}"] = v
    arrays["__doc__"] = np.frombuffer(dumps(doc), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def load_snapshot(path: str) -> dict[str, Any]:
    """Read a snapshot written by :func:`snapshot_bytes` (raises on a damaged file)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    doc = json.loads(arrays.pop("__doc__").tobytes())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not a trainscope snapshot")
    series = {k: from_json(v, arrays) for k, v in doc["series"].items()}
    scalar_keys = {f"sc{i}" for i in range(len(doc["scalar_names"]))}
    state = {k: v for k, v in series.items() if k not in scalar_keys}
    state.update(
        config=doc["config"],
        step=doc["step"],
        forward_order=doc["forward_order"],
        scalars={n: series[f"sc{i}"] for i, n in enumerate(doc["scalar_names"])},
    )
    latest = None
    if "latest" in doc:
        la = {k[len("latest.") :]: v for k, v in arrays.items() if k.startswith("latest.")}
        latest = record_from_parts(doc["latest"], la)
    return {
        "state": state,
        "layers": layers_from_json(doc["layers"]),
        "meta": from_json(doc["meta"], arrays),
        "events": [event_from_json(e) for e in doc["events"]],
        "latest": latest,
        "info": doc.get("info", {}),
    }


def iter_segment_records(data: bytes) -> Iterator[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """Every valid record of a whole segment file's bytes (for tools and tests)."""
    if not data.startswith(SEGMENT_MAGIC):
        raise ValueError("not a trainscope segment (bad file header)")
    yield from scan(data, len(SEGMENT_MAGIC)).records

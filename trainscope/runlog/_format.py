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

from ..history import LAYER_METRICS, PARAM_METRICS, Event, StepRecord
from ..layers import LayerInfo
from ..stats import NBINS

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

    __slots__ = ("end", "problems", "records", "skipped", "status")

    def __init__(self) -> None:
        self.records: list[tuple[dict[str, Any], dict[str, np.ndarray]]] = []
        self.end = 0  # offset just after the last complete record (or skipped garbage)
        self.status = "clean"  # clean | partial (an incomplete record at the end)
        self.skipped = 0  # bytes of corrupt data skipped (resynchronised on the next magic)
        self.problems: list[str] = []  # one line per skipped stretch: offset, what was wrong


def scan(buf: bytes | memoryview, start: int = 0) -> ScanResult:
    """Parse every complete, checksum-valid record in ``buf[start:]``.

    A record whose bytes are not all there yet -- or whose checksum fails and that is followed by
    nothing valid -- is the *tail*: it is left unparsed (``status == "partial"``) so a live reader
    retries it later, and is never returned half-written.  A record that fails its checksum, or
    whose length field runs past the end of the data although a complete valid record follows it
    (the writer appends in order, so a damaged length, not a record still being written), is
    corruption: it is skipped up to the next valid record (``skipped`` counts the bytes,
    ``problems`` says where and why).  Offsets in ``problems`` are relative to ``buf``.
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
        why = None
        if magic != RECORD_MAGIC:
            why = "bytes that are not a record"
        elif blen > MAX_BODY:
            why = f"a record header with an impossible length ({blen} bytes)"
        else:
            end = pos + HEAD_SIZE + blen
            if end > n:
                why = (
                    f"a record whose length field ({blen} bytes) runs past the end of the data "
                    f"({n - pos - HEAD_SIZE} bytes left) although a valid record follows"
                )
            elif zlib.crc32(mv[pos + HEAD_SIZE : end]) != crc:
                why = "a record whose checksum does not match"
        if why is not None:
            nxt = _find_valid(mv, pos + 1)
            if nxt is None:  # nothing valid after it: the tail (retried by a live reader)
                res.status = "partial"
                break
            res.skipped += nxt - pos
            res.problems.append(f"offset {pos}: skipped {nxt - pos} bytes, {why}")
            pos = nxt
            continue
        try:
            res.records.append(decode_body(mv[pos + HEAD_SIZE : end]))
        except Exception as e:  # checksum fine but not ours: skip it rather than fail the reader
            res.skipped += end - pos
            res.problems.append(
                f"offset {pos}: skipped a record that does not decode ({type(e).__name__}: {e})"
            )
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


# ------------------------------------------------------------------------------ type checks
# A run directory may come from someone else: every field read from one is checked for its type
# and range before it reaches a History, a dashboard or a report (numbers are numbers, indices
# are in range, strings are strings).  A bad field raises ValueError naming it.
MAX_CAPACITY = 1 << 20  # recent / bucket counts of a history series (defaults are <= 4096)
MAX_CELLS = 1 << 24  # elements of one series row (layers x metrics)
HISTORY_CONFIG_KEYS = (
    "scalar_recent",
    "scalar_buckets",
    "layer_recent",
    "layer_buckets",
    "param_recent",
    "param_buckets",
    "hist_recent",
    "hist_buckets",
    "dead_window",
    "max_events",
)


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_)
    )


def need(ok: bool, what: str, v: Any) -> None:
    if not ok:
        raise ValueError(f"{what}, got {_short(v)}")


def check_history_config(cfg: Any) -> tuple[dict[str, int], list[str]]:
    """The History keyword arguments of a ``history_config``; unknown keys are dropped (and
    listed in the second value), bad values raise ValueError."""
    need(isinstance(cfg, dict), "history_config must be an object", cfg)
    out: dict[str, int] = {}
    dropped = []
    for k, v in cfg.items():
        if k not in HISTORY_CONFIG_KEYS:
            dropped.append(str(k))
            continue
        need(
            is_int(v) and 1 <= int(v) <= MAX_CAPACITY,
            f"history_config[{k!r}] must be an integer from 1 to {MAX_CAPACITY}",
            v,
        )
        out[k] = int(v)
    return out, dropped


def _check_index_list(v: Any, L: int, what: str) -> list[int]:
    need(isinstance(v, list), f"{what} must be a list of layer indices", v)
    for i in v:
        need(is_int(i) and 0 <= int(i) < L, f"{what} holds layer indices below {L}", i)
    return [int(i) for i in v]


def _check_layer_index(v: Any, L: int, what: str) -> None:
    need(
        v is None or (is_int(v) and 0 <= int(v) < L),
        f"{what} must be a layer index below {L} or null",
        v,
    )


_LAYER_FIELDS: dict[str, tuple[str, bool]] = {  # name -> (kind, required)
    "name": ("str", True),
    "type": ("str", True),
    "kind": ("str", True),
    "n_params": ("count", True),
    "n_trainable": ("count", True),
    "relu_family": ("bool", True),
    "bounds": ("bounds", True),
    "channel_first": ("bool", True),
    "nonneg": ("bool", False),
}


def layers_to_json(layers: list[LayerInfo]) -> list[dict[str, Any]]:
    return [asdict(x) for x in layers]


def layers_from_json(items: Any) -> list[LayerInfo]:
    """The tracked layers of a ``layers`` record or a snapshot; every field type-checked."""
    need(isinstance(items, list), "the layer list must be a list", items)
    out = []
    for i, d in enumerate(items):
        need(isinstance(d, dict), f"layer {i} must be an object", d)
        unknown = sorted(set(d) - set(_LAYER_FIELDS))
        need(not unknown, f"layer {i} has unknown fields", unknown)
        kw: dict[str, Any] = {}
        for key, (kind, required) in _LAYER_FIELDS.items():
            if key not in d:
                need(not required, f"layer {i} lacks the field {key!r}", sorted(d))
                continue
            v = d[key]
            what = f"layer {i} field {key!r}"
            if kind == "str":
                need(isinstance(v, str), f"{what} must be a string", v)
            elif kind == "count":
                need(is_int(v) and int(v) >= 0, f"{what} must be a non-negative integer", v)
                v = int(v)
            elif kind == "bool":
                need(isinstance(v, bool), f"{what} must be true or false", v)
            else:  # bounds
                if v is not None:
                    ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(map(is_num, v))
                    need(
                        ok and float(v[0]) <= float(v[1]), f"{what} must be [low, high] or null", v
                    )
                    v = (float(v[0]), float(v[1]))
            kw[key] = v
        out.append(LayerInfo(**kw))
    return out


def check_record(rec: StepRecord, header: dict[str, Any], L: int) -> None:
    """Raise ValueError unless a decoded ``record`` fits ``L`` layers with well-typed fields."""
    need(is_int(header.get("step")), "record field 'step' must be an integer", header.get("step"))
    need(is_num(header.get("time")), "record field 'time' must be a number", header.get("time"))
    for m, v in rec.metrics.items():
        need(
            isinstance(v, np.ndarray) and v.shape == (L,) and v.dtype.kind == "f",
            f"record metric {m!r} must hold one float per layer ({L})",
            getattr(v, "shape", v),
        )
    for key in ("act_hist", "ograd_hist"):
        a = getattr(rec, key)
        need(
            a is None
            or (isinstance(a, np.ndarray) and a.shape == (L, NBINS) and a.dtype.kind == "f"),
            f"record field {key!r} must be a ({L}, {NBINS}) float array",
            getattr(a, "shape", a),
        )
    _check_index_list(header.get("forward_order", []), L, "record field 'forward_order'")
    _check_index_list(header.get("backward_order", []), L, "record field 'backward_order'")
    _check_layer_index(header.get("ffwd"), L, "record field 'ffwd'")
    _check_layer_index(header.get("fbwd"), L, "record field 'fbwd'")
    hfo = header.get("history_forward_order")
    if hfo is not None:
        _check_index_list(hfo, L, "record field 'history_forward_order'")
    for i in rec.dead_units:
        need(is_int(i) and 0 <= int(i) < L, f"record field 'dead' holds layer indices below {L}", i)
    for key in ("inputs", "loss_inputs", "extra"):
        need(
            isinstance(getattr(rec, key), dict),
            f"record field {key!r} must be an object",
            getattr(rec, key),
        )


def check_event(d: Any) -> None:
    """Raise ValueError unless ``d`` is a well-typed event (``id``/``step`` integers, ``kind``/
    ``label`` strings, ``time`` a number, ``data`` an object)."""
    need(isinstance(d, dict), "an event must be an object", d)
    for key in ("id", "step"):
        need(is_int(d.get(key)), f"event field {key!r} must be an integer", d.get(key))
    for key in ("kind", "label"):
        need(isinstance(d.get(key), str), f"event field {key!r} must be a string", d.get(key))
    if "time" in d:
        need(is_num(d["time"]), "event field 'time' must be a number", d["time"])
    if "data" in d:
        need(isinstance(d["data"], dict), "event field 'data' must be an object", d["data"])


def check_scalars(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    names: Any = header.get("names")
    counts: Any = header.get("counts")
    need(
        isinstance(names, list) and all(isinstance(n, str) and n for n in names),
        "scalars field 'names' must be a list of names",
        names,
    )
    need(
        isinstance(counts, list)
        and len(counts) == len(names)
        and all(is_int(c) and c >= 0 for c in counts),
        "scalars field 'counts' must be one non-negative integer per name",
        counts,
    )
    steps, values = arrays.get("steps"), arrays.get("values")
    n = sum(int(c) for c in counts)
    need(
        isinstance(steps, np.ndarray) and steps.shape == (n,) and steps.dtype.kind in "iu",
        f"scalars array 'steps' must hold {n} integers",
        getattr(steps, "shape", steps),
    )
    need(
        isinstance(values, np.ndarray) and values.shape == (n,) and values.dtype.kind == "f",
        f"scalars array 'values' must hold {n} floats",
        getattr(values, "shape", values),
    )


def check_params(arrays: dict[str, np.ndarray], L: int) -> None:
    steps, rows = arrays.get("steps"), arrays.get("rows")
    need(
        isinstance(steps, np.ndarray) and steps.ndim == 1 and steps.dtype.kind in "iu",
        "params array 'steps' must be a list of integers",
        getattr(steps, "shape", steps),
    )
    assert isinstance(steps, np.ndarray)
    shape = (len(steps), L, len(PARAM_METRICS))
    need(
        isinstance(rows, np.ndarray) and rows.shape == shape and rows.dtype.kind == "f",
        f"params array 'rows' must be a {shape} float array",
        getattr(rows, "shape", rows),
    )


def _check_series_state(st: Any, shape: tuple[int, ...] | None, what: str) -> None:
    need(isinstance(st, dict), f"{what} must be an object", type(st).__name__)
    for key in ("recent", "buckets"):
        v = st.get(key)
        need(
            is_int(v) and 0 < int(v) <= MAX_CAPACITY, f"{what} {key!r} must be 1..{MAX_CAPACITY}", v
        )
    sh = st.get("shape")
    need(
        isinstance(sh, list)
        and all(is_int(x) and x >= 0 for x in sh)
        and int(np.prod(sh or [1])) <= MAX_CELLS,
        f"{what} 'shape' must be a small list of sizes",
        sh,
    )
    if shape is not None:
        need(tuple(sh) == shape, f"{what} must have the shape {list(shape)}", sh)
    for key in ("b_len", "width", "open_n", "total"):
        need(
            is_int(st.get(key)) and int(st[key]) >= 0,
            f"{what} {key!r} must be a non-negative integer",
            st.get(key),
        )


def check_snapshot(snap: dict[str, Any]) -> None:
    """Raise ValueError unless a loaded snapshot is consistent (layers, series shapes, indices)."""
    layers = snap["layers"]
    L = len(layers)
    state = snap["state"]
    need(is_int(state.get("step")), "snapshot field 'step' must be an integer", state.get("step"))
    _check_index_list(state.get("forward_order"), L, "snapshot field 'forward_order'")
    cfg = state.get("config")
    if cfg is not None:
        check_history_config(cfg)
    need(isinstance(state.get("scalars"), dict), "snapshot scalars must be an object", None)
    for name, st in state["scalars"].items():
        _check_series_state(st, None, f"snapshot scalar {name!r}")
    _check_series_state(state.get("layer"), (L, len(LAYER_METRICS)), "snapshot per-layer series")
    if "param" in state:
        _check_series_state(state["param"], (L, len(PARAM_METRICS)), "snapshot parameter series")
    for key in ("act_hist", "ograd_hist"):
        _check_series_state(state.get(key), (L, NBINS), f"snapshot {key} series")
    need(isinstance(snap["meta"], dict), "snapshot meta must be an object", snap["meta"])
    if snap["latest"] is not None:
        check_record(snap["latest"], snap["latest_header"], L)


def event_from_json(d: dict[str, Any]) -> Event:
    check_event(d)
    return Event(
        id=int(d["id"]),
        step=int(d["step"]),
        kind=str(d["kind"]),
        label=str(d["label"]),
        data=from_json(d.get("data", {}), {}),
        time=float(d.get("time", math.nan)),
    )


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
    """A :class:`StepRecord` from its parts (fields still to be checked with :func:`check_record`)."""
    names = header.get("metric_names", list(LAYER_METRICS))
    need(
        isinstance(names, list) and all(isinstance(n, str) for n in names),
        "record field 'metric_names' must be a list of strings",
        names,
    )
    mat = arrays.get("metrics")
    need(
        isinstance(mat, np.ndarray) and mat.ndim == 2 and mat.shape[1] == len(names),
        f"record array 'metrics' must be (layers, {len(names)})",
        getattr(mat, "shape", mat),
    )
    assert isinstance(mat, np.ndarray)
    need(
        isinstance(header.get("dead", []), list)
        and all(
            isinstance(d, list) and len(d) == 2 and all(map(is_int, d)) and f"dead{d[0]}" in arrays
            for d in header.get("dead", [])
        ),
        "record field 'dead' must list [layer, units] pairs with their masks",
        header.get("dead"),
    )
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
    _widen_layer_series(state.get("layer"), len(LAYER_METRICS))
    latest = None
    if "latest" in doc:
        la = {k[len("latest.") :]: v for k, v in arrays.items() if k.startswith("latest.")}
        latest = record_from_parts(doc["latest"], la)
    need(
        isinstance(doc.get("events"), list),
        "snapshot events must be a list",
        type(doc.get("events")).__name__,
    )
    return {
        "state": state,
        "layers": layers_from_json(doc["layers"]),
        "meta": from_json(doc["meta"], arrays),
        "events": [event_from_json(e) for e in doc["events"]],
        "latest": latest,
        "latest_header": doc.get("latest"),
        "info": doc.get("info", {}),
    }


def _widen_layer_series(st: Any, width: int) -> None:
    """A run written before a per-layer metric was added (new metrics are appended to
    ``trainscope.metrics.LAYER``): its saved series get NaN columns for them, in place."""
    if not isinstance(st, dict):
        return
    sh = st.get("shape")
    if not (isinstance(sh, list) and len(sh) == 2 and is_int(sh[1]) and 0 < int(sh[1]) < width):
        return
    old = int(sh[1])
    for key in ("r_vals", "b_sum", "b_min", "b_max"):
        a = st.get(key)
        if isinstance(a, np.ndarray) and a.ndim == 3 and a.shape[2] == old:
            pad = np.full((*a.shape[:2], width - old), np.nan, dtype=a.dtype)
            st[key] = np.concatenate([a, pad], axis=2)
    st["shape"] = [sh[0], width]


def iter_segment_records(data: bytes) -> Iterator[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """Every valid record of a whole segment file's bytes (for tools and tests)."""
    if not data.startswith(SEGMENT_MAGIC):
        raise ValueError("not a trainscope segment (bad file header)")
    yield from scan(data, len(SEGMENT_MAGIC)).records

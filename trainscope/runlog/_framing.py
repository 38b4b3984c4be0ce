"""Run-directory files and record framing: file names, atomic replacement, the JSON + array
codec of a record body, and the crash-tolerant scan of a segment (magic, length, CRC32)."""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zlib
from typing import Any

import numpy as np

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

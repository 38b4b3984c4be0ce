"""Step records, events and history snapshots to and from their on-disk parts."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..history import LAYER_METRICS, Event, StepRecord
from ..layers import LayerInfo
from ._checks import (
    check_event,
    is_int,
    layers_from_json,
    layers_to_json,
    need,
)
from ._framing import (
    FORMAT,
    SEGMENT_MAGIC,
    VERSION,
    dumps,
    from_json,
    scan,
    to_json,
)


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

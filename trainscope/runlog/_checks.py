"""Type and range checks of everything read from a run directory (configs, layers, records,
events, scalars, parameters, snapshots): a bad field raises ValueError naming it."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from ..history import LAYER_METRICS, PARAM_METRICS, StepRecord
from ..layers import LayerInfo
from ..stats import NBINS

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



"""Bounded, host-side (numpy) history of everything a probe records.

Memory is fixed at construction, however long training runs: every time series keeps its most
recent points at full resolution in a ring, and folds older points into buckets that keep
min / max / mean; when the buckets are full, neighbouring pairs merge (so old data gets coarser,
never dropped).  :meth:`History.memory_bytes` reports the total; the caps are:

=====================  ==========================  ===========================================
series                 default capacity            bytes
=====================  ==========================  ===========================================
each scalar            4096 recent + 1024 buckets  8·4096 + 32·1024 ≈ 64 KiB (+ steps)
per-layer metrics      256 recent + 256 buckets    4·L·M·(256 + 3·256)   (L layers, M=19 metrics)
parameter metrics      512 recent + 512 buckets    4·L·5·(512 + 3·512)   (every cheap/sampled step)
act / grad histograms  64 recent + 192 buckets     2 · 4·L·100·(64 + 192)
dead-unit window       ``dead_window`` samples     units of the ReLU/linear/conv layers, bool
timeline events        10 000 events               small records
=====================  ==========================  ===========================================

e.g. 30 layers ≈ 2.2 MB + 1.2 MB + 6.1 MB; 200 layers ≈ 15 MB + 8 MB + 41 MB.  The probe pushes data in; readers
(the dashboard, diagnostics, the run directory) pull arrays out and may :meth:`subscribe` to be
told about new data.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import metrics as _metrics
from ._history_store import Downsampled
from .layers import LayerInfo
from .stats import NBINS

__all__ = [
    "LAYER_METRICS",
    "Downsampled",
    "Event",
    "History",
    "StepRecord",
    "Subscription",
    "Update",
]

LAYER_METRICS: tuple[str, ...] = _metrics.LAYER_NAMES
"""Every per-layer metric, in column order (defined once, in :mod:`trainscope.metrics`)."""
METRIC_INDEX = {m: i for i, m in enumerate(LAYER_METRICS)}
PARAM_METRICS: tuple[str, ...] = _metrics.PARAM_NAMES
"""Parameter metrics are also recorded at every *cheap* step (``cheap_every``) in a denser series;
:meth:`History.layer_series` serves them from there."""
PARAM_INDEX = {m: i for i, m in enumerate(PARAM_METRICS)}


RUN_END = "run_end"
"""Timeline kind of the mark :meth:`trainscope.Probe.finish` leaves: the user said training is over."""


@dataclass
class Event:
    """An entry on the run's timeline (an intervention, a check that ran, a note...)."""

    id: int
    step: int
    kind: str
    label: str
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


@dataclass
class StepRecord:
    """Everything recorded at one sampled step (host-side numpy)."""

    step: int
    time: float
    metrics: dict[str, np.ndarray]  # LAYER_METRICS -> (L,) per layer
    act_hist: np.ndarray | None  # (L, NBINS) estimated counts, None if histograms are off
    ograd_hist: np.ndarray | None
    forward_order: list[int]  # layer indices in the order they first ran this step
    backward_order: list[int]  # layer indices in the order their output gradient arrived
    first_nonfinite_forward: int | None  # layer index, forward order
    first_nonfinite_backward: int | None  # layer index, backward order
    dead_units: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> bool mask (dead)
    inputs: dict[str, Any] = field(default_factory=dict)  # model-input summary
    loss_inputs: dict[str, Any] = field(default_factory=dict)  # loss-function input summary
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Update:
    """What changed, passed to subscribers."""

    step: int
    scalars: bool = False
    record: bool = False
    events: bool = False


class Subscription:
    """Handle returned by :meth:`History.subscribe`; ``remove()`` or use as a context manager."""

    def __init__(self, history: History, key: int) -> None:
        self._history = history
        self._key = key

    def remove(self) -> None:
        self._history._subscribers.pop(self._key, None)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class History:
    """Bounded record of a run: scalars, per-layer metrics, histograms, dead-unit masks, events."""

    def __init__(
        self,
        layers: list[LayerInfo] | None = None,
        *,
        scalar_recent: int = 4096,
        scalar_buckets: int = 1024,
        layer_recent: int = 256,
        layer_buckets: int = 256,
        param_recent: int = 512,
        param_buckets: int = 512,
        hist_recent: int = 64,
        hist_buckets: int = 192,
        dead_window: int = 20,
        max_events: int = 10_000,
    ) -> None:
        self._lock = threading.RLock()
        self._cfg = {
            "scalar_recent": scalar_recent,
            "scalar_buckets": scalar_buckets,
            "layer_recent": layer_recent,
            "layer_buckets": layer_buckets,
            "param_recent": param_recent,
            "param_buckets": param_buckets,
            "hist_recent": hist_recent,
            "hist_buckets": hist_buckets,
        }
        self.dead_window = dead_window
        self.scalars: dict[str, Downsampled] = {}
        self.events: deque[Event] = deque(maxlen=max_events)
        self._event_ids = itertools.count(1)
        self._subscribers: dict[int, Callable[[Update], None]] = {}
        self._sub_ids = itertools.count()
        self.subscriber_errors: list[str] = []
        self.latest: StepRecord | None = None
        # the first sampled step, whole (normally step 0: the forward scale of the initialization
        # on the first batch); the bounded series fold it into buckets on long runs, this keeps it
        self.first_record: StepRecord | None = None
        self.step = -1  # the latest step anything was recorded for
        self.meta: dict[str, Any] = {}
        self.layers: list[LayerInfo] = []
        self.set_layers(layers or [])

    # ---------------------------------------------------------------- layers
    def set_layers(self, layers: list[LayerInfo]) -> None:
        """(Re)define the tracked layers; clears per-layer series if the set changes."""
        with self._lock:
            if [x.name for x in layers] == [x.name for x in self.layers] and self.layers:
                self.layers = list(layers)
                return
            self.layers = list(layers)
            L = len(layers)
            c = self._cfg
            self._layer = Downsampled(
                (L, len(LAYER_METRICS)), recent=c["layer_recent"], buckets=c["layer_buckets"]
            )
            self._param = Downsampled(
                (L, len(PARAM_METRICS)), recent=c["param_recent"], buckets=c["param_buckets"]
            )
            self._act_hist = Downsampled(
                (L, NBINS), recent=c["hist_recent"], buckets=c["hist_buckets"], extrema=False
            )
            self._ograd_hist = Downsampled(
                (L, NBINS), recent=c["hist_recent"], buckets=c["hist_buckets"], extrema=False
            )
            self._dead_windows: dict[int, deque[np.ndarray]] = {}
            self.forward_order: list[int] = list(range(L))
            self.latest = None
            self.first_record = None

    def set_forward_order(self, order: list[int]) -> None:
        """Record the order in which layers ran (indices into ``layers``); storage is unchanged."""
        with self._lock:
            seen = list(dict.fromkeys(i for i in order if 0 <= i < len(self.layers)))
            rest = [i for i in range(len(self.layers)) if i not in set(seen)]
            self.forward_order = seen + rest

    @property
    def layer_names(self) -> list[str]:
        return [x.name for x in self.layers]

    def layer_index(self, name: str) -> int:
        for i, x in enumerate(self.layers):
            if x.name == name:
                return i
        raise KeyError(f"no layer named {name!r}; layers are: {', '.join(self.layer_names[:20])}")

    # ---------------------------------------------------------------- writing
    def add_scalars(self, step: int, values: dict[str, float]) -> None:
        with self._lock:
            for name, v in values.items():
                s = self.scalars.get(name)
                if s is None:
                    s = self.scalars[name] = Downsampled(
                        recent=self._cfg["scalar_recent"],
                        buckets=self._cfg["scalar_buckets"],
                        dtype=np.float64,
                    )
                s.append(step, v)
            self.step = max(self.step, step)

    def add_scalar_series(
        self, name: str, steps: list[int] | np.ndarray, values: list[float] | np.ndarray
    ) -> None:
        """Several points of one scalar (steps ascending)."""
        if len(steps) == 0:
            return
        with self._lock:
            s = self.scalars.get(name)
            if s is None:
                s = self.scalars[name] = Downsampled(
                    recent=self._cfg["scalar_recent"],
                    buckets=self._cfg["scalar_buckets"],
                    dtype=np.float64,
                )
            s.extend(np.asarray(steps), np.asarray(values, dtype=np.float64))
            self.step = max(self.step, int(steps[-1]))

    def add_record(self, rec: StepRecord) -> None:
        with self._lock:
            row = np.stack([rec.metrics[m] for m in LAYER_METRICS], axis=1).astype(np.float32)
            self._layer.append(rec.step, row)
            prow = np.stack([rec.metrics[m] for m in PARAM_METRICS], axis=1).astype(np.float32)
            self._extend_param(np.array([rec.step], dtype=np.int64), prow[None])
            if rec.act_hist is not None:
                self._act_hist.append(rec.step, rec.act_hist)
            if rec.ograd_hist is not None:
                self._ograd_hist.append(rec.step, rec.ograd_hist)
            self.latest = rec
            if self.first_record is None or rec.step < self.first_record.step:
                self.first_record = rec
            self.step = max(self.step, rec.step)

    def add_param_rows(self, steps: np.ndarray, rows: np.ndarray) -> None:
        """Per-layer parameter metrics of several steps: ``rows`` is ``(K, L, len(PARAM_METRICS))``."""
        steps = np.asarray(steps, dtype=np.int64)
        with self._lock:
            self._extend_param(steps, rows)
            if len(steps):
                self.step = max(self.step, int(steps[-1]))

    def _extend_param(self, steps: np.ndarray, rows: np.ndarray) -> None:
        if self._param.total:  # each step once (a sampled step may also arrive through add_record)
            keep = steps > int(self._param.last(1)[0][-1])
            steps, rows = steps[keep], rows[keep]
        self._param.extend(steps, rows)

    def update_units(self, layer: int, active: np.ndarray) -> np.ndarray:
        """Add one sample's per-unit activity flags; returns the dead mask over the window."""
        with self._lock:
            win = self._dead_windows.get(layer)
            if win is None or (win and win[0].shape != active.shape):
                win = self._dead_windows[layer] = deque(maxlen=self.dead_window)
            win.append(active.astype(bool))
            ever = np.logical_or.reduce(np.stack(win), axis=0)
            dead: np.ndarray = ~ever
            return dead

    def unit_activity(self, layer: int) -> list[np.ndarray]:
        """The per-unit "fired" flags of the samples in a layer's dead-unit window, oldest first
        (copies; empty when none): what a rule reads to tell units that died *during* the window
        from units that never fired."""
        with self._lock:
            return [a.copy() for a in self._dead_windows.get(layer, ())]

    def dead_window_fill(self, layer: int) -> int:
        """How many samples the dead-unit window of a layer holds so far."""
        win = self._dead_windows.get(layer)
        return len(win) if win else 0

    def add_event(self, kind: str, label: str, step: int | None = None, **data: Any) -> Event:
        with self._lock:
            ev = Event(
                id=next(self._event_ids),
                step=self.step if step is None else step,
                kind=kind,
                label=label,
                data=data,
            )
            self.events.append(ev)
        self.notify(Update(step=ev.step, events=True))
        return ev

    # ---------------------------------------------------------------- reading
    def scalar(self, name: str) -> dict[str, np.ndarray]:
        """A scalar series (see :meth:`Downsampled.arrays`); empty arrays if never logged."""
        with self._lock:
            s = self.scalars.get(name)
            if s is None:
                z = np.zeros(0)
                return {"step": z, "mean": z, "min": z, "max": z, "first": z, "last": z, "count": z}
            return s.arrays()

    def scalar_names(self) -> list[str]:
        with self._lock:
            return list(self.scalars)

    def layer_series(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps (T,), values (T, L))`` of one per-layer metric (bucket means for old data)."""
        if metric not in METRIC_INDEX:
            raise KeyError(f"unknown metric {metric!r}; metrics are {', '.join(LAYER_METRICS)}")
        with self._lock:
            if metric in PARAM_INDEX:
                a = self._param.arrays()
                return a["step"], a["mean"][:, :, PARAM_INDEX[metric]]
            a = self._layer.arrays()
            return a["step"], a["mean"][:, :, METRIC_INDEX[metric]]

    def layer_series_range(self, metric: str) -> dict[str, np.ndarray]:
        """Like :meth:`layer_series` with the bucket ``min`` / ``max`` as well."""
        if metric not in METRIC_INDEX:
            raise KeyError(f"unknown metric {metric!r}; metrics are {', '.join(LAYER_METRICS)}")
        with self._lock:
            if metric in PARAM_INDEX:
                a, j = self._param.arrays(), PARAM_INDEX[metric]
            else:
                a, j = self._layer.arrays(), METRIC_INDEX[metric]
            return {
                "step": a["step"],
                "mean": a["mean"][:, :, j],
                "min": a["min"][:, :, j],
                "max": a["max"][:, :, j],
            }

    def histograms(self, kind: str = "act") -> tuple[np.ndarray, np.ndarray]:
        """``(steps (T,), counts (T, L, NBINS))`` for ``kind`` ``"act"`` or ``"ograd"``."""
        store = {"act": self._act_hist, "ograd": self._ograd_hist}.get(kind)
        if store is None:
            raise KeyError("kind must be 'act' or 'ograd'")
        with self._lock:
            a = store.arrays()
            return a["step"], a["mean"]

    def layer_histograms(self, kind: str, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """``(steps (T,), counts (T, NBINS))`` of one layer: :meth:`histograms` without copying
        every layer's (a per-layer view of a large model)."""
        store = {"act": self._act_hist, "ograd": self._ograd_hist}.get(kind)
        if store is None:
            raise KeyError("kind must be 'act' or 'ograd'")
        with self._lock:
            a = store.item_arrays(layer)
            return a["step"], a["mean"]

    def samples(self) -> int:
        """Number of sampled steps recorded so far."""
        return self._layer.total

    def memory_bytes(self) -> int:
        with self._lock:
            total = (
                self._layer.nbytes
                + self._param.nbytes
                + self._act_hist.nbytes
                + self._ograd_hist.nbytes
            )
            total += sum(s.nbytes for s in self.scalars.values())
            total += sum(sum(m.nbytes for m in w) for w in self._dead_windows.values())
            return total

    # ---------------------------------------------------------------- subscribers
    def subscribe(self, callback: Callable[[Update], None]) -> Subscription:
        """Call ``callback(update)`` after new data arrives (on the thread that recorded it).

        Exceptions raised by a callback are recorded in ``subscriber_errors`` and never reach
        the training loop.
        """
        key = next(self._sub_ids)
        self._subscribers[key] = callback
        return Subscription(self, key)

    def notify(self, update: Update) -> None:
        for cb in list(self._subscribers.values()):
            try:
                cb(update)
            except Exception as e:  # a broken reader must never break training
                if len(self.subscriber_errors) < 100:
                    self.subscriber_errors.append(f"{type(e).__name__}: {e}")

    # ---------------------------------------------------------------- persistence (run directory)
    @property
    def lock(self) -> threading.RLock:
        """The lock every write holds (readers that need a consistent view across series take it)."""
        return self._lock

    def scalar_tail(self, name: str, since: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Raw points of a scalar appended after the first ``since`` ones: ``(steps, values, total)``.

        At most the recent (raw) capacity is returned; older points are already bucketed.
        """
        with self._lock:
            s = self.scalars.get(name)
            if s is None:
                return np.zeros(0, np.int64), np.zeros(0), 0
            steps, values = s.last(min(max(s.total - since, 0), len(s._r_steps)))
            return steps, values, s.total

    def param_tail(self, since: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Per-layer parameter rows appended after the first ``since``: ``(steps, rows, total)``
        (rows ``(K, L, len(PARAM_METRICS))``; at most the recent capacity)."""
        with self._lock:
            p = self._param
            steps, rows = p.last(min(max(p.total - since, 0), len(p._r_steps)))
            return steps, rows, p.total

    def state_dict(self) -> dict[str, Any]:
        """Exact copy of the bounded series (scalars, per-layer metrics, histograms) and counters.

        Layers, ``meta``, ``events`` and ``latest`` are public attributes and saved by the caller.
        """
        with self._lock:
            return {
                "config": dict(
                    self._cfg, dead_window=self.dead_window, max_events=self.events.maxlen
                ),
                "step": self.step,
                "forward_order": list(self.forward_order),
                "scalars": {n: s.state_dict() for n, s in self.scalars.items()},
                "layer": self._layer.state_dict(),
                "param": self._param.state_dict(),
                "act_hist": self._act_hist.state_dict(),
                "ograd_hist": self._ograd_hist.state_dict(),
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (call :meth:`set_layers` with the same layers first)."""
        with self._lock:
            self.scalars = {n: Downsampled.from_state(st) for n, st in state["scalars"].items()}
            self._layer = Downsampled.from_state(state["layer"])
            if "param" in state:
                self._param = Downsampled.from_state(state["param"])
            self._act_hist = Downsampled.from_state(state["act_hist"])
            self._ograd_hist = Downsampled.from_state(state["ograd_hist"])
            self.step = int(state["step"])
            self.forward_order = [int(i) for i in state["forward_order"]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.scalars)

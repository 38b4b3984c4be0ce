"""What one transfer carries: a sampled step's named device tensors, copied to the host at once.

:class:`StepPayload` names every tensor a sampled step produces (parameter row, activation and
output-gradient summary rows, histograms, per-unit masks, input and loss-input summaries, the
gradient left over from earlier steps) with the host-side facts needed to read them (which
layer each row belongs to, the forward order...).  It is generic in the array type: the hooks
fill a ``StepPayload[Tensor]`` on the device, :func:`start_transfer` concatenates its tensors,
the scalars waiting for a flush and the cheap steps' parameter rows into **one** flat tensor
(one device-to-host copy, non-blocking on CUDA), and :meth:`Flight.host` gives back a
``StepPayload[np.ndarray]`` with the same names.  Nothing here reads a value.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import numpy as np
import torch
from torch import Tensor

from ..run import Batch

__all__ = ["Batch", "Flight", "Pending", "StepPayload", "start_transfer"]

A = TypeVar("A")
B = TypeVar("B")

TENSORS = ("prow", "act", "grad", "act_hist", "grad_hist", "inputs", "loss_in", "carried",
           "carried_bwd")
"""The single tensors of a payload, by field name (the per-unit masks are ``amask<i>`` and
``gmask<i>`` in :meth:`StepPayload.named`)."""


@dataclass
class StepPayload(Generic[A]):
    """One sampled step: named arrays (device tensors, or host arrays after the transfer)."""

    step: int
    time: float = field(default_factory=time.time)
    reason: str = ""
    full: bool = True  # False: a rank that does not record (distributed), scalars only
    prow: A | None = None  # the parameter row (ParamTracker.row)
    act: A | None = None  # activation summary rows, one per hook call ...
    act_meta: list[tuple[int, int]] = field(default_factory=list)  # ... (layer, numel) each
    grad: A | None = None  # output-gradient summary rows ...
    grad_meta: list[tuple[int, int]] = field(default_factory=list)
    act_hist: A | None = None  # histogram counts, one row per hook call ...
    act_hist_layer: list[int] = field(default_factory=list)  # ... and its layer
    grad_hist: A | None = None
    grad_hist_layer: list[int] = field(default_factory=list)
    act_masks: dict[int, A] = field(default_factory=dict)  # layer -> per-unit "fired" flags
    grad_masks: dict[int, A] = field(default_factory=dict)  # layer -> "received gradient"
    inputs: A | None = None  # model-input summary ...
    inputs_meta: dict[str, Any] = field(default_factory=dict)
    loss_in: A | None = None  # loss-input summary ...
    loss_in_meta: dict[str, Any] = field(default_factory=dict)
    carried: A | None = None  # gradient norm left over at the first forward
    carried_bwd: A | None = None  # ... and at the first output gradient
    fwd_order: list[int] = field(default_factory=list)
    bwd_order: list[int] = field(default_factory=list)
    modes: dict[str, int] = field(default_factory=dict)
    exact_nonfinite: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # into the record's extra (ranks combined)

    def named(self) -> dict[str, A]:
        """Every array present, by name: the :data:`TENSORS` fields, then ``amask<i>`` /
        ``gmask<i>``."""
        out = {n: v for n in TENSORS if (v := getattr(self, n)) is not None}
        out.update({f"amask{i}": m for i, m in self.act_masks.items()})
        out.update({f"gmask{i}": m for i, m in self.grad_masks.items()})
        return out

    def with_named(self, named: Mapping[str, B]) -> StepPayload[B]:
        """A copy holding exactly the arrays given (by :meth:`named`'s names), nothing else."""
        arrays: dict[str, Any] = {n: named.get(n) for n in TENSORS}
        arrays["act_masks"] = {int(k[5:]): v for k, v in named.items() if k.startswith("amask")}
        arrays["grad_masks"] = {int(k[5:]): v for k, v in named.items() if k.startswith("gmask")}
        return cast("StepPayload[B]", dataclasses.replace(self, **arrays))  # type: ignore[arg-type]


@dataclass
class Flight:
    """The layout of one flat transfer: where each named array, parameter row and scalar is."""

    step: int
    payload: StepPayload[Any] | None = None  # the arrays stripped (they live in the flat buffer)
    slices: dict[str, tuple[int, int, tuple[int, ...]]] = field(default_factory=dict)
    param_steps: list[int] = field(default_factory=list)
    param_offset: int = 0
    param_shape: tuple[int, ...] = ()
    scal_float: list[tuple[str, list[int], list[float]]] = field(default_factory=list)
    scal_tensor: list[tuple[str, list[int], int]] = field(default_factory=list)
    scal_offset: int = 0

    @property
    def full(self) -> bool:
        return self.payload is not None and self.payload.full

    def host(self, buf: np.ndarray) -> StepPayload[np.ndarray] | None:
        """The payload with its arrays read from the host buffer, by name."""
        if self.payload is None:
            return None
        named = {k: buf[s : s + n].reshape(shape) for k, (s, n, shape) in self.slices.items()}
        return self.payload.with_named(named)

    def param_rows(self, buf: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """``(steps, rows)`` of the cheap steps since the last transfer."""
        if not self.param_steps:
            return None
        n = int(np.prod(self.param_shape))
        rows = buf[self.param_offset : self.param_offset + n].reshape(self.param_shape)
        return np.asarray(self.param_steps, dtype=np.int64), rows

    def scalars(self, buf: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Scalar series by name: ``(steps, values)``, sorted by step, one value per step
        (several values logged for one step are averaged)."""
        acc: dict[str, list[tuple[Any, Any]]] = {}
        for name, steps, vals in self.scal_float:
            acc.setdefault(name, []).append((steps, vals))
        pos = self.scal_offset
        for name, steps, n in self.scal_tensor:
            acc.setdefault(name, []).append((steps, buf[pos : pos + n]))
            pos += n
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, parts in acc.items():
            ks = np.concatenate([np.asarray(k, dtype=np.int64) for k, _ in parts])
            values = np.concatenate([np.asarray(v, dtype=np.float64) for _, v in parts])
            if len(ks) > 1 and (np.diff(ks) <= 0).any():
                # unordered or repeated steps: sort, and average several values of one step
                uniq, inv = np.unique(ks, return_inverse=True)
                values = np.bincount(inv, weights=values) / np.bincount(inv)
                ks = uniq
            out[name] = (ks, values)
        return out


def start_transfer(
    step: int,
    payload: StepPayload[Tensor] | None,
    param_rows: list[tuple[int, Tensor]],
    scalars: dict[str, tuple[list[int], list[Any]]],
) -> Pending:
    """Concatenate the payload's tensors, the cheap steps' parameter rows and the buffered
    scalars into one flat tensor and start its copy to the host (one copy)."""
    fl = Flight(step=payload.step if payload is not None else step)
    tensors: list[Tensor] = []
    start = 0
    if payload is not None:
        for key, t in payload.named().items():
            flat = t.detach().reshape(-1).float()
            fl.slices[key] = (start, flat.numel(), tuple(t.shape))
            tensors.append(flat)
            start += flat.numel()
        fl.payload = payload.with_named({})  # the host side needs the facts, not the tensors
    if param_rows:  # cheap steps since the last transfer, stacked: still one copy
        fl.param_steps = [k for k, _ in param_rows]
        fl.param_offset = start
        stacked = torch.stack([r for _, r in param_rows])
        fl.param_shape = tuple(stacked.shape)
        tensors.append(stacked.reshape(-1))
    fl.scal_offset = sum(t.numel() for t in tensors)
    # per name: floats stay on the host; 0-d tensors are stacked (one op per name, not per
    # value: a 0.5 s flush of a 0.5 ms step holds ~1000 losses)
    scal_values: list[Tensor] = []
    for name, (steps, vals) in scalars.items():
        tsteps: list[int] = []
        tens: list[Tensor] = []
        fsteps: list[int] = []
        fvals: list[float] = []
        for k, v in zip(steps, vals, strict=True):
            if isinstance(v, Tensor):
                tsteps.append(k)
                tens.append(v)
            else:
                fsteps.append(k)
                fvals.append(v)
        if fvals:
            fl.scal_float.append((name, fsteps, fvals))
        if not tens:
            continue
        try:
            t = torch.stack(tens)
        except RuntimeError:  # mixed dtypes or devices
            t = torch.stack([v.float().to(tens[0].device) for v in tens])
        fl.scal_tensor.append((name, tsteps, len(tens)))
        scal_values.append(t.float().reshape(-1))
    devices = {t.device for t in tensors} | {t.device for t in scal_values}
    dev = next(iter(devices)) if len(devices) == 1 else torch.device("cpu")
    flat_parts = [t.to(dev) for t in tensors] + [t.to(dev) for t in scal_values]
    return Pending(torch.cat(flat_parts) if flat_parts else torch.zeros(0), fl)


class Pending:
    """One device->host transfer: blocking on CPU, pinned + non-blocking + event on CUDA."""

    def __init__(self, flat: Tensor, meta: Flight) -> None:
        self.meta = meta
        self.on_device = flat.is_cuda  # read at a later boundary; on the CPU at once
        self._event: Any = None
        if flat.is_cuda:
            host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
            self._event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self._event.record()
            self._host = host
        else:
            self._host = flat.detach().to("cpu")

    def ready(self) -> bool:
        return self._event is None or bool(self._event.query())

    def result(self) -> np.ndarray:
        if self._event is not None:
            self._event.synchronize()
        out: np.ndarray = self._host.numpy()
        return out

"""Contracts at the bottom: what every service may rely on about "the run".

This module is floor 0 of the package (see ``docs/architecture.md``): it imports nothing from
trainscope at run time, so anything can import it.  It holds

* :class:`RunContext` -- the protocol services (actions, interventions, checklists, diagnostics,
  the LR finder, the report) take instead of the concrete :class:`~trainscope.probe.Probe`;
* :class:`Batch` and the one batch policy (:func:`as_batch`, :func:`context_batch`);
* :class:`ProbeError` -- an exception caught inside trainscope, kept for the user to read;
* :class:`Handle` and :class:`Callbacks` -- the one removable-handle shape and the one guarded
  callback list;
* :func:`jsonable` -- the one JSON sanitizer.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:  # annotations only: the storage types of floor 1 (they never import this module)
    import torch
    from torch import nn

    from .history import History
    from .layers import LayerInfo

__all__ = [
    "MAX_DEPTH",
    "Batch",
    "Callbacks",
    "Handle",
    "ProbeError",
    "RunContext",
    "as_batch",
    "context_batch",
    "first_batch",
    "jsonable",
    "split_batch",
]


# ----------------------------------------------------------------------------- records
@dataclass
class Batch:
    """References (no copies) to one training batch as the model and the loss saw it."""

    step: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    target: Any = None


@dataclass
class ProbeError:
    """An exception caught inside the probe (it never reaches the training loop)."""

    where: str
    step: int
    error: str
    traceback: str


# ----------------------------------------------------------------------------- the run
@runtime_checkable
class RunContext(Protocol):
    """What a service needs of a run; :class:`~trainscope.probe.Probe` implements it.

    Services (``actions``, ``interventions``, ``checklists``, ``diagnostics``, ``lr_finder``,
    ``report``) annotate with this protocol and never import ``trainscope.probe``, so the
    recording engine and the composition root can change without touching them.
    ``isinstance(x, RunContext)`` tells a run from a bare model or a history.
    """

    # read-only members (properties), so a concrete run may hold narrower types (a deque of batches)
    @property
    def model(self) -> nn.Module: ...

    @property
    def optimizer(self) -> torch.optim.Optimizer | None: ...

    @property
    def loss_fn(self) -> Any: ...

    @property
    def history(self) -> History: ...

    @property
    def data(self) -> Any:
        """The user's iterable of batches (``Probe(data=...)``), or ``None``."""

    @property
    def recent_batches(self) -> Sequence[Batch]: ...

    @property
    def step_count(self) -> int: ...

    @property
    def errors(self) -> list[ProbeError]: ...

    @property
    def layers(self) -> Sequence[LayerInfo]: ...

    @property
    def forward_modes(self) -> Mapping[str, int]: ...

    @property
    def actions(self) -> Any:
        """The run's :class:`~trainscope.actions.ActionQueue`."""

    @property
    def is_attached(self) -> bool: ...

    def on_step(self, callback: Callable[[Any], None]) -> Handle: ...

    def paused(self) -> contextlib.AbstractContextManager[Any]: ...

    def request(self, action: str, /, **params: Any) -> Any: ...

    def findings(self, min_severity: str | None = None) -> list[Any]: ...

    def sample_next(self) -> None: ...

    def at_boundary(self, key: str, task: Callable[[Any], None]) -> bool:
        """Run ``task(run)`` now if that cannot race with training, else once (per ``key``) at the
        next step boundary on the training thread; returns whether it ran now."""
        ...

    def detach(self) -> None: ...


# ----------------------------------------------------------------------------- batch policy
def first_batch(data: Any) -> Any:
    """The first item of an iterable of batches (a ``DataLoader``, a list...)."""
    try:
        it = iter(data)
    except TypeError:
        raise TypeError(
            f"data must be an iterable of batches (e.g. a DataLoader), got {type(data).__name__}"
        ) from None
    try:
        return next(it)
    except StopIteration:
        raise ValueError("data yielded no batch") from None


def as_batch(batch: Any) -> Batch:
    """The one batch policy of trainscope (checks, the LR finder, data-driven inits, ensembles).

    Accepted: ``(inputs, target)`` where inputs is a tensor, a tuple / list of positional inputs
    or a dict of keyword inputs (Hugging Face style); ``(inputs,)``; a dict with ``"inputs"`` (and
    optionally ``"target"``); a :class:`Batch`; a tensor of inputs alone.
    """
    import torch

    if isinstance(batch, Batch):
        return batch
    if isinstance(batch, torch.Tensor):
        return Batch(-1, (batch,), {}, None)
    if isinstance(batch, Mapping):
        if "inputs" in batch:
            return _inputs(batch["inputs"], batch.get("target"))
        raise TypeError(
            f"a dict batch needs an 'inputs' key (and 'target'); got keys "
            f"{sorted(map(str, batch))[:8]}. Pass (inputs, target) pairs -- inputs may be a dict "
            "of keyword inputs -- or a step_fn(model, batch) -> loss"
        )
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return _inputs(batch[0], batch[1])
        if len(batch) == 1:
            return _inputs(batch[0], None)
        raise ValueError(
            f"a batch must be (inputs, target); got a sequence of {len(batch)} items. Group the "
            "model's inputs: ((x1, x2), target) for positional inputs, ({'name': x}, target) for "
            "keyword inputs, or pass a step_fn(model, batch) -> loss"
        )
    raise TypeError(
        f"cannot tell inputs from targets in a batch of type {type(batch).__name__}; "
        "pass (inputs, target) pairs or a step_fn(model, batch) -> loss"
    )


def _inputs(x: Any, target: Any) -> Batch:
    if isinstance(x, Mapping):
        return Batch(-1, (), dict(x), target)
    if isinstance(x, (tuple, list)):
        return Batch(-1, tuple(x), {}, target)
    return Batch(-1, (x,), {}, target)


def split_batch(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    """``(args, kwargs, target)`` of a batch, by :func:`as_batch`'s policy: ``(x, y)`` ->
    ``((x,), {}, y)``; ``({"input_ids": t}, y)`` -> ``((), {"input_ids": t}, y)``."""
    b = as_batch(batch)
    return tuple(b.args), dict(b.kwargs), b.target


def context_batch(run: RunContext, *, prefer: str = "data") -> Any:
    """A real batch of the run, or ``None`` when it has neither data nor a recent batch.

    ``prefer="data"`` (interventions: a data-driven init or an ensemble wants a whole batch the user
    chose): the first batch of ``run.data``, else the most recent training batch.
    ``prefer="recent"`` (checks: what the model just saw): the most recent training batch, else the
    first batch of ``run.data``.  The result is a :class:`Batch` for recent batches and the raw
    item of ``data`` otherwise (pass it through :func:`as_batch`).
    """
    if prefer not in ("data", "recent"):
        raise ValueError(f"prefer must be 'data' or 'recent', got {prefer!r}")
    recent = run.recent_batches[-1] if run.recent_batches else None
    if prefer == "recent" and recent is not None:
        return recent
    if run.data is not None:
        return first_batch(run.data)
    return recent


# ----------------------------------------------------------------------------- callbacks
class Handle:
    """Removable handle of an entry kept in a dict (``remove()`` or a context manager), shaped like
    ``torch.utils.hooks.RemovableHandle``.  Removing twice is harmless."""

    def __init__(self, registry: MutableMapping[int, Any], key: int) -> None:
        self._registry = registry
        self._key = key

    def remove(self) -> None:
        self._registry.pop(self._key, None)

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


F = TypeVar("F", bound=Callable[..., Any])


class Callbacks(Generic[F]):
    """An ordered list of callbacks, each removable through its :class:`Handle`; :meth:`call`
    runs them on a snapshot (a callback may remove itself or add another) and never lets an
    exception escape: each one goes to ``on_error(callback, exception)``."""

    def __init__(self) -> None:
        self._fns: dict[int, F] = {}
        self._key = 0

    def add(self, fn: F) -> Handle:
        if not callable(fn):
            raise TypeError(f"callback must be callable, got {type(fn).__name__}")
        self._key += 1
        self._fns[self._key] = fn
        return Handle(self._fns, self._key)

    def __len__(self) -> int:
        return len(self._fns)

    def __iter__(self) -> Iterator[F]:
        return iter(list(self._fns.values()))

    def clear(self) -> None:
        self._fns.clear()

    def call(
        self, *args: Any, on_error: Callable[[F, BaseException], None] | None = None
    ) -> None:
        for fn in list(self._fns.values()):
            try:
                fn(*args)
            except Exception as e:
                if on_error is not None:
                    with contextlib.suppress(Exception):
                        on_error(fn, e)


# ----------------------------------------------------------------------------- JSON
MAX_DEPTH = 32
"""Deepest nesting of lists / dicts kept by :func:`jsonable`."""


def jsonable(
    v: Any, *, finite: bool = False, fallback: Callable[[Any], str] = repr, _depth: int = 0
) -> Any:
    """Plain JSON types only: mappings -> dicts with string keys, sequences (lists, tuples, sets,
    numpy arrays) -> lists, numpy / one-element tensor scalars -> numbers, anything else ->
    ``fallback(v)`` (``repr`` by default; a broken ``__repr__`` gives a placeholder string).

    ``finite=True`` turns non-finite floats into ``None`` (strict JSON for the browser).  Nesting
    deeper than :data:`MAX_DEPTH` is cut and said so, so a self-referencing value cannot recurse
    without bound.
    """
    nested = isinstance(v, (Mapping, list, tuple, set, frozenset))
    if nested and _depth >= MAX_DEPTH:
        return f"<nested deeper than {MAX_DEPTH} levels>"
    if isinstance(v, Mapping):
        return {
            str(k): jsonable(x, finite=finite, fallback=fallback, _depth=_depth + 1)
            for k, x in v.items()
        }
    if nested:
        return [jsonable(x, finite=finite, fallback=fallback, _depth=_depth + 1) for x in v]
    if isinstance(v, (bool, str)) or v is None:
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return None if finite and not math.isfinite(v) else float(v)
    item = _scalar(v)
    if item is not None:
        return jsonable(item, finite=finite, fallback=fallback, _depth=_depth)
    tolist = _array_list(v)
    if tolist is not None:
        return jsonable(tolist, finite=finite, fallback=fallback, _depth=_depth)
    try:
        return fallback(v)
    except Exception as e:  # a broken __repr__ must not lose the record it sits in
        return f"<{type(v).__name__}: repr failed: {type(e).__name__}>"


def _scalar(v: Any) -> bool | int | float | None:
    """The Python number of a numpy scalar or a one-element tensor (``None`` for anything else)."""
    mod = type(v).__module__
    try:
        if mod == "numpy" and hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            x = v.item()
        elif mod.startswith("torch") and hasattr(v, "numel") and v.numel() == 1:
            x = float(v.detach().cpu())
        else:
            return None
    except Exception:
        return None
    return x if isinstance(x, (bool, int, float)) else None


def _array_list(v: Any) -> list[Any] | None:
    if type(v).__module__ == "numpy" and type(v).__name__ == "ndarray":
        out = v.tolist()
        return out if isinstance(out, list) else None
    return None

"""Small pieces of hook plumbing: copy-safe hook callables, handles, the primary tensor.

The host transfer lives in :mod:`trainscope.recorder.payload`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .run import Handle

__all__ = ["Handle", "HookFn", "primary_tensor"]


def primary_tensor(out: Any) -> Tensor | None:
    """The first floating-point tensor of a module output (tensor, tuple, list or dict)."""
    if isinstance(out, Tensor):
        return out if out.is_floating_point() else None
    if isinstance(out, (tuple, list)):
        for o in out:
            t = primary_tensor(o)
            if t is not None:
                return t
    elif isinstance(out, dict):
        for o in out.values():
            t = primary_tensor(o)
            if t is not None:
                return t
    return None


def _inert(*args: Any, **kwargs: Any) -> None:
    """What a probe hook becomes in a copy of the model (``copy.deepcopy``, pickling)."""
    return None


def _inert_factory() -> Callable[..., None]:
    return _inert


class HookFn:
    """A hook callable that does not drag the probe into copies of the model.

    ``copy.deepcopy(model)`` and ``torch.save(model)`` copy a module's hook dictionaries; a bound
    method of the probe would try to copy the probe itself (and fail on its lock).  The copy of a
    probe hook is a no-op instead: copies of a model are not probed.
    """

    __slots__ = ("clock", "fn")

    def __init__(self, fn: Callable[..., Any], clock: list[float] | None = None) -> None:
        self.fn = fn
        self.clock = clock  # when given, the time spent in the hook is added to clock[0]

    # Under torch.compile the hook runs eagerly at a graph break instead of being traced: tracing
    # it crashed Dynamo when the probe holds the compiled module (Probe(torch.compile(model))) and
    # cost 4x the graphs otherwise (see docs/beyond.md).  The trampoline is built lazily: a
    # class-level torch.compiler.disable would import torch._dynamo (~3 s) with trainscope.
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return _eager_call(self.fn, args, kwargs)
        if self.clock is None:
            return self.fn(*args, **kwargs)
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.clock[0] += time.perf_counter() - t0

    def __deepcopy__(self, memo: dict[int, Any]) -> Callable[..., None]:
        return _inert

    def __reduce__(self) -> tuple[Any, ...]:
        return (_inert_factory, ())


_EAGER: list[Callable[..., Any]] = []


def _eager_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call ``fn`` outside the graph Dynamo is tracing (a graph break; the hook runs eagerly)."""
    if not _EAGER:

        def call(f: Callable[..., Any], a: tuple[Any, ...], k: dict[str, Any]) -> Any:
            return f(*a, **k)

        _EAGER.append(torch.compiler.disable(call))  # type: ignore[no-untyped-call,unused-ignore]
    return _EAGER[0](fn, args, kwargs)

"""Shared machinery of the interventions: the ``Applied`` record, parameter checking, timeline
events, hook ownership.

Every intervention follows the same discipline:

1. **validate** every argument (types, ranges, layer names) before touching anything; a bad
   request raises ``ValueError`` / ``TypeError`` saying what was wrong and how to fix it;
2. **plan** the change completely (new tensors are computed on the side);
3. **capture** what will change, then **mutate in place** (``Parameter`` identity is kept, so the
   optimizer and the user's references stay valid); if anything raises half-way, the capture is
   restored and the exception re-raised -- all or nothing;
4. return an :class:`Applied` record whose :meth:`Applied.undo` restores the capture.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import traceback
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ..run import ProbeError, jsonable

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["MAX_HEAVY_UNDO", "Applied", "validate_params"]

_LOCAL = threading.local()

MAX_HEAVY_UNDO = 3
"""How many "heavy" undo captures stay alive (the model / optimizer state a rollback, a reinit or
an optimizer switch saved to be undone).  When a newer heavy action is applied, the oldest capture
beyond this number is released and that action can no longer be undone; memory stays bounded by
``MAX_HEAVY_UNDO`` copies of the model (+ optimizer state) whatever the number of clicks."""

RELEASED = (
    "the state needed to undo this was released to bound memory (trainscope keeps what is needed "
    "to undo only the {n} most recent rollback / reinit / switch_optimizer actions)"
)

_SEQ = itertools.count(1)
_LEDGER: weakref.WeakSet[Applied] = weakref.WeakSet()  # applied, not undone: for undo-order checks
_HEAVY: deque[weakref.ref[Applied]] = deque()
_LEDGER_LOCK = threading.Lock()


# ---------------------------------------------------------------------------- state keys
# What an intervention changes is named by "state keys" (strings built from object identities),
# so that undoing an older action can be refused while a later one that changed the same state is
# still applied.  The objects behind the ids are kept alive by the undo closures that name them.
def tensor_keys(tensors: Iterable[Tensor]) -> set[str]:
    """Keys of parameter / buffer values."""
    return {f"t{id(t)}" for t in tensors}


def model_keys(model: nn.Module) -> set[str]:
    """Keys of every parameter and buffer of ``model``."""
    out = {f"t{id(t)}" for t in model.parameters()}
    out |= {f"t{id(t)}" for t in model.buffers()}
    return out


def opt_keys(optimizer: Any, *parts: str) -> set[str]:
    """Keys of an optimizer's settings: ``lr``, ``momentum``, ``weight_decay``, ``groups`` (other
    hyper-parameters), ``schedule``, ``l1``, ``clip``, ``freeze``."""
    return {f"o{id(optimizer)}:{p}" for p in parts}


def opt_state_keys(optimizer: Any, params: Iterable[Tensor] | None = None) -> set[str]:
    """Keys of the optimizer state of ``params`` (default: every parameter of ``optimizer``)."""
    if params is None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
    return {f"s{id(p)}" for p in params}


ALL_OPT_SETTINGS = ("lr", "momentum", "weight_decay", "groups", "schedule")


# ---------------------------------------------------------------------------- the record
class Applied:
    """What an intervention changed; :meth:`undo` puts it back.

    Attributes
    ----------
    name
        The action name (``"reinit"``, ``"set_lr"``...).
    params
        The validated parameters it was applied with.
    details
        JSON-friendly facts about what was done (layers touched, values before / after...).
    message
        One line for the user.
    """

    def __init__(
        self,
        name: str,
        params: Mapping[str, Any],
        undo: Callable[[], None] | None,
        *,
        message: str = "",
        details: Mapping[str, Any] | None = None,
        probe: RunContext | None = None,
        label: str | None = None,
        touches: Iterable[str] | Callable[[], Iterable[str]] = (),
        heavy: bool = False,
    ) -> None:
        self.name = name
        self.params = dict(params)
        self.details: dict[str, Any] = dict(details or {})
        self.message = message
        self.undone = False
        self._result: Any = None
        self._result_ref: weakref.ref[Any] | None = None
        self._undo = undo
        self._probe = probe
        self._recorded = False
        self._released = False
        self._touches = touches if callable(touches) else frozenset(touches)
        self.seq = next(_SEQ)
        self.ticket_id: str | None = None
        """Id of the request that applied it (set by the action queue; used in messages)."""
        self.on_release: list[Callable[[], None]] = []
        self.event_id: int | None = None
        if undo is not None:
            with _LEDGER_LOCK:
                _LEDGER.add(self)
                if heavy:
                    _HEAVY.append(weakref.ref(self))
            if heavy:
                _bound_heavy()
        if probe is not None and not in_action():
            from ..actions import REGISTRY

            spec = REGISTRY.get(name)
            ev = probe.history.add_event(
                "intervention",
                label or (spec.label if spec is not None else name.replace("_", " ")),
                step=probe.step_count,
                action=name,
                params=jsonable(self.params),
                source="python",
                undoable=undo is not None,
                **jsonable(self.details),
            )
            self._recorded = True
            self.event_id = ev.id

    @property
    def result(self) -> Any:
        """The live object, where there is one (a schedule, a snapshot, an early stopper...)."""
        if self._result_ref is not None:
            return self._result_ref()
        return self._result

    @result.setter
    def result(self, value: Any) -> None:
        self._result, self._result_ref = value, None

    def keep_result_weakly(self, value: Any) -> None:
        """``result`` refers to ``value`` without keeping it alive (a snapshot lives as long as
        its bounded store keeps it, not as long as the request is remembered)."""
        self._result, self._result_ref = None, weakref.ref(value)

    @property
    def touches(self) -> frozenset[str]:
        """State keys this intervention changed (see :func:`tensor_keys`, :func:`opt_keys`)."""
        t = self._touches
        return frozenset(t()) if callable(t) else t

    @property
    def released(self) -> bool:
        """True when its undo state was released to bound memory (see :data:`MAX_HEAVY_UNDO`)."""
        return self._released

    @property
    def undoable(self) -> bool:
        return self._undo is not None and not self.undone

    def _label(self) -> str:
        what = self.name.replace("_", " ")
        return f"{what} (ticket {self.ticket_id})" if self.ticket_id else what

    def undo_blocker(self) -> str | None:
        """Why :meth:`undo` would be refused now (``None`` when it can be undone exactly).

        Undo restores what the action saw before it changed things.  When a *later* action that
        is still applied changed some of the same state, restoring that would silently wipe the
        later action's effect while it still shows as applied -- so it is refused: undo the later
        one first (undo is exact in any order for actions on independent state).
        """
        if self.undone:
            return f"{self.name} was already undone"
        if self._released:
            return RELEASED.format(n=MAX_HEAVY_UNDO)
        if self._undo is None:
            return f"{self.name} cannot be undone"
        mine = self.touches
        if not mine:
            return None
        with _LEDGER_LOCK:
            later = sorted((a for a in _LEDGER if a.seq > self.seq and not a.undone), key=lambda a: a.seq)
        for a in reversed(later):  # the most recent first: that is the one to undo next
            if mine & a.touches:
                if a.undoable:
                    return (f"the later {a._label()} changed the same state and is still applied; "
                            "undo it first (undo goes back in the reverse order of what touched the same state)")
                why = "its undo state was released to bound memory" if a._released else "it cannot be undone"
                return (f"the later {a._label()} changed the same state and {why}, so this can no longer be "
                        "undone exactly")
        return None

    def undo(self) -> None:
        """Restore what this intervention changed.

        Raises ``RuntimeError`` (changing nothing) if it was already undone, if its undo state was
        released to bound memory, or if a later applied intervention changed the same state (undo
        that one first); see :meth:`undo_blocker`.
        """
        reason = self.undo_blocker()
        if reason is not None:
            raise RuntimeError(f"cannot undo {self.name}: {reason}")
        assert self._undo is not None
        self._undo()
        self.undone = True
        self._undo = None  # what it captured is not needed any more
        with _LEDGER_LOCK:
            _LEDGER.discard(self)
        if self._recorded and self._probe is not None and not in_action():
            self._probe.history.add_event(
                "undo", f"undo {self.name.replace('_', ' ')}", step=self._probe.step_count,
                action=self.name, undid_event=self.event_id,
            )

    def __repr__(self) -> str:
        state = "undone" if self.undone else "applied"
        return f"<Applied {self.name} ({state}): {self.message or self.params}>"

    def _release(self) -> None:
        if self._undo is None or self.undone:
            return
        self._undo = None
        self._released = True
        for cb in list(self.on_release):
            with contextlib.suppress(Exception):
                cb()


def absorb(part: Applied) -> Callable[[], None]:
    """Make ``part`` a piece of a composite action (``recover``: restore the weights, then apply a
    fix): it leaves the undo ledger and the heavy-capture list -- the composite's own record
    answers for it (its touches, its release) -- and its undo function is returned for the
    composite's undo to call.  ``part`` itself then reads as not undoable."""
    fn = part._undo
    with _LEDGER_LOCK:
        _LEDGER.discard(part)
        keep = [r for r in _HEAVY if r() is not part]
        _HEAVY.clear()
        _HEAVY.extend(keep)
    part._undo = None

    def undo() -> None:
        if fn is not None:
            fn()

    return undo


def _bound_heavy() -> None:
    """Release the oldest heavy undo captures beyond :data:`MAX_HEAVY_UNDO`."""
    with _LEDGER_LOCK:
        live = [r for r in _HEAVY if (a := r()) is not None and a.undoable]
        n_old = max(0, len(live) - max(0, MAX_HEAVY_UNDO))
        old = [a for r in live[:n_old] if (a := r()) is not None]
        _HEAVY.clear()
        _HEAVY.extend(live[n_old:])
    for a in old:
        a._release()


def in_action() -> bool:
    """True while an action queued on a probe is being applied (the queue records the event)."""
    return bool(getattr(_LOCAL, "action", 0))


@contextlib.contextmanager
def action_context() -> Iterator[None]:
    _LOCAL.action = getattr(_LOCAL, "action", 0) + 1
    try:
        yield
    finally:
        _LOCAL.action -= 1


def owner_alive(owner: RunContext | None) -> bool:
    """Hooks added through a probe live as long as the probe stays attached."""
    return owner is None or bool(owner.is_attached)


def report_error(owner: RunContext | None, where: str, exc: BaseException, seen: set[str]) -> None:
    """Record an error raised inside a hook of ours; the training loop never sees it."""
    key = f"{where}:{type(exc).__name__}"
    if owner is not None and len(owner.errors) < 1000:
        owner.errors.append(ProbeError(f"intervention {where}", owner.step_count, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    if key not in seen:
        seen.add(key)
        warnings.warn(
            f"trainscope: the {where} intervention raised {type(exc).__name__}: {exc}; it was skipped "
            "for this step and training continues",
            RuntimeWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------------------- applying a plan
def commit(
    model: nn.Module,
    plan: list[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer | None,
    name: str,
    params: dict[str, Any],
    info: list[dict[str, Any]],
    probe: RunContext | None,
    *,
    warn_symmetry: bool = False,
    saved: list[tuple[Tensor, Tensor]] | None = None,
    extra: dict[str, Any] | None = None,
    note: str = "",
) -> Applied:
    """Copy planned values in (all or nothing), reset their optimizer state; undoable.

    The general "apply a plan of new tensor values" primitive of the weight-changing interventions
    (``reinit_``, the data-dependent inits, Fixup): ``plan`` pairs each tensor with its new value.
    """
    with torch.no_grad():
        if saved is None:
            saved = [(w, w.detach().clone()) for w, _ in plan]
        states: dict[int, tuple[Tensor, Any]] = {}
        try:
            for w, new in plan:
                w.copy_(new)
            if optimizer is not None:
                for w, _ in plan:
                    if w in optimizer.state:
                        states[id(w)] = (w, optimizer.state.pop(w))
        except BaseException:
            for w, old in saved:
                w.copy_(old)
            for w, st in states.values():
                optimizer.state[w] = st  # type: ignore[union-attr]
            raise

    def undo() -> None:
        with torch.no_grad():
            for w, old in saved:  # type: ignore[union-attr]
                w.copy_(old)
        if optimizer is not None:
            for w, st in states.values():
                optimizer.state[w] = st

    msg = f"{params['scheme']} on {len(info)} layer(s)"
    if optimizer is not None:
        msg += f"; optimizer state reset for {len(states)} tensor(s)"
    if warn_symmetry:
        warning = (f"{params['scheme']} init makes every unit of a layer identical: they get identical "
                   "gradients and stay identical (the symmetry problem); use it to demonstrate, not to train")
        warnings.warn(f"trainscope: {warning}", UserWarning, stacklevel=3)
        msg += f". Warning: {warning}"
    if note:
        msg += f"; note: {note}"
    details: dict[str, Any] = {"layers": info, **(extra or {})}
    touched = [w for w, _ in plan]
    touches = tensor_keys(touched) | (opt_state_keys(optimizer, touched) if optimizer is not None else set())
    return Applied(name, params, undo, message=msg, details=details, probe=probe, touches=touches, heavy=True)


# ---------------------------------------------------------------------------- parameter checks
def as_float(name: str, v: Any, *, lo: float | None = None, hi: float | None = None,
             lo_open: bool = False, hi_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__} {v!r}")
    x = float(v)
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number, got {x}")
    if lo is not None and (x < lo or (lo_open and x == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo:g}, got {x:g}")
    if hi is not None and (x > hi or (hi_open and x == hi)):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi:g}, got {x:g}")
    return x


def as_int(name: str, v: Any, *, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(v).__name__} {v!r}")
    x = int(v)
    if lo is not None and x < lo:
        raise ValueError(f"{name} must be >= {lo}, got {_short_int(x)}")
    if hi is not None and x > hi:
        raise ValueError(f"{name} must be <= {hi}, got {_short_int(x)}")
    return x


def _short_int(x: int) -> str:
    """An integer for a message: a 400-digit one is written as such, not in full."""
    if abs(x) < 10**15:
        return str(x)
    digits = len(str(abs(x))) if abs(x) < 10**4300 else None  # str() of huge ints is refused past 4300 digits
    return f"a {digits}-digit number" if digits else "a huge number"


def as_choice(name: str, v: Any, choices: Sequence[str]) -> str:
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {v!r}")
    return v


def as_names(name: str, v: Any, *, allow_all: bool = True) -> list[str] | None:
    """``None`` / ``"all"`` -> ``None`` (everything); a name or a list of names -> list."""
    if v is None or (allow_all and v == "all"):
        return None
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(s, str) for s in v):
        alt = " or 'all'" if allow_all else ""
        raise TypeError(f"{name} must be a module name or a list of module names{alt}; got {v!r}")
    if not v:
        raise ValueError(f"{name} is empty: name at least one module (see model.named_modules())")
    return list(dict.fromkeys(v))


def validate_params(action: str, schema: Mapping[str, Mapping[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``params`` against a UI schema: unknown names, types, ranges and choices.

    Returns the cleaned parameters with defaults filled in.  ``"required": True`` entries must be
    given; ``"nullable": True`` ones accept ``None``.  Ranges are inclusive unless
    ``"min_open"`` / ``"max_open"`` is set.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"{action} takes keyword parameters, got {type(params).__name__}")
    unknown = sorted(set(params) - set(schema))
    if unknown:
        raise ValueError(
            f"{action}: unknown parameter(s) {', '.join(unknown)}; it takes {', '.join(schema) or 'no parameters'}"
        )
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        v = params.get(key)
        if v is None:
            if spec.get("required"):
                raise ValueError(f"{action} needs {key}= ({spec.get('help', spec.get('type'))})")
            v = None if (key in params and spec.get("nullable")) else spec.get("default")
            if v is None:
                out[key] = None
                continue
        t = spec.get("type", "str")
        label = f"{action}: {key}"
        if t == "float":
            out[key] = as_float(label, v, lo=spec.get("min"), hi=spec.get("max"),
                                lo_open=bool(spec.get("min_open")), hi_open=bool(spec.get("max_open")))
        elif t == "int":
            out[key] = as_int(label, v, lo=spec.get("min"), hi=spec.get("max"))
        elif t == "bool":
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{label} must be true or false, got {v!r}")
            out[key] = bool(v)
        elif t == "choice":
            out[key] = as_choice(label, v, spec["choices"])
        elif t == "layers":
            out[key] = as_names(label, v, allow_all=True)
        elif t == "layer":
            if not isinstance(v, str) or not v:
                raise TypeError(f"{label} must be a module name (see model.named_modules()), got {v!r}")
            out[key] = v
        else:
            if not isinstance(v, str):
                raise TypeError(f"{label} must be a string, got {type(v).__name__}")
            out[key] = v
    return out


def resolve_modules(model: nn.Module, names: Iterable[str], what: str = "layers") -> list[tuple[str, nn.Module]]:
    """Look module names up in ``model.named_modules()``; unknown names raise with suggestions."""
    table = dict(model.named_modules())
    out: list[tuple[str, nn.Module]] = []
    for n in names:
        if n not in table:
            import difflib

            close = difflib.get_close_matches(n, [k for k in table if k], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            avail = ", ".join(k for k in list(table)[1:13] if k)
            raise ValueError(f"{what}: no module named {n!r} in the model{hint} (modules: {avail}...)")
        out.append((n, table[n]))
    return out


def set_group_value(group: dict[str, Any], key: str, value: float) -> None:
    """Set a hyper-parameter in a param group, in place when it is a tensor (capturable / fused)."""
    cur = group.get(key)
    if isinstance(cur, Tensor):
        cur.fill_(value)
    else:
        group[key] = value


def group_value(group: Mapping[str, Any], key: str) -> float:
    v = group[key]
    return float(v) if not isinstance(v, Tensor) else float(v.detach().cpu())


def momentum_key(group: Mapping[str, Any]) -> str | None:
    if "betas" in group:
        return "betas"
    if "momentum" in group:
        return "momentum"
    return None

"""Batch size instead of learning-rate decay: gradient accumulation applied live.

Smith, Kindermans, Ying & Le (2017), *Don't decay the learning rate, increase the batch size*: the
noise scale of SGD is about ``lr * N / B``, so growing the batch ``B`` by a factor at the points
where a step schedule would divide the learning rate by that factor follows the same training
curve, in fewer parameter updates.  The user's loop keeps its batch size; trainscope grows the
*effective* batch by accumulating the gradients of ``k`` consecutive batches:

* ``accumulate_(optimizer, k)``: from now on ``optimizer.step()`` really steps only at every
  ``k``-th call.  The calls in between return at once (with a closure, the closure is still
  evaluated: its forward / backward is the micro-batch), the ``zero_grad()`` calls in between do
  nothing, so the gradients of the ``k`` micro-batches add up; just before the real step they are
  divided by ``k``: the step sees the mean gradient over ``k x B`` examples, at the same learning
  rate.  ``k = 1`` switches it off.
* ``batch_growth_(optimizer, factor=2, every=N | milestones=[...], max_k=...)``: a schedule of
  ``k``: ``k0 * factor ** (milestones passed)`` (at most ``max_k``), counted from when it is applied in the loop's
  batches (``unit="batches"``: the data seen, as the paper's epochs; a milestone is taken at the
  first real step on or after it) or in real optimizer steps (``unit="steps"``).

How it is done: ``step`` and ``zero_grad`` of *this optimizer instance* are replaced by bound
methods (the class is untouched; a torch LR scheduler created before or after keeps working).  The
optimizer's step hooks -- the probe's boundary, trainscope's live schedules, clipping and L1 --
fire only on real steps, so **the probe counts real optimizer steps** (``probe.step_count``) over
the accumulated micro-batches, and a request made meanwhile waits for the next real step.  A
trainscope LR schedule's ``t`` counts real steps too; a torch ``lr_scheduler`` stepped in the
user's loop still counts the loop's iterations.  Undo (or ``k`` back to 1 with no schedule) puts
the plain methods back exactly (the instance ``__dict__`` as it was).  (A torch scheduler created
*before* the accumulation and not stepped yet warns once at its first ``step()`` that
``optimizer.step`` was overridden; harmless.)  Accumulation requested through a probe ends with
it: after ``probe.detach()`` the next ``step()`` is real (the micro-batches accumulated so far
included and averaged) and the plain methods are put back.  While the LR finder runs
(it suspends trainscope's LR control, :func:`~trainscope.interventions._control.suspended`) every
call passes straight through, so its sweep is the same as without accumulation; inside
:func:`passthrough` too.

Through a probe, ``accumulate`` / ``batch_schedule`` and their undo apply at a real step, where
nothing is pending.  A plain ``applied.undo()`` between real steps leaves the micro-batches
accumulated so far in ``.grad`` (a loop that calls ``zero_grad()`` before its forward discards them).

Not supported: ``torch.optim.LBFGS`` (its closure is re-evaluated inside the step; refused), and
AMP's ``GradScaler.step(optimizer)`` (it unscales the gradients at every call, including the
swallowed ones: the usual recipe is to call ``scaler.step`` only every ``k``-th batch yourself).
"""

from __future__ import annotations

import contextlib
import itertools
import types
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from ._base import Applied, as_float, as_int, opt_keys, owner_alive, report_error, validate_params
from ._control import controller
from ._spec import action

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["Accumulator", "accumulate_", "accumulator", "batch_growth_", "passthrough"]

MAX_K = 4096
"""Largest accumulation factor accepted (4096 micro-batches per real step)."""

ACCUMULATE_SCHEMA: dict[str, dict[str, Any]] = {
    "steps": {"type": "int", "min": 1, "max": MAX_K, "default": 2, "required": True,
              "help": "micro-batches per optimizer step (the effective batch is this many times larger; 1 = off)"},
}
GROWTH_SCHEMA: dict[str, dict[str, Any]] = {
    "factor": {"type": "int", "min": 2, "max": 64, "default": 2, "help": "multiply the effective batch by this at each milestone"},
    "every": {"type": "int", "min": 1, "max": 10**9, "nullable": True, "default": 1000,
              "help": "grow every this many batches (or steps, see unit); or give milestones"},
    "milestones": {"type": "str", "nullable": True, "default": None,
                   "help": "comma-separated batch (or step) counts at which to grow, e.g. 300,600 (instead of every)"},
    "max_k": {"type": "int", "min": 1, "max": MAX_K, "default": 16, "help": "largest accumulation factor (memory is unchanged; time per step grows)"},
    "start": {"type": "int", "min": 1, "max": MAX_K, "default": 1, "help": "accumulation factor before the first milestone"},
    "unit": {"type": "choice", "choices": ["batches", "steps"], "default": "batches",
             "help": "count milestones in the loop's batches (data seen, as the paper's epochs) or in real optimizer steps"},
}
_STATE = ("accumulate",)


# ---------------------------------------------------------------------------- the wrapper
class Accumulator:
    """Gradient accumulation on one optimizer (see the module docstring).

    Attributes: ``k`` (micro-batches per real step now), ``micro`` (swallowed calls since the last
    real step), ``batches`` (calls counted while active), ``real_steps`` (real steps while active),
    ``schedule`` (``None`` or ``fn(batches, real_steps) -> k``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self._opt = weakref.ref(optimizer)
        self.k = 1
        self.schedule: Callable[[int, int], int] | None = None
        self.schedule_params: dict[str, Any] | None = None
        self.owner: RunContext | None = None
        self.micro = 0
        self.batches = 0
        self.real_steps = 0
        self.bypass = 0
        self.installed = False
        self._saved: dict[str, tuple[bool, Any]] = {}
        self._mine: dict[str, Any] = {}
        self._seen: set[str] = set()

    # -------------------------------------------------------------- install / remove
    @property
    def active(self) -> bool:
        return self.k > 1 or self.schedule is not None

    def sync(self) -> None:
        """Install the wrappers when active, put the plain methods back when not."""
        opt = self._opt()
        if opt is None:
            return
        if self.active and not self.installed:
            d = opt.__dict__
            self._saved = {n: (n in d, d.get(n)) for n in ("step", "zero_grad")}
            self._mine = {"step": types.MethodType(_step, opt), "zero_grad": types.MethodType(_zero_grad, opt)}
            d.update(self._mine)
            self.installed = True
        elif not self.active and self.installed:
            d = opt.__dict__
            for n, mine in self._mine.items():
                cur = d.get(n)
                if getattr(cur, "__func__", None) is mine.__func__ and getattr(cur, "__self__", None) is opt:
                    had, old = self._saved[n]
                    if had:
                        d[n] = old
                    else:
                        d.pop(n, None)
                # else: something wrapped ours since (a torch LR scheduler created later); ours stays
                # underneath as a pass-through (inactive) so that wrapper keeps working
            self._mine = {}
            self.installed = False
            self.micro = 0

    def _inner(self, opt: torch.optim.Optimizer, name: str) -> Callable[..., Any]:
        """What ``name`` did before: the class's method (looked up now, so a switched optimizer's
        class is used), or the instance attribute that was there (a torch scheduler's step
        wrapper is re-done on the current class; another wrapper is called as it is)."""
        had, old = self._saved.get(name, (False, None))
        if had and old is not None:
            if name == "step" and getattr(old, "_wrapped_by_lr_sched", False):
                def sched_step(*args: Any, **kwargs: Any) -> Any:
                    opt._opt_called = True  # type: ignore[attr-defined]  # what torch's wrapper records
                    return type(opt).step(opt, *args, **kwargs)
                return sched_step
            return old  # type: ignore[no-any-return]
        return getattr(type(opt), name).__get__(opt, type(opt))  # type: ignore[no-any-return]

    def _passing(self, opt: torch.optim.Optimizer) -> bool:
        if not self.active or self.bypass:
            return True
        ctl = controller(opt, create=False)
        return ctl is not None and ctl.suspended > 0  # the LR finder's sweep: every step is real

    # -------------------------------------------------------------- the calls
    def step(self, opt: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        inner = self._inner(opt, "step")
        if self._passing(opt):
            return inner(*args, **kwargs)
        if getattr(self._saved.get("step", (False, None))[1], "_wrapped_by_lr_sched", False):
            opt._opt_called = True  # type: ignore[attr-defined]  # the scheduler sees the loop's call
        self.micro += 1
        self.batches += 1
        if not owner_alive(self.owner):  # applied through a probe that was detached since: this step ends it
            n, self.micro = self.micro, 0
            if n > 1:
                self._average(opt, n)
            self.k, self.schedule, self.schedule_params, self.owner = 1, None, None, None
            self.sync()
            return inner(*args, **kwargs)
        if self.micro < self.k:
            closure = args[0] if args else kwargs.get("closure")
            if closure is not None:
                with torch.enable_grad():
                    return closure()
            return None
        n, self.micro = self.micro, 0
        if n > 1:
            self._average(opt, n)
        try:
            return inner(*args, **kwargs)
        finally:
            self.real_steps += 1
            self._advance()

    def zero_grad(self, opt: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.micro > 0 and not self._passing(opt):
            return None  # inside an accumulation: keep the micro-batches' gradients
        return self._inner(opt, "zero_grad")(*args, **kwargs)

    def _average(self, opt: torch.optim.Optimizer, n: int) -> None:
        with torch.no_grad():
            for g in opt.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        p.grad.div_(n)

    def _advance(self) -> None:
        if self.schedule is None:
            return
        try:
            k = int(self.schedule(self.batches, self.real_steps))
        except Exception as e:
            report_error(self.owner, "batch_growth", e, self._seen)
            return
        if k != self.k:
            old, self.k = self.k, k
            owner = self.owner
            if owner is not None and owner.is_attached:
                with contextlib.suppress(Exception):
                    owner.history.add_event("intervention", f"effective batch x{k} (batch schedule)",
                                            step=owner.step_count, action="batch_schedule", source="schedule",
                                            undoable=False, accumulate_from=old, accumulate_to=k,
                                            batches=self.batches)

    def config(self) -> tuple[int, Callable[[int, int], int] | None, dict[str, Any] | None, RunContext | None, int, int]:
        return self.k, self.schedule, self.schedule_params, self.owner, self.batches, self.real_steps

    def restore(self, cfg: tuple[int, Callable[[int, int], int] | None, dict[str, Any] | None, RunContext | None, int, int]) -> None:
        self.k, self.schedule, self.schedule_params, self.owner, self.batches, self.real_steps = cfg
        self.sync()


def _step(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
    acc = _ACC.get(self)
    if acc is None:  # a copy of the optimizer's __dict__ (switch_optimizer's undo): plain step
        return type(self).step(self, *args, **kwargs)
    return acc.step(self, args, kwargs)


def _zero_grad(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
    acc = _ACC.get(self)
    if acc is None:
        return type(self).zero_grad(self, *args, **kwargs)
    return acc.zero_grad(self, args, kwargs)


_ACC: weakref.WeakKeyDictionary[torch.optim.Optimizer, Accumulator] = weakref.WeakKeyDictionary()


def accumulator(optimizer: torch.optim.Optimizer) -> Accumulator | None:
    """The gradient accumulation of ``optimizer`` (``None`` if it never had one)."""
    return _ACC.get(optimizer)


@contextlib.contextmanager
def passthrough(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Inside the block every ``step()`` / ``zero_grad()`` of ``optimizer`` is real (for code that
    trains the user's optimizer on the side and restores it, like the LR finder)."""
    acc = _ACC.get(optimizer)
    if acc is None:
        yield
        return
    acc.bypass += 1
    try:
        yield
    finally:
        acc.bypass -= 1


# ---------------------------------------------------------------------------- checks
def check_optimizer(optimizer: Any, action_name: str) -> torch.optim.Optimizer:
    """Refuse what accumulation cannot wrap (raises ``TypeError`` / ``ValueError`` with the reason)."""
    if optimizer is None:
        raise ValueError(f"{action_name} needs the probe to know the optimizer: Probe(model, optimizer, ...)")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"{action_name} needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if isinstance(optimizer, torch.optim.LBFGS):
        raise ValueError(f"{action_name}: LBFGS re-evaluates its closure inside step(), so its steps cannot be "
                         "accumulated; use a first-order optimizer (SGD, Adam...) or a larger batch")
    return optimizer


def parse_milestones(v: Any) -> list[int] | None:
    """``None``, a list of positive integers, or a comma-separated string of them -> increasing list."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, str):
        parts = [s.strip() for s in v.replace(";", ",").split(",") if s.strip()]
        try:
            vals: list[Any] = [int(s) for s in parts]
        except ValueError:
            raise ValueError(f"batch_schedule: milestones must be whole numbers separated by commas, e.g. '300,600'; got {v!r}") from None
    elif isinstance(v, (list, tuple)):
        vals = list(v)
    else:
        raise TypeError(f"batch_schedule: milestones must be a list of integers or a string like '300,600', got {type(v).__name__}")
    out = [as_int("batch_schedule: milestone", x, lo=1, hi=10**9) for x in vals]
    if not out:
        raise ValueError("batch_schedule: milestones is empty; give at least one, or use every=")
    if len(out) > 64:
        raise ValueError(f"batch_schedule: at most 64 milestones, got {len(out)}")
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"batch_schedule: milestones must increase strictly, got {out}")
    return out


def clean_growth(params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``batch_schedule`` parameters (milestones may be a list or a string)."""
    raw = dict(params)
    ms = raw.pop("milestones", None)
    p = validate_params("batch_schedule", {k: v for k, v in GROWTH_SCHEMA.items() if k != "milestones"}, raw)
    p["milestones"] = parse_milestones(ms)
    if p["milestones"] is not None:
        p["every"] = None
    elif p["every"] is None:
        raise ValueError("batch_schedule: give every=N (grow every N batches) or milestones=[...]")
    if p["start"] > p["max_k"]:
        raise ValueError(f"batch_schedule: start ({p['start']}) must be <= max_k ({p['max_k']})")
    return p


def growth_fn(p: dict[str, Any]) -> Callable[[int, int], int]:
    """``fn(batches, real_steps) -> k`` for validated ``batch_schedule`` parameters."""
    factor, k0, kmax, every, ms = p["factor"], p["start"], p["max_k"], p["every"], p["milestones"]
    by_steps = p["unit"] == "steps"

    def fn(batches: int, steps: int) -> int:
        t = steps if by_steps else batches
        n = t // every if every is not None else sum(1 for m in ms if t >= m)
        k = k0
        for _ in range(n):
            k *= factor
            if k >= kmax:
                return int(kmax)
        return int(min(k, kmax))

    return fn


# ---------------------------------------------------------------------------- public functions
def _apply(opt: torch.optim.Optimizer, name: str, params: dict[str, Any], k: int,
           schedule: Callable[[int, int], int] | None, probe: RunContext | None, msg: str) -> Applied:
    acc = _ACC.get(opt)
    if acc is None:
        acc = _ACC[opt] = Accumulator(opt)
    before = acc.config()
    old_k = acc.k
    try:
        acc.k = k
        acc.schedule = schedule
        acc.schedule_params = dict(params) if schedule is not None else None
        acc.owner = probe
        if schedule is not None:
            acc.batches = 0
            acc.real_steps = 0
        acc.sync()
    except BaseException:
        acc.restore(before)
        raise

    def undo() -> None:
        acc.restore(before)

    return Applied(name, params, undo, message=msg, probe=probe, touches=opt_keys(opt, *_STATE),
                   details={"accumulate_before": old_k, "accumulate": k, "effective_batch_factor": k})


def accumulate_(optimizer: torch.optim.Optimizer, k: int, *, probe: RunContext | None = None) -> Applied:
    """Accumulate the gradients of ``k`` micro-batches per real ``optimizer.step()`` (see the
    module docstring); ``k=1`` switches accumulation (and a batch schedule) off.  Undo restores
    what was there before (the plain methods when nothing was)."""
    opt = check_optimizer(optimizer, "accumulate")
    p = validate_params("accumulate", ACCUMULATE_SCHEMA, {"steps": k})
    k = p["steps"]
    msg = (f"effective batch x{k}: optimizer.step() steps every {k} batches (gradients averaged)"
           if k > 1 else "gradient accumulation off: every optimizer.step() steps")
    return _apply(opt, "accumulate", p, k, None, probe, msg)


def batch_growth_(optimizer: torch.optim.Optimizer, factor: int = 2, every: int | None = None, *,
                  milestones: list[int] | str | None = None, max_k: int = 16, start: int = 1, unit: str = "batches",
                  probe: RunContext | None = None) -> Applied:
    """Grow the effective batch live: ``k = start * factor ** (milestones passed)``, at most ``max_k``
    (Smith et al. 2017: instead of dividing the learning rate by ``factor``).  Give ``every=N`` or
    ``milestones=[...]``, counted in the loop's batches (``unit="batches"``) or real steps."""
    opt = check_optimizer(optimizer, "batch_schedule")
    p = clean_growth({"factor": factor, "every": every, "milestones": milestones, "max_k": max_k, "start": start,
                      "unit": unit})
    as_float("batch_schedule: factor", p["factor"], lo=2)
    fn = growth_fn(p)
    k0 = fn(0, 0)
    when = f"every {p['every']} {p['unit']}" if p["every"] is not None else f"at {p['unit']} {p['milestones']}"
    msg = f"effective batch x{k0}, times {p['factor']} {when} (at most x{p['max_k']})"
    return _apply(opt, "batch_schedule", p, k0, fn, probe, msg)


# ---------------------------------------------------------------------------- actions
def _check(ctx: RunContext, p: dict[str, Any]) -> None:
    check_optimizer(ctx.optimizer, "accumulate")


@action("accumulate", label="Accumulate gradients (batch x k)", category="lr", schema=ACCUMULATE_SCHEMA,
        description="Grow the effective batch k-fold: optimizer.step() steps every k batches with the averaged "
                    "gradient (Smith et al. 2017: instead of decaying the LR); 1 = off.",
        check=_check, order=1100)
def _run_accumulate(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return accumulate_(ctx.optimizer, p["steps"], probe=ctx)  # type: ignore[arg-type]


@action("batch_schedule", label="Batch-size schedule", category="lr", schema=GROWTH_SCHEMA,
        description="Multiply the effective batch (gradient accumulation) by `factor` every N batches or at "
                    "milestones, up to max_k: the batch-size alternative to a step LR decay (Smith et al. 2017).",
        check=_check, clean=clean_growth, order=1101)
def _run_batch_schedule(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return batch_growth_(ctx.optimizer, p["factor"], p["every"], milestones=p["milestones"], max_k=p["max_k"],  # type: ignore[arg-type]
                         start=p["start"], unit=p["unit"], probe=ctx)

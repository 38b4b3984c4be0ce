"""Running checks (Python call, dashboard click through the ``run_check`` action, automatic), and
the checklist's state."""

from __future__ import annotations

import time
import traceback
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..actions import Cancelled, register_action
from ..interventions._state import as_batch
from ..run import Batch
from .checks import CHECKS, CheckEnv, CheckResult
from .isolation import isolated
from .items import ITEMS, last_model_change

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["auto_checks", "check_names", "checklist_state", "run_check", "run_checks"]

AUTO_CHECKS: tuple[str, ...] = ("batch_mixing",)
"""Checks the diagnoser runs by itself, once per probe: read-only and about one forward pass."""

_ITEM_CHECK = {i.id: i.check for i in ITEMS if i.check}


def check_names() -> list[str]:
    """The automated checks, by name."""
    return list(CHECKS)


def _resolve(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"check must be a name (str), got {type(name).__name__}")
    if name in CHECKS:
        return name
    if name in _ITEM_CHECK:
        return _ITEM_CHECK[name]  # type: ignore[return-value]
    raise ValueError(f"unknown check {name!r}; checks are: {', '.join(CHECKS)} (checklist item ids with a check work too)")


def _as_batch(batch: Any) -> Batch:
    """The batch forms trainscope accepts everywhere (:func:`~trainscope.interventions._state.as_batch`):
    ``(inputs, target)`` with a tensor, a tuple of positional inputs or a dict of keyword inputs, a
    ``Batch``, a dict with ``inputs`` / ``target``, or inputs alone."""
    return as_batch(batch)


def _probe_batch(probe: RunContext) -> Batch | None:
    for b in reversed(probe.recent_batches):
        return b
    if probe.data is not None:
        try:
            first = next(iter(probe.data))
        except Exception:
            return None
        return _as_batch(first)
    return None


def _env(name: str, model: Any, optimizer: Any, loss_fn: Any, batch: Any, probe: Any) -> CheckEnv:
    from ..run import RunContext

    if isinstance(model, RunContext):
        probe, model = model, None
    if probe is not None:
        model = model if model is not None else probe.model
        optimizer = optimizer if optimizer is not None else probe.optimizer
        loss_fn = loss_fn if loss_fn is not None else probe.loss_fn
    if not isinstance(model, nn.Module):
        raise TypeError(f"run_check needs a model (nn.Module) or a Probe, got {type(model).__name__}")
    spec = CHECKS[name]
    b: Batch | None = None
    if batch is not None:
        b = _as_batch(batch)
    elif probe is not None and spec.needs_batch:
        b = _probe_batch(probe)
        if b is not None and b.target is None and spec.needs_target:
            b = next((x for x in reversed(probe.recent_batches) if x.target is not None), None) or (
                _as_batch(next(iter(probe.data))) if probe.data is not None else b
            )
    if spec.needs_batch and b is None:
        raise ValueError(
            f"{name} needs a batch: pass batch=(inputs, target), give the Probe data=loader, or run one training step first"
        )
    if spec.needs_loss and loss_fn is None:
        raise ValueError(f"{name} needs the loss function: pass loss_fn=..., or create the probe with loss_fn=...")
    if spec.needs_target and (b is None or b.target is None):
        raise ValueError(f"{name} needs the targets: pass batch=(inputs, target) (the probe records them when it has loss_fn)")
    return CheckEnv(model, optimizer, loss_fn, b, probe)


def run_check(
    name: str,
    model: Any = None,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: Any = None,
    batch: Any = None,
    *,
    probe: RunContext | None = None,
    record: bool = True,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    **options: Any,
) -> CheckResult:
    """Run one automated check; the model, optimizer, buffers and RNG states are left bit-identical.

    Parameters
    ----------
    name
        A check (:func:`check_names`: ``loss_at_init``, ``overfit_batch``, ``input_baseline``,
        ``batch_mixing``, ``grad_flow``, ``seed``, ``train_eval_mode``, ``input_stats``,
        ``loss_inputs``) or the id of a checklist item that has one.
    model
        The model, or a :class:`~trainscope.Probe` (then its model, optimizer, loss and latest batch
        are used, and the result is recorded in its history and timeline).
    optimizer, loss_fn
        The user's optimizer (only read) and loss module / function.
    batch
        ``(inputs, target)`` (inputs: a tensor, a tuple of positional inputs or a dict of keyword
        inputs), or inputs alone for checks without a loss.
    record
        With a probe, store the result in ``probe.history.meta["checks"]`` and on the timeline.
    progress, cancel
        For the checks that train (``overfit_batch``, ``input_baseline``): ``progress(done, total)``
        after each iteration, and ``cancel() -> bool`` polled before each; when it returns true the
        check stops, everything is restored exactly, and the result is ``not_run`` with
        ``details["cancelled"] = True`` (not recorded). Run as a dashboard action, both default to
        the action's own: the dashboard shows "Training paused: Overfit one batch 37/200 - Cancel".
    options
        Check options, e.g. ``steps=`` / ``lr=`` for ``overfit_batch``, ``batch_dim=`` for
        ``batch_mixing``.

    Examples
    --------
    >>> trainscope.run_check("overfit_batch", model, optimizer, nn.CrossEntropyLoss(), (x, y))  # doctest: +SKIP
    >>> trainscope.run_check("batch_mixing", probe)                                            # doctest: +SKIP

    An error inside the check does not propagate: the state is restored and the result says
    ``not_run`` with the reason.  Missing inputs (no batch, no loss) raise ``ValueError`` first.
    Call it between training steps; while a loop runs in another thread, use
    ``probe.request("run_check", check=name)``, which runs it at the next step boundary.
    """
    check = _resolve(name)
    env = _env(check, model, optimizer, loss_fn, batch, probe)
    spec = CHECKS[check]
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a function progress(done, total), got {type(progress).__name__}")
    if cancel is not None and not callable(cancel):
        raise TypeError(f"cancel must be a function cancel() -> bool, got {type(cancel).__name__}")
    env.title, env.progress, env.cancel = spec.title, progress, cancel
    t0 = time.perf_counter()
    try:
        with isolated(env.model, env.optimizer, env.probe, values=spec.trains):
            res = spec.fn(env, **options)
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise ValueError(f"{check}: {e}") from None
        res = CheckResult(check, "not_run", f"could not run: {type(e).__name__}: {e}", details={"traceback": traceback.format_exc()})
    except Cancelled as e:
        res = CheckResult(check, "not_run", str(e), details={"cancelled": True})
    except Exception as e:
        res = CheckResult(check, "not_run", f"could not run: {type(e).__name__}: {e}", details={"traceback": traceback.format_exc()})
    res.seconds = time.perf_counter() - t0
    if env.probe is not None:
        res.step = env.probe.step_count
        if record and not res.details.get("cancelled"):
            _record(env.probe, res, event=True)
    return res


def _record(probe: RunContext, res: CheckResult, *, event: bool) -> None:
    d = res.as_dict()
    d.get("details", {}).pop("traceback", None)
    probe.history.meta.setdefault("checks", {})[res.name] = d
    if event:
        probe.history.add_event("check", CHECKS[res.name].title, step=probe.step_count, check=res.name,
                                status=res.status, evidence=res.evidence)


def run_checks(probe: RunContext, names: Iterable[str] | None = None) -> dict[str, CheckResult]:
    """Run several checks on a probe (default: every check whose inputs are available)."""
    out: dict[str, CheckResult] = {}
    for n in names if names is not None else CHECKS:
        try:
            out[n] = run_check(n, probe)
        except ValueError as e:
            out[n] = CheckResult(_resolve(n), "not_run", str(e))
    return out


# -------------------------------------------------------------------- automatic checks
_ATTEMPTED: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def _run_auto(probe: RunContext) -> None:
    done = set((probe.history.meta.get("checks") or {}).keys())
    tried = _ATTEMPTED.setdefault(probe, set())
    for n in AUTO_CHECKS:
        if n in done or n in tried:
            continue
        tried.add(n)
        try:
            run_check(n, probe)
        except ValueError:
            tried.discard(n)  # inputs missing (no batch yet): try again later


def auto_checks(probe: RunContext) -> None:
    """Run the :data:`AUTO_CHECKS` not yet run on this probe: now when called on the training
    thread (or on the main thread before any step boundary was seen), else at the next boundary."""
    from ..diagnostics.diagnoser import on_training_thread

    done = set((probe.history.meta.get("checks") or {}).keys())
    tried = _ATTEMPTED.get(probe, set())
    if not probe.recent_batches or all(n in done or n in tried for n in AUTO_CHECKS):
        return
    on_training_thread(probe, "auto_checks", _run_auto)


# -------------------------------------------------------------------- the action
def _validate(probe: RunContext, params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - {"check"}
    if unknown:
        raise ValueError(f"run_check takes only check=<name>; got {', '.join(sorted(unknown))}")
    name = _resolve(params.get("check"))  # type: ignore[arg-type]
    _env(name, probe, None, None, None, None)  # raises with the reason when inputs are missing
    return {"check": name}


def _apply(probe: RunContext, params: dict[str, Any]) -> tuple[None, dict[str, Any]]:
    res = run_check(params["check"], probe, record=False)
    if res.details.get("cancelled"):
        # nothing recorded: the ticket ends "cancelled at N/M: ..."
        return None, {"message": "everything the check changed is put back, no result recorded"}
    _record(probe, res, event=False)  # the action queue puts it on the timeline itself
    return None, {"message": f"{CHECKS[res.name].title}: {res.status} - {res.evidence}", "status": res.status,
                  "check": res.name, "evidence": res.evidence, "seconds": round(res.seconds, 3)}


def register() -> None:
    """Put ``run_check`` on the action whitelist (called by :func:`trainscope.builtins.register_builtins`)."""
    register_action(
        "run_check",
        validate=_validate,
        apply=_apply,
        label="Run check",
        description="Run an automated checklist check (state restored exactly afterwards).",
        category="checks",
        schema={"check": {"type": "choice", "choices": list(CHECKS), "help": "which check (a checklist item id works too)"}},
    )


# -------------------------------------------------------------------- checklist state
def checklist_state(probe: RunContext | None = None) -> list[dict[str, Any]]:
    """The Tobin / Karpathy checklist with each item's status and evidence.

    Status: the item's check result when it ran (``pass`` / ``warn`` / ``fail`` / ``not_run``),
    else ``warn`` / ``fail`` from related findings at warning / error level, else ``pass`` for
    finding-backed items once training has run 50 steps without such findings, ``not_run`` for
    automated items not run yet, ``manual`` for items trainscope cannot judge.
    """
    findings: list[Any] = []
    checks: dict[str, Any] = {}
    steps = 0
    if probe is not None:
        from ..diagnostics import diagnose_probe

        findings = list(diagnose_probe(probe, "warning", active_only=True))
        checks = probe.history.meta.get("checks") or {}
        steps = probe.step_count
    change = last_model_change(probe.history) if probe is not None else None
    out = []
    for it in ITEMS:
        related = [f for f in findings if f.label in it.labels]
        res = checks.get(it.check) if it.check else None
        if res is not None and change is not None and int(res.get("step") or 0) < change[0]:
            res = None  # stale: ran on the model as it was before the change (issue 13)
        if res is not None:
            status, evidence = res["status"], res["evidence"]
            if related and status == "pass":
                status = "warn"
                evidence += "; but: " + "; ".join(f.title for f in related)
        elif related:
            status = "fail" if any(f.severity == "error" for f in related) else "warn"
            evidence = "; ".join(f"{f.title}: {f.evidence}" for f in related)
        elif it.check:
            status, evidence = "not_run", f"run the `{it.check}` check"
        elif it.labels and steps - (change[0] if change is not None else 0) >= 50:
            status, evidence = "pass", f"no {', '.join(it.labels)} finding after {steps} steps"
        elif it.labels:
            status, evidence = "not_run", "judged from the run's statistics once training has run"
        else:
            status, evidence = "manual", "trainscope cannot judge this for you"
        out.append({"id": it.id, "source": it.source, "title": it.title, "meaning": it.meaning, "status": status,
                    "evidence": evidence, "automated": it.check is not None, "check": it.check})
    return out

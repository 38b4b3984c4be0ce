"""Early stopping (smoothing + patience, restoring the best weights) and snapshot ensembles.

**Early stopping** watches a metric -- with a probe, the scalar ``monitor`` of its history (by
default ``val_loss``, which the probe logs whenever the loss module runs in eval / no-grad mode);
without one, the values you pass to ``stopper.observe(value)``.  Each value is smoothed by a
running median of ``smoothing`` values, so **one noisy epoch can neither stop training nor set a
falsely good "best"**; ``patience`` observations without an improvement larger than ``min_delta``
stop the run.  Then, at that step boundary:

* the best weights (parameters and buffers, kept on the CPU when the best was observed) are
  written back into the model (``restore_best``);
* the learning rate is held at 0 (``freeze``) so a loop that does not check keeps the best
  weights -- check ``stopper.stopped`` or ``trainscope.interventions.should_stop(model)`` in your
  loop to leave it;
* an ``early_stop`` event goes on the timeline.

With a probe, values reach the history at step boundaries, so the weights kept as "best" are those
of the first boundary after the value was logged (usually one step after the evaluation).  Call
``stopper.observe(value)`` right after your evaluation for the exact weights.

**Snapshot ensembles** (Huang et al. 2017): SGDR with a snapshot of the weights at the end of
every cycle; see :class:`~trainscope.interventions.snapshots.SnapshotEnsemble`.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ._base import Applied, model_keys, opt_keys, validate_params
from ._control import controller
from ._monitor import Monitor, ScalarFeed
from ._spec import action, need_optimizer
from ._state import ModelCapture
from .schedule import SCHEDULE_SCHEMA, _check_optimizer, _install, check_schedule
from .snapshots import Snapshot, SnapshotEnsemble, snapshots

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["EarlyStopping", "early_stopping_", "should_stop", "snapshot_ensemble_"]

EARLY_SCHEMA: dict[str, dict[str, Any]] = {
    "monitor": {"type": "str", "default": "val_loss", "help": "scalar to watch (val_loss, loss, acc...)"},
    "mode": {"type": "choice", "choices": ["min", "max"], "default": "min", "help": "min for a loss, max for an accuracy"},
    "patience": {"type": "int", "min": 1, "max": 100000, "default": 5, "help": "observations without improvement"},
    "smoothing": {"type": "int", "min": 1, "max": 10000, "default": 3, "help": "running-median window (1 = raw values)"},
    "min_delta": {"type": "float", "min": 0.0, "default": 0.0, "help": "smallest change that counts as better"},
    "restore_best": {"type": "bool", "default": True, "help": "write the best weights back when stopping"},
    "freeze": {"type": "bool", "default": True, "help": "hold the learning rate at 0 after stopping"},
}
ENSEMBLE_SCHEMA: dict[str, dict[str, Any]] = {
    "T_0": {**SCHEDULE_SCHEMA["T_0"], "default": 500},
    "T_mult": SCHEDULE_SCHEMA["T_mult"],
    "eta_min": SCHEDULE_SCHEMA["eta_min"],
    "lr": {**SCHEDULE_SCHEMA["lr"], "help": "lr at the start of every cycle (default: the current one)"},
    "max_snapshots": {"type": "int", "min": 1, "max": 50, "default": 5, "help": "members kept (the latest)"},
    "eval_batches": {"type": "int", "min": 0, "max": 1000, "default": 4, "help": "batches of probe.data to evaluate on"},
}

_STOPPERS: weakref.WeakKeyDictionary[nn.Module, list[EarlyStopping]] = weakref.WeakKeyDictionary()


class EarlyStopping:
    """See the module docstring.  ``observe(value)`` returns ``True`` when this value stops the run."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, monitor: str = "val_loss",
                 mode: str = "min", patience: int = 5, smoothing: int = 3, min_delta: float = 0.0,
                 restore_best: bool = True, freeze: bool = True, probe: RunContext | None = None) -> None:
        # model, optimizer and probe are held weakly: the stopper lives in a store keyed weakly by the
        # model (and in the optimizer's controller while it freezes), which must not keep them alive
        self._model = weakref.ref(model)
        self._optimizer = weakref.ref(optimizer) if optimizer is not None else None
        self.name = monitor
        self.restore_best = restore_best
        self.freeze = freeze
        self._probe = weakref.ref(probe) if probe is not None else None
        self.monitor = Monitor(mode=mode, patience=patience, smoothing=smoothing, min_delta=min_delta)
        self.stopped = False
        self.stop_step: int | None = None
        self.best_snapshot: Snapshot | None = None
        self._at_stop: ModelCapture | None = None
        # the feed reads the probe through a proxy: it is only read from the probe's own step hook
        self._feed = ScalarFeed(cast("RunContext", weakref.proxy(probe)), monitor) if probe is not None else None
        self._handle = probe.on_step(self._poll) if probe is not None else None
        self.active = True

    @property
    def model(self) -> nn.Module | None:
        """The watched model (``None`` once it has been freed)."""
        return self._model()

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        return self._optimizer() if self._optimizer is not None else None

    @property
    def probe(self) -> RunContext | None:
        return self._probe() if self._probe is not None else None

    @property
    def best(self) -> float:
        return self.monitor.best

    def observe(self, value: float, step: int | None = None) -> bool:
        model = self.model
        if not self.active or self.stopped or model is None:
            return False
        probe = self.probe
        if step is None and probe is not None:
            step = probe.step_count
        if self.monitor.observe(value, step):
            snap = Snapshot(id="best", label="best", step=step or 0, model=ModelCapture(model, grads=False, device="cpu"),
                            optimizer=None, optimizer_class=None, metric=self.monitor.best)
            self.best_snapshot = snap
            snapshots(model).best = snap
        if self.monitor.exhausted:
            self._stop(model, step)
            return True
        return False

    def _stop(self, model: nn.Module, step: int | None) -> None:
        self.stopped = True
        self.stop_step = step
        if self.restore_best and self.best_snapshot is not None and self.best_snapshot.stale(model) is None:
            self._at_stop = ModelCapture(model, grads=False)
            self.best_snapshot.model.restore(grads=False, modes=False)
        optimizer, probe = self.optimizer, self.probe
        if self.freeze and optimizer is not None:
            ctl = controller(optimizer)
            assert ctl is not None
            ctl.freeze(self, probe)
        if probe is not None:
            probe.history.add_event(
                "early_stop", f"early stop ({self.name})", step=probe.step_count, monitor=self.name,
                best=self.monitor.best, best_step=self.monitor.best_step,
                restored_best=self._at_stop is not None, frozen=self.freeze and optimizer is not None,
            )

    def _poll(self, probe: RunContext) -> None:
        if self._feed is not None and self.active:
            for _logged_at, v in self._feed.new():
                if self.observe(v, probe.step_count):
                    break

    def close(self) -> None:
        """Stop watching and lift the learning-rate freeze (the weights stay as they are)."""
        self.active = False
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        optimizer = self.optimizer
        if optimizer is not None:
            ctl = controller(optimizer, create=False)
            if ctl is not None:
                ctl.unfreeze(self)


def should_stop(model: nn.Module) -> bool:
    """True once an early stop attached to ``model`` has triggered (check it in your loop)."""
    return any(s.active and s.stopped for s in _STOPPERS.get(model, []))


def early_stopping_(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                    probe: RunContext | None = None, **options: Any) -> Applied:
    """Start early stopping (options: see :data:`EARLY_SCHEMA`); ``applied.result`` is the
    :class:`EarlyStopping`.  Undo stops watching, lifts the freeze and, if it had stopped, puts
    back the weights of the moment it stopped."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"early_stopping_ needs an nn.Module, got {type(model).__name__}")
    p = validate_params("early_stopping", EARLY_SCHEMA, options)
    if optimizer is None and probe is not None:
        optimizer = probe.optimizer
    stopper = EarlyStopping(model, optimizer, probe=probe, **p)
    _STOPPERS.setdefault(model, []).append(stopper)
    prev_best = snapshots(model).best

    def undo() -> None:
        stopper.close()
        if stopper._at_stop is not None:
            stopper._at_stop.restore(grads=False, modes=False)
        lst = _STOPPERS.get(model, [])
        if stopper in lst:
            lst.remove(stopper)
        if snapshots(model).best is stopper.best_snapshot:
            snapshots(model).best = prev_best

    def touches() -> set[str]:  # the weights only once it stopped and restored the best ones
        keys = opt_keys(optimizer, "freeze") if optimizer is not None else set()
        return keys | (model_keys(model) if stopper._at_stop is not None else set())

    src = f"probe scalar {p['monitor']!r}" if probe is not None else "stopper.observe(value)"
    applied = Applied("early_stopping", p, undo, probe=probe, touches=touches,
                      message=f"early stopping on {src}: patience {p['patience']}, median of {p['smoothing']}")
    applied.result = stopper
    return applied


def snapshot_ensemble_(model: nn.Module, optimizer: torch.optim.Optimizer, *, probe: RunContext | None = None,
                       **options: Any) -> Applied:
    """Run SGDR and keep the weights at the end of every cycle; ``applied.result`` is the
    :class:`SnapshotEnsemble` (``.predict(x)``, ``.evaluate(data)``).  With a probe that has
    ``data``, each new member is evaluated on ``eval_batches`` of it and the result goes on the
    timeline (note: ``probe.data`` is training data; evaluate held-out data yourself)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"snapshot_ensemble_ needs an nn.Module, got {type(model).__name__}")
    opt = _check_optimizer(optimizer)
    p = validate_params("snapshot_ensemble", ENSEMBLE_SCHEMA, options)
    ens = SnapshotEnsemble(model, max_snapshots=p["max_snapshots"], probe=probe)
    sched_opts = {**{k: v.get("default") for k, v in SCHEDULE_SCHEMA.items()}, "kind": "cosine_restarts",
                  "T_0": p["T_0"], "T_mult": p["T_mult"], "eta_min": p["eta_min"], "lr": p["lr"]}
    msg = f"SGDR (T_0={p['T_0']}, T_mult={p['T_mult']}); a member is kept at the end of every cycle"
    applied = _install(opt, sched_opts, probe, "snapshot_ensemble", record_params=p, message=msg)
    sched = applied.result

    def on_cycle_end(cycle: int) -> None:
        step = probe.step_count if probe is not None else sched.t
        ens.add(cycle, step)
        if probe is None:
            return
        data: dict[str, Any] = {"cycle": cycle, "members": len(ens)}
        if probe.data is not None and p["eval_batches"] > 0 and len(ens) >= 1:
            try:
                res = ens.evaluate(probe.data, max_batches=p["eval_batches"])
                data.update(ensemble_loss=res["ensemble"], member_losses=res["members"], on="probe.data (training data)")
                if "ensemble_acc" in res:
                    data.update(ensemble_acc=res["ensemble_acc"], member_accs=res["members_acc"])
            except Exception as e:  # evaluation is a bonus: never break the run for it
                data["eval_error"] = f"{type(e).__name__}: {e}"
        probe.history.add_event("snapshot_ensemble", f"ensemble member {len(ens)}", step=probe.step_count, **data)

    sched.on_cycle_end.append(on_cycle_end)
    applied.result = ens
    ens.schedule = sched
    return applied


# ---------------------------------------------------------------------------- the whitelist entries
@action("early_stopping", label="Early stopping", category="run", schema=EARLY_SCHEMA, order=160,
        description="Stop when the smoothed metric has not improved for `patience` observations; restore the best weights.")
def _run_early_stopping(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return early_stopping_(ctx.model, ctx.optimizer, probe=ctx, **p)


@action("snapshot_ensemble", label="Snapshot ensemble", category="run", schema=ENSEMBLE_SCHEMA, order=170,
        description="SGDR with a snapshot at the end of every cycle; the averaged prediction is evaluated.",
        check=check_schedule("snapshot_ensemble"))
def _run_snapshot_ensemble(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return snapshot_ensemble_(ctx.model, need_optimizer(ctx, "snapshot_ensemble"), probe=ctx, **p)

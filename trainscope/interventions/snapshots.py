"""Snapshots and roll back; snapshot ensembles (Huang et al. 2017).

A :class:`Snapshot` is an exact copy of the model's parameters and buffers (BatchNorm statistics
included) and, unless ``weights_only``, of the optimizer (hyper-parameters and state), kept on the
CPU by default.  Each model has a bounded :class:`SnapshotStore` (``snapshots(model)``; the oldest is
dropped beyond ``max_snapshots``) plus one ``best`` slot that early stopping fills.
``rollback_`` writes a snapshot back *into the same tensors* (the optimizer and the user's
references stay valid) and is undoable.

A snapshot ensemble runs SGDR (cosine with warm restarts) and keeps the weights reached at the end
of every cycle; :meth:`SnapshotEnsemble.predict` averages the members' predictions (softmax
probabilities by default) without touching the model (``torch.func.functional_call``), and
:meth:`SnapshotEnsemble.evaluate` compares the ensemble with each member on some data.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import ALL_OPT_SETTINGS, Applied, opt_keys, opt_state_keys, tensor_keys, validate_params
from ._spec import action
from ._state import ModelCapture, OptimizerCapture, split_batch

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["Snapshot", "SnapshotEnsemble", "SnapshotStore", "rollback_", "snapshot_", "snapshots"]

SNAPSHOT_SCHEMA: dict[str, dict[str, Any]] = {
    "label": {"type": "str", "default": "", "help": "a name for it"},
    "weights_only": {"type": "bool", "default": False, "help": "do not keep the optimizer state"},
}
ROLLBACK_SCHEMA: dict[str, dict[str, Any]] = {
    "to": {"type": "str", "default": "last", "help": "snapshot id, 'last' or 'best'"},
    "weights_only": {"type": "bool", "default": False, "help": "restore the weights, keep the optimizer as it is"},
}


@dataclass
class Snapshot:
    """One saved point of a run."""

    id: str
    label: str
    step: int
    model: ModelCapture
    optimizer: OptimizerCapture | None
    optimizer_class: str | None
    metric: float | None = None
    time: float = field(default_factory=time.time)

    @property
    def nbytes(self) -> int:
        return self.model.nbytes

    def stale(self, model: nn.Module) -> str | None:
        """Why writing this snapshot back into ``model`` would not be exact (``None`` if fine)."""
        if self.model.model is not model:
            return "the snapshot belongs to another model"
        for ref, name, orig, _ in self.model.tensors:
            mod = ref()
            if mod is None:
                return f"the model changed since the snapshot (a module holding {name!r} was freed)"
            store = mod._parameters if name in mod._parameters else mod._buffers
            if store.get(name) is not orig:
                return f"the model changed since the snapshot ({type(mod).__name__}.{name} was replaced)"
        return None


class SnapshotStore:
    """Bounded list of snapshots of one model, plus the ``best`` slot."""

    def __init__(self, max_snapshots: int = 5) -> None:
        self.max_snapshots = max_snapshots
        self.items: list[Snapshot] = []
        self.best: Snapshot | None = None
        self._ids = itertools.count(1)

    def new_id(self) -> str:
        return f"s{next(self._ids)}"

    def add(self, snap: Snapshot) -> None:
        self.items.append(snap)
        del self.items[: max(0, len(self.items) - self.max_snapshots)]

    def get(self, to: str) -> Snapshot:
        if to == "best":
            if self.best is None:
                raise ValueError("rollback: no 'best' snapshot yet (early stopping keeps one once it has seen the metric)")
            return self.best
        if to == "last":
            if not self.items:
                raise ValueError("rollback: no snapshot yet; take one first (snapshot action / snapshot_(model))")
            return self.items[-1]
        for s in self.items:
            if s.id == to or (s.label and s.label == to):
                return s
        have = ", ".join(s.id + (f" ({s.label})" if s.label else "") for s in self.items) or "none"
        raise ValueError(f"rollback: no snapshot {to!r}; available: {have}, or 'last' / 'best'")

    def __len__(self) -> int:
        return len(self.items)


_STORES: weakref.WeakKeyDictionary[nn.Module, SnapshotStore] = weakref.WeakKeyDictionary()


def snapshots(model: nn.Module) -> SnapshotStore:
    """The snapshot store of ``model`` (created empty on first use)."""
    st = _STORES.get(model)
    if st is None:
        st = _STORES[model] = SnapshotStore()
    return st


def take_snapshot(model: nn.Module, optimizer: torch.optim.Optimizer | None, *, label: str = "", step: int = 0,
                  metric: float | None = None, device: str | None = "cpu", sid: str | None = None) -> Snapshot:
    store = snapshots(model)
    return Snapshot(
        id=sid or store.new_id(), label=label, step=step,
        model=ModelCapture(model, grads=False, device=device),
        optimizer=OptimizerCapture(optimizer, device=device) if optimizer is not None else None,
        optimizer_class=type(optimizer).__name__ if optimizer is not None else None, metric=metric,
    )


def snapshot_(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, label: str = "",
              weights_only: bool = False, probe: RunContext | None = None) -> Applied:
    """Save the model (and optimizer) now; ``applied.result`` is the :class:`Snapshot`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"snapshot_ needs an nn.Module, got {type(model).__name__}")
    p = validate_params("snapshot", SNAPSHOT_SCHEMA, {"label": label, "weights_only": weights_only})
    if optimizer is None and probe is not None and not p["weights_only"]:
        optimizer = probe.optimizer
    store = snapshots(model)
    if p["label"] in ("best", "last"):
        raise ValueError("snapshot: 'best' and 'last' are reserved names; choose another label")
    snap = take_snapshot(model, None if p["weights_only"] else optimizer, label=p["label"],
                         step=probe.step_count if probe is not None else 0)
    store.add(snap)
    ref = weakref.ref(snap)  # the store bounds how many snapshots live; the request must not pin one

    def undo() -> None:
        s = ref()
        if s is not None and any(x is s for x in store.items):
            store.items[:] = [x for x in store.items if x is not s]

    mb = snap.nbytes / 2**20
    applied = Applied("snapshot", p, undo, message=f"snapshot {snap.id} ({mb:.1f} MiB, {len(store)} kept)",
                      details={"snapshot": snap.id, "mbytes": round(mb, 2)}, probe=probe)
    applied.keep_result_weakly(snap)  # ``applied.result`` is the Snapshot while the store keeps it
    return applied


def check_rollback(model: nn.Module, optimizer: torch.optim.Optimizer | None, to: str, weights_only: bool) -> Snapshot:
    """The snapshot ``to`` if it can be written back exactly; raises ``ValueError`` saying why not."""
    snap = snapshots(model).get(to)
    why = snap.stale(model)
    if why:
        raise ValueError(f"rollback: {why}; take a new snapshot")
    if snap.optimizer is not None and not weights_only:
        if optimizer is not None and snap.optimizer.optimizer is not optimizer:
            raise ValueError("rollback: the snapshot was taken with another optimizer object; pass weights_only=True")
        why = snap.optimizer.compatible()
        if why:
            raise ValueError(f"rollback: {why} since the snapshot; switch back first or pass weights_only=True")
    return snap


def rollback_(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, to: str = "last", *,
              weights_only: bool = False, probe: RunContext | None = None) -> Applied:
    """Write snapshot ``to`` (an id, a label, ``"last"`` or ``"best"``) back into the model
    (and the optimizer, unless ``weights_only`` or the snapshot has none).  Undoable."""
    p = validate_params("rollback", ROLLBACK_SCHEMA, {"to": to, "weights_only": weights_only})
    if optimizer is None and probe is not None:
        optimizer = probe.optimizer
    snap = check_rollback(model, optimizer, p["to"], p["weights_only"])
    with_opt = snap.optimizer is not None and not p["weights_only"]
    before_m = ModelCapture(model, grads=False)
    before_o = OptimizerCapture(snap.optimizer.optimizer) if with_opt and snap.optimizer is not None else None
    try:
        snap.model.restore(grads=False, modes=False)
        if before_o is not None and snap.optimizer is not None:
            snap.optimizer.restore()
    except BaseException:
        before_m.restore(grads=False, modes=False)
        if before_o is not None:
            before_o.restore()
        raise

    def undo() -> None:
        before_m.restore(grads=False, modes=False)
        if before_o is not None:
            before_o.restore()

    what = "weights and optimizer" if with_opt else "weights"
    touches = tensor_keys(orig for _, _, orig, _ in before_m.tensors)
    if before_o is not None:
        opt_obj = before_o.optimizer
        touches |= opt_keys(opt_obj, *ALL_OPT_SETTINGS) | opt_state_keys(opt_obj)
    return Applied("rollback", p, undo, message=f"rolled back {what} to {snap.id} (step {snap.step})",
                   details={"snapshot": snap.id, "snapshot_step": snap.step, "optimizer": with_opt}, probe=probe,
                   touches=touches, heavy=True)


# ---------------------------------------------------------------------------- snapshot ensembles
class SnapshotEnsemble:
    """Weights kept at the end of warm-restart cycles, and their averaged prediction."""

    def __init__(self, model: nn.Module, *, max_snapshots: int = 5, probe: RunContext | None = None) -> None:
        self.model = model
        self.max_snapshots = max_snapshots
        self.probe = probe
        self.members: list[tuple[int, int, dict[str, Tensor]]] = []  # (cycle, step, tensors)
        self.schedule: Any = None  # the SGDR LiveSchedule that feeds it

    def add(self, cycle: int, step: int) -> None:
        with torch.no_grad():
            tensors = {n: t.detach().clone() for n, t in itertools.chain(self.model.named_parameters(), self.model.named_buffers())}
        self.members.append((cycle, step, tensors))
        del self.members[: max(0, len(self.members) - self.max_snapshots)]

    def __len__(self) -> int:
        return len(self.members)

    def _quiet(self) -> Any:
        return self.probe.paused() if self.probe is not None else contextlib.nullcontext()

    @torch.no_grad()
    def member_outputs(self, *args: Any, **kwargs: Any) -> list[Tensor]:
        """Each member's output on the inputs (eval mode; the model's own weights are untouched)."""
        if not self.members:
            raise ValueError("the ensemble is empty: members are added at the end of each warm-restart cycle")
        modes = [(m, m.training) for m in self.model.modules()]
        outs: list[Tensor] = []
        try:
            self.model.eval()
            with self._quiet():
                for _, _, tensors in self.members:
                    outs.append(torch.func.functional_call(self.model, tensors, args, kwargs))
        finally:
            for m, flag in modes:
                m.training = flag
        return outs

    def predict(self, *args: Any, average: str = "probs", **kwargs: Any) -> Tensor:
        """Averaged prediction: ``"probs"`` (mean of softmax over the last dim) or ``"outputs"``."""
        outs = self.member_outputs(*args, **kwargs)
        if average == "probs":
            return torch.stack([o.float().softmax(-1) for o in outs]).mean(0)
        if average == "outputs":
            return torch.stack([o.float() for o in outs]).mean(0)
        raise ValueError(f"average must be 'probs' or 'outputs', got {average!r}")

    def evaluate(self, data: Any, *, max_batches: int | None = None) -> dict[str, Any]:
        """Loss (and accuracy for classification) of every member and of the ensemble on ``data``
        (an iterable of ``(inputs, target)``).  Classification: mean softmax probabilities,
        negative log-likelihood; regression: mean output, mean squared error."""
        n, mem_loss, ens_loss, mem_acc, ens_acc = 0, [0.0] * len(self.members), 0.0, [0.0] * len(self.members), 0.0
        classify = True
        for i, batch in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            args, kwargs, y = split_batch(batch)
            if y is None:
                raise ValueError("evaluate needs (inputs, target) batches")
            outs = [o.float() for o in self.member_outputs(*args, **kwargs)]
            classify = not y.is_floating_point() and outs[0].dim() == 2
            b = int(y.shape[0])
            if classify:
                probs = [o.softmax(-1) for o in outs]
                mean = torch.stack(probs).mean(0)
                for j, pr in enumerate(probs):
                    mem_loss[j] += float(F.nll_loss(pr.clamp_min(1e-12).log(), y, reduction="sum"))
                    mem_acc[j] += float((pr.argmax(-1) == y).sum())
                ens_loss += float(F.nll_loss(mean.clamp_min(1e-12).log(), y, reduction="sum"))
                ens_acc += float((mean.argmax(-1) == y).sum())
            else:
                mean = torch.stack(outs).mean(0)
                for j, o in enumerate(outs):
                    mem_loss[j] += float(F.mse_loss(o, y.float(), reduction="sum")) / max(o[0].numel(), 1)
                ens_loss += float(F.mse_loss(mean, y.float(), reduction="sum")) / max(mean[0].numel(), 1)
            n += b
        if n == 0:
            raise ValueError("evaluate: data yielded no batch")
        out: dict[str, Any] = {"n": n, "members": [x / n for x in mem_loss], "ensemble": ens_loss / n,
                               "loss": "nll" if classify else "mse", "cycles": [c for c, _, _ in self.members]}
        if classify:
            out["members_acc"] = [x / n for x in mem_acc]
            out["ensemble_acc"] = ens_acc / n
        return out


# ---------------------------------------------------------------------------- the whitelist entries
def _check_rollback(ctx: RunContext, p: dict[str, Any]) -> None:
    check_rollback(ctx.model, ctx.optimizer, p["to"], p["weights_only"])


@action("snapshot", label="Snapshot", category="run", schema=SNAPSHOT_SCHEMA, order=140,
        description="Save the weights and optimizer state now.")
def _run_snapshot(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return snapshot_(ctx.model, ctx.optimizer, label=p["label"], weights_only=p["weights_only"], probe=ctx)


@action("rollback", label="Roll back", category="run", schema=ROLLBACK_SCHEMA, order=150,
        description="Go back to a snapshot ('last', 'best' or an id).", check=_check_rollback)
def _run_rollback(ctx: RunContext, p: dict[str, Any]) -> Applied:
    return rollback_(ctx.model, ctx.optimizer, p["to"], weights_only=p["weights_only"], probe=ctx)

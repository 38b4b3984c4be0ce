"""The action queue of :class:`~trainscope.distributed.DistributedProbe`: requests made on rank 0 are
sent to every rank in the sampled step's control block and applied by all of them at the same
boundary; what DDP's reducer cannot follow is refused with the reason, and what an action would
measure on each rank's own data is measured on rank 0 and sent."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .actions import ActionQueue, Ticket

__all__ = ["_SyncedActionQueue"]

_ACTION_BYTES = 16 << 10  # one request's parameters at most (JSON)


class _SyncedActionQueue(ActionQueue):
    """Rank 0's requests travel with the exchange; every rank applies them at the same step."""

    def __init__(self, probe: Any) -> None:
        super().__init__(probe)
        self._dprobe = probe
        self._raw: dict[str, dict[str, Any]] = {}
        self._in_flight: list[Ticket] = []
        self._ready: list[Ticket] = []
        self._sync_due = False  # actions arrived at this exchange: make the replicas identical after them

    def submit(
        self,
        action: str,
        params: Mapping[str, Any] | None = None,
        *,
        source: str = "python",
        id: str | None = None,
    ) -> Ticket:
        p = self._dprobe
        if not p._ddp_active:
            return super().submit(action, params, source=source, id=id)
        raw = dict(params or {})
        # ids of rank 0's requests are reused on every rank: keep local ones apart; new_id skips ids
        # a browser already used, so a Python request never collides with a clicked one
        if id is not None:
            tid = str(id)
        else:
            tid = self.new_id(f"r{p.rank}-a" if p.rank != 0 else "a")
        def refuse(why: str, params: dict[str, Any]) -> Ticket:
            t = Ticket(id=tid, action=str(action), params=params, source=source, submitted_step=p.step_count)
            return self._finish(t, "refused", why)

        if p.rank != 0:
            return refuse(
                f"in distributed training actions are requested on rank 0 (this is rank {p.rank}); "
                "rank 0 sends them to every rank, which all apply them at the same step",
                raw,
            )
        try:
            json.dumps(raw)
        except (TypeError, ValueError) as e:
            return refuse(
                f"parameters must be plain numbers, strings, lists or dicts to be sent to every rank ({e})", {}
            )
        why = _ddp_refusal(p, str(action), raw)
        if why is not None:
            return refuse(why, raw)
        raw = _resolve_on_rank0(p, str(action), raw)
        t = super().submit(action, raw, source=source, id=tid)
        if t.status == "pending":
            self._raw[t.id] = raw
        return t

    def pending(self) -> list[Ticket]:
        with self._lock:
            return list(self._in_flight) + list(self._queue)

    def apply_pending(self) -> list[Ticket]:
        if not self._dprobe._ddp_active:  # single process, or the group broke: apply locally
            self._restore_in_flight()
            ready, self._ready = self._ready, []
            return [self._apply(t) for t in ready] + super().apply_pending()
        ready, self._ready = self._ready, []
        done = [self._apply(t) for t in ready]
        if self._sync_due:  # decided by rank 0's control block: every rank gets here at this boundary
            self._sync_due = False
            self._dprobe._sync_from_rank0()
        return done

    def _apply(self, t: Ticket) -> Ticket:
        p = self._dprobe
        if not (p._ddp_active and t.action == "lr_find" and t.params.get("apply", "none") != "none"):
            return super()._apply(t)
        # every rank sweeps its own data (state restored exactly); only rank 0's suggestion is used:
        # it travels to every rank as a set_lr / one_cycle request, so schedules stay identical too
        how, shown = t.params["apply"], t.params
        t.params = {**shown, "apply": "none"}
        try:
            t = super()._apply(t)
        finally:
            t.params = shown
        if t.status != "applied":
            return t
        if p.rank != 0:
            t.message += f"; rank 0's suggestion reaches this rank as a {how} request at the next exchange"
            return t
        ev = next((e for e in reversed(list(p.history.events)) if e.kind == "lr_find"), None)
        sug = ev.data.get("suggestion") if ev is not None else None
        if not isinstance(sug, (int, float)) or not math.isfinite(sug) or sug <= 0:
            t.message += f"; no suggestion, so no {how}"
            return t
        params: dict[str, Any] = {"lr": float(sug)} if how == "set_lr" else {
            "max_lr": float(sug), "total_steps": t.params.get("total_steps", 1000)}
        follow = self.submit(how, params, source="lr_find")
        t.message += (f"; {how} with it sent to every rank (ticket {follow.id}: {follow.status}), applied at "
                      "the next exchange")
        return t

    def take_for_broadcast(self, max_bytes: int) -> tuple[list[dict[str, Any]], int]:
        """Rank 0: move queued requests into flight, as JSON-able items for the exchange.

        Returns the items (at most ``max_bytes`` of JSON) and the bytes the next waiting request
        needs (0 if none waits): the control block grows to fit it at the next exchange.
        """
        out: list[dict[str, Any]] = []
        size = 2
        while True:
            with self._lock:
                if not self._queue:
                    return out, 0
                t = self._queue[0]
                item = {
                    "id": t.id,
                    "action": t.action,
                    "params": self._raw.get(t.id, {}),
                    "source": t.source,
                }
                n = len(json.dumps(item)) + 1
                if n > _ACTION_BYTES:  # refuse rather than grow without bound
                    self._queue.popleft()
                elif size + n > max_bytes:
                    return out, size + n
                else:
                    self._queue.popleft()
                    out.append(item)
                    self._in_flight.append(t)
                    size += n
                    continue
            self._finish(
                t,
                "refused",
                f"request too large to send to every rank ({n} bytes > {_ACTION_BYTES})",
            )

    def schedule(self, items: list[dict[str, Any]]) -> None:
        """Every rank: the requests decoded from the exchange are applied at this boundary."""
        p = self._dprobe
        self._sync_due = self._sync_due or bool(items)
        if p.rank == 0:
            self._ready.extend(self._in_flight)
            self._in_flight = []
            return
        for item in items:
            t = ActionQueue.submit(
                self,
                item["action"],
                item.get("params", {}),
                source=item.get("source", "rank0"),
                id=item["id"],
            )
            if t.status == "pending":
                with self._lock:
                    try:
                        self._queue.remove(t)
                    except ValueError:
                        pass
                self._ready.append(t)
            else:
                p._fail(
                    "distributed actions",
                    RuntimeError(
                        f"rank {p.rank} refused {item['action']} that rank 0 accepted: {t.message}"
                    ),
                )

    def _restore_in_flight(self) -> None:
        if self._in_flight:
            with self._lock:
                self._queue.extendleft(reversed(self._in_flight))
            self._in_flight = []


def _ddp_refusal(probe: Any, action: str, raw: Mapping[str, Any]) -> str | None:
    """Why an action cannot keep the replicas identical under DDP (None: it can)."""
    if action == "insert_norm" and raw.get("kind") == "weight":
        return ("insert_norm kind='weight' is refused under DistributedProbe: weight normalization replaces the "
                "layer's weight by two new parameters (g, v), while DDP's gradient reducer, built when the model "
                "was wrapped, waits for a gradient of the old weight, which is no longer used (the next backward "
                "would fail or the replicas would diverge). Use kind='batch' or 'layer', or apply "
                "torch.nn.utils.parametrizations.weight_norm before wrapping the model in DDP")
    if action == "prune":
        return ("prune is refused under DistributedProbe: its masks re-parametrize the weights "
                "(torch.nn.utils.parametrize), which re-creates their gradient accumulators, and DDP's gradient "
                "reducer, hooked on the old ones when the model was wrapped, would never see those gradients (the "
                "next step fails: 'Expected to have finished reduction'). Prune in a single process, or apply the "
                "masks (trainscope.interventions.pruning.prune_) before wrapping the model in DDP")
    if action == "standardize_inputs" and raw.get("targets"):
        return ("standardize_inputs with targets=True is refused under DistributedProbe (each rank would measure "
                "the targets of its own batches); request standardize_inputs, then standardize_targets: its "
                "mean / std are then rank 0's, sent to every rank")
    if action == "recover":  # its follow-up fix is judged as if requested on its own
        then, tp = str(raw.get("then") or "none"), raw.get("then_params") or {}
        if isinstance(tp, str):
            try:
                tp = json.loads(tp)
            except ValueError:
                return None  # the action's own validation says what is wrong
        why = _ddp_refusal(probe, then, tp) if isinstance(tp, Mapping) else None
        if why is None and then in _MEASURED and any(tp.get(k) is None for k in _MEASURED[then]):
            why = (f"{then} inside recover measures {' / '.join(_MEASURED[then])} on each rank's own batches under "
                   f"DistributedProbe; give them in then_params, or request recover, then {then}")
        return f"recover with then={then}: {why}" if why is not None else None
    return None


_MEASURED = {"standardize_targets": ("mean", "std"), "rescale_targets": ("low", "high")}
"""Actions whose defaults are statistics of the rank's own batches (filled in on rank 0 by
:func:`_resolve_on_rank0` when requested on their own)."""


def _resolve_on_rank0(probe: Any, action: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Rank 0 fills in parameters an action would otherwise measure on each rank's own data, so
    that every rank applies the same numbers."""
    if action == "rescale_targets" and (raw.get("low") is None or raw.get("high") is None):
        try:
            from .interventions.target_fix import _plan

            _, lo, hi = _plan(probe.loss_fn, raw.get("low"), raw.get("high"), probe)
        except Exception:  # nothing measured yet: the action's own check says why
            return raw
        return {**raw, "low": lo, "high": hi}
    if action == "standardize_targets" and (raw.get("mean") is None or raw.get("std") is None):
        try:
            from .interventions.head_fix import _target_stats

            m, s = _target_stats(probe)
        except Exception:  # nothing measured yet: the action's own check says why
            return raw
        out = dict(raw)
        if out.get("mean") is None:
            out["mean"] = m
        if out.get("std") is None:
            out["std"] = s
        return out
    return raw

"""Distributed data-parallel training (``torch.distributed`` / DDP): one probe per rank.

Every rank probes its own replica.  At a sampled step each rank packs what it measured -- the
per-call activation and output-gradient summary rows, histogram counts, per-unit masks, the
model-input and loss-input summaries -- into one byte buffer, and the ranks exchange the buffers
with **one** ``all_gather`` (the only collective trainscope issues; unsampled steps issue none).
Rank 0 then combines them exactly as it combines several calls of one layer within a step
(sums, sums of squares and element counts add, minima / maxima reduce, histogram counts add,
per-unit activity flags are OR-ed), so the recorded statistics are those of the concatenation of
all ranks' batches.  Rank 0 records and displays; the other ranks record their own scalars only.

Parameter statistics (weight / gradient norms, update ratio, distance from init) are read after
DDP's gradient all-reduce and are already identical on every rank, so they are not exchanged.

The same buffer carries a small control block: rank 0's sampling interval (``budget=`` adapts it
on rank 0 only), "sample the next step" requests and exact-non-finite mode from any rank, and the
actions requested on rank 0 (dashboard clicks, ``probe.request``).  Every rank decodes the same
list and applies it at the same step boundary -- the one right after the exchange.  An action
therefore waits for the next sampled step: up to ``every`` optimizer steps.

Caveats (documented in ``docs/beyond.md``): output-gradient statistics are those of each
replica's own loss (DDP averages parameter gradients, not output gradients); scalars such as
``loss`` are rank 0's own; the probe must be created at the same point on every rank.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from . import stats as S
from .actions import ActionQueue, Ticket
from .probe import Probe

__all__ = ["DistributedProbe"]

_CTRL_MIN = 8 << 10  # control block (JSON: the rank's payload layout + actions), grows as needed
_ALIGN = 4096
_EXCHANGED = ("act", "grad", "act_hist", "grad_hist", "inputs", "loss_in")
_ACTION_BYTES = 16 << 10  # one request's parameters at most (JSON)


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def _round_up(n: int, m: int = _ALIGN) -> int:
    return int(math.ceil(n / m) * m)


def _all_gather(out: Tensor, inp: Tensor, group: Any) -> None:
    dist = _dist()
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, inp, group=group)


class _SyncedActionQueue(ActionQueue):
    """Rank 0's requests travel with the exchange; every rank applies them at the same step."""

    def __init__(self, probe: DistributedProbe) -> None:
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
        if p.rank != 0:
            t = Ticket(
                id=tid, action=str(action), params=raw, source=source, submitted_step=p.step_count
            )
            return self._finish(
                t,
                "refused",
                f"in distributed training actions are requested on rank 0 (this is rank {p.rank}); "
                "rank 0 sends them to every rank, which all apply them at the same step",
            )
        try:
            json.dumps(raw)
        except (TypeError, ValueError) as e:
            t = Ticket(
                id=tid, action=str(action), params={}, source=source, submitted_step=p.step_count
            )
            return self._finish(
                t,
                "refused",
                f"parameters must be plain numbers, strings, lists or dicts to be sent to every rank ({e})",
            )
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


class DistributedProbe(Probe):
    """A :class:`~trainscope.Probe` for ``torch.distributed`` data-parallel training.

    Create it on **every** rank, at the same point of the script (after
    ``dist.init_process_group`` and wrapping the model in DDP, before training).  Without an
    initialized process group, or with a single process, it behaves exactly like ``Probe``.

    Parameters
    ----------
    model
        The DDP-wrapped model or the module it wraps (layer names are the module's own).
    optimizer
        The rank's optimizer.
    group
        The process group (default: the world).
    logdir
        Run directory, written by rank 0 only.
    **kwargs
        Everything else is passed to :class:`~trainscope.Probe` (``every``, ``loss_fn``...).
        ``every`` may be a callable only if it gives the same answer on every rank.

    Attributes
    ----------
    rank, world_size
        This process's rank and the group size.
    ddp_stats
        ``collectives`` (exchanges so far), ``bytes`` (sent per rank), ``seconds`` (spent
        packing, exchanging and combining), ``overflows`` (exchanges where a rank's payload did
        not fit the agreed size and was left out; the size then grows).
    ddp_model
        The model as passed (the DDP wrapper if one was given).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        group: Any = None,
        **kwargs: Any,
    ) -> None:
        from torch.nn.parallel import DistributedDataParallel

        inner = model.module if isinstance(model, DistributedDataParallel) else model
        dist = _dist()
        active = dist.is_available() and dist.is_initialized()
        self.group = group
        self.rank = dist.get_rank(group) if active else 0
        self.world_size = dist.get_world_size(group) if active else 1
        self._ddp_active = active and self.world_size > 1
        self._ddp_want_sample = False
        self._agreed: dict[str, Any] | None = None
        self._ctrl_cap = _CTRL_MIN
        self._data_cap = 0
        self._coll_device = torch.device("cpu")
        self.ddp_stats: dict[str, float] = {
            "collectives": 0,
            "bytes": 0,
            "seconds": 0.0,
            "overflows": 0,
        }
        if self.rank != 0:
            kwargs["logdir"] = None
        self.ddp_model = model
        super().__init__(inner, optimizer, **kwargs)
        self.actions = _SyncedActionQueue(self)
        if self._ddp_active:
            backend = str(dist.get_backend(group))
            if backend == "nccl":
                self._coll_device = torch.device("cuda", torch.cuda.current_device())
            self._data_cap = self._estimate_data_bytes()
            self._ctrl_cap = _round_up(_CTRL_MIN + 160 * len(self.layers))
            self.history.meta.update(world_size=self.world_size, backend=backend, rank=self.rank)

    # ------------------------------------------------------------------ schedule agreement
    def sample_next(self) -> None:
        """Record full statistics at a coming step on every rank (the request travels with the
        next exchange, so in distributed training it takes effect one sampled step later)."""
        if not self._ddp_active:
            super().sample_next()
            return
        self._ddp_want_sample = True

    def _adapt_interval(self) -> None:
        if not self._ddp_active or self._agreed is None:
            super()._adapt_interval()
            return
        a, self._agreed = self._agreed, None
        if isinstance(a.get("every"), int) and isinstance(self.every, int):
            self.every = int(a["every"])
        if a.get("want"):
            self._force_sample = True
        if a.get("exact"):
            self._exact_nonfinite = True

    def _record_optimizer_scalars(self, k: int) -> None:
        try:  # must never skip the exchange that follows it
            super()._record_optimizer_scalars(k)
        except Exception as e:
            self._fail("optimizer scalars", e)

    # ------------------------------------------------------------------ the exchange
    def _collect(self, k: int) -> dict[str, Any]:
        try:
            payload = super()._collect(k)
        except Exception as e:
            self._fail("collect", e)
            payload = {"step": k, "full": True, "time": time.time(), "tensors": []}
        if not self._ddp_active:
            return payload
        return self._exchange(k, payload)

    def _estimate_data_bytes(self) -> int:
        """A first guess of one rank's exchanged payload (grows after the first exchange if short)."""
        units = []
        for m in self._modules:
            for attr in (
                "out_features",
                "out_channels",
                "embedding_dim",
                "num_features",
                "hidden_size",
            ):
                v = getattr(m, attr, None)
                if isinstance(v, int):
                    units.append(v)
                    break
        widest = max(units, default=256)
        per_layer = 2 * S.NFIELDS + (2 * S.NBINS if self.histograms else 0) + 2 * widest
        floats = len(self.layers) * per_layer + S.NFIELDS + 2 * 4096 + 16
        return _round_up(int(floats * 4 * 1.25) + _ALIGN)

    def _exchange(self, k: int, payload: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        keys = list(payload.get("slices", {}))
        tensors = dict(zip(keys, payload.get("tensors", []), strict=False))
        try:
            buf = self._pack(k, payload, keys, tensors)
        except Exception as e:  # still take part in the collective, or the others would wait
            self._fail("distributed pack", e)
            buf = self._pack_minimal({"step": k, "error": f"{type(e).__name__}: {e}"})
        W = self.world_size
        C = self._ctrl_cap + self._data_cap
        try:
            out = torch.empty(W * C, dtype=torch.uint8, device=self._coll_device)
            _all_gather(out, buf, self.group)
        except Exception as e:
            self._fail("distributed", e)
            self._ddp_active = False  # the group is unusable: from now on this rank is on its own
            self.actions._restore_in_flight()  # type: ignore[attr-defined]
            return payload
        self.ddp_stats["collectives"] += 1
        self.ddp_stats["bytes"] += C
        try:
            grid = out.view(W, C)
            ctrl_cap = self._ctrl_cap  # this exchange's layout: _agree may grow the caps for the next
            ctrls = [self._read_ctrl(row) for row in grid[:, :ctrl_cap].cpu().numpy()]
            self._agree(ctrls)
            if self.rank == 0:
                result = self._combine(payload, keys, tensors, grid[:, ctrl_cap:], ctrls)
            else:
                result = {
                    "step": k,
                    "full": False,
                    "time": payload.get("time", time.time()),
                    "tensors": [],
                }
        except Exception as e:
            self._fail("distributed combine", e)
            result = (
                payload
                if self.rank == 0
                else {"step": k, "full": False, "time": time.time(), "tensors": []}
            )
        self.ddp_stats["seconds"] += time.perf_counter() - t0
        return result

    def _pack(
        self, k: int, payload: dict[str, Any], keys: list[str], tensors: dict[str, Tensor]
    ) -> Tensor:
        exchanged = [key for key in keys if key in _EXCHANGED or key.startswith(("amask", "gmask"))]
        ctrl: dict[str, Any] = {
            "v": 1,
            "rank": self.rank,
            "step": k,
            "want": self._ddp_want_sample,
            "exact": self._exact_nonfinite,
            "keys": [
                [key, int(tensors[key].numel()), list(payload["slices"][key][2])]
                for key in exchanged
            ],
        }
        self._ddp_want_sample = False
        for mk in (
            "act_meta",
            "grad_meta",
            "act_hist_layer",
            "grad_hist_layer",
            "inputs_meta",
            "loss_in_meta",
        ):
            if mk in payload:
                ctrl[mk] = payload[mk]
        parts = [
            tensors[key].detach().reshape(-1).float().to(self._coll_device) for key in exchanged
        ]
        n_data = sum(p.numel() for p in parts) * 4
        ctrl["need"] = [0, n_data]
        if self.rank == 0:
            Probe._adapt_interval(self)  # rank 0 decides the interval for everyone
            ctrl["every"] = self.every if isinstance(self.every, int) else None
            base = len(json.dumps(ctrl, default=_jsonable, allow_nan=True)) + 64
            items, waiting = self.actions.take_for_broadcast(self._ctrl_cap - base - 64)  # type: ignore[attr-defined]
            ctrl["actions"] = items
            ctrl["need"][0] = base + waiting + 64  # room for a request that did not fit this time
        raw = json.dumps(ctrl, default=_jsonable, allow_nan=True).encode()
        ctrl["need"][0] = max(ctrl["need"][0], len(raw) + 64)
        raw = json.dumps(ctrl, default=_jsonable, allow_nan=True).encode()
        if len(raw) + 4 > self._ctrl_cap:
            if self.rank == 0:
                self.actions._restore_in_flight()  # type: ignore[attr-defined]
            return self._pack_minimal({"step": k, "need": [len(raw) + 64, n_data], "omitted": True})
        if n_data > self._data_cap:
            ctrl["omitted"] = True
            self.ddp_stats["overflows"] += 1
            return self._pack_ctrl_only(
                json.dumps(ctrl, default=_jsonable, allow_nan=True).encode()
            )
        head = torch.zeros(self._ctrl_cap, dtype=torch.uint8)
        head[:4] = torch.tensor(list(len(raw).to_bytes(4, "little")), dtype=torch.uint8)
        head[4 : 4 + len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        data = (
            torch.cat(parts).view(torch.uint8)
            if parts
            else torch.zeros(0, dtype=torch.uint8, device=self._coll_device)
        )
        pad = torch.zeros(
            self._data_cap - data.numel(), dtype=torch.uint8, device=self._coll_device
        )
        return torch.cat([head.to(self._coll_device), data, pad])

    def _pack_ctrl_only(self, raw: bytes) -> Tensor:
        head = torch.zeros(self._ctrl_cap + self._data_cap, dtype=torch.uint8)
        head[:4] = torch.tensor(list(len(raw).to_bytes(4, "little")), dtype=torch.uint8)
        head[4 : 4 + len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        return head.to(self._coll_device)

    def _pack_minimal(self, ctrl: dict[str, Any]) -> Tensor:
        ctrl = {
            "v": 1,
            "rank": self.rank,
            "want": False,
            "exact": False,
            "keys": [],
            "omitted": True,
            **ctrl,
        }
        return self._pack_ctrl_only(json.dumps(ctrl, default=_jsonable).encode())

    @staticmethod
    def _read_ctrl(row: Any) -> dict[str, Any]:
        n = int.from_bytes(bytes(row[:4]), "little")
        out: dict[str, Any] = json.loads(bytes(row[4 : 4 + n]))
        return out

    def _agree(self, ctrls: list[dict[str, Any]]) -> None:
        """Apply what every rank decodes identically: interval, requests, actions, buffer sizes."""
        c0 = ctrls[0]
        self._agreed = {
            "every": c0.get("every"),
            "want": any(c.get("want") for c in ctrls),
            "exact": any(c.get("exact") for c in ctrls),
        }
        steps = {c.get("step") for c in ctrls if "step" in c}
        if len(steps) > 1:
            self._warn_once(
                "ddp-steps",
                f"ranks are at different steps ({sorted(s for s in steps if s is not None)}): create the "
                "DistributedProbe at the same point on every rank, or actions will not line up",
            )
        self.actions.schedule(c0.get("actions", []))  # type: ignore[attr-defined]
        need_c = max(int(c.get("need", [0, 0])[0]) for c in ctrls)
        need_d = max(int(c.get("need", [0, 0])[1]) for c in ctrls)
        if need_c > self._ctrl_cap:
            self._ctrl_cap = _round_up(int(need_c * 1.25))
        if need_d > self._data_cap:
            self._data_cap = _round_up(int(need_d * 1.25))

    # ------------------------------------------------------------------ identical replicas
    def _replica_state(self) -> tuple[list[Tensor], list[list[Any]], dict[str, Any]]:
        """The tensors that must match across ranks (parameters, buffers, optimizer state and
        tensor hyper-parameters), their layout, and the plain values (hyper-parameters, counters)."""
        tensors: list[Tensor] = []
        layout: list[list[Any]] = []

        def add(key: str, t: Tensor) -> None:
            tensors.append(t)
            layout.append([key, list(t.shape), str(t.dtype)])

        for name, t in list(self.model.named_parameters()) + list(self.model.named_buffers()):
            add(f"m.{name}", t)
        plain: dict[str, Any] = {"groups": [], "state": []}
        opt = self.optimizer
        if opt is not None:
            sharded = type(opt).__name__ == "ZeroRedundancyOptimizer"  # its state is per-rank by design
            for gi, g in enumerate(opt.param_groups):
                hyper: dict[str, Any] = {}
                for k in sorted(g):
                    if k == "params":
                        continue
                    v = g[k]
                    if isinstance(v, Tensor):
                        add(f"g{gi}.{k}", v)
                    elif _plain(v):
                        hyper[k] = v
                plain["groups"].append(hyper)
                layout.append([f"g{gi}", sorted(k for k in g if k != "params"), len(g["params"])])
                if sharded:
                    continue
                for pi, prm in enumerate(g["params"]):
                    st = opt.state.get(prm, {})
                    layout.append([f"s{gi}.{pi}", sorted(map(str, st))])
                    for k in sorted(st, key=str):
                        v = st[k]
                        if isinstance(v, Tensor):
                            add(f"s{gi}.{pi}.{k}", v)
                        elif _plain(v):
                            plain["state"].append([gi, pi, k, v])
        return tensors, layout, plain

    def _sync_from_rank0(self) -> None:
        """Every rank, at the boundary where actions were applied: make this replica bit-identical
        to rank 0's (parameters, buffers, optimizer hyper-parameters and state).

        Two collectives: an all-gather of each rank's layout digest (so that every rank takes the
        same decision), then one broadcast of rank 0's bytes.  Random re-initializations, LSUV and
        data-dependent inits, the LR finder and undo all draw on per-rank RNG or data; without this
        DDP would go on averaging the gradients of different models.
        """
        dist = _dist()
        dev = self._coll_device
        try:
            tensors, layout, plain = self._replica_state()
            digest = hashlib.sha256(json.dumps(layout).encode()).digest()
            extra = json.dumps(plain, allow_nan=True).encode()
            nbytes = sum(t.numel() * t.element_size() for t in tensors)
            head = torch.zeros(49, dtype=torch.uint8)
            head[48] = 1  # this rank could describe its state
            head[:32] = torch.frombuffer(bytearray(digest), dtype=torch.uint8)
            head[32:40] = torch.tensor(list(len(extra).to_bytes(8, "little")), dtype=torch.uint8)
            head[40:48] = torch.tensor(list(nbytes.to_bytes(8, "little")), dtype=torch.uint8)
        except Exception as e:  # still take part in the collectives
            self._fail("distributed sync", e)
            tensors, plain, extra, nbytes = [], {}, b"", 0
            head = torch.zeros(49, dtype=torch.uint8)
        out = torch.empty(self.world_size * 49, dtype=torch.uint8, device=dev)
        try:
            _all_gather(out, head.to(dev), self.group)
            heads = out.view(self.world_size, 49).cpu()
            same = all(int(heads[r, 48]) == 1 and torch.equal(heads[r, :32], heads[0, :32])
                       for r in range(self.world_size))
            if not same:
                self._warn_once(
                    "ddp-sync",
                    "after an action the replicas differ in structure (a layer, an optimizer or its state exists "
                    "on some ranks only), so trainscope cannot make them identical: the ranks may now train "
                    "different models; restart from a checkpoint",
                )
                self.ddp_stats["sync_skipped"] = self.ddp_stats.get("sync_skipped", 0) + 1
                return
            n_extra = int.from_bytes(bytes(heads[0, 32:40].tolist()), "little")
            n_data = int.from_bytes(bytes(heads[0, 40:48].tolist()), "little")
            if self.rank == 0:
                parts = [t.detach().reshape(-1).contiguous().view(torch.uint8).to(dev) for t in tensors if t.numel()]
                parts.append(torch.frombuffer(bytearray(extra), dtype=torch.uint8).to(dev) if extra
                             else torch.zeros(0, dtype=torch.uint8, device=dev))
                buf = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8, device=dev)
            else:
                buf = torch.empty(n_data + n_extra, dtype=torch.uint8, device=dev)
            dist.broadcast(buf, src=dist.get_global_rank(self.group, 0) if self.group is not None else 0,
                           group=self.group)
        except Exception as e:
            self._fail("distributed sync", e)
            return
        self.ddp_stats["syncs"] = self.ddp_stats.get("syncs", 0) + 1
        self.ddp_stats["sync_bytes"] = self.ddp_stats.get("sync_bytes", 0) + n_data + n_extra
        if self.rank == 0:
            return
        try:
            with torch.no_grad():
                off = 0
                for t in tensors:
                    n = t.numel() * t.element_size()
                    if n:
                        src = buf[off: off + n].clone().to(t.device).view(t.dtype).reshape(t.shape)  # aligned
                        t.copy_(src)
                    off += n
            vals = json.loads(bytes(buf[n_data:].cpu().tolist())) if n_extra else {"groups": [], "state": []}
            opt = self.optimizer
            if opt is not None:
                for g, hyper in zip(opt.param_groups, vals["groups"], strict=False):
                    for k, v in hyper.items():
                        g[k] = tuple(v) if isinstance(g.get(k), tuple) and isinstance(v, list) else v
                for gi, pi, k, v in vals["state"]:
                    prm = opt.param_groups[gi]["params"][pi]
                    cur = opt.state[prm].get(k)
                    opt.state[prm][k] = tuple(v) if isinstance(cur, tuple) and isinstance(v, list) else v
        except Exception as e:
            self._fail("distributed sync", e)

    # ------------------------------------------------------------------ rank 0: combine
    def _combine(
        self,
        payload: dict[str, Any],
        keys: list[str],
        local: dict[str, Tensor],
        data_rows: Tensor,
        ctrls: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """Rank 0: merge every rank's statistics; ``data_rows[r]`` is rank r's data block, laid out
        with the caps of this exchange (not the grown ones ``_agree`` just set for the next)."""
        dev = next(iter(local.values())).device if local else self._coll_device
        others: list[tuple[dict[str, Any], dict[str, Tensor]]] = []
        for r, c in enumerate(ctrls):
            if r == 0 or c.get("omitted") or c.get("step") != payload["step"]:
                continue
            row = data_rows[r]
            data: dict[str, Tensor] = {}
            off = 0
            for key, n, shape in c["keys"]:
                t = row[off : off + 4 * n].view(torch.float32).reshape(shape)
                data[key] = t.to(dev)
                off += 4 * n
            others.append((c, data))
        ranks = [0] + [int(c["rank"]) for c, _ in others]
        meta = dict(payload)
        new: dict[str, Tensor] = {}
        for key in keys:
            if (
                key in local
                and not key.startswith(("amask", "gmask"))
                and key not in ("inputs", "loss_in")
            ):
                new[key] = local[key].reshape(payload["slices"][key][2])
        for key, mk in (
            ("act", "act_meta"),
            ("grad", "grad_meta"),
            ("act_hist", "act_hist_layer"),
            ("grad_hist", "grad_hist_layer"),
        ):
            rows = [new[key]] if key in new else []
            lists = list(payload.get(mk, [])) if key in new else []
            for c, d in others:
                if key in d and mk in c:
                    rows.append(d[key])
                    lists += [tuple(x) if isinstance(x, list) else x for x in c[mk]]
            if rows:
                new[key] = torch.cat(rows)
                meta[mk] = lists
        for prefix, mk in (("amask", "amask"), ("gmask", "gmask")):
            layers = list(payload.get(mk, []))
            for c, _ in others:
                for key, _n, _s in c["keys"]:
                    if key.startswith(prefix) and int(key[len(prefix) :]) not in layers:
                        layers.append(int(key[len(prefix) :]))
            for i in layers:
                key = f"{prefix}{i}"
                found = [local[key]] if key in local else []
                found += [d[key] for _, d in others if key in d]
                found = [f for f in found if f.shape == found[0].shape]
                if found:
                    new[key] = torch.stack([f.reshape(-1) for f in found]).amax(0)
            meta[mk] = [i for i in layers if f"{prefix}{i}" in new]
        if "inputs" in local:
            new["inputs"], meta["inputs_meta"] = _combine_inputs(
                local["inputs"],
                payload.get("inputs_meta", {}),
                [(d["inputs"], c.get("inputs_meta", {})) for c, d in others if "inputs" in d],
            )
        if "loss_in" in local:
            new["loss_in"] = _combine_loss_inputs(
                local["loss_in"],
                payload.get("loss_in_meta", {}),
                [(d["loss_in"], c.get("loss_in_meta", {})) for c, d in others if "loss_in" in d],
            )
        # rebuild the single flat payload the probe copies to the host
        tensors: list[Tensor] = []
        slices: dict[str, tuple[int, int, tuple[int, ...]]] = {}
        start = 0
        for key, t in new.items():
            flat = t.reshape(-1).float()
            slices[key] = (start, flat.numel(), tuple(t.shape))
            tensors.append(flat)
            start += flat.numel()
        meta["slices"] = slices
        meta["tensors"] = tensors
        meta["record_extra"] = {"ddp": {"world_size": self.world_size, "ranks_combined": ranks}}
        return meta


def _plain(v: Any) -> bool:
    """A value that survives JSON exactly (tuples come back as lists and are turned back)."""
    if v is None or isinstance(v, (bool, int, str)):
        return True
    if isinstance(v, float):
        return True
    if isinstance(v, (tuple, list)):
        return all(_plain(x) for x in v)
    return False


def _jsonable(o: Any) -> Any:
    if isinstance(o, tuple):
        return list(o)
    if hasattr(o, "item"):
        return o.item()
    return repr(o)


def _combine_inputs(
    v0: Tensor, m0: dict[str, Any], others: list[tuple[Tensor, dict[str, Any]]]
) -> tuple[Tensor, dict[str, Any]]:
    """Model-input summaries of several ranks -> the summary of the concatenated batch."""
    if not others:
        return v0, m0
    vs = [v0.reshape(-1)] + [v.reshape(-1) for v, _ in others]
    ms = [m0] + [m for _, m in others]
    if any(v.numel() != vs[0].numel() for v in vs):
        return v0, m0
    stack = torch.stack(vs)
    n = torch.tensor([float(m.get("numel", 0)) for m in ms], device=stack.device)
    out = stack[0].clone()
    nf = S.NFIELDS
    out[0] = stack[:, 0].sum()
    out[1] = stack[:, 1].sum()
    out[2] = stack[:, 2].amin()
    out[3] = stack[:, 3].amax()
    out[4] = stack[:, 4].sum()
    for j in range(5, nf):
        col = stack[:, j]
        out[j] = torch.where((col < 0).any(), col.new_tensor(-1.0), col.sum())
    c = m0.get("channels")
    if c and all(m.get("channels") == c for m in ms):
        w = (n / n.sum()).reshape(-1, 1)
        out[nf : nf + 2 * c] = (stack[:, nf : nf + 2 * c] * w).sum(0)
    meta = dict(m0)
    meta["numel"] = int(sum(int(m.get("numel", 0)) for m in ms))
    shapes = [list(m.get("shape", [])) for m in ms]
    if shapes[0] and all(len(s) == len(shapes[0]) and s[1:] == shapes[0][1:] for s in shapes):
        meta["shape"] = (sum(s[0] for s in shapes), *shapes[0][1:])
    meta["ranks"] = len(ms)
    return out, meta


def _combine_loss_inputs(
    v0: Tensor, m0: dict[str, Any], others: list[tuple[Tensor, dict[str, Any]]]
) -> Tensor:
    """Loss-input summaries (pred min/max/row-sum deviation, target min/max/integrality)."""
    vs = [v0.reshape(-1)] + [v.reshape(-1) for v, _ in others]
    if len(vs) == 1 or any(v.numel() != vs[0].numel() for v in vs):
        return v0
    ms = [m0] + [m for _, m in others]
    stack = torch.stack(vs)
    w = torch.tensor([float((m.get("pred_shape") or [1])[0]) for m in ms], device=stack.device)
    out = stack[0].clone()
    out[0] = stack[:, 0].amin()
    out[1] = stack[:, 1].amax()
    out[2] = (stack[:, 2] * w).sum() / w.sum()
    if out.numel() >= 6:
        out[3] = stack[:, 3].amin()
        out[4] = stack[:, 4].amax()
        out[5] = stack[:, 5].amax()
    return out


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group with more than one process is running."""
    dist = _dist()
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)

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

Every applied action leaves the replicas identical: right after it, rank 0's parameters, buffers,
optimizer hyper-parameters and state -- and what actions keep outside the model (an inserted norm's
scale / shift and running statistics, ``standardize_inputs``' statistics) -- are broadcast.
Parameters an action adds after the model was wrapped (``insert_norm``'s scale / shift, Fixup's
scalars) are not in DDP's reducer; an optimizer step pre-hook averages their gradients, and an
inserted BatchNorm's running statistics (one flat ``all_reduce``; none while there are no such
parameters).  Statistics an action measures on the
data (``standardize_targets``) are measured on rank 0 and sent.  Refused, saying why, because DDP's
reducer cannot follow them: ``prune`` and ``insert_norm(kind="weight")`` (re-parametrized weights)
and ``standardize_inputs(targets=True)`` (request the two separately).

Caveats (documented in ``docs/beyond.md``): output-gradient statistics are those of each
replica's own loss (DDP averages parameter gradients, not output gradients); scalars such as
``loss`` are rank 0's own; the probe must be created at the same point on every rank.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ._ddp_actions import _SyncedActionQueue
from ._exchange import RankExchange, _all_gather, _dist
from .probe import Probe

__all__ = ["DistributedProbe"]

_D = TypeVar("_D", bound="DistributedProbe")

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
        # the parameters DDP's reducer all-reduces (fixed when the model was wrapped); a parameter an
        # action adds later (insert_norm's scale / shift, Fixup's scalars) is averaged by our own hook
        reduced = getattr(model, "_module_parameters", None) if inner is not model else None
        self._reduced: dict[int, Tensor] = {
            id(q): q for q in (reduced if reduced is not None else inner.parameters()) if q.requires_grad}
        self._extra_key: tuple[Any, ...] | None = None
        self._extra: list[Tensor] = []
        self._extra_bufs: list[Tensor] = []
        self._extra_handle: Any = None
        super().__init__(inner, optimizer, **kwargs)
        self.actions = _SyncedActionQueue(self)
        self._ddp = RankExchange(self)  # the payload-exchange strategy handed to the recorder
        self.use_exchange(self._ddp)
        if self._ddp_active:
            backend = str(dist.get_backend(group))
            if backend == "nccl":
                self._coll_device = torch.device("cuda", torch.cuda.current_device())
            self._ddp.size_for()
            self.history.meta.update(world_size=self.world_size, backend=backend, rank=self.rank)

    # ------------------------------------------------------------------ parameters DDP does not reduce
    def attach(self: _D) -> _D:
        super().attach()
        if self._ddp_active and self.optimizer is not None and self._extra_handle is None:
            try:
                h = self.optimizer.register_step_pre_hook(self._reduce_extra_grads)
                hooks = getattr(self.optimizer, "_optimizer_step_pre_hooks", None)
                if isinstance(hooks, OrderedDict) and h.id in hooks:
                    hooks.move_to_end(h.id, last=False)  # before clipping / L1 / schedules read the gradients
                self._extra_handle = h
            except Exception as e:
                self._fail("distributed", e)
        return self

    def detach(self) -> None:
        h, self._extra_handle = self._extra_handle, None
        if h is not None:
            h.remove()
        super().detach()

    def _extra_params(self, optimizer: Any) -> tuple[list[Tensor], list[Tensor]]:
        """The optimizer's parameters that DDP's reducer does not all-reduce, and the floating
        running statistics of the norms actions inserted (cached while the param groups are
        unchanged: inserting or removing a norm changes them)."""
        groups = optimizer.param_groups
        key = tuple((id(g["params"]), len(g["params"])) for g in groups)
        if key != self._extra_key:
            seen: set[int] = set()
            extra = []
            for g in groups:
                for q in g["params"]:
                    if id(q) not in self._reduced and id(q) not in seen and getattr(q, "requires_grad", False):
                        seen.add(id(q))
                        extra.append(q)
            from .interventions.normalization import added_norms

            bufs = [b for _, h in sorted(added_norms(self.model).items()) for b in h.norm.buffers()
                    if b.is_floating_point()]
            self._extra, self._extra_bufs, self._extra_key = extra, bufs, key
        return self._extra, self._extra_bufs

    def _reduce_extra_grads(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Optimizer step pre-hook: average across ranks the gradients of the parameters the
        optimizer trains but DDP does not reduce (added by an action after the model was wrapped),
        and the running statistics of inserted norms (DDP's reducer and buffer broadcast know
        neither), in one flat all-reduce per dtype / device.  None such (an ordinary run): no
        collective.

        Every rank has the same set: actions apply on every rank at the same step.  Not inside
        ``probe.paused()`` (the LR finder's sweep, checks): ranks step there on their own."""
        if not self._ddp_active or self._paused:
            return
        try:
            extra, bufs = self._extra_params(optimizer)
        except Exception as e:  # pragma: no cover - the same failure on every rank
            self._fail("distributed gradients", e)
            return
        if not extra and not bufs:
            return
        dist = _dist()
        buckets: dict[tuple[Any, Any], tuple[list[Tensor], list[Tensor]]] = {}
        for q in extra:
            buckets.setdefault((q.device, q.dtype), ([], []))[0].append(q)
        for b in bufs:
            buckets.setdefault((b.device, b.dtype), ([], []))[1].append(b)
        for (dev, dtype), (qs, bs) in buckets.items():
            n = sum(q.numel() for q in qs)
            m = sum(b.numel() for b in bs)
            flat = torch.zeros(n + len(qs) + m, dtype=dtype, device=dev)
            try:  # gradients, 1 per parameter that has one (a missing gradient counts as 0, as in DDP), buffers
                off = 0
                for i, q in enumerate(qs):
                    g = q.grad
                    if g is not None:
                        flat[off: off + q.numel()] = (g.to_dense() if g.is_sparse else g).reshape(-1)
                        flat[n + i] = 1
                    off += q.numel()
                off = n + len(qs)
                for b in bs:
                    flat[off: off + b.numel()] = b.detach().reshape(-1)
                    off += b.numel()
            except Exception as e:  # still take part in the collective
                self._fail("distributed gradients", e)
                flat.zero_()
                qs, bs = [], []
            try:
                dist.all_reduce(flat, group=self.group)
            except Exception as e:
                self._fail("distributed gradients", e)
                return
            self.ddp_stats["extra_reduces"] = self.ddp_stats.get("extra_reduces", 0) + 1
            try:
                with torch.no_grad():
                    flat.div_(self.world_size)
                    off = 0
                    for i, q in enumerate(qs):
                        k = q.numel()
                        if float(flat[n + i]) > 0:
                            avg = flat[off: off + k].view_as(q)
                            if q.grad is None or q.grad.is_sparse:
                                q.grad = avg.clone()
                            else:
                                q.grad.copy_(avg)
                        off += k
                    off = n + len(qs)
                    for b in bs:
                        b.copy_(flat[off: off + b.numel()].view_as(b))
                        off += b.numel()
            except Exception as e:
                self._fail("distributed gradients", e)

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
        in_model = {id(t) for t in self.model.parameters()}
        for name, t in _hook_state(self.model):  # normalization / input statistics held by action hooks
            if id(t) not in in_model:
                add(f"h.{name}", t)
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
                    if id(prm) not in in_model and isinstance(prm, Tensor):  # an action's new parameter
                        add(f"p{gi}.{pi}", prm)
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


def _hook_state(model: nn.Module) -> list[tuple[str, Tensor]]:
    """Tensors held by actions' hooks rather than the model: inserted BatchNorm's running
    statistics and scale / shift, ``standardize_inputs``' mean / std."""
    out: list[tuple[str, Tensor]] = []
    from .interventions.normalization import added_norms

    for name, h in sorted(added_norms(model).items()):
        for k, t in list(h.norm.named_parameters()) + list(h.norm.named_buffers()):
            out.append((f"norm.{name}.{k}", t))
    try:
        from .interventions import input_fix
    except ImportError:  # pragma: no cover - the module is optional to this sync
        return out
    fix = getattr(input_fix, "_INPUT_FIXES", {}).get(model)
    if fix is not None and getattr(fix, "_handle", None) is not None:
        for k in ("mean", "std"):
            v = getattr(fix, k, None)
            if isinstance(v, Tensor):
                out.append((f"inputs.{k}", v))
    return out


def _plain(v: Any) -> bool:
    """A value that survives JSON exactly (tuples come back as lists and are turned back)."""
    if v is None or isinstance(v, (bool, int, str)):
        return True
    if isinstance(v, float):
        return True
    if isinstance(v, (tuple, list)):
        return all(_plain(x) for x in v)
    return False


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group with more than one process is running."""
    dist = _dist()
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)

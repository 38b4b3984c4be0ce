"""The payload exchange of :class:`~trainscope.distributed.DistributedProbe`, a strategy handed
to the recorder (:class:`~trainscope.recorder.Exchange`).

At a sampled step each rank packs what it measured -- the per-call activation and output-gradient
summary rows, histogram counts, per-unit masks, the model-input and loss-input summaries of its
:class:`~trainscope.recorder.payload.StepPayload` -- into one byte buffer, and the ranks exchange
the buffers with **one** ``all_gather``.  Rank 0 then combines them exactly as it combines several
calls of one layer within a step (sums, sums of squares and element counts add, minima / maxima
reduce, histogram counts add, per-unit activity flags are OR-ed), so the recorded statistics are
those of the concatenation of all ranks' batches.  The other ranks record none (``full=False``).

The same buffer carries a small control block: rank 0's sampling interval, "sample the next
step" requests and exact-non-finite mode from any rank, and the actions requested on rank 0.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any

import torch
from torch import Tensor

from . import stats as S
from .recorder.payload import StepPayload

__all__ = ["RankExchange"]

_CTRL_MIN = 8 << 10  # control block (JSON: the rank's payload layout + actions), grows as needed
_ALIGN = 4096
_EXCHANGED = ("act", "grad", "act_hist", "grad_hist", "inputs", "loss_in")
# per exchanged tensor, the payload field that says how to read it (sent in the control block)
_META = {
    "act": "act_meta",
    "grad": "grad_meta",
    "act_hist": "act_hist_layer",
    "grad_hist": "grad_hist_layer",
    "inputs": "inputs_meta",
    "loss_in": "loss_in_meta",
}


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def _round_up(n: int, m: int = _ALIGN) -> int:
    return int(math.ceil(n / m) * m)


def _all_gather(out: Tensor, inp: Tensor, group: Any) -> None:
    dist = _dist()
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, inp, group=group)


class RankExchange:
    """One ``all_gather`` per sampled step; rank 0 combines, every rank agrees on the schedule.

    ``probe`` is the :class:`~trainscope.distributed.DistributedProbe` that owns it (its rank,
    group, actions, failure handling and schedule state).
    """

    def __init__(self, probe: Any) -> None:
        self.p = probe
        self._want_sample = False
        self._agreed: dict[str, Any] | None = None
        self._ctrl_cap = _CTRL_MIN
        self._data_cap = 0

    def size_for(self) -> None:
        """First guesses of the control block and one rank's data (both grow when short)."""
        p = self.p
        units = []
        for m in p._modules:
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
        per_layer = 2 * S.NFIELDS + (2 * S.NBINS if p.histograms else 0) + 2 * widest
        floats = len(p.layers) * per_layer + S.NFIELDS + 2 * 4096 + 16
        self._data_cap = _round_up(int(floats * 4 * 1.25) + _ALIGN)
        self._ctrl_cap = _round_up(_CTRL_MIN + 160 * len(p.layers))

    # ------------------------------------------------------------------ the Exchange protocol
    def defer_sample(self) -> bool:
        """A ``sample_next()`` travels with the next exchange (every rank samples together)."""
        if not self.p._ddp_active:
            return False
        self._want_sample = True
        return True

    def agree_schedule(self) -> bool:
        """Apply what the last exchange agreed (rank 0's interval, requests, exact mode)."""
        p = self.p
        if not p._ddp_active or self._agreed is None:
            return False
        a, self._agreed = self._agreed, None
        if isinstance(a.get("every"), int) and isinstance(p.every, int):
            p.every = int(a["every"])
        if a.get("want"):
            p._force_sample = True
        if a.get("exact"):
            p._exact_nonfinite = True
        return True

    def exchange(self, k: int, payload: StepPayload[Tensor]) -> StepPayload[Tensor]:
        p = self.p
        if not p._ddp_active:
            return payload
        t0 = time.perf_counter()
        tensors = payload.named()
        try:
            buf = self._pack(k, payload, tensors)
        except Exception as e:  # still take part in the collective, or the others would wait
            p._fail("distributed pack", e)
            buf = self._pack_minimal({"step": k, "error": f"{type(e).__name__}: {e}"})
        W = p.world_size
        C = self._ctrl_cap + self._data_cap
        try:
            out = torch.empty(W * C, dtype=torch.uint8, device=p._coll_device)
            _all_gather(out, buf, p.group)
        except Exception as e:
            p._fail("distributed", e)
            p._ddp_active = False  # the group is unusable: from now on this rank is on its own
            p.actions._restore_in_flight()
            return payload
        p.ddp_stats["collectives"] += 1
        p.ddp_stats["bytes"] += C
        try:
            grid = out.view(W, C)
            ctrl_cap = self._ctrl_cap  # this exchange's layout: _agree may grow the caps for the next
            ctrls = [self._read_ctrl(row) for row in grid[:, :ctrl_cap].cpu().numpy()]
            self._agree(ctrls)
            if p.rank == 0:
                result = self._combine(payload, tensors, grid[:, ctrl_cap:], ctrls)
            else:
                result = StepPayload(step=k, time=payload.time, full=False)
        except Exception as e:
            p._fail("distributed combine", e)
            result = payload if p.rank == 0 else StepPayload(step=k, full=False)
        p.ddp_stats["seconds"] += time.perf_counter() - t0
        return result

    # ------------------------------------------------------------------ packing
    def _pack(self, k: int, payload: StepPayload[Tensor], tensors: dict[str, Tensor]) -> Tensor:
        p = self.p
        exchanged = [
            key for key in tensors if key in _EXCHANGED or key.startswith(("amask", "gmask"))
        ]
        ctrl: dict[str, Any] = {
            "v": 1,
            "rank": p.rank,
            "step": k,
            "want": self._want_sample,
            "exact": p._exact_nonfinite,
            "keys": [
                [key, int(tensors[key].numel()), list(tensors[key].shape)] for key in exchanged
            ],
        }
        self._want_sample = False
        for key, mk in _META.items():
            if key in tensors:
                ctrl[mk] = getattr(payload, mk)
        dev = p._coll_device
        parts = [tensors[key].detach().reshape(-1).float().to(dev) for key in exchanged]
        n_data = sum(t.numel() for t in parts) * 4
        ctrl["need"] = [0, n_data]
        if p.rank == 0:
            p._adapt_interval()  # rank 0 decides the interval for everyone
            ctrl["every"] = p.every if isinstance(p.every, int) else None
            base = len(json.dumps(ctrl, default=_jsonable, allow_nan=True)) + 64
            items, waiting = p.actions.take_for_broadcast(self._ctrl_cap - base - 64)
            ctrl["actions"] = items
            ctrl["need"][0] = base + waiting + 64  # room for a request that did not fit this time
        raw = json.dumps(ctrl, default=_jsonable, allow_nan=True).encode()
        ctrl["need"][0] = max(ctrl["need"][0], len(raw) + 64)
        raw = json.dumps(ctrl, default=_jsonable, allow_nan=True).encode()
        if len(raw) + 4 > self._ctrl_cap:
            if p.rank == 0:
                p.actions._restore_in_flight()
            return self._pack_minimal({"step": k, "need": [len(raw) + 64, n_data], "omitted": True})
        if n_data > self._data_cap:
            ctrl["omitted"] = True
            p.ddp_stats["overflows"] += 1
            return self._pack_ctrl_only(
                json.dumps(ctrl, default=_jsonable, allow_nan=True).encode()
            )
        head = torch.zeros(self._ctrl_cap, dtype=torch.uint8)
        head[:4] = torch.tensor(list(len(raw).to_bytes(4, "little")), dtype=torch.uint8)
        head[4 : 4 + len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        data = (
            torch.cat(parts).view(torch.uint8)
            if parts
            else torch.zeros(0, dtype=torch.uint8, device=dev)
        )
        pad = torch.zeros(self._data_cap - data.numel(), dtype=torch.uint8, device=dev)
        return torch.cat([head.to(dev), data, pad])

    def _pack_ctrl_only(self, raw: bytes) -> Tensor:
        head = torch.zeros(self._ctrl_cap + self._data_cap, dtype=torch.uint8)
        head[:4] = torch.tensor(list(len(raw).to_bytes(4, "little")), dtype=torch.uint8)
        head[4 : 4 + len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        return head.to(self.p._coll_device)

    def _pack_minimal(self, ctrl: dict[str, Any]) -> Tensor:
        ctrl = {
            "v": 1,
            "rank": self.p.rank,
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
            self.p._warn_once(
                "ddp-steps",
                f"ranks are at different steps ({sorted(s for s in steps if s is not None)}): create the "
                "DistributedProbe at the same point on every rank, or actions will not line up",
            )
        self.p.actions.schedule(c0.get("actions", []))
        need_c = max(int(c.get("need", [0, 0])[0]) for c in ctrls)
        need_d = max(int(c.get("need", [0, 0])[1]) for c in ctrls)
        if need_c > self._ctrl_cap:
            self._ctrl_cap = _round_up(int(need_c * 1.25))
        if need_d > self._data_cap:
            self._data_cap = _round_up(int(need_d * 1.25))

    # ------------------------------------------------------------------ rank 0: combine
    def _combine(
        self,
        payload: StepPayload[Tensor],
        local: dict[str, Tensor],
        data_rows: Tensor,
        ctrls: list[dict[str, Any]],
    ) -> StepPayload[Tensor]:
        """Rank 0: merge every rank's statistics; ``data_rows[r]`` is rank r's data block, laid out
        with the caps of this exchange (not the grown ones ``_agree`` just set for the next)."""
        dev = next(iter(local.values())).device if local else self.p._coll_device
        others: list[tuple[dict[str, Any], dict[str, Tensor]]] = []
        for r, c in enumerate(ctrls):
            if r == 0 or c.get("omitted") or c.get("step") != payload.step:
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
        facts: dict[str, Any] = {}
        new: dict[str, Tensor] = {
            key: t
            for key, t in local.items()
            if not key.startswith(("amask", "gmask")) and key not in ("inputs", "loss_in")
        }
        for key in ("act", "grad", "act_hist", "grad_hist"):
            mk = _META[key]
            rows = [new[key]] if key in new else []
            lists = list(getattr(payload, mk)) if key in new else []
            for c, d in others:
                if key in d and mk in c:
                    rows.append(d[key])
                    lists += [tuple(x) if isinstance(x, list) else x for x in c[mk]]
            if rows:
                new[key] = torch.cat(rows)
                facts[mk] = lists
        for prefix, mine in (("amask", payload.act_masks), ("gmask", payload.grad_masks)):
            layers = list(mine)
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
        if "inputs" in local:
            new["inputs"], facts["inputs_meta"] = _combine_inputs(
                local["inputs"],
                payload.inputs_meta,
                [(d["inputs"], c.get("inputs_meta", {})) for c, d in others if "inputs" in d],
            )
        if "loss_in" in local:
            new["loss_in"] = _combine_loss_inputs(
                local["loss_in"],
                payload.loss_in_meta,
                [(d["loss_in"], c.get("loss_in_meta", {})) for c, d in others if "loss_in" in d],
            )
        facts["extra"] = {"ddp": {"world_size": self.p.world_size, "ranks_combined": ranks}}
        return dataclasses.replace(payload.with_named(new), **facts)


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

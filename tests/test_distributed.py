"""DDP on 2 gloo processes (CPU): one collective per sampled step, exact reduced statistics,
rank-0 recording, and actions applied on every rank at the same step."""

from __future__ import annotations

import copy
import json
import math
import os
import time
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

import trainscope
from trainscope.actions import register_action
from trainscope.distributed import DistributedProbe
from trainscope.history import LAYER_METRICS

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)

B = 32  # per-rank batch
STEPS = 14
EVERY = 3  # sampled steps 0, 3, 6, 9, 12
REQUEST_AT = (
    4  # rank 0 asks for an lr change before step 4; the next exchange is at step 6's boundary
)
SHRINK_AT = 8  # both ranks shrink the agreed payload size: step 9's exchange overflows and regrows
_COUNTED = (
    "all_gather_single",
    "all_gather_into_tensor",
    "all_gather",
    "all_reduce",
    "broadcast",
    "reduce",
    "gather",
    "scatter",
    "all_gather_object",
    "broadcast_object_list",
    "reduce_scatter_tensor",
    "all_to_all_single",
    "barrier",
)

APPLIED: list[tuple[int, int]] = []


class _Undo:
    def __init__(self, opt: torch.optim.Optimizer, old: list[float]) -> None:
        self.opt, self.old = opt, old

    def undo(self) -> None:
        for g, lr in zip(self.opt.param_groups, self.old, strict=True):
            g["lr"] = lr


def _validate_scale(probe: Any, params: dict[str, Any]) -> dict[str, Any]:
    f = params.get("factor")
    if not isinstance(f, (int, float)) or not 0 < f < 10:
        raise ValueError("factor must be a number in (0, 10)")
    return {"factor": float(f)}


def _apply_scale(probe: Any, params: dict[str, Any]) -> Any:
    opt = probe.optimizer
    old = [g["lr"] for g in opt.param_groups]
    for g in opt.param_groups:
        g["lr"] = g["lr"] * params["factor"]
    APPLIED.append((getattr(probe, "rank", -1), probe.step_count))
    return _Undo(opt, old)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))
    with torch.no_grad():
        m[0].bias[:4] = -50.0  # four units of the first ReLU never fire: dead on every rank
    return m


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(5, 20, generator=g) * 2
    y = torch.randint(0, 5, (STEPS, 2 * B), generator=g)
    x = centers[y] + torch.randn(STEPS, 2 * B, 20, generator=g)
    return x, y


def _snapshot(rec: Any) -> dict[str, Any]:
    return {
        "metrics": {m: np.array(v, dtype=np.float64) for m, v in rec.metrics.items()},
        "act_hist": None if rec.act_hist is None else np.array(rec.act_hist),
        "ograd_hist": None if rec.ograd_hist is None else np.array(rec.ograd_hist),
        "dead": {int(i): np.array(m) for i, m in rec.dead_units.items()},
        "inputs": {
            k: v
            for k, v in rec.inputs.items()
            if k in ("mean", "std", "min", "max", "numel", "shape")
        },
        "ddp": rec.extra.get("ddp"),
    }


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    register_action("ddp_test_scale_lr", validate=_validate_scale, apply=_apply_scale, label="Scale LR")
    x, y = _data()
    model = _model()
    ref_model = copy.deepcopy(model)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    probe = DistributedProbe(ddp, opt, every=EVERY, loss_fn=loss_fn)
    recorded: dict[int, dict[str, Any]] = {}
    probe.history.subscribe(
        lambda u: (
            recorded.setdefault(u.step, _snapshot(probe.history.latest))
            if u.record and probe.history.latest is not None and probe.history.latest.step == u.step
            else None
        )
    )

    # reference on rank 0: one process, the concatenated batch.  Its loss is the sum of the
    # ranks' mean losses (what each replica differentiates, so output gradients match) and its
    # lr is halved (so its update equals DDP's averaged-gradient update).
    ref_recorded: dict[int, dict[str, Any]] = {}
    if rank == 0:
        ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.05)
        ref_probe = trainscope.Probe(ref_model, ref_opt, every=EVERY)
        ref_probe.history.subscribe(
            lambda u: (
                ref_recorded.setdefault(u.step, _snapshot(ref_probe.history.latest))
                if u.record
                and ref_probe.history.latest is not None
                and ref_probe.history.latest.step == u.step
                else None
            )
        )

    counts: list[int] = []
    calls = [0]
    for name in _COUNTED:
        fn = getattr(dist, name, None)
        if fn is None:
            continue

        def wrapped(*a: Any, _fn: Any = fn, **k: Any) -> Any:
            calls[0] += 1
            return _fn(*a, **k)

        setattr(dist, name, wrapped)
    tickets = {}
    lrs = []
    for step in range(STEPS):
        if step == REQUEST_AT:  # every rank runs the same script: rank 1's request is refused
            t = probe.request("ddp_test_scale_lr", factor=0.5)
            tickets["main"] = (t.status, t.message)
            tickets["main_ticket"] = t
        if step == SHRINK_AT:
            probe._ddp._data_cap = 4096  # smaller than one rank's payload: the next exchange overflows
        before = calls[0]
        xb, yb = x[step, rank * B : (rank + 1) * B], y[step, rank * B : (rank + 1) * B]
        opt.zero_grad()
        loss = loss_fn(ddp(xb), yb)
        loss.backward()
        opt.step()
        counts.append(calls[0] - before)
        lrs.append(opt.param_groups[0]["lr"])
        if rank == 0:
            out = ref_model(x[step])
            ref_loss = loss_fn(out[:B], y[step, :B]) + loss_fn(out[B:], y[step, B:])
            ref_opt.zero_grad()
            ref_loss.backward()
            ref_opt.step()
            if step == 2 * EVERY:  # the boundary where DDP applies rank 0's request
                ref_opt.param_groups[0]["lr"] *= 0.5
    result: dict[str, Any] = {
        "rank": rank,
        "counts": counts,
        "lrs": lrs,
        "applied": APPLIED,
        "samples": probe.history.samples(),
        "ddp_stats": dict(probe.ddp_stats),
        "errors": [e.error for e in probe.errors],
        "world": probe.history.meta.get("world_size"),
    }
    if rank == 0:
        t = tickets["main_ticket"]
        result["ticket"] = {
            "first": tickets["main"],
            "status": t.status,
            "applied_step": t.applied_step,
        }
        undo = probe.request("undo", ticket=t.id)
        result["undo_status"] = undo.status
        # a request larger than the control block: it waits one exchange while the block grows
        big = probe.request("ddp_test_scale_lr", factor=1.0, note="x" * 12_000)
        result["big_status"] = big.status
    else:
        result["ticket"] = {"first": tickets["main"]}
        refused = probe.request("ddp_test_scale_lr", factor=2.0)
        result["rank1_request"] = {"status": refused.status, "message": refused.message}
    # two more sampled steps (15, 18) carry the undo and then the large request to every rank
    for step in range(STEPS, STEPS + 2 * EVERY + 1):
        xb, yb = (
            x[step % STEPS, rank * B : (rank + 1) * B],
            y[step % STEPS, rank * B : (rank + 1) * B],
        )
        opt.zero_grad()
        loss_fn(ddp(xb), yb).backward()
        opt.step()
    result["lr_after_undo"] = opt.param_groups[0]["lr"]
    if rank == 0:
        result["ticket"]["final"] = tickets["main_ticket"].status
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    np.save(
        os.path.join(out_dir, f"rank{rank}.npy"),
        np.array([recorded, ref_recorded], dtype=object),
        allow_pickle=True,
    )
    dist.barrier()  # both ranks are done with the group before either tears it down
    dist.destroy_process_group()


def _run_ranks(tmp_path: Any, timeout: float = 180) -> None:
    import torch.multiprocessing as mp

    ctx = mp.start_processes(
        _worker,
        args=(2, str(tmp_path / "pg"), str(tmp_path)),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    deadline = time.time() + timeout
    try:
        while not ctx.join(timeout=1):
            if time.time() > deadline:
                raise TimeoutError("DDP workers did not finish (deadlock?)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ddp")
    _run_ranks(tmp)
    out: dict[str, Any] = {}
    for r in (0, 1):
        out[r] = json.loads((tmp / f"rank{r}.json").read_text())
        rec, ref = np.load(tmp / f"rank{r}.npy", allow_pickle=True)
        out[r]["recorded"], out[r]["ref"] = rec, ref
    return out


@pytest.mark.slow  # two spawned gloo processes: ~7 s alone, more on a busy machine
def test_one_collective_per_sampled_step_and_none_otherwise(ddp_run) -> None:
    for r in (0, 1):
        counts = ddp_run[r]["counts"]
        # one all-gather per sampled step; where actions were applied (step 6's boundary) the
        # replicas are then made identical: one more all-gather and one broadcast
        assert counts == [(3 if s == 2 * EVERY else 1) if s % EVERY == 0 else 0 for s in range(STEPS)], counts
        assert ddp_run[r]["ddp_stats"]["collectives"] == len(range(0, STEPS, EVERY))
        assert ddp_run[r]["errors"] == []


@pytest.mark.slow  # two spawned gloo processes: ~7 s alone, more on a busy machine
def test_rank0_records_and_the_others_do_not(ddp_run) -> None:
    assert ddp_run[0]["samples"] == len(range(0, STEPS, EVERY))
    assert ddp_run[1]["samples"] == 0
    assert ddp_run[0]["world"] == 2
    assert sorted(ddp_run[0]["recorded"]) == list(range(0, STEPS + 2 * EVERY + 1, EVERY))


@pytest.mark.slow  # two spawned gloo processes: ~7 s alone, more on a busy machine
def test_reduced_statistics_equal_the_concatenated_batch(ddp_run) -> None:
    rec, ref = ddp_run[0]["recorded"], ddp_run[0]["ref"]
    for step in (0, 3, 6):
        a, b = rec[step], ref[step]
        assert a["ddp"] == {"world_size": 2, "ranks_combined": [0, 1]}
        for m in LAYER_METRICS:
            if m.startswith(("act_", "ograd_")):
                np.testing.assert_allclose(
                    a["metrics"][m],
                    b["metrics"][m],
                    rtol=2e-5,
                    atol=1e-6,
                    equal_nan=True,
                    err_msg=f"{m} at step {step}",
                )
        for m in ("weight_norm", "update_ratio", "dist_init"):
            np.testing.assert_allclose(
                a["metrics"][m], b["metrics"][m], rtol=2e-5, atol=1e-7, equal_nan=True, err_msg=m
            )
        # DDP averages the ranks' gradients; the reference differentiated their sum
        np.testing.assert_allclose(
            a["metrics"]["grad_norm"], b["metrics"]["grad_norm"] / 2, rtol=2e-5, equal_nan=True
        )
        np.testing.assert_allclose(a["act_hist"], b["act_hist"], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(a["ograd_hist"], b["ograd_hist"], rtol=1e-5, atol=1e-4)
        assert a["dead"].keys() == b["dead"].keys()
        for i in a["dead"]:
            np.testing.assert_array_equal(a["dead"][i], b["dead"][i])
        assert a["inputs"]["numel"] == b["inputs"]["numel"] == 2 * B * 20
        assert tuple(a["inputs"]["shape"]) == (2 * B, 20)
        for k in ("mean", "std", "min", "max"):
            assert a["inputs"][k] == pytest.approx(b["inputs"][k], rel=1e-5, abs=1e-6)
    # some ReLU units are dead on the concatenated batch, and that survives the combination
    assert any(m.any() for m in rec[6]["dead"].values())


@pytest.mark.slow  # two spawned gloo processes: ~7 s alone, more on a busy machine
def test_an_action_is_applied_on_every_rank_at_the_same_step(ddp_run) -> None:
    boundary = next(s for s in range(REQUEST_AT, STEPS) if s % EVERY == 0)  # step 6
    for r in (0, 1):
        # the lr change at step 6's boundary; the large request at the second exchange after it
        assert [tuple(a) for a in ddp_run[r]["applied"]] == [(r, boundary + 1), (r, 19)]
        lrs = ddp_run[r]["lrs"]
        # lr read after each optimizer.step(): the change lands at the end of step 6, on both
        assert lrs[:boundary] == [0.1] * boundary
        assert lrs[boundary:] == pytest.approx([0.05] * (STEPS - boundary))
        assert ddp_run[r]["lr_after_undo"] == pytest.approx(0.1)  # the undo reached every rank too
    t = ddp_run[0]["ticket"]
    assert t["first"][0] == "pending" and t["status"] == "applied"
    assert t["applied_step"] == boundary + 1 and t["final"] == "undone"
    assert ddp_run[0]["undo_status"] == "pending" and ddp_run[0]["big_status"] == "pending"
    assert ddp_run[1]["ticket"]["first"][0] == "refused"
    r1 = ddp_run[1]["rank1_request"]
    assert r1["status"] == "refused" and "rank 0" in r1["message"]


@pytest.mark.slow  # two spawned gloo processes: ~7 s alone, more on a busy machine
def test_an_oversized_payload_is_left_out_once_and_the_buffer_grows(ddp_run) -> None:
    rec = ddp_run[0]["recorded"]
    assert rec[9]["ddp"] == {"world_size": 2, "ranks_combined": [0]}  # rank 1 did not fit
    assert rec[12]["ddp"] == {"world_size": 2, "ranks_combined": [0, 1]}  # it does again
    assert ddp_run[1]["ddp_stats"]["overflows"] == 1


def test_without_a_process_group_it_is_a_plain_probe(blobs) -> None:
    x, y = blobs
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = DistributedProbe(model, opt, every=2)
    assert probe.world_size == 1 and probe.rank == 0 and not probe._ddp_active
    register_action("ddp_test_scale_lr", validate=_validate_scale, apply=_apply_scale, label="Scale LR")
    t = probe.request("ddp_test_scale_lr", factor=0.5)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:16]), y[:16]).backward()
        opt.step()
    assert t.status == "applied" and t.applied_step == 1
    assert probe.history.samples() == 2 and probe.ddp_stats["collectives"] == 0


@pytest.mark.slow  # two spawned gloo processes: ~7 s alone, more on a busy machine
def test_the_exchange_that_grows_the_control_block_still_combines_both_ranks(ddp_run) -> None:
    """The large request makes step 15's exchange grow the control block for the next one; rank
    0 must still read rank 1's data where it was written (at this exchange's offset): the combined
    model-input statistics equal those of the whole batch of both ranks."""
    x, _ = _data()
    rec = ddp_run[0]["recorded"]
    for step in (15, 18):
        batch = x[step % STEPS]  # both ranks' halves
        a = rec[step]
        assert a["ddp"] == {"world_size": 2, "ranks_combined": [0, 1]}, step
        assert a["inputs"]["numel"] == batch.numel()
        assert a["inputs"]["mean"] == pytest.approx(float(batch.mean()), rel=1e-5, abs=1e-6)
        assert a["inputs"]["std"] == pytest.approx(float(batch.std(unbiased=False)), rel=1e-4)
        assert a["inputs"]["max"] == pytest.approx(float(batch.max()), rel=1e-6)


# ---------------------------------------------------------------------------- every action keeps replicas identical
# (issue 11, item 4).  Rank 0 requests each registered action in turn; the ranks are seeded
# differently and see different data, so any action that draws on a rank's RNG or batch (random
# re-inits, LSUV, data-dependent init, the LR finder) would make the replicas differ without the
# state sync that follows applied actions.
ACTION_PLAN: list[tuple[str, dict[str, Any]]] = [
    ("snapshot", {}),
    ("reinit", {"layers": "all", "scheme": "kaiming_normal"}),
    ("undo", {}),  # of the reinit just above
    ("reinit", {"layers": "all", "scheme": "orthogonal"}),
    ("reinit", {"layers": "all", "scheme": "lsuv"}),
    ("reinit", {"layers": "all", "scheme": "data_dependent"}),
    ("add_dropout", {"after": ["2"], "p": 0.2}),
    ("set_dropout", {"p": 0.3}),
    ("remove_dropout", {}),
    ("insert_norm", {"after": ["3"], "kind": "batch"}),  # new parameters outside the DDP module
    ("insert_norm", {"after": ["5"], "kind": "weight"}),  # refused under DDP (see _expected_refusal)
    ("prune", {"amount": 0.5, "rewind": "init"}),  # refused under DDP (see _expected_refusal)
    ("mixup", {"alpha": 0.2}),  # per-rank random pairs and lambda: DDP averages the gradients
    ("undo", {}),
    ("input_noise", {"std": 0.1}),
    ("undo", {}),
    ("label_smoothing", {"eps": 0.1}),
    ("accumulate", {"steps": 2}),  # every rank steps on the same micro-batch count
    ("undo", {}),
    ("batch_schedule", {"factor": 2, "every": 1000}),
    ("undo", {}),
    ("set_output_activation", {"layer": "4", "to": "tanh"}),
    ("undo", {}),
    ("set_loss", {"kind": "cross_entropy", "input": "logits"}),
    ("weight_decay", {"value": 1e-3}),
    ("l1", {"value": 1e-5}),
    ("clip_grad", {"mode": "norm", "max_norm": 1.0}),
    ("set_lr", {"lr": 0.02}),
    ("scale_lr", {"factor": 0.5}),
    ("set_schedule", {"kind": "cosine_restarts", "T_0": 10}),
    ("one_cycle", {"max_lr": 0.05, "total_steps": 60}),
    ("lr_find", {"num_iter": 20, "apply": "set_lr"}),
    ("lr_find", {"num_iter": 20, "apply": "one_cycle", "total_steps": 60}),
    ("switch_optimizer", {"name": "adam"}),
    ("rollback", {"to": "last", "weights_only": True}),
    ("early_stopping", {}),
    ("snapshot_ensemble", {"T_0": 10}),
    ("run_check", {"check": "overfit_batch"}),
    ("loss_landscape", {"dims": 2, "points": 5}),
    ("standardize_targets", {}),  # refused: a classification loss (see _expected_refusal)
    ("standardize_inputs", {}),  # per-rank statistics: rank 0's are sent to every rank
    ("recover", {}),  # refused: nothing is damaged (see _expected_refusal)
    ("rescale_targets", {}),  # refused: not a binary cross-entropy (see _expected_refusal)
]


def _expected_refusal(name: str, params: dict[str, Any]) -> str | None:
    """A word of the reason an action of the plan is refused on this model (None: it applies)."""
    if name == "insert_norm" and params.get("kind") == "weight":
        return "DistributedProbe"  # DDP's reducer still waits for the replaced weight's gradient
    if name == "prune":
        return "DistributedProbe"  # its parametrization re-creates the gradient accumulators DDP hooked
    if name == "standardize_targets":
        return "regression"  # defined for regression losses; the DDP case is in test_new_parameters...
    if name == "recover":
        return "nothing to recover"  # the weights are sound
    if name == "rescale_targets":
        return "binary cross-entropy"  # defined for BCE; the DDP resolution is in test_repair_recover.py
    return None
PER_ACTION = 2 * EVERY + 1  # the request's exchange, and one more for a follow-up (lr_find's suggestion)


def _state_digest(model: nn.Module, opt: torch.optim.Optimizer) -> str:
    import hashlib

    h = hashlib.sha256()
    with torch.no_grad():
        # parameters and the optimizer: what DDP never re-synchronizes (it broadcasts rank 0's
        # buffers at every forward, so BatchNorm statistics differ between steps by design)
        for name, t in model.named_parameters():
            h.update(name.encode())
            h.update(t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        for g in opt.param_groups:
            h.update(repr(sorted((k, v) for k, v in g.items() if k != "params" and not isinstance(v, torch.Tensor))).encode())
            for p in g["params"]:
                for k, v in sorted(opt.state.get(p, {}).items()):
                    h.update(k.encode())
                    h.update(v.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
                             if isinstance(v, torch.Tensor) else repr(v).encode())
    return h.hexdigest()


def _output_digest(probe: Any, model: nn.Module) -> str:
    """What the replica computes (its hooks included: inserted norms, input standardization) on a
    fixed batch, in training mode with the same seed on every rank (dropout masks alike)."""
    import hashlib

    x = torch.linspace(-2, 2, 8 * 20).reshape(8, 20)
    with torch.random.fork_rng(), probe.paused(), torch.no_grad():
        torch.manual_seed(7)
        out = model(x)
    return hashlib.sha256(out.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def _actions_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from trainscope.actions import REGISTRY

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 5))
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    probe = DistributedProbe(ddp, opt, every=EVERY, loss_fn=loss_fn)
    torch.manual_seed(100 + rank)  # per-rank RNG, as is common
    x, y = _data()
    rows: list[dict[str, Any]] = []
    step = 0
    last: Any = None
    for name, params in ACTION_PLAN:
        t = None
        if rank == 0:
            if name == "undo":
                params = {"ticket": last.id}
            t = probe.request(name, **params)
            last = t
        for _ in range(PER_ACTION):
            xb = x[step % STEPS, rank * B: (rank + 1) * B]  # each rank its own half of the batch
            yb = y[step % STEPS, rank * B: (rank + 1) * B]
            probe.optimizer.zero_grad()  # type: ignore[union-attr]
            loss_fn(ddp(xb), yb).backward()
            probe.optimizer.step()  # type: ignore[union-attr]
            step += 1
        rows.append({"action": name, "status": None if t is None else t.status,
                     "message": None if t is None else t.message,
                     "digest": _state_digest(model, probe.optimizer)})  # type: ignore[arg-type]
    result = {"rows": rows, "errors": [f"{e.where}: {e.error}" for e in probe.errors],
              "registry": sorted(REGISTRY), "stats": dict(probe.ddp_stats),
              "final_digest": _state_digest(model, probe.optimizer),  # type: ignore[arg-type]
              "final_output": _output_digest(probe, model)}
    with open(os.path.join(out_dir, f"actions{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned gloo processes, ~140 steps and two LR sweeps
def test_every_registered_action_leaves_the_replicas_identical(tmp_path: Any) -> None:
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_actions_worker, args=(2, str(tmp_path / "pg"), str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.time() + 300
    try:
        while not ctx.join(timeout=1):
            if time.time() > deadline:
                raise TimeoutError("DDP workers did not finish (deadlock?)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    r0, r1 = (json.loads((tmp_path / f"actions{r}.json").read_text()) for r in (0, 1))
    # the plan covers every registered action (a new action must be added to ACTION_PLAN)
    covered = {n for n, _ in ACTION_PLAN}
    assert set(r0["registry"]) - {"ddp_test_scale_lr"} <= covered, set(r0["registry"]) - covered
    for (name, params), a, b in zip(ACTION_PLAN, r0["rows"], r1["rows"], strict=True):
        why = _expected_refusal(name, params)
        if why is None:
            assert a["status"] == "applied", (a["action"], a["message"])
        else:
            assert a["status"] == "refused" and why in a["message"], (a["action"], a["message"])
        assert a["digest"] == b["digest"], f"replicas differ after {a['action']}: {a['message']}"
    assert r0["final_digest"] == r1["final_digest"]
    assert r0["final_output"] == r1["final_output"]  # hooks' state too (standardize_inputs' statistics)
    assert r0["errors"] == [] and r1["errors"] == []
    applied = sum(1 for n, p in ACTION_PLAN if _expected_refusal(n, p) is None)
    assert r0["stats"]["syncs"] == r1["stats"]["syncs"] >= applied
    assert r0["stats"]["extra_reduces"] == r1["stats"]["extra_reduces"] > 0  # the inserted norm's gradients
    lr_rows = [r for r in r0["rows"] if r["action"] == "lr_find"]
    assert all("sent to every rank" in r["message"] for r in lr_rows), lr_rows


def test_rank0_ids_never_collide_with_a_browser_id(blobs) -> None:
    """Rank 0 numbered its own requests ``a{n}`` without looking at ids already in use, so a
    request the browser had sent as ``a1`` made rank 0's next Python request a refused duplicate."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = DistributedProbe(model, opt, every=2)
    probe._ddp_active = True  # the id choice only; no collective runs at submit time
    browser = probe.actions.submit("scale_lr", {"factor": 0.5}, source="dashboard", id="a1")
    mine = probe.actions.submit("scale_lr", {"factor": 0.5})
    assert browser.status == "pending" and browser.id == "a1"
    assert mine.status == "pending", mine.message
    assert mine.id != "a1"
    probe._ddp_active = False
    probe.detach()


# ---------------------------------------------------------------------------- parameters DDP does not reduce
class _Residual(nn.Module):
    """One residual branch of two layers (what Fixup re-initializes, adding its scalars)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.a, self.b = nn.Linear(20, 32), nn.Linear(32, 32), nn.Linear(32, 32)
        self.c, self.out = nn.Linear(32, 32), nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        h = h + self.b(torch.relu(self.a(h)))
        return self.out(torch.relu(self.c(h)))


def _newparams_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """A residual regression model; each rank its own data, with targets on different scales.
    Rank 0 asks for Fixup and BatchNorm after a layer (new parameters outside the DDP module), then
    standardize_targets and standardize_inputs (statistics measured on a rank's own batches)."""
    from trainscope.interventions.normalization import added_norms

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = _Residual()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.002, momentum=0.9)
    loss_fn = nn.MSELoss()
    probe = DistributedProbe(ddp, opt, every=2, loss_fn=loss_fn)
    g = torch.Generator().manual_seed(10 + rank)  # different data on every rank
    w = torch.randn(20, 1, generator=torch.Generator().manual_seed(3))
    tickets: dict[str, Any] = {}
    counts: list[int] = []
    calls = [0]
    real_all_reduce = dist.all_reduce

    def counted(*a: Any, **k: Any) -> Any:
        calls[0] += 1
        return real_all_reduce(*a, **k)

    dist.all_reduce = counted  # type: ignore[assignment]
    for step in range(24):
        if rank == 0 and step == 0:
            tickets["fixup"] = probe.request("reinit", layers="all", scheme="fixup")
            tickets["norm"] = probe.request("insert_norm", after=["c"], kind="batch")
            tickets["weight"] = probe.request("insert_norm", after=["out"], kind="weight")
        if rank == 0 and step == 6:
            tickets["targets"] = probe.request("standardize_targets")
        if rank == 0 and step == 10:
            tickets["inputs"] = probe.request("standardize_inputs")
        x = torch.randn(B, 20, generator=g) * (1 + rank) + 3 * rank
        y = (x @ w) * (2 + 2 * rank) + 5 * rank
        before = calls[0]
        opt.zero_grad()
        loss_fn(ddp(x), y).backward()
        opt.step()
        counts.append(calls[0] - before)
    norms = added_norms(model)
    mine = {id(q) for q in model.parameters()}
    extra = [q.detach().clone() for gr in opt.param_groups for q in gr["params"] if id(q) not in mine]
    state = [v.detach().clone() for gr in opt.param_groups for q in gr["params"]
             for v in opt.state.get(q, {}).values() if isinstance(v, torch.Tensor)]
    xs = torch.linspace(-2, 2, 8 * 20).reshape(8, 20)
    with probe.paused(), torch.no_grad():
        model.eval()  # the inserted BatchNorm's running statistics
        out_eval = model(xs)
        model.train()
        out = model(xs)
    result = {
        "tickets": {k: [t.status, t.message] for k, t in tickets.items()} if rank == 0 else {},
        "norms": sorted(norms),
        "extra": [t.reshape(-1).tolist() for t in extra],
        "norm_w": [h.norm.weight.tolist() for h in norms.values()],
        "norm_stats": [b.tolist() for h in norms.values() for b in h.norm.buffers() if b.is_floating_point()],
        "out_eval": out_eval.reshape(-1).tolist(),
        "params": [q.detach().reshape(-1).tolist() for q in model.parameters()],
        "state": [t.reshape(-1).tolist() for t in state],
        "n_groups": len(opt.param_groups),
        "out": out.reshape(-1).tolist(),
        "counts": counts,
        "errors": [f"{e.where}: {e.error}" for e in probe.errors],
    }
    with open(os.path.join(out_dir, f"newparams{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.all_reduce = real_all_reduce  # type: ignore[assignment]
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned gloo processes, 24 steps
def test_new_parameters_and_measured_statistics_stay_identical_across_ranks(tmp_path: Any) -> None:
    """insert_norm's BatchNorm scale / shift and Fixup's scalars join the optimizer but not DDP's
    reducer (built when the model was wrapped): without their own all-reduce each rank trained them
    on its own batch and the replicas diverged at the first step.  standardize_targets / _inputs measured each rank's
    own batches, so the replicas computed different functions.  Weight normalization is refused."""
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_newparams_worker, args=(2, str(tmp_path / "pg"), str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.time() + 180
    try:
        while not ctx.join(timeout=1):
            if time.time() > deadline:
                raise TimeoutError("DDP workers did not finish (deadlock?)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    r0, r1 = (json.loads((tmp_path / f"newparams{r}.json").read_text()) for r in (0, 1))
    t = r0["tickets"]
    assert t["fixup"][0] == "applied", t["fixup"]
    assert t["norm"][0] == "applied", t["norm"]
    assert t["targets"][0] == "applied", t["targets"]
    assert t["inputs"][0] == "applied", t["inputs"]
    assert t["weight"][0] == "refused" and "DistributedProbe" in t["weight"][1], t["weight"]
    assert r0["norms"] == r1["norms"] == ["c"] and r0["n_groups"] == r1["n_groups"] == 3
    assert len(r0["extra"]) == 5 + 2  # Fixup's 5 scalars, the BatchNorm's scale and shift
    assert r0["errors"] == [] and r1["errors"] == []
    # trained 23 steps on different data: identical to the bit, and actually trained
    assert all(math.isfinite(v) for r in (r0, r1) for k in ("extra", "out") for t in r[k] for v in np.ravel(t))
    assert r0["extra"] == r1["extra"]
    assert r0["norm_w"] == r1["norm_w"] and r0["norm_w"][0] != [1.0] * 32  # the BatchNorm scale trained
    assert any(v != 0.0 for q in r0["extra"][:5] for v in q)  # and Fixup's scalars
    assert r0["params"] == r1["params"]
    assert r0["state"] == r1["state"]
    assert r0["out"] == r1["out"]  # the same function, hooks' statistics included
    assert len(r0["norm_stats"]) == 2 and r0["norm_stats"] == r1["norm_stats"]  # running mean / var
    assert r0["out_eval"] == r1["out_eval"]
    # one all-reduce per step for the norm's gradients once it exists (none before: step 0)
    for r in (r0, r1):
        assert r["counts"][0] == 0 and all(c == 1 for c in r["counts"][1:]), r["counts"]


def test_actions_ddp_cannot_follow_are_refused_with_the_reason(blobs) -> None:
    """Under DDP, pruning and weight normalization re-parametrize weights (DDP's reducer keeps
    waiting for the old gradient accumulators: training failed at the next step), and
    standardize_inputs(targets=True) would measure each rank's own targets: refused, saying what
    to do instead, with nothing changed.  Without a process group they are accepted."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = DistributedProbe(model, opt, every=2)
    before = [q.detach().clone() for q in model.parameters()]
    probe._ddp_active = True  # the decision only; no collective runs at submit time
    cases = {
        "prune": ({"amount": 0.5}, "before wrapping"),
        "insert_norm": ({"after": ["2"], "kind": "weight"}, "kind='batch'"),
        "standardize_inputs": ({"targets": True}, "standardize_targets"),
    }
    for name, (params, hint) in cases.items():
        t = probe.actions.submit(name, params)
        assert t.status == "refused" and "DistributedProbe" in t.message and hint in t.message, (name, t.message)
    assert probe.actions.submit("insert_norm", {"after": ["2"], "kind": "batch"}).status == "pending"
    probe._ddp_active = False
    assert probe.actions.submit("prune", {"amount": 0.5}).status == "pending"  # one process: fine
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert len(opt.param_groups) == 1
    probe.detach()

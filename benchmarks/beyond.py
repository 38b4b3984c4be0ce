"""Costs of the run directory, of DDP support and of probing a compiled model.

Every number is a ratio to a baseline measured in the same run, interleaved: each round runs a
block of steps of every configuration in a shuffled order, and the result per configuration is
the median over rounds of its mean step time divided by the baseline's.

    python benchmarks/beyond.py runlog   [--rounds 9] [--steps 20]
    python benchmarks/beyond.py ddp      [--rounds 9] [--steps 20]      (2 gloo processes, CPU)
    python benchmarks/beyond.py compile  [--rounds 9] [--steps 20]      (inductor, CPU)

``runlog`` also reports bytes per sampled record and the directory size; ``ddp`` the time per
exchange; ``compile`` the first-call compile time with and without the probe (fresh caches).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import trainscope


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64 * 12 * 12, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip


def data(kind: str, n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if kind == "mlp":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.data[:n], dtype=torch.float32) / 16.0
        return x, torch.tensor(d.target[:n])
    return torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)


def interleaved(
    configs: dict[str, Callable[[], None]], rounds: int, steps: int, seed: int = 0
) -> dict[str, float]:
    """Median over rounds of each configuration's mean step time (s)."""
    rng = random.Random(seed)
    times: dict[str, list[float]] = {k: [] for k in configs}
    for step in configs.values():  # warm-up
        for _ in range(3):
            step()
    for _ in range(rounds):
        order = list(configs)
        rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            for _ in range(steps):
                configs[name]()
            times[name].append((time.perf_counter() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def trainer(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, fwd: Any = None
) -> tuple[Callable[[], None], torch.optim.Optimizer]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    f = fwd or model

    def step() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(f(x), y).backward()
        opt.step()

    return step, opt


# ----------------------------------------------------------------------------- run directory
def _flushing(step: Callable[[], None], writer: Any, every: int) -> Callable[[], None]:
    n = [0]

    def wrapped() -> None:
        step()
        n[0] += 1
        if n[0] % every == 0:
            writer.flush()

    return wrapped


def bench_runlog(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tmp = tempfile.mkdtemp(prefix="trainscope-bench-")
    for kind, make in (("mlp", mlp), ("cnn", cnn)):
        x, y = data(kind)
        configs: dict[str, Callable[[], None]] = {}
        probes = {}
        for name, every, logdir in (
            ("baseline", None, False),
            ("probe every 10", 10, False),
            ("probe every 10 + logdir", 10, True),
            ("probe every 1 + logdir", 1, True),
        ):
            torch.manual_seed(0)
            m = make()
            step, opt = trainer(m, x, y)
            if every is not None:
                probes[name] = trainscope.Probe(
                    m,
                    opt,
                    every=every,
                    logdir=os.path.join(tmp, f"{kind}-{every}-{logdir}") if logdir else None,
                )
                w = probes[name].run_writer
                if w is not None:
                    # no background flushes: each block writes its records inside its own timing
                    # (a writer thread would bill its work to whichever block happens to run)
                    w.flush_interval = 3600.0
                    step = _flushing(step, w, args.steps)
            configs[name] = step
        med = interleaved(configs, args.rounds, args.steps)
        base = med["baseline"]
        res = {k: round(v / base, 3) for k, v in med.items()}
        res["baseline_ms"] = round(base * 1000, 3)
        w = probes["probe every 1 + logdir"].run_writer
        w.flush()
        res["bytes_per_sampled_step"] = int(
            w.stats["bytes"] / max(probes["probe every 1 + logdir"].history.samples(), 1)
        )
        res["directory_bytes_every_1"] = w.directory_bytes()
        res["history_bytes"] = probes["probe every 1 + logdir"].history.memory_bytes()
        res["compactions"] = w.stats["compactions"]
        t0 = time.perf_counter()
        run = trainscope.open(w.path, follow=False)
        res["open_s"] = round(time.perf_counter() - t0, 4)
        res["samples_read"] = run.history.samples()
        for p in probes.values():
            p.detach()
            if p.run_writer is not None:
                p.run_writer.close()
        out[kind] = res
    return out


# ----------------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, world: int, init: str, args: dict[str, Any], out_file: str) -> None:
    import torch.distributed as dist

    from trainscope.distributed import DistributedProbe

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    x, y = data("mlp", 256)
    x, y = x[rank * 128 : (rank + 1) * 128], y[rank * 128 : (rank + 1) * 128]
    configs: dict[str, Callable[[], None]] = {}
    probes = {}
    for name, cls, every in (
        ("ddp", None, None),
        ("ddp + Probe every 10 (no exchange)", trainscope.Probe, 10),
        ("ddp + DistributedProbe every 10", DistributedProbe, 10),
        ("ddp + DistributedProbe every 1", DistributedProbe, 1),
    ):
        torch.manual_seed(0)
        ddp = nn.parallel.DistributedDataParallel(mlp())
        step, opt = trainer(ddp, x, y)
        if cls is not None:
            probes[name] = cls(ddp.module if cls is trainscope.Probe else ddp, opt, every=every)
        configs[name] = step
    med = interleaved(configs, args["rounds"], args["steps"], seed=1)  # same order on both ranks
    base = med["ddp"]
    res: dict[str, Any] = {k: round(v / base, 3) for k, v in med.items()}
    res["ddp_ms"] = round(base * 1000, 3)
    p = probes["ddp + DistributedProbe every 1"]
    res["exchange_ms"] = round(
        1000 * p.ddp_stats["seconds"] / max(p.ddp_stats["collectives"], 1), 3
    )
    res["exchange_bytes_per_rank"] = int(
        p.ddp_stats["bytes"] / max(p.ddp_stats["collectives"], 1) / world
    )
    res["rank0_samples"] = p.history.samples() if rank == 0 else None
    if rank == 0:
        with open(out_file, "w") as f:
            json.dump(res, f)
    dist.barrier()
    dist.destroy_process_group()


def bench_ddp(args: argparse.Namespace) -> dict[str, Any]:
    import torch.multiprocessing as mp

    tmp = tempfile.mkdtemp(prefix="trainscope-ddp-")
    out = os.path.join(tmp, "res.json")
    mp.spawn(
        _ddp_worker,
        args=(2, os.path.join(tmp, "pg"), {"rounds": args.rounds, "steps": args.steps}, out),
        nprocs=2,
    )
    with open(out) as f:
        return {"mlp, 2 ranks x 128 samples": json.load(f)}


# ----------------------------------------------------------------------------- torch.compile
def bench_compile(args: argparse.Namespace) -> dict[str, Any]:
    x, y = data("mlp")
    configs = {}
    probes = []
    for name, probed in (
        ("compiled", False),
        ("compiled + probe every 10", True),
        ("eager", None),
        ("eager + probe every 10", "eager"),
    ):
        torch.manual_seed(0)
        m = mlp()
        if probed in (None, "eager"):
            step, opt = trainer(m, x, y)
            if probed == "eager":
                probes.append(trainscope.Probe(m, opt, every=10))
        else:
            fwd = torch.compile(m)
            step, opt = trainer(m, x, y, fwd=fwd)
            if probed:
                probes.append(trainscope.Probe(fwd, opt, every=10))
        configs[name] = step
    med = interleaved(configs, args.rounds, args.steps)
    res: dict[str, Any] = {k: round(v / med["compiled"], 3) for k, v in med.items()}
    res["compiled_ms"] = round(med["compiled"] * 1000, 3)
    # first-call compile time, fresh inductor cache, in a new process each
    for probed in (False, True):
        code = (
            "import time, torch, trainscope\nfrom torch import nn\n"
            "m = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))\n"
            "f = torch.compile(m); opt = torch.optim.SGD(m.parameters(), lr=0.01)\n"
            f"p = trainscope.Probe(f, opt, every=10) if {probed} else None\n"
            "x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))\n"
            "t = time.perf_counter()\n"
            "for i in range(11):\n"
            "    opt.zero_grad(); nn.functional.cross_entropy(f(x), y).backward(); opt.step()\n"
            "print(time.perf_counter() - t)\n"
        )
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, OMP_NUM_THREADS="1")
            r = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
            )
        res[f"first 11 steps incl. compile, probe={probed} (s)"] = round(
            float(r.stdout.strip().splitlines()[-1]), 1
        )
    return {"mlp 64-256-256-10, batch 128": res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["runlog", "ddp", "compile"])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    res = {"runlog": bench_runlog, "ddp": bench_ddp, "compile": bench_compile}[args.what](args)
    res["machine"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "threads": 1,
    }
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()

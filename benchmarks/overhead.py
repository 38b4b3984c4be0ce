"""Overhead of trainscope's probe against a baseline measured in the same run, and against the anchors.

Every configuration trains its own copy of the same seeded model on the same batches.  The
configurations are run *interleaved*: each round runs a block of steps of every configuration in
a shuffled order, so that drifts of the machine (thermal, other processes) hit all of them alike;
the result per configuration is the median over rounds of its mean step time, reported as a ratio
to the baseline (no instrumentation) of the same model.

Models: (1) an MLP on scikit-learn's bundled digits, (2) a small CNN (2 conv + dense, 1x28x28),
(3) a ResNet-style CNN with 30+ modules.  Configurations: trainscope at its defaults (every 10 steps,
lengthened to keep a 2% overhead budget, after a dense start: every step at first, then
intervals growing as step // 3; run long enough that the start is a small part); full
statistics every 10 steps, fixed; the cheap parameter-level set every step; full statistics
with histograms every step; and, where installed,
``wandb.watch(log="all")`` (offline) and TensorBoard ``add_histogram`` of every parameter and
gradient at the same frequencies (every step, and every 10th step like trainscope's default).
Two *floors* write the bare tensor ops of a measurement by hand, with nothing around them: the
cheap set's (snapshot, subtraction, fused norms) and the four full passes behind exact activation
and output-gradient mean / std / min / max.  No probe that records those numbers can cost less.

Run:  python benchmarks/overhead.py [--rounds 9] [--steps 10] [--models mlp,cnn,resnet]
                                    [--groups trainscope|floor|wandb|tensorboard] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import trainscope

Step = Callable[[], None]


# ----------------------------------------------------------------------------- models and data
def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 12 * 12, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + x)


def resnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        *[Block(32) for _ in range(4)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def data(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "mlp":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.data, dtype=torch.float32)
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
        return x, torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    return torch.randn(512, 1, 28, 28, generator=g), torch.randint(0, 10, (512,), generator=g)


MODELS: dict[str, Callable[[], nn.Module]] = {"mlp": mlp, "cnn": cnn, "resnet": resnet}


# ----------------------------------------------------------------------------- configurations
@dataclass
class Run:
    name: str
    step: Step
    close: Callable[[], None] = lambda: None
    times: list[float] = field(default_factory=list)


def make_run(
    name: str, model_kind: str, setup: Callable[[nn.Module, torch.optim.Optimizer, nn.Module], Any]
) -> Run:
    torch.manual_seed(0)
    model = MODELS[model_kind]()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x, y = data(model_kind)
    g = torch.Generator().manual_seed(1)
    state = setup(model, opt, loss_fn)
    hist_hook = state if callable(state) else None

    def step() -> None:
        idx = torch.randint(0, len(x), (64,), generator=g)
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        if hist_hook is not None:
            hist_hook()  # TensorBoard: log after backward, where gradients exist
        opt.step()

    def close() -> None:
        if hasattr(state, "detach"):
            state.detach()
        if hasattr(state, "close"):
            state.close()

    return Run(name, step, close)


def trainscope_setup(**kw: Any) -> Callable[[nn.Module, torch.optim.Optimizer, nn.Module], Any]:
    def setup(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: nn.Module) -> Any:
        return trainscope.Probe(model, opt, loss_fn=loss_fn, **kw)

    return setup


_WANDB: dict[str, Any] = {}


def wandb_setup(freq: int) -> Callable[..., Any] | None:
    try:
        import wandb
    except ImportError:
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["WANDB_MODE"] = "offline"

    def setup(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: nn.Module) -> Any:
        if "run" not in _WANDB:
            _WANDB["run"] = wandb.init(
                mode="offline", dir=tempfile.mkdtemp(), project="trainscope-bench"
            )
        _WANDB["run"].watch(model, log="all", log_freq=freq)
        return None

    return setup


def tensorboard_setup(freq: int) -> Callable[..., Any] | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None

    def setup(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: nn.Module) -> Any:
        writer = SummaryWriter(log_dir=tempfile.mkdtemp())
        counter = [0]

        class Logger:
            def __call__(self) -> None:
                k = counter[0]
                counter[0] += 1
                if k % freq:
                    return
                for name, p in model.named_parameters():
                    writer.add_histogram(name, p, k)
                    if p.grad is not None:
                        writer.add_histogram(name + ".grad", p.grad, k)

            def close(self) -> None:
                writer.close()

        return Logger()

    return setup


# ----------------------------------------------------------------------------- floors
# What the measurements themselves cost, written by hand with nothing around them: no probe, no
# bookkeeping, no transfers.  A probe that records the same numbers cannot cost less than these,
# so they tell how far a target is from what the arithmetic and its dispatch allow on this machine.
def floor_cheap_setup(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: nn.Module) -> Any:
    """Exact per-parameter weight, gradient and update norms every step: a snapshot copy before
    the optimizer step, a subtraction and one fused norm over weights, gradients and updates
    after it, one stack (the cheap set's device work, and nothing else)."""
    params = [p for p in model.parameters() if p.requires_grad]
    snap = [p.detach().clone() for p in params]
    kept: list[torch.Tensor] = []

    def pre(*_: Any) -> None:
        with torch.no_grad():
            torch._foreach_copy_(snap, params)

    def post(*_: Any) -> None:
        with torch.no_grad():
            torch._foreach_sub_(snap, params)
            grads = [p.grad for p in params]
            kept.append(torch.stack(torch._foreach_norm(params + grads + snap)))
            if len(kept) >= 1000:
                kept.clear()

    opt.register_step_pre_hook(pre)
    opt.register_step_post_hook(post)
    return None


def floor_full_setup(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: nn.Module) -> Any:
    """The four full passes behind exact mean, std, min and max (sum, sum of squares, amin,
    amax) over every leaf module's output and output gradient, every step; no subsample, no
    histogram, no dead-unit masks, no parameter norms."""
    kept: list[torch.Tensor] = []

    def reduce(t: torch.Tensor) -> None:
        v = t.detach().reshape(-1)
        kept.append(torch.stack([v.sum(), torch.dot(v, v), v.amin(), v.amax()]))

    def on_grad(g: torch.Tensor) -> None:
        with torch.no_grad():
            reduce(g)

    def fwd(module: nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            with torch.no_grad():
                reduce(out)
            if out.requires_grad:
                out.register_hook(on_grad)

    def post(*_: Any) -> None:
        kept.clear()

    for m in model.modules():
        if not list(m.children()):
            m.register_forward_hook(fwd)
    opt.register_step_post_hook(post)
    return None


def configurations(groups: set[str] | None = None) -> dict[str, Callable[..., Any] | None]:
    """The configurations of the chosen groups (always with the baseline).

    Groups: ``trainscope``, ``floor``, ``wandb``, ``tensorboard``.  Run wandb in its own invocation: its
    offline service is a separate process that competes for the cores during every configuration
    of the same run, which would blur all the ratios.
    """
    every = {
        "baseline": lambda m, o, f: None,
        "trainscope defaults (dense start, every>=10, 2% budget)": trainscope_setup(),
        "trainscope full every 10 (fixed)": trainscope_setup(every=10),
        "trainscope cheap set every step": trainscope_setup(every=10**9, cheap_every=1),
        "trainscope full + histograms every step": trainscope_setup(every=1),
        "floor: cheap-set tensor ops alone, every step": floor_cheap_setup,
        "floor: full-pass reductions alone, every step": floor_full_setup,
        "wandb.watch(log=all) every 10": wandb_setup(10),
        "wandb.watch(log=all) every step": wandb_setup(1),
        "TensorBoard histograms every 10": tensorboard_setup(10),
        "TensorBoard histograms every step": tensorboard_setup(1),
    }
    if not groups:
        return every
    keep = {"baseline"}
    for name in every:
        low = name.lower()
        if any(g in low for g in groups):
            keep.add(name)
    return {k: v for k, v in every.items() if k in keep}


# ----------------------------------------------------------------------------- the interleaved run
def bench(
    model_kind: str,
    rounds: int,
    steps: int,
    warmup: int,
    groups: set[str] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    runs = []
    skipped = []
    for name, setup in configurations(groups).items():
        if setup is None:
            skipped.append(name)
            continue
        runs.append(make_run(name, model_kind, setup))
    for r in runs:  # warm-up: allocator, oneDNN primitives, the probe's first sampled steps
        for _ in range(warmup):
            r.step()
    rng = random.Random(0)
    for _ in range(rounds):
        order = runs[:]
        rng.shuffle(order)
        for r in order:
            t0 = clock()
            for _ in range(steps):
                r.step()
            r.times.append((clock() - t0) / steps)
    for r in runs:
        with contextlib.suppress(Exception):
            r.close()
    base_times = next(r for r in runs if r.name == "baseline").times
    base = statistics.median(base_times)
    out = {
        "model": model_kind,
        "baseline_step_ms": base * 1e3,
        "ratios": {r.name: statistics.median(r.times) / base for r in runs},
        # the whole measured run (every block, sampled steps and the dense start included)
        "total_ratios": {r.name: sum(r.times) / sum(base_times) for r in runs},
        "step_ms": {r.name: statistics.median(r.times) * 1e3 for r in runs},
        "spread": {
            r.name: (np.percentile(r.times, 75) - np.percentile(r.times, 25)) / base for r in runs
        },
        "skipped": skipped,
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="mlp,cnn,resnet")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=10, help="steps per block (use a multiple of 10)")
    ap.add_argument("--warmup", type=int, default=12)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--json", default="")
    ap.add_argument(
        "--clock",
        default="wall",
        choices=("wall", "cpu"),
        help="wall: perf_counter; cpu: this thread's CPU time (with --threads 1 every op runs on "
        "it), far less sensitive to other processes on a shared machine",
    )
    ap.add_argument(
        "--groups",
        default="",
        help="comma list of trainscope, floor, wandb, tensorboard (default: all)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for kind in args.models.split(","):
        groups = {g.strip().lower() for g in args.groups.split(",") if g.strip()} or None
        clock = time.thread_time if args.clock == "cpu" else time.perf_counter
        res = bench(kind, args.rounds, args.steps, args.warmup, groups, clock)
        results.append(res)
        print(f"\n{kind}: baseline {res['baseline_step_ms']:.2f} ms/step", flush=True)
        for name, ratio in res["ratios"].items():
            print(
                f"  {name:42s} {ratio:6.3f}x  (IQR {res['spread'][name]:.3f}; "
                f"whole run {res['total_ratios'][name]:.3f}x)",
                flush=True,
            )
        for name in res["skipped"]:
            print(f"  {name:42s}  not installed, skipped")
    names = list(results[0]["ratios"])
    print(
        "\n| configuration | "
        + " | ".join(f"{r['model']} ({r['baseline_step_ms']:.1f} ms)" for r in results)
        + " |"
    )
    print("|---|" + "---|" * len(results))
    for n in names:
        print(
            f"| {n} | "
            + " | ".join(f"{r['ratios'].get(n, float('nan')):.3f}x" for r in results)
            + " |"
        )
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "steps": args.steps,
        "clock": args.clock,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

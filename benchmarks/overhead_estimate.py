"""How honest is ``probe.overhead`` (the figure in the dashboard header)?

Two copies of the same seeded MLP train interleaved in one process, one with a default ``Probe``
and one without; each round times a block of steps of each in CPU time (a shared machine disturbs
that much less than wall time).  Reported: the end-to-end ratio (median over rounds) against the
probe's own estimate read after every round, and how steady that reading is over a long plain run
(read every 97 steps: median, 5th / 95th percentile, maximum).

Run:  python benchmarks/overhead_estimate.py [--rounds 41] [--steps 400] [--model quickstart|bench]

``quickstart``: examples/quickstart.ipynb's MLP (64-128-128-64-10, batch 32, ~0.3 ms a step);
``bench``: benchmarks/overhead.py's MLP (64-256-256-10, batch 64, ~0.5 ms).
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import trainscope


def make(kind: str, with_probe: bool) -> tuple[Callable[[], None], trainscope.Probe | None]:
    torch.manual_seed(0)
    if kind == "quickstart":
        sizes, batch = (64, 128, 128, 64, 10), 32
    else:
        sizes, batch = (64, 256, 256, 10), 64
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    x, y = torch.randn(1500, 64), torch.randint(0, 10, (1500,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    probe = trainscope.Probe(model, opt, loss_fn=loss_fn) if with_probe else None
    g = torch.Generator().manual_seed(1)

    def step() -> None:
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--model", choices=["quickstart", "bench"], default="quickstart")
    a = ap.parse_args()
    torch.set_num_threads(1)
    (plain, _), (probed, probe) = make(a.model, False), make(a.model, True)
    assert probe is not None
    for s in (plain, probed):
        for _ in range(500):
            s()
    times: dict[str, list[float]] = {"plain": [], "probe": []}
    estimates = []
    rng = random.Random(0)
    for _ in range(a.rounds):
        order = [("plain", plain), ("probe", probed)]
        rng.shuffle(order)
        for name, s in order:
            t0 = time.process_time()
            for _ in range(a.steps):
                s()
            times[name].append((time.process_time() - t0) / a.steps)
        if probe.overhead is not None:
            estimates.append(probe.overhead)
    base, with_probe = statistics.median(times["plain"]), statistics.median(times["probe"])
    print(
        f"{a.model} MLP: {base * 1e6:.0f} us a step plain, {with_probe * 1e6:.0f} us with the probe:"
        f" end to end {with_probe / base:.3f}x; probe.overhead median {statistics.median(estimates):.3f}"
        f" (rounds {min(estimates):.3f}-{max(estimates):.3f}), sampling every {probe.every}"
    )
    # steadiness of the reading over a long plain run (what the header shows at any moment)
    reads = []
    for k in range(40_000):
        probed()
        if k % 97 == 0 and probe.overhead is not None:
            reads.append(probe.overhead)
    q = statistics.quantiles(reads, n=20)
    print(
        f"reading over 40,000 steps ({len(reads)} reads): median {statistics.median(reads):.3f},"
        f" p5 {q[0]:.3f}, p95 {q[-1]:.3f}, max {max(reads):.3f}"
    )


if __name__ == "__main__":
    main()

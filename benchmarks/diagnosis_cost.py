"""Cost of a diagnosis and of each automated check, as ratios to a training step measured in the
same run (interleaved: step, diagnose, step, diagnose...).

    python benchmarks/diagnosis_cost.py [--layers 24] [--width 256] [--steps 300]

A diagnosis is what ``probe.findings()`` costs when the dashboard asks (after new data arrived, so
the result is not served from the cache).  Checks run on the latest batch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import trainscope
from trainscope.checklists import CHECKS
from trainscope.diagnostics import diagnose_probe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for _ in range(a.layers):
        mods += [nn.Linear(a.width, a.width), nn.ReLU()]
    model = nn.Sequential(*mods, nn.Linear(a.width, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lf = nn.CrossEntropyLoss()
    probe = trainscope.Probe(model, opt, loss_fn=lf, every=10)
    x = torch.randn(a.batch, a.width)
    y = torch.randint(0, 10, (a.batch,))

    def step() -> float:
        t = time.perf_counter()
        opt.zero_grad()
        lf(model(x), y).backward()
        opt.step()
        return time.perf_counter() - t

    for _ in range(a.steps):  # fill the history
        step()
    t = time.perf_counter()
    diagnose_probe(probe)  # first call (the automatic batch-mixing check waits for the next step)
    first = time.perf_counter() - t
    steps, diags = [], []
    for _ in range(30):
        steps.append(step())
        probe.flush()
        t = time.perf_counter()
        diagnose_probe(probe, refresh=False)
        diags.append(time.perf_counter() - t)
    s, d = statistics.median(steps), statistics.median(diags)
    n_layers = len(probe.layers)
    print(f"model: {a.layers} x Linear({a.width}) + ReLU, batch {a.batch}, {n_layers} tracked layers, "
          f"history {probe.history.samples()} samples / {probe.step_count} steps, {a.threads} thread(s)")
    print(f"training step (probe attached, every=10): {1e3 * s:.2f} ms (median of 30)")
    print(f"diagnosis (new data each time):           {1e3 * d:.2f} ms = {d / s:.2f} steps")
    print(f"first diagnosis (weight symmetry, setup): {1e3 * first:.2f} ms = {first / s:.2f} steps")
    for name in CHECKS:
        opts = {"steps": 50} if name in ("overfit_batch", "input_baseline") else {}
        t = time.perf_counter()
        res = trainscope.run_check(name, probe, **opts)
        dt = time.perf_counter() - t
        print(f"check {name:16s} {1e3 * dt:9.1f} ms = {dt / s:7.1f} steps  ({res.status})")
    probe.detach()


if __name__ == "__main__":
    main()

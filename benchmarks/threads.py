"""Steps/s of a small MLP at one torch thread and at torch's default, with and without trainscope.

What part of a small model's slowdown is trainscope's, and what part is torch's threads?  The
quickstart's MLP (64-128-128-64-10, batch 32, digits) is trained in interleaved rounds of
``--seconds`` each, for every combination of

* threads: 1 and torch's default (``torch.get_num_threads()`` at start, = the CPU count);
* instrumentation: none, a ``trainscope.Probe`` (defaults), and a probe with the dashboard
  widgets attached (updated at their normal rates; no browser is connected, so this measures
  the Python side of the dashboard).

Run:  python benchmarks/threads.py [--seconds 2] [--rounds 5] [--threads 2] [--modes none probe+dashboard]
Prints the median steps/s of each configuration and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn

import trainscope


def make() -> tuple[nn.Module, torch.optim.Optimizer, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
        nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10),
    )
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), nn.CrossEntropyLoss()


def steps_per_s(mode: str, threads: int, seconds: float, X: torch.Tensor, y: torch.Tensor) -> float:
    torch.set_num_threads(threads)
    model, opt, loss_fn = make()
    extra: Any = None
    if mode == "probe":
        extra = trainscope.Probe(model, opt, loss_fn=loss_fn)
    elif mode == "probe+dashboard":
        from trainscope.widgets import watch

        extra = watch(model, opt, loss_fn=loss_fn, display=False)
    g = torch.Generator().manual_seed(0)
    n = 0
    t0 = time.perf_counter()
    while True:
        for _ in range(50):
            idx = torch.randint(len(X), (32,), generator=g)
            loss = loss_fn(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        n += 50
        dt = time.perf_counter() - t0
        if dt >= seconds:
            break
    if extra is not None:
        extra.detach()
        if mode == "probe+dashboard":
            extra.close()
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="*", help="thread counts (default: 1 and torch's)")
    ap.add_argument("--modes", nargs="*", default=["none", "probe", "probe+dashboard"])
    args = ap.parse_args()
    d = load_digits()
    X = torch.tensor(d.data, dtype=torch.float32) / 16
    y = torch.tensor(d.target)
    default = torch.get_num_threads()
    modes = args.modes
    configs = [(m, t) for t in (args.threads or sorted({1, default})) for m in modes]
    res: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    for _ in range(args.rounds):
        for c in configs:
            res[c].append(steps_per_s(c[0], c[1], args.seconds, X, y))
    print(f"torch {torch.__version__}, default threads {default}, {args.rounds} rounds of {args.seconds:g} s")
    print(f"{'threads':>7}  {'instrumentation':<16} {'steps/s (median)':>16}  {'min-max':>13}  vs none")
    for m, t in configs:
        v = res[(m, t)]
        med = statistics.median(v)
        base = statistics.median(res[("none", t)])
        print(f"{t:>7}  {m:<16} {med:>16,.0f}  {min(v):>6,.0f}-{max(v):<6,.0f}  {med / base:.2f}x")


if __name__ == "__main__":
    main()

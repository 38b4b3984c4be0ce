"""trainscope's LR finder against torch-lr-finder (davidtvs/pytorch-lr-finder), same models, data, seeds.

Three questions, each answered on scikit-learn's bundled digits (nothing is downloaded):

1. **Suggestion quality**: train a fresh copy of the model (same seed, same init) for a fixed number
   of steps at each tool's suggested learning rate; compare the held-out loss / accuracy.
2. **Stability across seeds**: the standard deviation of log10(suggestion) over seeds, on ordinary
   (batch 64) and noisy (batch 16) loss curves.
3. **Wall time**: each tool's sweep against the same number of plain training steps, run
   interleaved in one process (each tool between two plain runs, median over rounds);
   ``--clock cpu`` times the training thread's CPU time instead, which a busy shared machine
   disturbs much less.  Timed on a sweep that does not
   diverge (1e-7 .. 1e-2), so both run all ``num_iter`` iterations and the ratio is pure
   bookkeeping (trainscope's includes its exact state capture and restore).  The full sweeps
   (1e-7 .. 10) report how many iterations each tool needed before it stopped on divergence.

Run: ``python benchmarks/lr_finder.py`` (``--quick`` for a smoke run, ``--json out.json``,
``--timing-only``, ``--clock cpu``).
torch-lr-finder must be installed (``pip install -c .ci/constraints.txt torch-lr-finder``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

import trainscope

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch_lr_finder import LRFinder
except ImportError:  # pragma: no cover
    sys.exit("this benchmark needs torch-lr-finder: pip install -c .ci/constraints.txt torch-lr-finder")

START, END, NUM_ITER = 1e-7, 10.0, 100
CLOCK = time.perf_counter  # --clock cpu: time.thread_time (robust when the machine is shared)


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(123)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 16, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x.view(-1, 1, 8, 8))


SETTINGS: dict[str, dict[str, Any]] = {
    "mlp-sgd-b64": {"model": mlp, "opt": lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9), "batch": 64},
    "mlp-sgd-b16 (noisy)": {"model": mlp, "opt": lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9), "batch": 16},
    "cnn-adam-b64": {"model": CNN, "opt": lambda p: torch.optim.Adam(p, lr=1e-4), "batch": 64},
}


def loader(x: torch.Tensor, y: torch.Tensor, batch: int, seed: int) -> torch.utils.data.DataLoader[Any]:
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=True, generator=g)


def fresh(setting: dict[str, Any], seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    m = setting["model"]()
    return m, setting["opt"](m.parameters())


def trainscope_suggest(setting: dict[str, Any], seed: int, data: Any, end: float = END) -> tuple[float | None, int, float]:
    m, o = fresh(setting, seed)
    t0 = CLOCK()
    res = trainscope.lr_find(m, o, nn.CrossEntropyLoss(), loader(*data, setting["batch"], seed), start_lr=START,
                             end_lr=end, num_iter=NUM_ITER)
    return res.suggestion, res.iterations, CLOCK() - t0


def tlf_suggest(setting: dict[str, Any], seed: int, data: Any, end: float = END) -> tuple[float | None, int, float]:
    m, o = fresh(setting, seed)
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        t0 = CLOCK()
        f = LRFinder(m, o, nn.CrossEntropyLoss(), device="cpu")
        f.range_test(loader(*data, setting["batch"], seed), start_lr=START, end_lr=end, num_iter=NUM_ITER)
        f.reset()
        elapsed = CLOCK() - t0
        fig, ax = plt.subplots()
        try:
            _, lr = f.plot(ax=ax, suggest_lr=True)  # its own rule: argmin np.gradient, skip 10 / 5
        except RuntimeError:
            lr = None
        plt.close(fig)
    return (float(lr) if lr is not None else None), len(f.history["lr"]), elapsed


def plain_steps(setting: dict[str, Any], seed: int, data: Any, n: int) -> float:
    m, o = fresh(setting, seed)
    dl = loader(*data, setting["batch"], seed)
    it = iter(dl)
    lossf = nn.CrossEntropyLoss()
    t0 = CLOCK()
    m.train()
    for _ in range(n):
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(dl)
            xb, yb = next(it)
        o.zero_grad()
        loss = lossf(m(xb), yb)
        loss.backward()
        o.step()
    return CLOCK() - t0


def quality(setting: dict[str, Any], seed: int, lr: float | None, train: Any, val: Any, steps: int) -> tuple[float, float]:
    if lr is None:
        return math.nan, math.nan
    m, o = fresh(setting, seed)
    for g in o.param_groups:
        g["lr"] = lr
    dl = loader(*train, setting["batch"], seed + 1000)
    it = iter(dl)
    for _ in range(steps):
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(dl)
            xb, yb = next(it)
        o.zero_grad()
        nn.functional.cross_entropy(m(xb), yb).backward()
        o.step()
    m.eval()
    with torch.no_grad():
        out = m(val[0])
        loss = float(nn.functional.cross_entropy(out, val[1]))
        acc = float((out.argmax(-1) == val[1]).float().mean())
    return (loss if math.isfinite(loss) else 99.0), acc


def med(xs: list[float]) -> float:
    xs = [x for x in xs if math.isfinite(x)]
    return statistics.median(xs) if xs else math.nan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: perf_counter; cpu: this thread's CPU time (torch runs on 1 thread here)")
    ap.add_argument("--timing-only", action="store_true")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.thread_time
    if args.quick:
        args.seeds, args.rounds, args.train_steps = 2, 2, 30
    torch.set_num_threads(1)
    xtr, ytr, xva, yva = digits()
    train, val = (xtr, ytr), (xva, yva)
    report: dict[str, Any] = {"torch": torch.__version__, "seeds": args.seeds, "rounds": args.rounds}
    print(f"torch {torch.__version__}, 1 thread, digits: {len(ytr)} train / {len(yva)} held out, "
          f"{args.seeds} seeds, sweep {START:g}..{END:g} in {NUM_ITER} iterations\n")

    for name in SETTINGS:
        report[name] = {}
    if not args.timing_only:
        quality_section(args, train, val, report)
    timing_section(args, train, report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=float)


def quality_section(args: argparse.Namespace, train: Any, val: Any, report: dict[str, Any]) -> None:
    print("## Suggestion quality and stability\n")
    print("| setting | tool | median suggestion | std log10(lr) over seeds | iterations used | held-out loss "
          f"after {args.train_steps} steps | accuracy |")
    print("|---|---|---|---|---|---|---|")
    for name, s in SETTINGS.items():
        rows: dict[str, dict[str, Any]] = {}
        for tool, fn in (("trainscope", trainscope_suggest), ("torch-lr-finder", tlf_suggest)):
            sug, its, qs, accs = [], [], [], []
            for seed in range(args.seeds):
                lr, n, _ = fn(s, seed, train)
                q, a = quality(s, seed, lr, train, val, args.train_steps)
                sug.append(lr if lr is not None else math.nan)
                its.append(n)
                qs.append(q)
                accs.append(a)
            logs = [math.log10(v) for v in sug if math.isfinite(v)]
            rows[tool] = {"suggestions": sug, "iterations": its, "val_loss": qs, "val_acc": accs,
                          "std_log10": float(np.std(logs)) if logs else math.nan}
            print(f"| {name} | {tool} | {med(sug):.2e} | {rows[tool]['std_log10']:.2f} | {statistics.mean(its):.1f} "
                  f"| {med(qs):.3f} | {med(accs):.3f} |")
        report[name].update(rows)


def timing_section(args: argparse.Namespace, train: Any, report: dict[str, Any]) -> None:
    clock = "wall time" if CLOCK is time.perf_counter else "CPU time of the training thread"
    print(f"\n## {clock.capitalize()} (interleaved, median of rounds; sweep 1e-7..1e-2 so no tool stops early)\n")
    print("| setting | plain step (ms) | trainscope / plain (IQR) | torch-lr-finder / plain (IQR) |")
    print("|---|---|---|---|")
    for name, s in SETTINGS.items():
        plain: list[float] = []
        ratios: dict[str, list[float]] = {"ts": [], "tl": []}
        tools: dict[str, Callable[[], float]] = {
            "ts": lambda s=s: trainscope_suggest(s, 0, train, end=1e-2)[2],
            "tl": lambda s=s: tlf_suggest(s, 0, train, end=1e-2)[2],
        }
        for r in range(args.rounds + 1):
            # plain, tool A, plain, tool B, plain: each tool is compared with the plain runs next to it
            order = ["ts", "tl"] if r % 2 == 0 else ["tl", "ts"]
            p0 = plain_steps(s, 0, train, NUM_ITER)
            a = tools[order[0]]()
            p1 = plain_steps(s, 0, train, NUM_ITER)
            b = tools[order[1]]()
            p2 = plain_steps(s, 0, train, NUM_ITER)
            if r == 0:
                continue  # warm-up round
            ratios[order[0]].append(a / ((p0 + p1) / 2))
            ratios[order[1]].append(b / ((p1 + p2) / 2))
            plain += [p0, p1, p2]
        rt, rl = statistics.median(ratios["ts"]), statistics.median(ratios["tl"])
        p = statistics.median(plain) / NUM_ITER

        def iqr(xs: list[float]) -> str:
            q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
            return f"{q[0]:.2f}-{q[2]:.2f}"

        report[name]["time"] = {"clock": clock, "plain_ms_per_step": p * 1e3, "trainscope_ratio": rt, "tlf_ratio": rl,
                                "trainscope_ratios": ratios["ts"], "tlf_ratios": ratios["tl"]}
        print(f"| {name} | {p * 1e3:.2f} | {rt:.3f}x ({iqr(ratios['ts'])}) | {rl:.3f}x ({iqr(ratios['tl'])}) |")


if __name__ == "__main__":
    main()

"""What a live dashboard costs a training loop in a real kernel (ipykernel, jupyter_client).

Two copies of the same model train in one kernel, alternately, cell by cell (interleaved rounds):
``A`` with a bare probe, ``B`` with ``trainscope.watch`` (probe + dashboard streaming to this
client, which reads IOPub the way a frontend does).  The ratio of median step times is the
dashboard's cost on top of the probe, including comm serialisation and the kernel's IOPub
thread.  No browser: rendering happens on another machine in real use (here it would share
the same 2 cores).

Run:  .venv/bin/python benchmarks/dashboard_kernel_overhead.py [--layers 9|200] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests._jupyter import Kernel

SETUP = r"""
import time, json, torch, torch.nn as nn, trainscope
torch.set_num_threads(1); torch.manual_seed(0)
def mlp(depth, width):
    layers = [nn.Linear(64, width), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))
x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
runs = {}
for name in ("A", "B"):
    torch.manual_seed(0)
    model = mlp({depth}, {width}); opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    if name == "A":
        handle = trainscope.Probe(model, opt, loss_fn=loss_fn, every=10)
    else:
        handle = trainscope.watch(model, opt, loss_fn=loss_fn, every=10)
    runs[name] = (model, opt, loss_fn, handle)
def train(name, seconds):
    model, opt, loss_fn, _ = runs[name]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step(); n += 1
    return (time.perf_counter() - t0) / n
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--depth", type=int, default=5, help="Linear layers (a ReLU after each but the last)"
    )
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        k = Kernel(Path(sys.executable), Path(tmp))
        try:
            k.run(
                SETUP.replace("{depth}", str(args.depth)).replace("{width}", str(args.width)),
                timeout=300,
            )
            times: dict[str, list[float]] = {"A": [], "B": []}
            for r in range(args.rounds):
                for name in ("A", "B") if r % 2 == 0 else ("B", "A"):  # alternate who goes first
                    r = k.run(
                        f"print('T', json.dumps(train('{name}', {args.seconds})))", timeout=300
                    )
                    times[name].append(r.value("T"))
            extra = k.run(
                "d = runs['B'][3]; print('D', json.dumps({'updates': d.update_count, 'delivery': d.delivery,"
                " 'layers': len(d.probe.layers), 'ui': d.header.state.get('ui_overhead')}))"
            ).value("D")
        finally:
            k.close()
    a, b = statistics.median(times["A"]), statistics.median(times["B"])
    # rounds run back to back, so each round's ratio cancels most of the machine's load drift
    paired = sorted(tb / ta for ta, tb in zip(times["A"], times["B"], strict=True))
    print(json.dumps({
        "layers": extra["layers"], "probe_ms": round(a * 1e3, 3), "probe+dashboard_ms": round(b * 1e3, 3),
        "ratio_of_medians": round(b / a, 3), "median_paired_ratio": round(statistics.median(paired), 3),
        "paired_ratios": [round(r, 3) for r in paired], "rounds": args.rounds, "dashboard_updates": extra["updates"],
        "delivery": extra["delivery"], "A": [round(t * 1e3, 3) for t in times["A"]], "B": [round(t * 1e3, 3) for t in times["B"]],
    }))  # fmt: skip


if __name__ == "__main__":
    main()

"""What the live dashboard costs the training loop (no browser; comm messages are serialised
to JSON as a kernel would, then dropped).

Measures, on this machine:

1. the dashboard's work at a step boundary when no update is due (``Dashboard._on_step``), per
   call -- what every optimizer step pays;
2. the cost of one update of each kind (header + curves, layer table, per-layer views, diagnosis)
   and the bytes / messages it sends, for a small MLP and a 200-layer model after 20k steps;
3. whole training steps, probe alone vs probe + dashboard, interleaved rounds, median ratio.

Run:  .venv/bin/python benchmarks/dashboard_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import comm
import torch
from torch import nn

import trainscope

SENT: list[tuple[str, int]] = []


def _publish(
    self: Any,
    msg_type: str,
    data: Any = None,
    metadata: Any = None,
    buffers: Any = None,
    **keys: Any,
) -> None:
    # what a kernel does on the training thread: JSON-encode the message (buffers go as-is)
    body = json.dumps(data, default=str)
    SENT.append((msg_type, len(body) + sum(len(memoryview(b).cast("B")) for b in buffers or [])))


comm.DummyComm.publish_msg = _publish  # type: ignore[method-assign]


def mlp(depth: int, width: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(64, width), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def train_steps(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    n: int,
) -> float:
    t = time.perf_counter()
    for _ in range(n):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t) / n


def per_call(fn: Any, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def parts(name: str, depth: int, width: int, steps: int) -> dict[str, Any]:
    """Cost and size of each kind of update after ``steps`` steps of training."""
    torch.manual_seed(0)
    model = mlp(depth, width)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    dash = trainscope.watch(
        model, opt, loss_fn=loss_fn, every=10, display=False, total_steps=steps * 2
    )
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dash.probe.flush()
    probe = dash.probe
    out: dict[str, Any] = {"model": name, "layers": len(probe.layers), "steps": steps}

    # 1. nothing due: the throttle is not ready
    dash._light._last = time.monotonic() + 1e9
    dash._cell_running = True
    out["on_step_idle_us"] = per_call(lambda: dash._on_step(probe), 20_000) * 1e6
    dash._light.reset()
    # keep the step-boundary hook from updating by itself while parts are timed
    dash._light.interval = dash._heavy.interval = 1e9

    def more_steps(k: int = 10) -> None:
        # new data since the last update, as during training (flags and caches are reset too)
        for _ in range(k):
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        probe.flush()

    def timed(label: str, fn: Any, reps: int = 5) -> None:
        costs, sizes, msgs = [], [], []
        for _ in range(reps):
            more_steps()
            for k in dash._dirty:
                dash._dirty[k] = True
            dash._table_step = -2
            dash._view_keys.clear()
            dash.curves._versions.clear()
            SENT.clear()
            t = time.perf_counter()
            fn()
            costs.append(time.perf_counter() - t)
            sizes.append(sum(b for _, b in SENT))
            msgs.append(len(SENT))
        out[f"{label}_ms"] = statistics.median(costs) * 1e3
        out[f"{label}_kB"] = statistics.median(sizes) / 1e3
        out[f"{label}_msgs"] = int(statistics.median(msgs))

    timed("header", dash._push_header)
    timed("curves", lambda: dash._push_curves(force=True))
    timed("table", lambda: dash._push_table(force=True))
    for tab, label in ((1, "layers_view"), (2, "depth_view"), (3, "weights_view")):
        dash.tabs.selected_index = tab
        timed(label, lambda: dash._push_views(force=True))
    dash.tabs.selected_index = 0
    timed("diagnosis", lambda: dash._push_diagnosis(force=True), reps=3)
    dash.close()
    probe.detach()
    return out


def ratio(name: str, depth: int, width: int, rounds: int, n: int) -> dict[str, Any]:
    """Whole steps: probe alone vs probe + dashboard, interleaved, same every."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    setups = {}
    for mode in ("probe", "dashboard"):
        model = mlp(depth, width)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        loss_fn = nn.CrossEntropyLoss()
        if mode == "probe":
            handle: Any = trainscope.Probe(model, opt, loss_fn=loss_fn, every=10)
        else:
            handle = trainscope.watch(model, opt, loss_fn=loss_fn, every=10, display=False)
            handle._cell_running = True
        setups[mode] = (model, opt, loss_fn, handle)
    times: dict[str, list[float]] = {m: [] for m in setups}
    for _ in range(rounds):
        for mode, (model, opt, loss_fn, _h) in setups.items():
            times[mode].append(train_steps(model, opt, loss_fn, x, y, n))
    dash = setups["dashboard"][3]
    res = {
        "model": name,
        "probe_ms": statistics.median(times["probe"]) * 1e3,
        "dashboard_ms": statistics.median(times["dashboard"]) * 1e3,
        "updates": dash.update_count,
    }
    res["ratio"] = res["dashboard_ms"] / res["probe_ms"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps = 2000 if args.quick else 20_000
    rows = [
        parts("MLP 5 Linear", 5, 128, steps),
        parts("MLP 100 Linear (200 layers)", 100, 64, steps // 4),
    ]
    for r in rows:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))
    rounds = 5 if args.quick else 9
    for spec in (("MLP 5 Linear", 5, 128), ("MLP 100 Linear (200 layers)", 100, 64)):
        r = ratio(*spec, rounds=rounds, n=100 if args.quick else 300)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

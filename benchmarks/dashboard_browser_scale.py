"""Does the dashboard stay smooth with 200 layers, and after 100k steps? (JupyterLab + Chromium)

Two scenarios, each a live training cell in JupyterLab 4 driven by Playwright + headless
Chromium (the same harness as ``tests/test_e2e_dashboard.py``):

* ``layers200``: a 200-layer MLP (100 Linear + 99 ReLU + the rest) trains for ``--seconds`` with the
  Layers tab open (the table re-rendered with every update, the heatmaps of the selected layer);
* ``steps100k``: a small MLP trains for 100 000 steps with the Curves tab open.

Measured in the browser while the cell runs: long tasks (main-thread work > 50 ms, from a
``PerformanceObserver``), the gaps between visible header updates, and the size of the comm
messages; in the kernel: steps/s and the dashboard's own share of wall time.  Screenshots go to
``.artifacts/scale/``.

Run:  .venv/bin/python benchmarks/dashboard_browser_scale.py [--scenario layers200|steps100k|both]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests._browser import NotebookPage, Server, browser, require_browser

ART = Path(__file__).resolve().parents[1] / ".artifacts" / "scale"

SETUP = r"""
import time, json, torch, torch.nn as nn, trainscope
torch.set_num_threads(1); torch.manual_seed(0)
def mlp(depth, width):
    layers = [nn.Linear(64, width), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))
model = mlp({depth}, {width}); opt = torch.optim.SGD(model.parameters(), lr=0.01); loss_fn = nn.CrossEntropyLoss()
x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
scope = trainscope.watch(model, opt, loss_fn=loss_fn, every={every}, total_steps={steps})
print("LAYERS", len(scope.probe.layers))
"""

TRAIN = r"""
t0 = time.perf_counter(); n = 0
while n < {steps} and time.perf_counter() - t0 < {seconds}:
    loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step(); n += 1
    if n % 500 == 0:
        scope.log(acc=float(n % 7) / 7)
print("DONE", json.dumps({"steps": n, "seconds": time.perf_counter() - t0}))
"""

REPORT = r"""
import comm
st = scope.header.state
sizes = {
    "curves_raw_points": int(scope.curves.raw[0].x.size), "table_rows": len(scope.table.rows),
    "table_json_kB": round(len(json.dumps(scope.table.rows)) / 1e3, 1),
    "history_MB": round(scope.history.memory_bytes() / 1e6, 1), "updates": scope.update_count,
    "ui_overhead": st.get("ui_overhead"), "probe_overhead": st.get("overhead"),
}
print("SIZES", json.dumps(sizes))
"""

OBSERVE = """() => {
  window.__ts = {long: [], updates: []};
  new PerformanceObserver(l => { for (const e of l.getEntries()) window.__ts.long.push(e.duration); })
    .observe({type: 'longtask', buffered: false});
  const el = document.querySelector('.trainscope-dashboard .trainscope-header');
  new MutationObserver(() => window.__ts.updates.push(performance.now()))
    .observe(el, {childList: true, subtree: true, characterData: true});
}"""


def scenario(
    name: str, depth: int, width: int, every: int, steps: int, seconds: float, tab: str
) -> dict[str, object]:
    scratch = Path(tempfile.mkdtemp(prefix=f"trainscope-scale-{name}-"))
    nbdir = scratch / "nb"
    nbdir.mkdir()

    def fill(template: str, **values: object) -> str:
        for k, v in values.items():
            template = template.replace("{" + k + "}", str(v))
        return template

    cells = [
        fill(SETUP, depth=depth, width=width, every=every, steps=steps),
        fill(TRAIN, steps=steps, seconds=seconds),
        REPORT,
    ]
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "metadata": {},
                "source": c,
                "outputs": [],
                "execution_count": None,
            }
            for c in cells
        ],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (nbdir / "scale.ipynb").write_text(json.dumps(nb))
    server = Server("lab", scratch, nbdir)
    try:
        with browser(scratch / "profile") as ctx:
            page = NotebookPage(ctx.new_page(), server, "scale.ipynb")
            page.run_cell(0, timeout=300)
            page.page.wait_for_selector(".trainscope-dashboard .trainscope-header", timeout=60_000)
            page.page.locator(
                f".trainscope-dashboard .lm-TabBar-tab:has-text('{tab}')"
            ).first.click()
            page.page.evaluate(OBSERVE)
            t0 = time.time()
            page.run_cell(1, wait=False)
            page.wait_cell_started(1)
            time.sleep(min(seconds * 0.6, 20))
            ART.mkdir(parents=True, exist_ok=True)
            page.screenshot(".trainscope-dashboard", f"{name}_live.png", ART)
            page.wait_cell_done(1, timeout=seconds + 600)
            wall = time.time() - t0
            done = json.loads(page.output_text(1).split("DONE", 1)[1].strip().splitlines()[0])
            obs = page.page.evaluate("() => window.__ts")
            page.run_cell(2, timeout=120)
            sizes = json.loads(page.output_text(2).split("SIZES", 1)[1].strip().splitlines()[0])
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    ups = sorted(obs["updates"])
    gaps = [b - a for a, b in itertools.pairwise(ups)]
    longs = obs["long"]
    return {
        "scenario": name,
        "steps": done["steps"],
        "steps_per_s": round(done["steps"] / done["seconds"], 1),
        "train_wall_s": round(wall, 1),
        "browser_long_tasks": len(longs),
        "long_task_ms_total": round(sum(longs)),
        "long_task_ms_max": round(max(longs), 1) if longs else 0,
        "header_updates_seen": len(ups),
        "header_gap_ms_median": round(sorted(gaps)[len(gaps) // 2]) if gaps else None,
        "header_gap_ms_max": round(max(gaps)) if gaps else None,
        **sizes,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="both", choices=["layers200", "steps100k", "both"])
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    require_browser_ok = True
    try:
        require_browser()
    except BaseException as e:  # pytest.skip outside pytest
        print(f"browser not available: {e}")
        require_browser_ok = False
    if not require_browser_ok:
        return
    if args.scenario in ("layers200", "both"):
        print(json.dumps(scenario("layers200", 100, 64, 10, 10**9, args.seconds, "Layers")))
    if args.scenario in ("steps100k", "both"):
        print(json.dumps(scenario("steps100k", 3, 32, 50, 100_000, 600.0, "Curves")))


if __name__ == "__main__":
    main()

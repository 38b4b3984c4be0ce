"""trainscope.search: random search with successive halving, run directories, executors, the panel."""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import multiprocessing as mp
import random
from typing import Any

import numpy as np
import pytest
import torch

import trainscope
from trainscope.search import Report, TrialStopped, choice, loguniform, randint, search, uniform

SPACE = {"lr": loguniform(1e-4, 1.0), "width": choice([16, 32, 64]), "momentum": uniform(0.0, 0.99)}


def quality(config: dict[str, Any]) -> float:
    """A deterministic 'final loss': best at lr = 1e-2, width 64."""
    return (math.log10(config["lr"]) + 2.0) ** 2 + (64 - config["width"]) / 640


def curve_fn(config: dict[str, Any], report: Report) -> None:
    """Loss falls as 1/step towards the config's quality (importable: the process-pool test uses it)."""
    assert report.budget is not None
    for step in range(1, report.budget + 1):
        report(step, quality(config) + 1.0 / step)


def test_successive_halving_stops_the_weak_trials_and_keeps_the_best() -> None:
    saw_stop: list[int] = []

    def fn(config: dict[str, Any], report: Report) -> None:
        try:
            curve_fn(config, report)
        except TrialStopped:
            saw_stop.append(report.trial)
            raise

    res = search(fn, SPACE, trials=20, budget=27, rungs=2, eta=3, seed=1, display=False)
    assert res.milestones == [3, 9]
    c = res.counts()
    assert c.get("completed", 0) + c.get("stopped", 0) == 20 and c["stopped"] >= 10, c
    stopped = [t for t in res.trials if t.status == "stopped"]
    assert sorted(saw_stop) == [t.id for t in stopped]  # report raised TrialStopped in train_fn
    assert all(t.step in (3, 9) and t.stopped_at == t.step for t in stopped)
    assert all(t.step == 27 for t in res.trials if t.status == "completed")
    assert res.steps_used < 0.5 * 20 * 27
    # noise-free curves: the best sampled configuration is always the best at every rung -> never stopped
    truth = min(res.trials, key=lambda t: quality(t.config))
    assert truth.status == "completed" and res.best is truth
    assert res.best_config == truth.config
    assert res.best.value == pytest.approx(quality(truth.config) + 1 / 27)
    # every stop obeyed the rule: worse than the best 1/eta of what had reached that rung before it
    for t in stopped:
        k = [3, 9].index(t.step)
        before = [u for u in res.trials if u.id < t.id and u.step is not None and u.step >= t.step]
        vals = sorted([quality(u.config) + 1 / [3, 9][k] for u in before] + [t.value])
        assert t.value > vals[max(len(vals) // 3 - 1, 0)]


def test_random_search_without_rungs_runs_every_trial_and_reproduces() -> None:
    seen: dict[int, float] = {}

    def fn(config: dict[str, Any], report: Report) -> float:
        seen[report.trial] = float(torch.rand(1))  # the trial's own seed drives the global RNG
        np.random.rand()
        random.random()
        return quality(config)

    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(6)
    before = (torch.get_rng_state().clone(), repr(np.random.get_state()), random.getstate())
    a = search(fn, SPACE, trials=6, rungs=0, seed=7, display=False)
    after = (torch.get_rng_state(), repr(np.random.get_state()), random.getstate())
    assert torch.equal(before[0], after[0]) and before[1:] == after[1:]  # global RNGs put back
    first = dict(seen)
    b = search(fn, SPACE, trials=6, rungs=0, seed=7, display=False)
    assert [t.config for t in a.trials] == [t.config for t in b.trials] and seen == first
    assert all(t.status == "completed" for t in a.trials) and a.best is not None
    c = search(fn, SPACE, trials=6, rungs=0, seed=8, display=False)
    assert [t.config for t in c.trials] != [t.config for t in a.trials]
    # include: the default configuration is trial 0
    d = search(fn, SPACE, trials=3, rungs=0, include=[{"lr": 0.1, "width": 32}], display=False)
    assert d.trials[0].config["lr"] == 0.1 and d.trials[0].config["width"] == 32
    assert 0.0 <= d.trials[0].config["momentum"] <= 0.99


def test_a_failing_trial_is_recorded_and_the_search_goes_on() -> None:
    def fn(config: dict[str, Any], report: Report) -> None:
        if config["width"] == 32:
            raise RuntimeError("CUDA out of memory (pretend)")
        if config["width"] == 16:
            return None  # never reports
        curve_fn(config, report)

    res = search(fn, SPACE, trials=12, budget=9, rungs=1, seed=2, display=False)
    failed = [t for t in res.trials if t.status == "failed"]
    assert failed and all(t.config["width"] in (16, 32) for t in failed)
    for t in failed:
        if t.config["width"] == 32:
            assert t.error is not None and t.error.startswith("RuntimeError: CUDA out of memory (pretend)")
            assert "test_search.py" in t.error
        else:
            assert t.error is not None and "reported no 'val_loss'" in t.error
    assert any(t.status == "completed" for t in res.trials)
    assert res.best is not None and res.best.config["width"] == 64
    assert "failed" in str(res) and "best: trial" in str(res)


def test_a_trial_that_swallows_the_stop_is_still_stopped() -> None:
    calls: list[tuple[int, str]] = []

    def fn(config: dict[str, Any], report: Report) -> None:
        for step in range(1, 10):
            try:
                report(step, quality(config) + 1 / step)
            except TrialStopped:
                calls.append((report.trial, "stopped"))
        return None

    res = search(fn, SPACE, trials=6, budget=9, rungs=1, seed=3, display=False)
    stopped = [t for t in res.trials if t.status == "stopped"]
    assert stopped
    for t in stopped:  # every report after the cut raised again; the value is the one at the cut
        assert calls.count((t.id, "stopped")) == 9 - 3 + 1 and t.step == 3


def test_ctrl_c_stops_the_search_and_keeps_the_table(tmp_path: Any) -> None:
    def fn(config: dict[str, Any], report: Report) -> None:
        if report.trial == 2:
            raise KeyboardInterrupt
        if report.trial == 1:
            report(1, float("nan"))  # a non-finite value never passes a rung
            report(3, float("nan"))
        curve_fn(config, report)

    torch.manual_seed(9)
    state = torch.get_rng_state().clone()
    with pytest.raises(KeyboardInterrupt):
        search(fn, SPACE, trials=5, budget=9, rungs=1, run_dir=tmp_path / "s", display=False)
    assert torch.equal(torch.get_rng_state(), state)
    doc = json.loads((tmp_path / "s" / "search.json").read_text())
    assert [r["status"] for r in doc["trials"]] == ["completed", "stopped", "interrupted", "pending", "pending"]
    assert not doc["finished"]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: loguniform(0, 1), "low > 0"),
        (lambda: loguniform(1e-1, 1e-3), "high > low"),
        (lambda: uniform(1, 1), "high > low"),
        (lambda: uniform(0, float("inf")), "finite"),
        (lambda: choice([]), "at least one option"),
        (lambda: choice("abc"), "list of options"),
        (lambda: randint(3, 3), "high > low"),
        (lambda: randint(1.5, 3), "integer"),
        (lambda: search(curve_fn, {"lr": [1e-3, 1e-2]}), r"choice\(\[0.001, 0.01\]\)"),
        (lambda: search(curve_fn, {}), "non-empty dict"),
        (lambda: search(curve_fn, [("lr", loguniform(1e-3, 1))]), "non-empty dict"),
        (lambda: search(curve_fn, {"lr": 1e-3}), "only constants"),
        (lambda: search(curve_fn, SPACE, trials=0), "trials must be >= 1"),
        (lambda: search(curve_fn, SPACE, eta=1), "eta must be >= 2"),
        (lambda: search(curve_fn, SPACE, budget=5, rungs=3), r"use rungs <= 1"),
        (lambda: search(curve_fn, SPACE, mode="minimize"), "mode"),
        (lambda: search(curve_fn, SPACE, include=[{"lr": 1e-3, "depth": 3}]), "not in the space"),
        (lambda: search(curve_fn, SPACE, executor="threads"), "concurrent.futures.Executor"),
        (lambda: search("train", SPACE), "train_fn must be a function"),
    ],
)
def test_bad_spaces_and_arguments_are_refused_with_a_reason(make: Any, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_report_refuses_bad_values_and_the_trial_records_why() -> None:
    def fn(config: dict[str, Any], report: Report) -> None:
        report(1, "low")

    res = search(fn, SPACE, trials=1, budget=3, rungs=0, display=False)
    assert res.trials[0].status == "failed" and "report value must be a number" in (res.trials[0].error or "")


def test_trial_run_directories_open_like_any_run(tmp_path: Any) -> None:
    from torch import nn

    def fn(config: dict[str, Any], report: Report) -> None:
        torch.manual_seed(report.seed)
        model = nn.Sequential(nn.Linear(4, config["width"]), nn.ReLU(), nn.Linear(config["width"], 2))
        opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
        loss_fn = nn.CrossEntropyLoss()
        if report.trial % 2 == 0:
            report.probe(model, opt, loss_fn=loss_fn)
        x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
        for step in range(1, report.budget + 1):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            report(step, loss.item())

    root = tmp_path / "search"
    res = search(fn, SPACE, trials=4, budget=9, rungs=1, run_dir=root, display=False)
    assert res.run_dir == str(root)
    doc = json.loads((root / "search.json").read_text())
    assert doc["finished"] and [r["trial"] for r in doc["trials"]] == [0, 1, 2, 3]
    assert [r["status"] for r in doc["trials"]] == [t.status for t in res.trials]
    for t in res.trials:
        run = trainscope.open(t.logdir, display=False)
        name = "search/val_loss" if t.id % 2 == 0 else "val_loss"
        s = run.history.scalar(name)
        assert len(s["step"]) == t.step and s["mean"][-1] == pytest.approx(t.value, rel=1e-6)
        assert run.finished
        if t.id % 2 == 0:
            assert run.history.samples() > 0 and len(run.history.layers) > 0  # the probe's own record
    runs = trainscope.open(root, display=False)
    assert len(runs.runs) == 4
    with pytest.raises(FileExistsError, match="already holds a search"):
        search(fn, SPACE, trials=2, budget=9, run_dir=root, display=False)


def test_a_thread_pool_runs_trials_in_parallel_with_shared_rungs() -> None:
    with cf.ThreadPoolExecutor(max_workers=3) as ex:
        res = search(curve_fn, SPACE, trials=12, budget=27, rungs=2, seed=1, executor=ex, display=False)
    c = res.counts()
    assert set(c) <= {"completed", "stopped"} and c.get("stopped", 0) >= 4, c
    truth = min(res.trials, key=lambda t: quality(t.config))
    assert res.best is not None and res.best.status == "completed"
    assert quality(res.best.config) <= sorted(quality(t.config) for t in res.trials)[2]  # among the best 3
    assert truth.step is not None and truth.step >= 9


@pytest.mark.slow
def test_a_process_pool_runs_trials_with_rungs_shared_through_a_manager() -> None:
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as ex:
        res = search(curve_fn, SPACE, trials=8, budget=27, rungs=2, seed=1, executor=ex, display=False)
    c = res.counts()
    assert set(c) <= {"completed", "stopped"} and c.get("stopped", 0) >= 2, (c, [t.error for t in res.trials])
    assert res.best is not None and res.best.status == "completed"
    assert all(t.reports for t in res.trials)  # the children's reports came back


def test_the_panel_follows_the_search_live(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainscope.widgets import search_panel

    panels: list[Any] = []

    def show(result: Any) -> Any:
        p = search_panel.SearchPanel(result, interval=0.0)
        panels.append(p)
        return p

    monkeypatch.setattr(search_panel, "show_search", show)
    seen: list[str] = []

    def fn(config: dict[str, Any], report: Report) -> None:
        if report.trial == 5:
            seen.append(panels[0].header.value)
        if report.trial == 3:
            raise ValueError("diverged")
        curve_fn(config, report)

    res = search(fn, SPACE, trials=8, budget=9, rungs=1, seed=1, display=True)
    (panel,) = panels
    assert seen and seen[0].startswith("search running: 5 / 8 trials done")
    assert panel.header.value.startswith("search finished: 8 / 8 trials done")
    rows = panel.rows(res)
    assert len(rows) == 8 and len(panel.table.children) == 9 * 7
    assert rows[0][0] == str(res.best.id)  # best first  # type: ignore[union-attr]
    assert any(r[-1].startswith("failed: ValueError: diverged") for r in rows)
    names, coords, shown = panel.coordinates(res)
    assert names == ["lr", "width", "momentum", "val_loss"]
    assert coords.shape == (len(shown), 4) and np.all((coords >= 0) & (coords <= 1))
    best_row = shown.index(res.best)
    assert coords[best_row, -1] == 0.0  # the best trial sits at the bottom of the metric axis
    assert panel.lines.colors[best_row] == "#440154"  # and is drawn darkest
    assert panel.fig in panel._plot.children and res.listener_errors == []


@pytest.mark.kernel
@pytest.mark.slow
def test_lecture_notebook_search_beats_the_default_and_shows_the_landscape(tmp_path: Any) -> None:
    """examples/lecture_landscape_search.ipynb in a real kernel: random search with successive halving
    beats the default configuration on digits within its budget, and both slices are drawn."""
    import re
    from pathlib import Path

    from .test_examples import _run_notebook

    path = Path(__file__).parent.parent / "examples" / "lecture_landscape_search.ipynb"
    nb = _run_notebook(path, {}, tmp_path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    text = ["".join(o.get("text", "") for o in c.outputs) for c in code]
    views = [sum(1 for o in c.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})) for c in code]
    _setup, _search, table, _panel, train, python_slice = text
    assert views[1] == 1 and views[3] == 1, views  # the live search panel, the landscape panel
    default = float(re.search(r"default val_loss ([\d.]+) \(completed, 27 epochs\)", table)[1])  # type: ignore[index]
    best = float(re.search(r"best val_loss ([\d.]+)", table)[1])  # type: ignore[index]
    assert best < 0.75 * default, table
    used = int(re.search(r"epochs trained (\d+) of 540", table)[1])  # type: ignore[index]
    assert used < 540 / 2, table
    assert "20 trial runs" in table
    assert "1-D slice (filter-normalized, eval mode)" in train and "2-D slice (filter-normalized, eval mode)" in train
    lowest = re.search(r"lowest [\d.e+-]+ at \(([+-][\d.e+-]+)\)", python_slice)
    assert lowest and abs(float(lowest[1])) <= 0.1 + 1e-9, python_slice  # the trained weights sit at the bottom
    assert "weights unchanged: True | RNG unchanged: True" in python_slice

"""trainscope.loss_landscape and the loss_landscape action: exact restore, correct slices, refusals."""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import trainscope
from trainscope.landscape import filter_normalize, loss_landscape, random_directions


def _state(model: nn.Module) -> dict[str, Any]:
    """Everything the slice must leave as it was, as raw bytes."""
    def raw(t: torch.Tensor) -> bytes:
        return t.detach().cpu().contiguous().numpy().tobytes()

    return {
        "params": [(n, raw(p), p.requires_grad, None if p.grad is None else raw(p.grad)) for n, p in model.named_parameters()],
        "buffers": [(n, raw(b)) for n, b in model.named_buffers()],
        "modes": [m.training for m in model.modules()],
        "torch": raw(torch.get_rng_state()),
        "numpy": repr(np.random.get_state()),
        "python": random.getstate(),
        "grad_mode": torch.is_grad_enabled(),
    }


def _model() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Dropout(0.3), nn.Linear(4 * 6 * 6, 5))
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 5, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):  # real gradients, moved BN statistics, train mode
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, (x, y)


@pytest.mark.parametrize(("dims", "mode"), [(1, "eval"), (2, "eval"), (1, "train"), (2, "train")])
def test_model_and_rng_restored_bit_identically(dims: int, mode: str) -> None:
    model, batch = _model()
    np.random.seed(3)
    random.seed(4)
    before = _state(model)
    res = loss_landscape(model, nn.CrossEntropyLoss(), batch, dims=dims, points=5, mode=mode)
    assert _state(model) == before
    assert res.losses.shape == ((5,) if dims == 1 else (5, 5)) and np.isfinite(res.losses).all()
    # the grid's center is the weights themselves: alpha = beta = 0 reproduces the center loss exactly
    center = res.losses[2] if dims == 1 else res.losses[2, 2]
    assert center == res.center_loss


def test_restored_when_the_loss_raises_or_is_interrupted() -> None:
    model, (x, y) = _model()
    model.eval()
    before = _state(model)
    calls = {"n": 0}

    def failing(model: nn.Module, batch: Any) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("boom at point 3")
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    with pytest.raises(RuntimeError, match="boom"):
        loss_landscape(model, None, (x, y), points=7, step_fn=failing)
    assert _state(model) == before

    def interrupted(model: nn.Module, batch: Any) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    with pytest.raises(KeyboardInterrupt):
        loss_landscape(model, None, (x, y), dims=2, points=5, step_fn=interrupted)
    assert _state(model) == before


def test_filter_normalization_matches_every_filter_norm() -> None:
    model, _ = _model()
    weights = list(model.parameters())
    (d,) = random_directions(weights, seed=7, count=1)
    for w, di in zip(weights, d, strict=True):
        assert di.shape == w.shape
        if w.dim() <= 1:  # biases and BatchNorm scale / shift: zeroed
            assert torch.count_nonzero(di) == 0
            continue
        dn = di.reshape(di.shape[0], -1).norm(dim=1)
        wn = w.detach().reshape(w.shape[0], -1).norm(dim=1)
        torch.testing.assert_close(dn, wn, rtol=1e-5, atol=1e-7)
        assert not torch.allclose(di, w)  # a random direction, not the weight itself
    # the same seed gives the same directions; another seed does not
    (d2,) = random_directions(weights, seed=7, count=1)
    (d3,) = random_directions(weights, seed=8, count=1)
    assert all(torch.equal(a, b) for a, b in zip(d, d2, strict=True))
    assert not torch.equal(d[0], d3[0])
    # 1-D parameters kept as one filter when asked
    (k,) = filter_normalize([torch.randn(5)], [torch.full((5,), 2.0)], ignore_1d=False)
    torch.testing.assert_close(k.norm(), torch.tensor(2.0 * 5 ** 0.5))


def test_the_grid_is_the_loss_along_the_direction() -> None:
    model, (x, y) = _model()
    model.eval()
    names = [n for n, _ in model.named_parameters()]
    gen = torch.Generator().manual_seed(1)
    d = {n: torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()}
    res = loss_landscape(model, nn.CrossEntropyLoss(), (x, y), points=5, span=0.5, directions=[d])
    assert res.norm == "given" and res.names == names
    for a, got in zip(res.alphas, res.losses, strict=True):
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in moved.named_parameters():
                p.add_(d[n], alpha=float(a))
        with torch.no_grad():
            want = float(nn.functional.cross_entropy(moved(x), y))
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7)


def test_the_random_slice_moves_along_the_filter_normalized_directions() -> None:
    model, batch = _model()
    weights = [p for p in model.parameters() if p.requires_grad]
    dirs = random_directions(weights, seed=5, count=2)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    auto = loss_landscape(model, nn.CrossEntropyLoss(), batch, dims=2, points=5, seed=5)
    given = loss_landscape(model, nn.CrossEntropyLoss(), batch, dims=2, points=5,
                           directions=[dict(zip(names, d, strict=True)) for d in dirs])
    assert auto.norm == "filter" and np.array_equal(auto.losses, given.losses)


def test_a_trained_model_sits_at_the_bottom_of_its_slice() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data[:400], dtype=torch.float32) / 16
    y = torch.tensor(digits.target[:400])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    res = trainscope.loss_landscape(model, nn.CrossEntropyLoss(), (x, y), dims=1, points=21, span=1.0)
    step = 2.0 / 20
    assert abs(res.argmin[0]) <= step + 1e-9, res.summary()
    assert res.sharpness["curvature"][0] > 0 and res.sharpness["max_increase"] > 0.5
    # and in 2-D, along two nearly orthogonal random directions
    res2 = trainscope.loss_landscape(model, nn.CrossEntropyLoss(), (x, y), dims=2, points=7, span=0.5)
    assert abs(res2.argmin[0]) <= 1 / 6 + 1e-9 and abs(res2.argmin[1]) <= 1 / 6 + 1e-9
    assert res2.direction_cosine is not None and abs(res2.direction_cosine) < 0.1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dims": 3}, "dims must be <= 2"),
        ({"points": 2}, "points must be >= 3"),
        ({"dims": 2, "points": 500}, "points must be <= 101"),
        ({"span": 0.0}, "span"),
        ({"mode": "test"}, "mode"),
        ({"directions": [{}], "dims": 2}, "list of 2 direction"),
        ({"directions": [{"nope": torch.zeros(1)}]}, "does not train"),
        ({"directions": [{"0.weight": torch.zeros(3)}]}, "shape"),
        ({"directions": [{"0.weight": torch.full((4, 1, 3, 3), float("nan"))}]}, "NaN"),
    ],
)
def test_bad_arguments_are_refused_before_anything_changes(kwargs: dict[str, Any], match: str) -> None:
    model, batch = _model()
    before = _state(model)
    with pytest.raises((ValueError, TypeError), match=match):
        loss_landscape(model, nn.CrossEntropyLoss(), batch, **kwargs)
    assert _state(model) == before


def test_missing_target_and_no_loss_are_refused() -> None:
    model, (x, _) = _model()
    with pytest.raises(ValueError, match="no target"):
        loss_landscape(model, nn.CrossEntropyLoss(), x)
    with pytest.raises(TypeError, match="loss_fn"):
        loss_landscape(model, None, (x, x))


def _probe_run() -> tuple[nn.Module, torch.optim.Optimizer, Any, nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    probe = trainscope.Probe(model, opt, loss_fn=loss_fn, every=1)
    return model, opt, probe, loss_fn, (torch.randn(32, 8), torch.randint(0, 3, (32,)))


def test_the_action_runs_at_a_step_boundary_and_lands_on_the_timeline() -> None:
    model, opt, probe, loss_fn, (x, y) = _probe_run()
    try:
        t0 = probe.request("loss_landscape")
        assert t0.status == "refused" and "needs a batch" in t0.message
        bad = probe.request("loss_landscape", dims=2, points=80)
        assert bad.status == "refused" and "points <= 51" in bad.message
        for i in range(4):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            if i == 1:
                t = probe.request("loss_landscape", dims=2, points=5, span=0.5)
                assert t.status == "pending"
                steps = probe.step_count
        assert t.status == "applied", t.message
        assert "2-D slice" in t.message and "training batch" in t.message
        ev = [e for e in probe.history.events if e.kind == "loss_landscape"]
        assert len(ev) == 1 and ev[0].step == steps + 1
        assert np.asarray(ev[0].data["losses"]).shape == (5, 5) and ev[0].data["dims"] == 2
        iv = [e for e in probe.history.events if e.kind == "intervention"]
        assert iv[-1].data["action"] == "loss_landscape" and iv[-1].data["undoable"] is False
        # nothing of the slice was recorded as a loss: 4 training losses, no validation loss
        assert "val_loss" not in probe.history.scalar_names()
        assert probe.step_count == 4
    finally:
        probe.detach()


def test_the_standalone_call_pauses_an_attached_probe() -> None:
    model, _opt, probe, loss_fn, batch = _probe_run()
    try:
        before = _state(model)
        trainscope.loss_landscape(model, loss_fn, batch, points=5)
        probe.flush()
        assert "val_loss" not in probe.history.scalar_names() and "loss" not in probe.history.scalar_names()
        assert _state(model) == before
    finally:
        probe.detach()


# ---------------------------------------------------------------------------- the panel (no browser)
def test_panel_draws_the_latest_slice_and_capacity_from_a_live_probe() -> None:
    from trainscope.widgets import landscape_panel

    model, opt, probe, loss_fn, (x, y) = _probe_run()
    try:
        panel = landscape_panel(probe, interval=0.0)
        assert not panel.btn1.disabled and panel._slot.children == ()
        for i in range(12):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            if i == 2:
                panel.btn1.click()  # what a click does: a request for the next step boundary
        ev1 = next(e for e in probe.history.events if e.kind == "loss_landscape")
        assert panel._slot.children == (panel.fig1,)
        np.testing.assert_allclose(panel.line.y, np.asarray(ev1.data["losses"], np.float32))
        assert panel.center.y[0] == pytest.approx(ev1.data["center_loss"], rel=1e-6)
        assert f"step {ev1.step}" in panel.info.value and "1-D slice" in panel.info.value
        panel.btn2.click()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        ev2 = [e for e in probe.history.events if e.kind == "loss_landscape"][-1]
        grid = np.asarray(ev2.data["losses"])
        assert grid.shape == (15, 15) and panel._slot.children == (panel.fig2,)
        # bqplot's HeatMap colour rows run along y (beta): color[j, i] is the loss at (alpha_i, beta_j)
        np.testing.assert_allclose(np.asarray(panel.heat.color)[3, 7], np.log10(grid[7, 3]), rtol=1e-6)
        # capacity: the tracker's latest row is sum |w| of each layer's own parameters now
        assert panel.tracker is not None and "computed from the model" in panel.capacity_source
        steps, values = panel.tracker.series()
        assert steps[0] == 0 and steps[-1] == probe.step_count
        names = panel.tracker.names
        mods = dict(model.named_modules())
        for j, n in enumerate(names):
            ps = list(mods[n].parameters(recurse=False))
            want = sum(float(p.detach().abs().sum(dtype=torch.float64)) for p in ps) if ps else float("nan")
            assert values[-1, j] == pytest.approx(want, rel=1e-6, nan_ok=True)  # float32 sums
        assert panel.cap_fig in panel._cap_slot.children and "largest now" in panel.cap_info.value
        assert panel.errors == [] and probe.errors == []
        panel.close()
    finally:
        probe.detach()


def test_capacity_tracker_stays_bounded() -> None:
    from trainscope.widgets.landscape_panel import CapacityTracker

    model, opt, probe, loss_fn, (x, y) = _probe_run()
    try:
        tracker = CapacityTracker(probe, max_points=8)
        for _ in range(60):  # every=1: a sample at every step
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        steps, values = tracker.series()
        assert len(steps) <= 8 and steps[0] == 0 and steps[-1] == 60 and np.all(np.diff(steps) > 0)
        assert values.shape == (len(steps), len(probe.layers))
        tracker.remove()
    finally:
        probe.detach()


def test_panel_reads_a_saved_run(tmp_path: Any) -> None:
    from trainscope.widgets import landscape_panel

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    probe = trainscope.Probe(model, opt, loss_fn=loss_fn, logdir=tmp_path / "run")
    for i in range(3):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        if i == 0:
            probe.request("loss_landscape", dims=1, points=9)
    probe.detach()
    run = trainscope.open(tmp_path / "run", display=False)
    panel = landscape_panel(run.history)
    assert panel.btn1.disabled and panel.btn2.disabled and panel.tracker is None
    assert panel._slot.children == (panel.fig1,) and len(panel.line.x) == 9
    assert "1-D slice" in panel.info.value
    with pytest.raises(TypeError, match="Probe"):
        landscape_panel(model)  # type: ignore[arg-type]


def test_a_running_slice_reports_progress_and_can_be_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainscope import actions

    model, opt, probe, loss_fn, (x, y) = _probe_run()
    seen: list[tuple[int, int, str]] = []
    real = actions.progress

    def spy(done: int, total: int, text: str = "") -> None:
        seen.append((done, total, text))
        real(done, total, text)
        if done == 37:
            probe.actions.cancel(ticket.id)  # what the dashboard's Cancel button does, mid-run

    monkeypatch.setattr(actions, "progress", spy)
    try:
        for _ in range(2):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        before = _state(model)
        ticket = probe.request("loss_landscape", dims=2, points=11)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        after_backward = _state(model)  # the step below applies the request after updating the weights
        want = [p.detach().add(p.grad, alpha=-0.1) for p in model.parameters()]  # plain SGD, lr 0.1
        opt.step()
        assert ticket.status == "cancelled", (ticket.status, ticket.message)
        assert ticket.message.startswith("cancelled at 37/122"), ticket.message
        assert [d for d, _, _ in seen] == list(range(1, 38)) and {(n, s) for _, n, s in seen} == {(122, "Loss landscape")}
        assert not [e for e in probe.history.events if e.kind in ("loss_landscape", "intervention")]
        # nothing of the slice is left: the weights are those the optimizer step produced
        moved = _state(model)
        assert all(torch.equal(p, w) for p, w in zip(model.parameters(), want, strict=True))
        assert moved["buffers"] == after_backward["buffers"] and moved["modes"] == after_backward["modes"]
        assert moved["torch"] == before["torch"] and moved["numpy"] == before["numpy"]
        # a direct call takes its own progress / cancel
        calls: list[int] = []
        with pytest.raises(actions.Cancelled, match="cancelled at 4/6"):
            loss_landscape(model, loss_fn, (x, y), points=5, progress=lambda d, t: calls.append(d),
                           cancel=lambda: len(calls) >= 4)
        assert calls == [1, 2, 3, 4] and _state(model) == moved
    finally:
        probe.detach()


def test_the_dashboard_has_a_landscape_tab(tmp_path: Any) -> None:
    from trainscope.widgets.dashboard import TABS

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    dash = trainscope.watch(model, opt, loss_fn=loss_fn, every=2, display=False, logdir=tmp_path / "run")
    try:
        i = list(TABS).index("Landscape")
        assert dash.tabs.children[i] is dash.landscape and dash.tabs.titles[i] == "Landscape"
        assert dash.landscape.tracker is not None and not dash.landscape._subs  # the dashboard drives it
        for step in range(6):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            if step == 1:
                dash.landscape.btn1.click()  # through the dashboard: acknowledged like any click
        t = next(t for t in dash.probe.actions.tickets if t.action == "loss_landscape")
        assert t.status == "applied" and t.source == "ui"
        dash.tabs.selected_index = i
        dash.refresh(force=True)
        assert dash.landscape._slot.children == (dash.landscape.fig1,) and len(dash.landscape.line.x) == 21
        assert dash.landscape.cap_fig in dash.landscape._cap_slot.children
    finally:
        dash.detach()
        dash.close()
    from trainscope.widgets import Dashboard

    saved = Dashboard(trainscope.open(tmp_path / "run", display=False).history)
    try:  # a saved run: the slice is drawn, the buttons are off
        saved.tabs.selected_index = i
        saved.refresh(force=True)
        assert saved.landscape.btn1.disabled and len(saved.landscape.line.x) == 21
    finally:
        saved.close()


def test_the_dashboard_draws_the_capacity_chart_only_when_its_tab_is_shown() -> None:
    """In the browser a figure laid out inside a hidden tab logged SVG errors (translate(undefined),
    and d=null for the line of a parameter-free ReLU): the capacity chart joins the Landscape tab
    only when that tab is shown, and layers without parameters get no line."""
    from trainscope.widgets.dashboard import TABS

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    dash = trainscope.watch(model, opt, loss_fn=loss_fn, display=False)
    try:
        for _ in range(30):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        dash.refresh(force=True)
        assert dash.landscape._cap_slot.children == ()  # the Curves tab is shown
        dash.tabs.selected_index = list(TABS).index("Landscape")
        dash.refresh(force=True)
        assert dash.landscape.cap_fig in dash.landscape._cap_slot.children
        ys = np.asarray(dash.landscape.cap_lines.y)
        assert ys.shape[0] == 2 and np.isfinite(ys).any(axis=1).all()  # fc layers only, each drawn
    finally:
        dash.detach()
        dash.close()

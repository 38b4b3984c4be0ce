"""What a person reads on the dashboard, checked on the widget state (no browser): intervention
markers that never overlap, legends off the data, the log-scale toggle, empty states that say
what to do, integer step ticks, and the *training paused* state while a long action runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import bqplot as bq
import numpy as np
import pytest
import torch
from torch import nn

import trainscope
from trainscope import actions
from trainscope.widgets import _live
from trainscope.widgets.curves import LANES, MARK_GAP, NO_LOSS, WAITING, mark_lanes, step_ticks

from .conftest import make_mlp


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def slow_action() -> Iterator[str]:
    def apply(probe: Any, params: dict[str, Any]) -> Any:
        time.sleep(float(params["seconds"]))
        return None, {"message": "slept"}

    actions.register_action(
        "t_slow",
        validate=lambda p, params: {"seconds": float(params.get("seconds", 1.6))},
        apply=apply,
        label="Slow (test)",
        category="test",
        schema={"seconds": {"type": "float", "default": 1.6}},
    )
    actions.register_action(
        "t_noop",
        validate=lambda p, params: {},
        apply=lambda p, params: (None, {"message": "ok"}),
        label="Noop (test)",
        category="test",
    )
    yield "t_slow"
    actions.REGISTRY.pop("t_slow", None)
    actions.REGISTRY.pop("t_noop", None)


def _setup(loss: bool = True, **kw: Any) -> SimpleNamespace:
    torch.manual_seed(0)
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    dash = trainscope.watch(
        model, opt, loss_fn=loss_fn if loss else None, every=5, display=False, **kw
    )
    x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))

    def train(n: int) -> None:
        for _ in range(n):
            out = loss_fn(model(x), y)
            opt.zero_grad()
            out.backward()
            opt.step()

    return SimpleNamespace(dash=dash, train=train, model=model, opt=opt)


@pytest.fixture
def run() -> Iterator[SimpleNamespace]:
    ns = _setup()
    yield ns
    ns.dash.close()
    ns.dash.probe.detach()


def _end_cell() -> None:
    _live._post_run_cell(SimpleNamespace(error_in_exec=None, error_before_exec=None))


# ---------------------------------------------------------------------- markers
def _overlaps(xs: np.ndarray, ys: np.ndarray, span: float) -> list[tuple[int, int]]:
    bad = []
    for i in range(len(xs)):
        for j in range(i + 1, len(xs)):
            if ys[i] == ys[j] and abs(xs[i] - xs[j]) < MARK_GAP * span - 1e-6:
                bad.append((i, j))
    return bad


def test_marker_rows_never_overlap_and_merge_only_when_full() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 60))
        steps = np.sort(rng.integers(0, 20_000, n)).astype(float)
        rows, firsts = mark_lanes(list(steps), 0.0, 20_000.0)
        xs = steps[firsts]
        ys = np.array([LANES[r] for r in rows])
        assert not _overlaps(xs, ys, 20_000.0)
        assert firsts == sorted(firsts) and (not firsts or firsts[0] == 0)
    # five clicks within a few steps: four rows, the fifth joins the fourth marker
    rows, firsts = mark_lanes([100, 101, 102, 103, 104], 0, 10_000)
    assert rows == [0, 1, 2, 3] and firsts == [0, 1, 2, 3]
    # far apart: all on the first row
    assert mark_lanes([0, 5000, 9000], 0, 10_000) == ([0, 0, 0], [0, 1, 2])


def test_five_quick_interventions_draw_numbered_markers_that_do_not_collide(
    run: SimpleNamespace, slow_action: str
) -> None:
    run.train(400)
    for _ in range(5):  # five clicks on five consecutive steps
        run.dash.submit("t_noop", {})
        run.train(1)
    _end_cell()
    c = run.dash.curves
    xs = np.asarray(c.event_marks.x, np.float64)
    ys = np.asarray(c.event_marks.y, np.float64)
    assert c.event_marks.visible and len(xs) == 4, (xs, ys)  # 4 rows, the 5th merged
    assert not _overlaps(xs, ys, float(run.dash.probe.step_count))
    assert list(c.event_numbers.text) == ["1", "2", "3", "4+"]
    assert (
        c.event_marks.names[-1].startswith("4. Noop (test) at step")
        and "| 5." in (c.event_marks.names[-1])
    )
    assert c.event_marks.tooltip is not None and c.event_marks.tooltip.fields == ["name"]
    assert "5: Noop (test) @ " in c.marks_list.value
    # no text is rotated and nothing is drawn as a legend inside the plot
    for fig in (c.loss_fig, c.metrics_fig, c.lr_fig):
        for m in fig.marks:
            assert not getattr(m, "display_legend", False), m
            assert getattr(m, "rotate_angle", 0) == 0


# ---------------------------------------------------------------------- empty states
def test_without_a_loss_the_plot_says_how_to_capture_it() -> None:
    ns = _setup(loss=False)
    try:
        c = ns.dash.curves
        assert c.empty.value == WAITING and c.empty.layout.display != "none"
        ns.train(30)
        _end_cell()
        assert c.empty.value == NO_LOSS and c.empty.layout.display != "none"
        assert "loss_fn=" in c.empty.value and "scope.log(loss=" in c.empty.value
        assert not c._loss_xaxis.visible and not c._loss_yaxis.visible  # no empty 0..1 axes
        # the user logs the loss: the message goes, the axes come
        for s in range(5):
            ns.dash.log(loss=1.0 / (s + 1))
            ns.train(1)
        _end_cell()
        assert c.empty.layout.display == "none"
        assert c._loss_xaxis.visible and c._loss_yaxis.visible
    finally:
        ns.dash.close()
        ns.dash.probe.detach()


def test_step_axes_have_integer_ticks() -> None:
    assert list(step_ticks(0, 1)) == [0.0, 1.0]
    assert list(step_ticks(0, 3.2)) == [0.0, 1.0, 2.0, 3.0, 4.0]
    for hi in (7, 12, 999, 28_200, 1e6):
        t = step_ticks(0, hi)
        assert len(t) >= 2 and np.all(t == np.round(t)), (hi, t)


def test_metrics_and_lr_axes_hidden_until_there_is_data(run: SimpleNamespace) -> None:
    c = run.dash.curves
    assert not c._m_xaxis.visible and "scope.log(acc=" in c.metrics_fig.title
    run.train(20)
    run.dash.log(acc=0.5)
    run.train(1)
    _end_cell()
    assert c._m_xaxis.visible and [w.value for w in c.metrics_legend.children] == ["━ acc"]
    assert c._lr_xaxis.visible
    assert np.all(np.asarray(c._lr_xaxis.tick_values) == np.round(c._lr_xaxis.tick_values))


# ---------------------------------------------------------------------- log scale
def test_log_toggle_switches_the_loss_axis(run: SimpleNamespace) -> None:
    run.train(50)
    _end_cell()
    c = run.dash.curves
    assert isinstance(c._loss_yaxis.scale, bq.LinearScale)
    c.log_toggle.value = True  # what the browser's click does
    assert c.log_y and isinstance(c._loss_yaxis.scale, bq.LogScale)
    for m in [*c.raw, *c.smooth, *c.val]:
        assert isinstance(m.scales["y"], bq.LogScale)
    run.dash.log(loss=0.0)  # a zero on a log axis becomes a gap, not -inf
    run.train(5)
    _end_cell()
    y = np.asarray(c.raw[0].y, np.float64)
    assert len(y) and not np.any(y <= 0)
    ticks = np.asarray(c._loss_yaxis.tick_values, np.float64)
    # round ticks chosen for the log axis (decades, or 1 / 1.5 / 2... on a narrow range)
    assert len(ticks) >= 2 and np.all(ticks > 0) and np.all(np.diff(ticks) > 0)
    c.log_toggle.value = False
    assert isinstance(c._loss_yaxis.scale, bq.LinearScale)
    assert all(isinstance(m.scales["y"], bq.LinearScale) for m in c.raw)


def test_log_toggle_is_routed_like_the_other_clickable_widgets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A click on the toggle must reach Python while the cell runs (same delivery as the rest),
    and its handler holds the dashboard's lock (it may run in a kernel subshell thread)."""
    from trainscope import _delivery

    routed: list[Any] = []

    class Recording(_delivery.NoDelivery):
        def route(self, widget: Any) -> None:
            routed.append(widget)

    monkeypatch.setattr(_delivery, "get_delivery", lambda name: Recording())
    ns = _setup()
    try:
        assert ns.dash.curves.log_toggle in routed and ns.dash.controls in routed
        assert ns.dash.curves.lock is ns.dash._lock
    finally:
        ns.dash.close()
        ns.dash.probe.detach()


# ---------------------------------------------------------------------- long actions
def test_a_long_action_shows_training_paused_with_elapsed_time(
    run: SimpleNamespace, slow_action: str
) -> None:
    seen: list[dict[str, Any]] = []
    headers: list[Any] = []
    run.dash.controls.observe(lambda ch: seen.append(dict(ch["new"])), names="busy")
    run.dash.header.observe(lambda ch: headers.append(ch["new"].get("busy")), names="state")
    run.train(5)
    t = run.dash.submit("t_slow", {"seconds": 1.6})
    assert t is not None
    run.train(2)  # the second step boundary runs the action: the loop is held 1.6 s
    assert t.status == "applied"
    busy = [b for b in seen if b]
    assert busy, "the dashboard never said that training was paused"
    assert busy[-1]["id"] == t.id and busy[-1]["label"] == "Slow (test)"
    assert 0.5 <= busy[-1]["seconds"] <= 2.5
    assert any(h and h["label"] == "Slow (test)" for h in headers)
    deadline = time.time() + 2
    while run.dash.controls.busy and time.time() < deadline:
        time.sleep(0.05)
        run.train(1)
    assert run.dash.controls.busy == {}  # cleared once the loop moves again
    assert run.dash.header.state["busy"] is None
    _end_cell()
    assert _wait_watchdog_gone(), "the watchdog thread outlives the cell"


def _wait_watchdog_gone() -> bool:
    deadline = time.time() + 2
    while time.time() < deadline:
        if not any(
            th.name == "trainscope-dashboard-watchdog" and th.is_alive()
            for th in threading.enumerate()
        ):
            return True
        time.sleep(0.05)
    return False

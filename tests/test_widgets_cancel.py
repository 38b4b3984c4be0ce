"""Long actions (the LR finder, the checks that train): progress, Cancel, exact restore -- from
Python, from a simulated browser message, and the bounded progress notifications."""

from __future__ import annotations

import copy
import itertools
import random
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import trainscope
from trainscope import actions
from trainscope.checklists import run_check
from trainscope.lr_finder import lr_find
from trainscope.widgets._messages import MessageError, parse_message


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(n: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    c = torch.randn(3, 8, generator=g) * 2
    y = torch.randint(0, 3, (n,), generator=g)
    x = c[y] + torch.randn(n, 8, generator=g)
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, n, 32)]


def _setup() -> SimpleNamespace:
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = _data()
    probe = trainscope.Probe(model, opt, loss_fn=nn.CrossEntropyLoss(), data=data)
    ns = SimpleNamespace(model=model, opt=opt, data=data, probe=probe)

    def step(i: int) -> None:
        x, y = data[i % len(data)]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    ns.step = step
    return ns


def _state(ns: SimpleNamespace) -> dict[str, Any]:
    return {
        "sd": copy.deepcopy(ns.model.state_dict()),
        "osd": copy.deepcopy(ns.opt.state_dict()),
        "grads": [None if p.grad is None else p.grad.clone() for p in ns.model.parameters()],
        "modes": [m.training for m in ns.model.modules()],
        "rng": (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()),
    }


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["sd"].keys() == b["sd"].keys()
    for k in a["sd"]:
        assert torch.equal(a["sd"][k], b["sd"][k]), k  # BatchNorm running stats included
    assert a["osd"]["param_groups"] == b["osd"]["param_groups"]
    for k, st in a["osd"]["state"].items():
        for name, v in st.items():
            assert torch.equal(b["osd"]["state"][k][name], v), (k, name)
    for ga, gb in zip(a["grads"], b["grads"], strict=True):
        assert (ga is None) == (gb is None) and (ga is None or torch.equal(ga, gb))
    assert a["modes"] == b["modes"]
    assert torch.equal(a["rng"][0], b["rng"][0])
    assert np.array_equal(a["rng"][1], b["rng"][1]) and a["rng"][2] == b["rng"][2]


def _run_with_cancel(request: tuple[str, dict[str, Any]], at: int, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Train 3 steps, request a long action, cancel it when it reports ``at`` iterations done
    (from the listener, as a click would), train on to step 6; record the progress seen."""
    monkeypatch.setattr(actions, "PROGRESS_EVERY", 0.0)  # every iteration notifies: cancel at an exact point
    ns = _setup()
    seen: list[tuple[int, int, str]] = []

    def listen(t: actions.Ticket) -> None:
        if t.status == "pending" and t.progress is not None:
            seen.append(t.progress)
            if t.progress[0] >= at and not t.cancel_requested:
                ns.probe.actions.cancel(t.id)

    ns.probe.actions.on_change(listen)
    for i in range(3):
        ns.step(i)
    ns.ticket = ns.probe.request(request[0], **request[1])
    for i in range(3, 6):
        ns.step(i)
    ns.seen = seen
    return ns


@pytest.mark.parametrize(
    ("request_", "at", "total"),
    [
        (("lr_find", {"num_iter": 100}), 37, 100),
        (("run_check", {"check": "overfit_batch"}), 37, 200),
        (("run_check", {"check": "input_baseline"}), 130, 200),  # in its second half
    ],
)
def test_cancel_mid_run_restores_everything_bit_identically(
    request_: tuple[str, dict[str, Any]], at: int, total: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    twin = _setup()  # the same training without the long action
    for i in range(6):
        twin.step(i)
    expected = _state(twin)
    twin.probe.detach()

    ns = _run_with_cancel(request_, at, monkeypatch)
    t = ns.ticket
    assert t.status == "cancelled", (t.status, t.message)
    assert t.message.startswith(f"cancelled at {at}/{total}"), t.message
    assert t.applied_step is None and t.progress is not None and t.progress[:2] == (at, total)
    assert t.as_dict()["progress"] is None  # no progress bar once it is over
    _same(expected, _state(ns))  # model, buffers, optimizer, gradients, modes, RNG: as if never run
    assert ns.probe.step_count == 6
    kinds = [e.kind for e in ns.probe.history.events]
    assert "lr_find" not in kinds and "check" not in kinds and "intervention" not in kinds
    assert not (ns.probe.history.meta.get("checks") or {})  # a cancelled check records no result
    dones = [d for d, _, _ in ns.seen]
    assert dones == sorted(dones) and dones[-1] == at and all(n == total for _, n, _ in ns.seen)
    # cancelling it again: it is over, and the refusal says so
    with pytest.raises(ValueError, match="is cancelled: only a queued request or a running long action"):
        ns.probe.actions.cancel(t.id)
    ns.probe.detach()


def test_a_finished_sweep_is_not_affected_by_the_cancel_machinery(monkeypatch: pytest.MonkeyPatch) -> None:
    ns = _run_with_cancel(("lr_find", {"num_iter": 30}), 10_000, monkeypatch)
    assert ns.ticket.status == "applied", ns.ticket.message
    assert [d for d, _, _ in ns.seen] == list(range(1, 31))
    assert [e.kind for e in ns.probe.history.events].count("lr_find") == 1
    ns.probe.detach()


def test_progress_notifications_are_bounded_in_time() -> None:
    ns = _setup()
    calls: list[float] = []  # the throttle's clock at each notification (a stalled listener cannot skew it)
    ns.probe.actions.on_change(lambda t: calls.append(t._progress_sent) if t.progress is not None else None)
    ns.step(0)
    t0 = time.monotonic()
    t = ns.probe.request("run_check", check="overfit_batch")
    ns.step(1)
    elapsed = time.monotonic() - t0
    assert t.status == "applied", t.message
    assert t.progress is not None and t.progress[0] >= 1
    # at most one per PROGRESS_EVERY seconds, plus the first, the last and the final status change
    assert 2 <= len(calls) <= elapsed / actions.PROGRESS_EVERY + 4, (len(calls), elapsed)
    # (the last two may come sooner: the final iteration's and the status change)
    assert all(b - a >= actions.PROGRESS_EVERY for a, b in itertools.pairwise(calls[:-2]))
    ns.probe.detach()


def test_cancel_a_queued_request_changes_nothing() -> None:
    ns = _setup()
    ns.step(0)
    t = ns.probe.request("set_lr", lr=0.5)
    assert t.status == "pending"
    assert ns.probe.actions.cancel(t.id) is t
    assert t.status == "cancelled" and "before it started" in t.message
    ns.step(1)
    assert ns.opt.param_groups[0]["lr"] == 1e-3 and t.status == "cancelled"
    with pytest.raises(ValueError, match="no request with id 'nope'"):
        ns.probe.actions.cancel("nope")
    done = ns.probe.request("set_lr", lr=0.5)
    ns.step(2)
    with pytest.raises(ValueError, match="is applied"):
        ns.probe.actions.cancel(done.id)
    ns.probe.detach()


def test_direct_lr_find_and_run_check_take_progress_and_cancel() -> None:
    ns = _setup()
    ns.probe.detach()
    for i in range(3):
        ns.step(i)
    before = _state(ns)
    ticks: list[tuple[int, int]] = []
    res = lr_find(ns.model, ns.opt, nn.CrossEntropyLoss(), ns.data, num_iter=50,
                  progress=lambda d, n: ticks.append((d, n)), cancel=lambda: len(ticks) >= 12)
    assert res.stop_reason == "cancelled" and res.iterations == 12 and res.suggestion is None
    assert "cancelled after 12 of 50 iterations" in res.note and ticks[-1] == (12, 50)
    _same(before, _state(ns))
    with pytest.raises(TypeError, match="cancel must be a function"):
        lr_find(ns.model, ns.opt, nn.CrossEntropyLoss(), ns.data, cancel=True)  # type: ignore[arg-type]
    seen: list[int] = []
    r = run_check("overfit_batch", ns.model, ns.opt, nn.CrossEntropyLoss(), ns.data[0],
                  progress=lambda d, n: seen.append(d), cancel=lambda: len(seen) >= 5)
    assert r.status == "not_run" and r.details.get("cancelled") and "cancelled at 5/200" in r.evidence
    _same(before, _state(ns))


# ---------------------------------------------------------------------- the browser side
def test_cancel_message_envelope() -> None:
    m = parse_message({"kind": "cancel", "id": "a12"})
    assert m.kind == "cancel" and m.id == "a12"
    for bad in ({"kind": "cancel"}, {"kind": "cancel", "id": "x y"}, {"kind": "cancel", "id": 3},
                {"kind": "cancel", "id": "z" * 65}):
        with pytest.raises(MessageError, match="cancel needs 'id'"):
            parse_message(bad)


def test_dashboard_shows_progress_and_a_cancel_click_stops_the_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(actions, "PROGRESS_EVERY", 0.0)
    ns = _setup()
    ns.probe.detach()
    dash = trainscope.watch(ns.model, ns.opt, loss_fn=nn.CrossEntropyLoss(), data=ns.data, display=False)
    busy: list[dict[str, Any]] = []

    def click(content: Any) -> None:  # exactly how a custom message from the browser arrives
        dash.controls._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})

    def listen(t: actions.Ticket) -> None:
        if t.status == "pending" and t.progress is not None:
            busy.append(dict(dash.controls.busy))
            if t.progress[0] == 20:
                click({"kind": "cancel", "id": t.id})

    dash.probe.actions.on_change(listen)
    try:
        for i in range(2):
            ns.step(i)
        click({"kind": "action", "action": "lr_find", "params": {"num_iter": 100}, "id": "lr1"})
        ns.step(2)
        t = dash.probe.actions.find("lr1")
        assert t is not None and t.status == "cancelled", t and t.message
        shown = [b for b in busy if b.get("progress")]
        assert shown and shown[-1]["id"] == "lr1" and shown[-1]["label"] == "LR finder"
        assert shown[-1]["cancellable"] is True and shown[-1]["progress"]["total"] == 100
        assert shown[-1]["progress"]["done"] >= 18
        ns.step(3)  # the next boundary clears the banner
        assert dash.controls.busy == {}
        deadline = time.time() + 2
        while time.time() < deadline:
            acks = {a["id"]: a for a in dash.controls.get_state()["tickets"]}
            if acks.get("lr1", {}).get("status") == "cancelled":
                break
            time.sleep(0.02)
        assert acks["lr1"]["status"] == "cancelled" and acks["lr1"]["message"].startswith("cancelled at 20/100")
        click({"kind": "cancel", "id": "lr1"})  # too late: refused with the reason, nothing breaks
        deadline = time.time() + 2
        refusal = None
        while refusal is None and time.time() < deadline:
            refusal = next((a for a in dash.controls.get_state()["tickets"]
                            if a["action"] == "cancel" and a["status"] == "refused"), None)
            time.sleep(0.02)
        assert refusal is not None and "is cancelled" in refusal["message"]
    finally:
        dash.close()
        dash.probe.detach()


def test_header_says_paused_no_later_than_the_busy_banner(monkeypatch: pytest.MonkeyPatch) -> None:
    """The header badge and the controls' banner are separate widgets (separate comm messages);
    the header goes first so the browser never draws "training running" beside a busy banner
    (a CI run caught the badge a frame behind the banner)."""
    monkeypatch.setattr(actions, "PROGRESS_EVERY", 0.0)
    ns = _setup()
    ns.probe.detach()
    dash = trainscope.watch(ns.model, ns.opt, loss_fn=nn.CrossEntropyLoss(), data=ns.data, display=False)
    order: list[tuple[str, bool]] = []
    dash.header.observe(lambda c: order.append(("header", bool(c["new"].get("busy")))), names="state")
    dash.controls.observe(lambda c: order.append(("controls", bool(c["new"]))), names="busy")
    dash._busy = {"id": "x", "action": "lr_find", "label": "LR finder", "seconds": 1.0,
                  "progress": None, "cancellable": False, "cancel_requested": False}
    dash._push_busy()
    dash._busy = None
    dash._push_busy()
    assert ("controls", True) in order and ("header", True) in order
    assert order.index(("header", True)) < order.index(("controls", True)), order
    last_header = max(i for i, o in enumerate(order) if o == ("header", False))
    assert last_header < order.index(("controls", False)), order

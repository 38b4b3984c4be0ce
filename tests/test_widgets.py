"""The dashboard without a browser: widget state (``get_state()``), simulated browser messages,
acknowledgements, refusals, throttling and the final flush."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import comm
import numpy as np
import pytest
import torch
from torch import nn

import trainscope
from trainscope import actions
from trainscope.widgets import Dashboard, _live
from trainscope.widgets._messages import MessageError, parse_message

from .conftest import make_mlp

# ---------------------------------------------------------------------- test actions


class _LrUndo:
    def __init__(self, probe: trainscope.Probe, old: list[float]) -> None:
        self.probe, self.old = probe, old

    def undo(self) -> None:
        for g, lr in zip(self.probe.optimizer.param_groups, self.old, strict=True):  # type: ignore[union-attr]
            g["lr"] = lr


def _validate_scale(probe: Any, params: dict[str, Any]) -> dict[str, Any]:
    f = params.get("factor")
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 10:
        raise ValueError("factor must be a number in (0, 10]")
    return {"factor": float(f)}


def _apply_scale(probe: Any, params: dict[str, Any]) -> Any:
    old = [g["lr"] for g in probe.optimizer.param_groups]
    for g in probe.optimizer.param_groups:
        g["lr"] *= params["factor"]
    return _LrUndo(probe, old), {
        "message": f"lr {old[0]:g} -> {probe.optimizer.param_groups[0]['lr']:g}"
    }


def _apply_broken(probe: Any, params: dict[str, Any]) -> Any:
    raise RuntimeError("this intervention is broken")


@pytest.fixture(autouse=True)
def test_actions() -> Iterator[None]:
    actions.register_action(
        "t_scale",
        validate=_validate_scale,
        apply=_apply_scale,
        label="Scale (test)",
        category="test",
        schema={"factor": {"type": "float", "default": 0.5}},
    )
    actions.register_action(
        "t_broken",
        validate=lambda p, params: {},
        apply=_apply_broken,
        label="Broken (test)",
        category="test",
    )
    yield
    actions.REGISTRY.pop("t_scale", None)
    actions.REGISTRY.pop("t_broken", None)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread (and the 2-core CI machine is shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every comm message the widgets send (no kernel: DummyComm would drop them)."""
    log: list[dict[str, Any]] = []

    def publish(
        self: Any,
        msg_type: str,
        data: Any = None,
        metadata: Any = None,
        buffers: Any = None,
        **keys: Any,
    ) -> None:
        log.append(
            {
                "type": msg_type,
                "data": data,
                "bytes": len(json.dumps(data, default=str)),
                "buffers": buffers or [],
            }
        )

    monkeypatch.setattr(comm.DummyComm, "publish_msg", publish)
    return log


def _train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: nn.Module,
    steps: int,
    x: torch.Tensor,
    y: torch.Tensor,
) -> None:
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture
def live(blobs: tuple[torch.Tensor, torch.Tensor]) -> Iterator[SimpleNamespace]:
    x, y = blobs
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    dash = trainscope.watch(model, opt, loss_fn=loss_fn, every=5, display=False, total_steps=200)
    ns = SimpleNamespace(dash=dash, model=model, opt=opt, loss_fn=loss_fn, x=x[:64], y=y[:64])
    ns.train = lambda n: _train(model, opt, loss_fn, n, ns.x, ns.y)
    yield ns
    dash.close()
    dash.probe.detach()


def _click(widget: Any, content: Any) -> None:
    """Exactly how a custom message from the browser reaches the widget."""
    widget._handle_msg(
        {"content": {"data": {"method": "custom", "content": content}}, "buffers": []}
    )


def _end_cell(error: BaseException | None = None) -> None:
    _live._post_run_cell(SimpleNamespace(error_in_exec=error, error_before_exec=None))


def _newest_ticket(dash: Dashboard) -> dict[str, Any]:
    """The newest acknowledgement the browser has (waiting up to 2 s: acks are rate-limited)."""
    deadline = time.time() + 2
    tickets = dash.controls.get_state()["tickets"]
    while not tickets and time.time() < deadline:
        time.sleep(0.02)
        tickets = dash.controls.get_state()["tickets"]
    assert tickets, "no acknowledgement reached the browser within 2 s"
    return dict(tickets[0])


def _ticket(dash: Dashboard, tid: str, status: str | None = None) -> dict[str, Any]:
    """The acknowledgement the browser has for request ``tid`` (waiting up to 2 s for
    ``status``: acks are rate-limited to one message per 50 ms)."""
    deadline = time.time() + 2
    found = None
    while time.time() < deadline:
        found = next((t for t in dash.controls.get_state()["tickets"] if t["id"] == tid), None)
        if found is not None and (status is None or found["status"] == status):
            return found
        time.sleep(0.02)
    raise AssertionError(f"ticket {tid}: wanted {status}, browser has {found}")


# ---------------------------------------------------------------------- state


def test_live_state_after_training(live: SimpleNamespace) -> None:
    live.train(60)
    _end_cell()
    dash = live.dash
    h = dash.header.get_state()["state"]
    assert h["step"] == 60 and h["total_steps"] == 200 and h["run_state"] == "idle"
    assert h["loss"] is not None and h["lr"] == pytest.approx(0.1)
    assert h["delivery"]["name"] == "none"  # no kernel here
    table = dash.table.get_state()
    names = [r["name"] for r in table["rows"]]
    assert names == [i.name for i in dash.probe.layers]  # forward order of a Sequential
    assert table["step"] >= 55 and table["selected"] == "0"
    linear = table["rows"][0]
    assert len(linear["values"]) == len(table["columns"]) == 8
    assert linear["values"][-1] is not None and linear["status"][-1] in (0, 1, 2)
    relu = table["rows"][1]
    assert relu["values"][-2] is None and relu["status"][-2] is None  # no weights: not applicable
    actions_offered = {a["name"] for a in dash.controls.get_state()["actions"]}
    assert {"t_scale", "t_broken"} <= actions_offered and "undo" not in actions_offered
    assert dash.controls.get_state()["layers"] == names
    # curves: decimated float32 lines
    raw = dash.curves.raw[0]
    assert raw.x.dtype == np.float32 and len(raw.x) == 60 and raw.x[-1] == 59


def test_read_only_dashboard_from_history(live: SimpleNamespace) -> None:
    live.train(30)
    live.dash.probe.flush()
    ro = trainscope.show([live.dash.history, live.dash.history], names=["a", "b"])
    try:
        assert ro.probe is None and ro.header.state["run_state"] == "saved run"
        assert "saved run" in ro.controls.read_only
        assert len(ro.curves.raw) == 2 and len(ro.curves.raw[1].x) == 30
        assert len(ro.table.rows) == len(live.dash.probe.layers)
        _click(
            ro.controls,
            {"kind": "action", "action": "t_scale", "params": {"factor": 0.5}, "id": "ro-1"},
        )
        t = _ticket(ro, "ro-1", "refused")
        assert "read-only" in t["message"]
    finally:
        ro.close()
    assert live.opt.param_groups[0]["lr"] == 0.1


def test_show_rejects_what_it_cannot_show() -> None:
    with pytest.raises(TypeError, match="Probe"):
        trainscope.show(object())
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        trainscope.watch("model")  # type: ignore[arg-type]


def test_watch_again_replaces_the_previous_probe(live: SimpleNamespace) -> None:
    first = live.dash
    second = trainscope.watch(live.model, live.opt, loss_fn=live.loss_fn, display=False)
    try:
        assert not first.probe.is_attached and second.probe.is_attached
        assert first.header.state["run_state"] == "detached"
    finally:
        second.close()
        second.probe.detach()


def test_bad_dashboard_options_leave_the_model_untouched() -> None:
    model = make_mlp()
    with pytest.raises(ValueError, match="update_interval"):
        trainscope.watch(model, display=False, update_interval=0.01)
    assert not model._forward_pre_hooks and not any(m._forward_hooks for m in model.modules())
    p = trainscope.Probe(model)  # the model can still be probed: nothing was left attached
    p.detach()


# ---------------------------------------------------------------------- messages


def test_click_is_queued_then_applied_at_the_next_step(
    live: SimpleNamespace, sent: list[dict[str, Any]]
) -> None:
    live.train(10)
    _click(
        live.dash.controls,
        {"kind": "action", "action": "t_scale", "params": {"factor": 0.5}, "id": "c1"},
    )
    t = _ticket(live.dash, "c1", "pending")
    assert live.opt.param_groups[0]["lr"] == 0.1  # only queued
    live.train(1)
    t = _ticket(live.dash, "c1", "applied")
    assert t["applied_step"] == 11 and t["undoable"]
    assert "0.1 -> 0.05" in t["message"]
    assert live.opt.param_groups[0]["lr"] == pytest.approx(0.05)
    ev = [e for e in live.dash.history.events if e.kind == "intervention"]
    assert ev and ev[-1].step == 11 and ev[-1].data["ticket"] == "c1"
    _end_cell()
    c = live.dash.curves
    assert c.event_lines.visible and list(c.event_numbers.text) == ["1"]
    assert list(c.event_marks.names) == ["1. Scale (test) at step 11"]
    assert c.marks_list.value == "1: Scale (test) @ 11"
    assert "applied" in json.dumps(live.dash.header.state["last_ack"])
    # undo, from the activity list
    _click(
        live.dash.controls,
        {"kind": "action", "action": "undo", "params": {"ticket": "c1"}, "id": "u1"},
    )
    live.train(1)
    _ticket(live.dash, "u1", "applied")
    _ticket(live.dash, "c1", "undone")
    assert live.opt.param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("not a dict", "expected a JSON object"),
        ({"kind": "exec", "code": "import os"}, "unknown message kind"),
        ({"kind": "action", "params": {}, "id": "m1"}, "'action' must be an action name"),
        (
            {"kind": "action", "action": "t_scale; rm -rf", "id": "m2"},
            "'action' must be an action name",
        ),
        (
            {"kind": "action", "action": "t_scale", "params": [1, 2], "id": "m3"},
            "'params' must be an object",
        ),
        (
            {"kind": "action", "action": "t_scale", "params": {"factor": float("nan")}, "id": "m4"},
            "plain JSON",
        ),
        (
            {"kind": "action", "action": "t_scale", "params": {"x": "y" * 20_000}, "id": "m5"},
            "larger than",
        ),
        ({"kind": "action", "action": "t_scale", "id": "bad id with spaces"}, "'id' must be"),
        (
            {"kind": "action", "action": "os_system", "params": {}, "id": "m6"},
            "unknown action 'os_system'",
        ),
        (
            {"kind": "action", "action": "t_scale", "params": {"factor": -3}, "id": "m7"},
            "factor must be a number",
        ),
        (
            {"kind": "action", "action": "t_scale", "params": {"factor": "0.5"}, "id": "m8"},
            "factor must be a number",
        ),
    ],
)
def test_malformed_or_unknown_requests_are_refused_and_change_nothing(
    live: SimpleNamespace, content: Any, reason: str
) -> None:
    live.train(5)
    before = {k: v.clone() for k, v in live.model.state_dict().items()}
    n_events = len(live.dash.history.events)
    _click(live.dash.controls, content)
    live.train(1)
    newest = _newest_ticket(live.dash)
    assert newest["status"] == "refused" and reason in newest["message"], newest
    assert live.opt.param_groups[0]["lr"] == 0.1
    assert len(live.dash.history.events) == n_events
    # the model only changed by the one ordinary training step
    assert live.dash.probe.step_count == 6
    assert all(before[k].shape == v.shape for k, v in live.model.state_dict().items())


def test_duplicate_ids_and_failed_actions(live: SimpleNamespace) -> None:
    live.train(3)
    msg = {"kind": "action", "action": "t_scale", "params": {"factor": 0.5}, "id": "dup"}
    _click(live.dash.controls, msg)
    _click(live.dash.controls, msg)  # delivered twice (double click, replay): applied once
    _click(live.dash.controls, {"kind": "action", "action": "t_broken", "params": {}, "id": "br"})
    live.train(2)
    assert live.opt.param_groups[0]["lr"] == pytest.approx(0.05)
    broken = _ticket(live.dash, "br", "failed")
    assert "this intervention is broken" in broken["message"]
    refusals = [t for t in live.dash.controls.tickets if t["status"] == "refused"]
    assert any("duplicate request id" in t["message"] for t in refusals)
    assert live.dash.probe.step_count == 5  # training went on


def test_select_message_shows_the_layer(live: SimpleNamespace) -> None:
    live.train(30)
    live.dash.tabs.selected_index = 1
    _click(live.dash.table, {"kind": "select", "layer": "2"})
    assert live.dash.table.selected == "2"
    spec = live.dash.act_map.get_state()["spec"]
    assert spec["title"] == "outputs of 2 over time" and spec["rows"] > 0 and spec["cols"] > 0
    assert len(live.dash.act_map.values) == spec["rows"] * spec["cols"]
    _click(live.dash.controls, {"kind": "select", "layer": "2"})  # from a finding: switches tab
    assert live.dash.tabs.selected_index == 1
    _click(live.dash.table, {"kind": "select", "layer": "nope"})
    assert live.dash.table.selected == "2"
    newest = _newest_ticket(live.dash)
    assert newest["status"] == "refused" and "no layer named 'nope'" in newest["message"], newest


def test_handlers_are_thread_safe_with_training(live: SimpleNamespace) -> None:
    """Clicks arriving on another thread (a kernel subshell) while the loop trains."""
    stop = threading.Event()

    def clicker() -> None:
        i = 0
        while not stop.is_set() and i < 40:
            _click(
                live.dash.controls,
                {"kind": "action", "action": "t_scale", "params": {"factor": 1.0}, "id": f"th{i}"},
            )
            i += 1
            time.sleep(0.002)

    th = threading.Thread(target=clicker)
    th.start()
    live.train(120)
    stop.set()
    th.join()
    live.train(1)
    _end_cell()
    statuses = {t["status"] for t in live.dash.controls.tickets}
    assert statuses == {"applied"}, live.dash.controls.tickets[:3]
    assert not live.dash.errors and not live.dash.probe.errors


# ---------------------------------------------------------------------- throttling and flushing


def test_updates_are_throttled_by_time_not_per_step(
    live: SimpleNamespace, sent: list[dict[str, Any]]
) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.5:
        live.train(5)
    duration = time.monotonic() - t0
    steps = live.dash.probe.step_count
    header_msgs = [m for m in sent if m["data"] and "state" in m["data"].get("state", {})]
    assert steps > 100
    assert len(header_msgs) <= duration / 0.2 + 2, "header: at most one update per 0.2 s"
    assert len(sent) < steps, "never one message per step"
    assert len(sent) / duration < 100, "far below Jupyter's 1000 messages/s IOPub limit"
    assert (
        max(m["bytes"] + sum(len(memoryview(b).cast("B")) for b in m["buffers"]) for m in sent)
        < 64_000
    )


def test_final_flush_on_cell_end_and_on_error(live: SimpleNamespace) -> None:
    live.dash._light.interval = 3600  # no live updates at all during this "cell"
    live.dash._curves_throttle.interval = 3600
    live.train(37)
    assert live.dash.header.state["step"] < 37
    _end_cell()
    st = live.dash.header.state
    assert st["step"] == 37 and st["run_state"] == "idle"
    assert live.dash.curves.raw[0].x[-1] == 36  # the last loss point is there
    live.train(3)
    _end_cell(KeyboardInterrupt())
    assert (
        live.dash.header.state["run_state"] == "interrupted"
        and live.dash.header.state["step"] == 40
    )
    live.train(1)
    _end_cell(ZeroDivisionError())
    assert live.dash.header.state["run_state"] == "error: ZeroDivisionError"


def test_long_runs_stay_bounded(
    blobs: tuple[torch.Tensor, torch.Tensor], sent: list[dict[str, Any]]
) -> None:
    """Many steps: every line stays <= 1000 float32 points."""
    model = make_mlp((20, 16, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()
    dash = trainscope.watch(model, opt, loss_fn=loss_fn, every=50, display=False)
    try:
        x, y = blobs[0][:16], blobs[1][:16]
        for _ in range(6000):
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            dash.probe.log(acc=0.5)
        _end_cell()
        for line in (
            dash.curves.raw[0],
            dash.curves.smooth[0],
            dash.curves.metric_lines,
            dash.curves.lr_lines,
        ):
            assert line.x.size <= 1000 and line.x.dtype == np.float32
        assert dash.curves.raw[0].x[-1] == 5999
        assert len(dash.curves.raw[0].x) > 500  # not trivially short either
    finally:
        dash.close()
        dash.probe.detach()


def test_diagnosis_and_checklist_panels_are_guarded(
    live: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*a: Any, **k: Any) -> Any:
        raise RuntimeError("rule exploded")

    monkeypatch.setattr(live.dash.probe, "findings", broken)
    live.train(10)
    live.dash._push_diagnosis(force=True)
    f = live.dash.controls.findings
    assert f["available"] is False and "rule exploded" in f["message"]
    assert isinstance(live.dash.controls.checklist.get("available"), bool)


def test_findings_render_with_their_interventions(
    live: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    class F:
        def as_dict(self) -> dict[str, Any]:
            return {
                "label": "lr_too_high", "severity": "warning", "title": "LR too high", "first_step": 3,
                "last_step": np.int64(9), "active": True, "layers": ["0"], "evidence": "loss oscillates",
                "checklist": ["k1"], "interventions": [{"action": "t_scale", "params": {"factor": 0.5}, "label": "halve"}],
            }  # fmt: skip

    monkeypatch.setattr(live.dash.probe, "findings", lambda **k: [F()])
    live.train(10)
    live.dash._push_diagnosis(force=True)
    items = live.dash.controls.get_state()["findings"]["items"]
    assert items[0]["last_step"] == 9 and items[0]["interventions"][0]["action"] == "t_scale"
    json.dumps(items)  # plain JSON


def test_message_envelope_parser() -> None:
    m = parse_message({"kind": "action", "action": "set_lr", "params": {"lr": 0.1}, "id": "a-1"})
    assert (m.kind, m.action, m.params, m.id) == ("action", "set_lr", {"lr": 0.1}, "a-1")
    assert parse_message({"kind": "select", "layer": "fc"}).layer == "fc"
    with pytest.raises(MessageError) as e:
        parse_message({"kind": "action", "action": "x", "params": "p", "id": "i1"})
    assert e.value.id == "i1" and e.value.action == "x"


# ---------------------------------------------------------------------- fit_in_background


def test_fit_in_background_applies_clicks_and_stops_at_a_step(live: SimpleNamespace) -> None:
    """The documented fallback: the loop runs in a thread, the kernel stays free."""
    seen_lr: list[float] = []

    def train() -> int:
        n = 0
        while True:  # a loop that only stops when asked to
            live.train(1)
            seen_lr.append(live.opt.param_groups[0]["lr"])
            n += 1

    run = trainscope.fit_in_background(train)
    deadline = time.time() + 10
    while live.dash.probe.step_count < 20 and time.time() < deadline:
        time.sleep(0.01)
    assert run.running and live.dash.header.state["run_state"] == "running (background)"
    _click(live.dash.controls, {"kind": "action", "action": "t_scale", "params": {"factor": 0.5}, "id": "bg1"})
    _ticket(live.dash, "bg1", "applied")
    run.stop()
    run.join(10)
    assert run.status == "stopped" and isinstance(run.exception, trainscope.widgets._background.StopTraining)
    assert 0.05 in seen_lr and seen_lr[-1] == pytest.approx(0.05)
    # the final state was flushed when the thread ended
    st = live.dash.header.state
    assert st["run_state"] == "stopped (background)" and st["step"] == live.dash.probe.step_count


def test_fit_in_background_reports_errors() -> None:
    def boom() -> None:
        raise ValueError("bad batch")

    run = trainscope.fit_in_background(boom)
    with pytest.raises(ValueError, match="bad batch"):
        run.join(5)
    assert run.status == "failed" and "ValueError" in (run.traceback or "")
    with pytest.raises(TypeError, match="training function"):
        trainscope.fit_in_background(42)  # type: ignore[arg-type]

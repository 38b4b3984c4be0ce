"""Clicks during a blocking cell, on each ipykernel line, with real kernels and no browser.

Each test starts a kernel of one line (``scripts/kernels.sh`` prepares 6.x, 7.0 and 7.3; the main
venv is 7.4), shows a dashboard, starts the user's plain training loop, and while it runs sends
exactly the ``comm_msg`` a click in the dashboard sends.  It asserts that the action was applied
*before the loop ended*, by the strategy feature detection picks for that line.  These pin the
private ipykernel internals the strategies use (see ``trainscope/_delivery.py``).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ._jupyter import LINES, Kernel, kernel_python

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

SETUP = r"""
%load_ext trainscope
import json, threading, time, torch, torch.nn as nn, trainscope
from trainscope.actions import register_action

HANDLER_THREADS = []

def _validate(probe, params):
    HANDLER_THREADS.append(threading.current_thread().name)   # where the click was handled
    factor = params.get("factor")
    if not isinstance(factor, (int, float)) or not 0 < factor <= 10:
        raise ValueError("factor must be a number in (0, 10]")
    return {"factor": float(factor)}

def _apply(probe, params):
    for g in probe.optimizer.param_groups:
        g["lr"] *= params["factor"]
    return None, {"message": f"lr is now {probe.optimizer.param_groups[0]['lr']:g}"}

register_action("scale_lr_test", validate=_validate, apply=_apply, label="Scale LR (test)",
                schema={"factor": {"type": "float", "default": 0.5}})
torch.manual_seed(0); torch.set_num_threads(1)
X = torch.randn(2048, 20); Y = (X[:, :2].sum(1) > 0).long()
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
loss_fn = nn.CrossEntropyLoss()
scope = trainscope.watch(model, opt, loss_fn=loss_fn, delivery="{delivery}")
print("INFO", json.dumps({"delivery": scope.delivery, "comm": scope.controls.comm.comm_id}))
"""

# the user's own loop: nothing trainscope-specific in it
TRAIN = r"""
lrs = []
print("TRAINING STARTED", flush=True)
t0 = time.time()
while time.time() - t0 < {seconds}:
    i = torch.randint(0, 2048, (64,))
    loss = loss_fn(model(X[i]), Y[i])
    opt.zero_grad(); loss.backward(); opt.step()
    lrs.append(opt.param_groups[0]["lr"])
    time.sleep(0.002)
T_END = time.time()
print("TRAINING DONE", len(lrs), flush=True)
"""

REPORT = r"""
t = scope.probe.actions.find("{id}")
changed = next((k for k, lr in enumerate(lrs) if lr != lrs[0]), None)
acks = [x for x in scope.controls.tickets if x["id"] == "{id}"]
print("REPORT", json.dumps({
    "status": t.status if t else None, "message": t.message if t else None,
    "applied_step": t.applied_step if t else None, "t_done": t.t_done if t else None,
    "t_end": T_END, "steps": len(lrs), "changed_at": changed, "lr": opt.param_groups[0]["lr"],
    "threads": HANDLER_THREADS, "ack": acks[0]["status"] if acks else None,
    "events": [e.kind for e in scope.history.events],
}))
"""


@pytest.fixture
def kernel_factory(tmp_path: Path):
    started: list[Kernel] = []

    def start(line: str) -> Kernel:
        k = Kernel(kernel_python(line), tmp_path / line)
        started.append(k)
        return k

    yield start
    for k in started:
        k.close()


def _setup(k: Kernel, delivery: str = "auto") -> dict:
    return k.run(SETUP.replace("{delivery}", delivery), timeout=180).value("INFO")


@pytest.mark.parametrize("line", list(LINES))
def test_click_applied_while_the_cell_runs(kernel_factory, line: str) -> None:
    k = kernel_factory(line)
    info = _setup(k)
    expected = LINES[line][1]
    assert info["delivery"] == expected, f"{line}: feature detection chose {info['delivery']}"

    train = k.submit(TRAIN.replace("{seconds}", "5"))
    queued = k.submit("print('QUEUED CELL', len(lrs), flush=True)")  # waits behind the loop
    k.wait_for_text(train, "TRAINING STARTED")
    time.sleep(1.5)
    t_click = time.time()
    k.send_comm(
        info["comm"],
        {"kind": "action", "action": "scale_lr_test", "params": {"factor": 0.5}, "id": "click-1"},
    )
    tr = k.result(train, timeout=120)
    q = k.result(queued, timeout=60)
    rep = k.run(REPORT.replace("{id}", "click-1")).value("REPORT")

    assert tr.status == "ok", tr.text
    assert rep["status"] == "applied", rep
    assert rep["ack"] == "applied", "the dashboard must show the acknowledgement"
    # applied at a step boundary of the running loop, well before it ended
    assert rep["t_done"] < rep["t_end"], rep
    assert rep["changed_at"] is not None and rep["changed_at"] < rep["steps"] - 10, rep
    assert abs(rep["lr"] - 0.025) < 1e-12
    assert "intervention" in rep["events"]
    print(
        f"\n[{line}] {expected}: click -> applied in {(rep['t_done'] - t_click) * 1000:.0f} ms, "
        f"at step {rep['applied_step']} of {rep['steps']}; handler thread {rep['threads']}"
    )
    if expected == "pump":
        assert rep["threads"] == ["MainThread"]  # dispatched at a step boundary
    if expected == "subshell":
        assert rep["threads"] and rep["threads"][0] != "MainThread"
    # the cell queued behind the loop ran once, after it, in order
    assert q.status == "ok" and q.execution_count == tr.execution_count + 1
    assert f"QUEUED CELL {rep['steps']}" in q.text
    assert k.count_outputs("QUEUED CELL") == 1


def test_without_delivery_the_click_waits_for_the_cell(kernel_factory) -> None:
    """Negative control on ipykernel >= 7.4: with ``delivery="none"`` the same click is only
    handled after the loop (this is what the strategies fix)."""
    k = kernel_factory("ik7.4")
    info = _setup(k, "none")
    assert info["delivery"] == "none"
    train = k.submit(TRAIN.replace("{seconds}", "3"))
    k.wait_for_text(train, "TRAINING STARTED")
    time.sleep(1.0)
    k.send_comm(
        info["comm"],
        {"kind": "action", "action": "scale_lr_test", "params": {"factor": 0.5}, "id": "late-1"},
    )
    assert k.result(train).status == "ok"
    rep = k.run(REPORT.replace("{id}", "late-1")).value("REPORT")
    assert rep["changed_at"] is None, "without delivery nothing changes during the loop"
    # handled after the cell: queued for the next step, not applied and not lost
    assert rep["status"] == "pending", rep


@pytest.mark.parametrize("line", ["ik6", "ik7.3", "ik7.4"])
def test_interrupt_leaves_the_kernel_usable(kernel_factory, line: str) -> None:
    """Ctrl-C stops the loop with KeyboardInterrupt; a click before it was applied; the cell
    queued behind it gets exactly one reply (aborted, as in plain Jupyter); the kernel works."""
    k = kernel_factory(line)
    info = _setup(k)
    train = k.submit(TRAIN.replace("{seconds}", "60"))
    queued = k.submit("print('QUEUED CELL RAN', flush=True)")
    k.wait_for_text(train, "TRAINING STARTED")
    time.sleep(1.0)
    k.send_comm(
        info["comm"],
        {"kind": "action", "action": "scale_lr_test", "params": {"factor": 0.5}, "id": "int-1"},
    )
    time.sleep(1.5)
    k.km.interrupt_kernel()
    tr = k.result(train, timeout=60)
    q = k.result(queued, timeout=60)
    assert tr.status == "error" and tr.ename == "KeyboardInterrupt", tr.text
    print(f"\n[{line}] interrupted; the queued cell's reply: {q.status}")
    assert q.status in ("aborted", "ok")
    assert k.count_outputs("QUEUED CELL RAN") == (1 if q.status == "ok" else 0)
    after = k.run(
        "print('ALIVE', scope.probe.actions.find('int-1').status, scope.probe.step_count > 0)"
    )
    assert "ALIVE applied True" in after.text
    # the dashboard shows the interruption (final flush on error)
    state = k.run("print('STATE', json.dumps(scope.header.state['run_state']))").value("STATE")
    assert state == "interrupted"


@pytest.mark.parametrize("line", list(LINES))
def test_kernel_reads_busy_while_the_cell_runs_after_a_click(kernel_factory, line: str) -> None:
    """A click handled during the cell publishes its own busy / idle; the kernel's latest status
    (what JupyterLab's indicator shows) must still be *busy* until the cell ends."""
    k = kernel_factory(line)
    info = _setup(k)
    train = k.submit(TRAIN.replace("{seconds}", "4"))
    k.wait_for_text(train, "TRAINING STARTED")
    time.sleep(0.5)
    k.send_comm(
        info["comm"],
        {"kind": "action", "action": "scale_lr_test", "params": {"factor": 0.5}, "id": "click-s"},
    )
    k.drain(1.5)  # the click was handled; the cell still runs (4 s)
    # The subshell (7.4) publishes busy / idle for the comm_msg it handles; the pump (7.1-7.3) and
    # jupyter-ui-poll (6.x, 7.0) handle it inside the running execute_request and publish none.
    # Either way the kernel's latest status must read busy, parented to the training cell.
    assert k.statuses[-1][:2] == ("busy", train), (
        f"{line}: the kernel reads {k.statuses[-1][0]!r} while the training cell runs "
        f"(last statuses: {k.statuses[-6:]})"
    )
    tr = k.result(train, timeout=120)
    assert tr.status == "ok", tr.text
    assert k.statuses[-1][:2] == ("idle", train)
    rep = k.run(REPORT.replace("{id}", "click-s")).value("REPORT")
    assert rep["status"] == "applied" and rep["t_done"] < rep["t_end"], (
        f"{line}: the click was not handled while the cell ran: {rep}"
    )
    if LINES[line][1] == "subshell":  # the case the fix is for: the click's own idle came first
        clicks = [(s[0], s[2]) for s in k.statuses if s[2] == "comm_msg"]
        assert ("idle", "comm_msg") in clicks, k.statuses[-8:]

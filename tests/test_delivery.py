"""Click-delivery strategies without a kernel: feature detection and the inproc pump's
message handling, on real ZMQ sockets and a real jupyter_client Session (the kernel-level
behaviour on each ipykernel line is in ``test_delivery_kernels.py``)."""

from __future__ import annotations

import asyncio
import os
import signal
from types import SimpleNamespace
from typing import Any

import pytest
import zmq
from jupyter_client.session import Session

from trainscope import _delivery


def test_outside_a_kernel_there_is_no_delivery() -> None:
    d = _delivery.get_delivery("auto")
    assert isinstance(d, _delivery.NoDelivery) and not d.live
    assert d.describe()["name"] == "none"
    with pytest.raises(ValueError, match="delivery must be"):
        _delivery.get_delivery("telepathy")


def test_feature_detection_by_capability_not_version() -> None:
    from ipykernel.comm.comm import BaseComm

    manager = SimpleNamespace(_create_subshell=lambda: "id", _shell_channel_to_main=object())
    k74 = SimpleNamespace(shell_channel_thread=SimpleNamespace(manager=manager), shell_main=None)
    names = _delivery.available(k74)
    assert (
        names[:2]
        == (["subshell", "pump"] if hasattr(BaseComm, "_reply_subshell_for") else ["pump"])[:2]
    )
    k70 = SimpleNamespace(
        shell_channel_thread=SimpleNamespace(
            manager=SimpleNamespace(_shell_channel_to_main=object())
        ),
        shell_main=None,
        do_one_iteration=None,
    )
    assert "pump" in _delivery.available(k70) and "ui_poll" not in _delivery.available(k70)
    k6 = SimpleNamespace(do_one_iteration=lambda: None)
    assert _delivery.available(k6) == ["ui_poll"]
    assert _delivery.available(SimpleNamespace()) == []


class _FakeKernel:
    """Just what InprocPump touches: a session, the inproc socket, handlers, shell_main."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.session = Session(key=b"secret")
        self.ctx = zmq.Context.instance()
        self.from_socket = self.ctx.socket(zmq.PAIR)
        self.to_socket = self.ctx.socket(zmq.PAIR)
        addr = f"inproc://trainscope-test-{id(self)}"
        self.from_socket.bind(addr)
        self.to_socket.connect(addr)
        self.shell_channel_thread = SimpleNamespace(
            manager=SimpleNamespace(
                _shell_channel_to_main=SimpleNamespace(to_socket=self.to_socket)
            )
        )
        self.io_loop = SimpleNamespace(asyncio_loop=loop)
        self.dispatched: list[dict[str, Any]] = []
        self.replayed: list[str] = []
        self.shell_handlers = dict.fromkeys(("comm_msg", "comm_open", "comm_close"), self._comm_handler)

    def _comm_handler(self, stream: Any, idents: Any, msg: dict[str, Any]) -> None:
        self.dispatched.append(msg)

    async def shell_main(self, subshell_id: Any, frames: list[Any]) -> None:
        # what the kernel does later: a full deserialize, which checks (and records) the HMAC
        _, body = self.session.feed_identities(frames, copy=False)
        msg = self.session.deserialize(body, content=True, copy=False)
        self.replayed.append(
            msg["header"]["msg_type"]
            + ":"
            + str(msg["content"].get("code", msg["content"].get("comm_id")))
        )

    def send(self, msg_type: str, content: dict[str, Any]) -> None:
        self.session.send(self.from_socket, self.session.msg(msg_type, content), ident=[b"client"])

    def close(self) -> None:
        self.from_socket.close(0)
        self.to_socket.close(0)


@pytest.fixture
def loop() -> Any:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def test_pump_dispatches_our_comms_and_hands_everything_else_back_in_order(
    loop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    k = _FakeKernel(loop)
    try:
        pump = _delivery.InprocPump(k, interval=0.0)
        pump.route(SimpleNamespace(comm=SimpleNamespace(comm_id="ours")))
        k.send("execute_request", {"code": "cell 1", "silent": False})
        k.send(
            "comm_msg",
            {"comm_id": "ours", "data": {"method": "custom", "content": {"kind": "action"}}},
        )
        k.send(
            "comm_msg", {"comm_id": "someone-elses", "data": {"method": "custom", "content": {}}}
        )
        k.send("execute_request", {"code": "cell 2", "silent": False})
        k.send("complete_request", {"code": "x", "cursor_pos": 1})
        import time

        time.sleep(0.05)  # inproc delivery
        pump.pump()
        assert [m["content"]["comm_id"] for m in k.dispatched] == ["ours"]  # dispatched at once
        assert pump.dispatched == 1 and pump.handed_back == 4
        assert k.replayed == []  # nothing runs before the cell ends (the loop is not running)
        loop.run_until_complete(asyncio.sleep(0.01))  # the kernel's loop runs after the cell
        assert k.replayed == [
            "execute_request:cell 1",
            "comm_msg:someone-elses",
            "execute_request:cell 2",
            "complete_request:x",
        ]
        # handed back exactly once each; the replay was not rejected as "Duplicate Signature"
        assert not pump.errors
    finally:
        k.close()


def test_pump_is_throttled_and_main_thread_only(loop: Any) -> None:
    k = _FakeKernel(loop)
    try:
        pump = _delivery.InprocPump(k, interval=10.0)
        pump.pump()  # first call reads (nothing there)
        k.send("execute_request", {"code": "later"})
        import threading
        import time

        time.sleep(0.05)
        pump.pump()  # within the interval: not even a poll
        assert pump.handed_back == 0
        pump._last = 0.0
        th = threading.Thread(target=pump.pump)
        th.start()
        th.join()
        assert pump.handed_back == 0  # never from another thread
        pump.pump()
        assert pump.handed_back == 1
        loop.run_until_complete(asyncio.sleep(0.01))
        assert k.replayed == ["execute_request:later"]
    finally:
        k.close()


@pytest.fixture
def sigint_default():
    """Ctrl-C raises KeyboardInterrupt during the test, whatever the suite was started with: a
    shell starts background jobs (``pytest ... &``) with SIGINT ignored.  Restored afterwards."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def test_ctrl_c_is_held_until_a_message_is_safely_handled(sigint_default) -> None:
    with pytest.raises(KeyboardInterrupt), _delivery._interrupts_held():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the signal arrives here, but is held
            pass
        reached = True
    assert reached
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_held_ctrl_c_stays_ignored_where_sigint_is_ignored() -> None:
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _delivery._interrupts_held():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # restored, nothing raised
    finally:
        signal.signal(signal.SIGINT, old)

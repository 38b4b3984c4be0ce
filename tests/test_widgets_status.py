"""The kernel's busy/idle status while a training cell runs and a click is handled meanwhile.

ipykernel publishes ``busy`` / ``idle`` for every message it handles, a click's ``comm_msg``
handled in a subshell (or by the pump) included; JupyterLab's kernel indicator shows the latest
status whatever its parent, so it read *Idle* while the cell ran.  ``_live`` follows such an
``idle`` with a ``busy`` parented to the running cell.  Here with a stand-in kernel (the same
two ipykernel methods) and IPython's real event manager; ``test_delivery_kernels.py`` checks
the status stream of a real kernel.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from IPython.core.events import EventManager, available_events

from trainscope.widgets import _live


def _msg(msg_id: str, msg_type: str) -> dict[str, Any]:
    return {"header": {"msg_id": msg_id, "msg_type": msg_type}, "content": {}}


class FakeKernel:
    """``_publish_status(status, channel, parent=None)`` and ``get_parent(channel)`` as in
    ipykernel >= 6.10, with a per-thread parent like ipykernel 7's context variables."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str | None]] = []
        self._parent = threading.local()

    def set_parent(self, msg: dict[str, Any]) -> None:
        self._parent.msg = msg

    def get_parent(self, channel: str = "shell") -> dict[str, Any]:
        return getattr(self._parent, "msg", {})

    def _publish_status(self, status: str, channel: str, parent: Any = None) -> None:
        p = parent or self.get_parent(channel)
        self.sent.append((status, p.get("header", {}).get("msg_id")))

    def handle(self, msg: dict[str, Any]) -> None:
        """What ipykernel's dispatch_shell publishes around one message."""
        self.set_parent(msg)
        self._publish_status("busy", "shell")
        self._publish_status("idle", "shell")


@pytest.fixture
def shell() -> Iterator[SimpleNamespace]:
    sh = SimpleNamespace(events=EventManager(None, available_events), kernel=FakeKernel())
    _live.install(sh)
    yield sh
    _live.uninstall(sh)


def _run_cell(sh: SimpleNamespace, body: Any) -> None:
    k = sh.kernel
    cell = _msg("exec-1", "execute_request")
    k.set_parent(cell)
    k._publish_status("busy", "shell")
    sh.events.trigger("pre_run_cell", None)
    body()
    sh.events.trigger("post_run_cell", SimpleNamespace(error_in_exec=None, error_before_exec=None))
    k._publish_status("idle", "shell")


def test_a_click_handled_during_a_cell_leaves_the_kernel_busy(shell: SimpleNamespace) -> None:
    k = shell.kernel

    def click_in_a_subshell() -> None:
        t = threading.Thread(target=k.handle, args=(_msg("click-1", "comm_msg"),))
        t.start()
        t.join()
        # the latest status a frontend saw while the cell still runs
        assert k.sent[-1] == ("busy", "exec-1"), k.sent

    _run_cell(shell, click_in_a_subshell)
    assert k.sent == [
        ("busy", "exec-1"),
        ("busy", "click-1"),
        ("idle", "click-1"),  # the click's own request still completes
        ("busy", "exec-1"),  # ... and the indicator goes back to the running cell
        ("idle", "exec-1"),  # the cell's end is untouched
    ]


def test_between_cells_nothing_is_added(shell: SimpleNamespace) -> None:
    k = shell.kernel
    _run_cell(shell, lambda: None)
    k.handle(_msg("click-2", "comm_msg"))  # a click after the cell: plain busy / idle
    assert k.sent[-2:] == [("busy", "click-2"), ("idle", "click-2")]
    assert k.sent.count(("busy", "exec-1")) == 1


def test_uninstall_restores_the_kernel(shell: SimpleNamespace) -> None:
    k = shell.kernel
    assert "_publish_status" in vars(k)
    _live.uninstall(shell)
    assert "_publish_status" not in vars(k)
    assert _live.cell_parent() is None

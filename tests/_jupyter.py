"""Helpers for the kernel and browser tests: real kernels through jupyter_client, one per
ipykernel line, and a scratch Jupyter configuration (nothing touches the user's ~/.jupyter).

The extra ipykernel lines live in ``.venvs/ik-<version>`` (``bash scripts/kernels.sh``); the main
venv's own ipykernel (>= 7.4) is the third line.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENVS = Path(os.environ.get("TRAINSCOPE_KERNEL_VENVS", ROOT / ".venvs"))

# line -> (version prefix of the venv, expected delivery strategy)
LINES = {
    "ik6": ("6.", "ui_poll"),
    "ik7.0": ("7.0.", "pump"),
    "ik7.3": ("7.3.", "pump"),
    "ik7.4": ("main", "subshell"),
}


def kernel_python(line: str) -> Path:
    """The Python of a kernel venv for ``line``; skips (saying how to fix it) when missing."""
    prefix, _ = LINES[line]
    if prefix == "main":
        if tuple(int(x) for x in version("ipykernel").split(".")[:2]) < (7, 4):
            pytest.skip(
                f"the main venv's ipykernel is {version('ipykernel')}; the ik7.4 line needs >= 7.4"
            )
        return Path(sys.executable)
    found = sorted(VENVS.glob(f"ik-{prefix}*"))
    for venv in reversed(found):
        py = venv / "bin" / "python"
        if py.exists():
            return py
    pytest.skip(
        f"no ipykernel {prefix}x venv in {VENVS}: run `bash scripts/kernels.sh` (IK_VERSIONS to choose)"
    )


def jupyter_env(scratch: Path) -> dict[str, str]:
    """Environment for kernels / servers with every Jupyter and IPython dir in ``scratch``."""
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(scratch / "config"),
        JUPYTER_DATA_DIR=str(scratch / "data"),
        JUPYTER_RUNTIME_DIR=str(scratch / "runtime"),
        IPYTHONDIR=str(scratch / "ipython"),
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    env.pop("JUPYTER_PATH", None)
    return env


def write_kernelspec(scratch: Path, name: str, python: Path) -> Path:
    d = scratch / "kernels" / name
    d.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": name,
        "language": "python",
        "metadata": {"debugger": False},
    }
    (d / "kernel.json").write_text(json.dumps(spec))
    return d.parent


@dataclass
class Result:
    msg_id: str
    text: str = ""
    status: str = ""
    ename: str = ""
    execution_count: int | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def value(self, tag: str) -> Any:
        """The JSON printed after ``tag`` (``print(tag, json.dumps(...))``)."""
        for line in self.text.splitlines():
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1 :])
        raise AssertionError(f"{tag} not found in output:\n{self.text}")


class Kernel:
    """A running kernel of one ipykernel line, driven like a frontend would."""

    def __init__(self, python: Path, scratch: Path) -> None:
        from jupyter_client import KernelManager
        from jupyter_client.kernelspec import KernelSpecManager

        self.scratch = scratch
        kdir = write_kernelspec(scratch, "ts-test", python)
        ksm = KernelSpecManager(kernel_dirs=[str(kdir)])
        self.km = KernelManager(kernel_name="ts-test", kernel_spec_manager=ksm)
        self.km.start_kernel(env=jupyter_env(scratch), cwd=str(ROOT))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)
        self._iopub: dict[str, list[dict[str, Any]]] = {}
        self._idle: set[str] = set()
        # every status message in arrival order: (state, parent msg_id, parent msg_type)
        self.statuses: list[tuple[str, str | None, str | None]] = []

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)

    # ---------------------------------------------------------------- messages
    def submit(self, code: str) -> str:
        """Send an execute_request without waiting (as a frontend queues cells)."""
        return str(self.kc.execute(code, store_history=True))

    def _drain(self, timeout: float) -> None:
        try:
            m = self.kc.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            return
        pid = m["parent_header"].get("msg_id")
        if m["msg_type"] == "status":
            self.statuses.append(
                (m["content"]["execution_state"], pid, m["parent_header"].get("msg_type"))
            )
        if pid is None:
            return
        self._iopub.setdefault(pid, []).append(m)
        if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            self._idle.add(pid)

    def wait_for_text(self, msg_id: str, needle: str, timeout: float = 60) -> None:
        end = time.time() + timeout
        while time.time() < end:
            text = "".join(
                m["content"].get("text", "")
                for m in self._iopub.get(msg_id, [])
                if m["msg_type"] == "stream"
            )
            if needle in text:
                return
            self._drain(0.2)
        raise AssertionError(f"{needle!r} did not appear within {timeout} s")

    def result(self, msg_id: str, timeout: float = 120) -> Result:
        """Wait for the cell's reply and its outputs."""
        end = time.time() + timeout
        reply = None
        while time.time() < end and reply is None:
            try:
                r = self.kc.get_shell_msg(timeout=0.2)
                if r["parent_header"].get("msg_id") == msg_id:
                    reply = r
                else:
                    self._replies.setdefault(r["parent_header"].get("msg_id"), []).append(r)
            except queue.Empty:
                pass
            if reply is None and msg_id in self._replies:
                reply = self._replies[msg_id].pop(0)
            self._drain(0.01)
        if reply is None:
            raise AssertionError(f"no reply for {msg_id} within {timeout} s")
        t_idle = time.time() + 10
        while msg_id not in self._idle and time.time() < t_idle:
            self._drain(0.2)
        res = Result(
            msg_id,
            status=reply["content"]["status"],
            execution_count=reply["content"].get("execution_count"),
        )
        res.ename = reply["content"].get("ename", "")
        for m in self._iopub.get(msg_id, []):
            if m["msg_type"] == "stream":
                res.text += m["content"]["text"]
            elif m["msg_type"] == "error":
                res.text += f"ERROR {m['content']['ename']}: {m['content']['evalue']}\n"
            if m["msg_type"] in ("stream", "error", "execute_result", "display_data"):
                res.outputs.append(m)
        return res

    @property
    def _replies(self) -> dict[str, list[dict[str, Any]]]:
        if not hasattr(self, "_reply_store"):
            self._reply_store: dict[str, list[dict[str, Any]]] = {}
        return self._reply_store

    def run(self, code: str, timeout: float = 120) -> Result:
        res = self.result(self.submit(code), timeout)
        if res.status != "ok":
            raise AssertionError(f"cell failed ({res.ename}):\n{code}\n---\n{res.text}")
        return res

    def send_comm(self, comm_id: str, content: dict[str, Any]) -> None:
        """Exactly what the browser sends for ``model.send(content)`` from a widget."""
        msg = self.kc.session.msg(
            "comm_msg", {"comm_id": comm_id, "data": {"method": "custom", "content": content}}
        )
        self.kc.shell_channel.send(msg)

    def drain(self, seconds: float) -> None:
        """Read IOPub for ``seconds`` (statuses and outputs are recorded)."""
        end = time.time() + seconds
        while time.time() < end:
            self._drain(0.05)

    def count_outputs(self, needle: str) -> int:
        """How many stream outputs, over every message seen so far, contain ``needle``."""
        return sum(
            m["content"].get("text", "").count(needle)
            for msgs in self._iopub.values()
            for m in msgs
            if m["msg_type"] == "stream"
        )

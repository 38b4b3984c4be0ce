"""Run directories under faults: a failing writer, damaged or crafted files, background runs.

Each test pins one defect of the reliability review (``issue 11``): it failed before the fix.
"""

from __future__ import annotations

import errno
import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import trainscope
from trainscope.history import History
from trainscope.runlog import Run, RunWriter
from trainscope.runlog import _format as F

from .test_runlog import _layers, _synthetic_record, record


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _deep_model(depth: int = 6) -> nn.Sequential:
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for _ in range(depth):
        mods += [nn.Linear(16, 16), nn.ReLU()]
    return nn.Sequential(*mods, nn.Linear(16, 3))


# ------------------------------------------------------------------ a writer that fails (H2)
def test_a_failed_writer_stops_holding_data_says_so_once_and_keeps_what_it_wrote(
    tmp_path,
) -> None:
    model = _deep_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 16), torch.randint(0, 3, (32,))
    probe = trainscope.Probe(model, opt, every=1, logdir=tmp_path / "run")
    w = probe.run_writer
    w.flush_interval = 3600.0  # flushes happen only when the test calls them

    def step(n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            probe.log(loss=loss)
            loss.backward()
            opt.step()

    step(20)
    probe.flush()
    w.flush()
    written = w.stats["bytes"]
    good_size = os.path.getsize(tmp_path / "run" / F.seg_name(0))
    steps_written = probe.history.step

    real_append = w._append

    def disk_full(data: bytes) -> None:  # half of the data reaches the disk, then ENOSPC
        assert w._fd is not None
        os.write(w._fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    w._append = disk_full
    step(5)
    probe.flush()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w.flush()
        step(300)  # the writer has failed: nothing may pile up for it any more
        probe.flush()
        w.flush()
        w.close()
    w._append = real_append
    warned = [c for c in caught if "writing the run directory" in str(c.message)]
    assert len(warned) == 1, [str(c.message) for c in caught]
    assert "No space left" in str(warned[0].message)
    assert len(w.errors) == 1 and "No space left" in w.errors[0]
    assert [e.where for e in probe.errors] == ["logdir"]
    assert "No space left" in probe.errors[0].error
    # the memory bound: nothing queued, nothing subscribed, whatever the run length
    assert w._queue == []
    assert all(
        cb.__self__ is not w
        for cb in probe.history._subscribers.values()
        if hasattr(cb, "__self__")
    )
    assert w.stats["bytes"] == written
    # what was written stays readable, without the half-written record
    assert os.path.getsize(tmp_path / "run" / F.seg_name(0)) == good_size
    run = Run(tmp_path / "run")
    assert run.errors == [] and run.torn_tail_bytes == 0 and run.stats["skipped_bytes"] == 0
    assert run.history.step == steps_written
    np.testing.assert_array_equal(
        run.history.scalar("loss")["step"][:20], probe.history.scalar("loss")["step"][:20]
    )
    probe.detach()
    assert [e.where for e in probe.errors] == ["logdir"]  # detach does not report it again


def test_a_failed_writer_queue_stays_empty_while_the_history_grows(tmp_path) -> None:
    rng = np.random.default_rng(0)
    h = History(_layers(4))
    w = RunWriter(tmp_path / "r", h, flush_interval=3600)
    os.close(w._fd)  # the file is gone from under the writer (EBADF on the next append)
    w._fd = os.open(os.devnull, os.O_RDONLY)
    record(h, _synthetic_record(0, 4, rng))
    with pytest.warns(RuntimeWarning, match="writing the run directory"):
        w.flush()
    assert w._failed
    for step in range(1, 2000):
        h.add_scalars(step, {"loss": float(step)})
        record(h, _synthetic_record(step, 4, rng))
    assert len(w._queue) == 0
    w.close()
    assert len(w.errors) == 1


# ------------------------------------------------------------------ background runs (M5)
def _wait_for(cond, timeout: float = 20.0) -> None:
    import time

    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("mode", ["optimizer", "manual"])
def test_background_stop_works_with_a_plain_probe_and_no_dashboard(mode) -> None:
    model = nn.Sequential(nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = trainscope.Probe(model, opt if mode == "optimizer" else None)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))

    def train() -> None:
        while True:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if mode == "manual":
                probe.step()

    try:
        run = trainscope.fit_in_background(train)
        _wait_for(lambda: probe.step_count >= 3)
        run.stop()
        run.join(timeout=20)
        assert run.status == "stopped"
        steps = probe.step_count
        assert not probe._step_callbacks  # the stop check is removed with the run
        assert probe.errors == []
    finally:
        run.stop()
        probe.detach()
    assert probe.step_count == steps


def test_background_stop_reaches_a_loop_whose_probe_is_created_after_stop() -> None:
    model = nn.Sequential(nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    import threading

    go = threading.Event()

    def train() -> None:
        go.wait(20)
        with trainscope.Probe(model, opt):
            while True:
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()

    run = trainscope.fit_in_background(train)
    run.stop()
    go.set()
    run.join(timeout=20)
    assert run.status == "stopped"


def test_the_process_exits_cleanly_while_a_background_loop_runs(tmp_path) -> None:
    import subprocess
    import sys

    script = tmp_path / "bg.py"
    script.write_text(
        "import torch\n"
        "from torch import nn\n"
        "import trainscope\n"
        "model = nn.Sequential(nn.Linear(8, 3))\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.01)\n"
        "probe = trainscope.Probe(model, opt)\n"
        "x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))\n"
        "def train():\n"
        "    while True:\n"
        "        opt.zero_grad(); nn.functional.cross_entropy(model(x), y).backward(); opt.step()\n"
        "run = trainscope.fit_in_background(train)\n"
        "import time\n"
        "while probe.step_count < 5: time.sleep(0.01)\n"
        "print('leaving', flush=True)\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "leaving" in p.stdout and "terminate called" not in p.stderr

"""Run directories under faults: a failing writer, damaged or crafted files, background runs.

Each test pins one defect of the reliability review (``issue 11``): it failed before the fix.
"""

from __future__ import annotations

import errno
import os
import struct
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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w = RunWriter(tmp_path / "r", h, flush_interval=3600)
        os.close(w._fd)  # the file is gone from under the writer (EBADF on the next append)
        w._fd = os.open(os.devnull, os.O_RDONLY)
        record(h, _synthetic_record(0, 4, rng))
        w.flush()  # fails here, or already in the writer's thread
        assert w._failed
        for step in range(1, 2000):
            h.add_scalars(step, {"loss": float(step)})
            record(h, _synthetic_record(step, 4, rng))
        assert len(w._queue) == 0
        w.close()
    assert len(w.errors) == 1
    assert len([c for c in caught if "writing the run directory" in str(c.message)]) == 1


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


# ------------------------------------------------------------------ damaged run directories
def _write_run(path, *, steps: int = 300, segment_bytes: int = 8 << 20) -> trainscope.Probe:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    probe = trainscope.Probe(model, opt, every=5)
    w = RunWriter(path, probe.history, segment_bytes=segment_bytes, flush_interval=3600)
    for k in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        probe.log(marker=float(k))
        if k % 20 == 0:
            probe.flush()
            w.flush()
    probe.detach()
    w.close()
    probe.writer = w  # type: ignore[attr-defined]
    return probe


def _offsets(data: bytes) -> list[int]:
    offs, pos = [], len(F.SEGMENT_MAGIC)
    while pos + F.HEAD_SIZE <= len(data):
        _, blen, _ = F._HEAD.unpack_from(data, pos)
        offs.append(pos)
        pos += F.HEAD_SIZE + blen
    return offs


def _markers(run: Run) -> list[float]:
    return run.history.scalar("marker")["mean"].tolist()


def test_a_flipped_length_bit_is_reported_and_reading_resyncs(tmp_path) -> None:
    _write_run(tmp_path / "r")
    seg = tmp_path / "r" / F.seg_name(0)
    good = seg.read_bytes()
    ref = _markers(Run(tmp_path / "r"))
    assert len(ref) == 300
    offs = _offsets(good)
    for which in (2, len(offs) // 2):
        b = bytearray(good)
        b[offs[which] + 4 + 3] ^= 0x01  # high byte of the body length: +16 MiB, < MAX_BODY
        seg.write_bytes(bytes(b))
        run = Run(tmp_path / "r")
        assert run.finished
        assert any("length field" in e and F.seg_name(0) in e for e in run.errors), run.errors
        assert run.torn_tail_bytes == 0 and run.stats["skipped_bytes"] > 0
        got = _markers(run)
        assert set(got) <= set(ref) and len(got) >= len(ref) - 25  # at most one record lost
    # an absurd length (over MAX_BODY) is corruption too
    b = bytearray(good)
    struct.pack_into("<I", b, offs[3] + 4, F.MAX_BODY + 1)
    seg.write_bytes(bytes(b))
    run = Run(tmp_path / "r")
    assert any("impossible length" in e for e in run.errors) and run.finished


def test_a_live_reader_gets_past_a_damaged_length(tmp_path) -> None:
    _write_run(tmp_path / "r")
    seg = tmp_path / "r" / F.seg_name(0)
    good = seg.read_bytes()
    offs = _offsets(good)
    cut = offs[len(offs) // 2]
    seg.write_bytes(good[:cut])
    run = Run(tmp_path / "r")
    before = len(_markers(run))
    tail = bytearray(good[cut:])
    tail[4 + 3] ^= 0x01
    with open(seg, "ab") as f:
        f.write(bytes(tail))
    run.refresh()
    assert run.finished and len(_markers(run)) >= 300 - 25 > before
    assert any("length field" in e for e in run.errors)


def test_scan_reports_each_skipped_stretch_with_its_offset() -> None:
    from .test_runlog import _segment_bytes

    data, ends = _segment_bytes(None)
    b = bytearray(data)
    b[ends[1] + 4 + 3] ^= 0x01  # record 2's length
    res = F.scan(bytes(b), len(F.SEGMENT_MAGIC))
    assert [h["step"] for h, _ in res.records] == [0, 1, 3, 4] and res.status == "clean"
    assert res.skipped == ends[2] - ends[1]
    assert len(res.problems) == 1 and res.problems[0].startswith(f"offset {ends[1]}:")
    # a record still being written (nothing valid after it) stays the tail, as before
    res2 = F.scan(bytes(b[: ends[1] + 30]), len(F.SEGMENT_MAGIC))
    assert res2.status == "partial" and res2.problems == [] and len(res2.records) == 2


def _compacted_run(path) -> tuple[trainscope.Probe, list[float]]:
    probe = _write_run(path, steps=600, segment_bytes=4096)
    assert probe.writer.stats["compactions"] >= 3  # type: ignore[attr-defined]
    return probe, _markers(Run(path))


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_newest_snapshot_falls_back_and_loses_nothing(tmp_path, damage) -> None:
    probe, ref = _compacted_run(tmp_path / "r")
    seq = probe.writer._seq  # type: ignore[attr-defined]
    snap = tmp_path / "r" / F.snap_name(seq)
    b = bytearray(snap.read_bytes())
    if damage == "truncate":
        snap.write_bytes(bytes(b[: len(b) // 2]))
    elif damage == "flip":
        b[len(b) // 2] ^= 0x10
        snap.write_bytes(bytes(b))
    else:
        snap.unlink()
    run = Run(tmp_path / "r")
    assert _markers(run) == ref  # the older snapshot + its segments hold everything
    assert run.history.samples() == probe.history.samples()
    if damage != "delete":
        assert len(run.errors) == 1, run.errors
        msg = run.errors[0]
        assert F.snap_name(seq) in msg and F.snap_name(seq - 1) in msg
        assert "nothing is lost" in msg


def test_both_snapshots_damaged_says_exactly_what_is_lost(tmp_path) -> None:
    probe, ref = _compacted_run(tmp_path / "r")
    seq = probe.writer._seq  # type: ignore[attr-defined]
    for s in (seq - 1, seq):
        (tmp_path / "r" / F.snap_name(s)).write_bytes(b"PK\x03\x04 not a zip")
    run = Run(tmp_path / "r")
    assert len(run.errors) == 1
    msg = run.errors[0]
    assert F.snap_name(seq) in msg and F.snap_name(seq - 1) in msg
    assert f"everything recorded before {F.seg_name(seq - 1)} is lost" in msg
    got = _markers(run)
    assert (got and got == ref[len(ref) - len(got) :]) or set(got) <= set(ref)


def test_a_deleted_segment_is_reported(tmp_path) -> None:
    probe, ref = _compacted_run(tmp_path / "r")
    seq = probe.writer._seq  # type: ignore[attr-defined]
    d = tmp_path / "r"
    old = os.path.getmtime(d / F.META_FILE) - 60
    for n in os.listdir(d):
        os.utime(d / n, (old, old))  # a run written a minute ago
    # the older segment: the newest snapshot still holds everything, nothing is lost
    (d / F.seg_name(seq - 1)).unlink()
    run = Run(d)
    assert _markers(run) == ref and run.errors == []
    # the newest segment: what it held is lost, and the reader says so
    (d / F.seg_name(seq)).unlink()
    run = Run(d)
    assert any(F.seg_name(seq) in e and "missing" in e for e in run.errors), run.errors
    # a single-segment run without its segment
    _write_run(tmp_path / "s", steps=30)
    (tmp_path / "s" / F.seg_name(0)).unlink()
    t = os.path.getmtime(tmp_path / "s" / F.META_FILE) - 60
    os.utime(tmp_path / "s" / F.META_FILE, (t, t))
    run = Run(tmp_path / "s")
    assert any(F.seg_name(0) in e and "missing" in e for e in run.errors), run.errors


def test_a_record_that_fails_to_apply_is_consumed_not_reapplied(tmp_path, monkeypatch) -> None:
    _write_run(tmp_path / "r", steps=100)
    ref = _markers(Run(tmp_path / "r"))
    calls = {"n": 0}
    real = Run._apply

    def flaky(self, header, arrays, flags):  # type: ignore[no-untyped-def]
        if header.get("t") == "record":
            calls["n"] += 1
            if calls["n"] == 3:
                raise ValueError("boom")
        return real(self, header, arrays, flags)

    monkeypatch.setattr(Run, "_apply", flaky)
    run = Run(tmp_path / "r")
    assert _markers(run) == ref  # scalars before and after the failing record, once each
    assert len(run.errors) == 1 and "'record' record was skipped" in run.errors[0]
    for _ in range(3):
        run.refresh()
    assert _markers(run) == ref and len(run.errors) == 1
    assert run.history.samples() == 100 // 5 - 1


def test_segments_written_before_a_failing_record_are_never_duplicated_live(tmp_path) -> None:
    # the reviewer's case: the snapshot holding the layer list is deleted, so every later
    # per-layer record fails; the scalars must still be read exactly once per refresh
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    o = torch.optim.SGD(m.parameters(), lr=0.01)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    p = trainscope.Probe(m, o, every=5)
    w = RunWriter(tmp_path / "r", p.history, segment_bytes=4096, flush_interval=3600)

    def train(n: int, start: int) -> None:
        for k in range(n):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
            p.log(marker=float(start + k))
            if k % 50 == 0:
                p.flush()
                w.flush()
        p.flush()
        w.flush()

    train(300, 0)
    for s in F.list_seqs(str(tmp_path / "r"))[1]:  # every snapshot gone
        os.remove(tmp_path / "r" / F.snap_name(s))
    r = Run(tmp_path / "r")
    n0 = r.history.scalars["marker"].total
    assert r.errors  # the missing history is reported
    totals = [n0]
    for i in range(2):
        train(50, 300 + 50 * i)
        r.refresh()
        totals.append(r.history.scalars["marker"].total)
    assert totals == [n0, n0 + 50, n0 + 100]
    steps = r.history.scalar("marker")["step"]
    assert len(np.unique(steps)) == len(steps)
    p.detach()
    w.close()

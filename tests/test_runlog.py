"""Run directory: exact replay, bounded size, torn records, crash points, open/follow API."""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
import torch
from torch import nn

import trainscope
from trainscope.history import LAYER_METRICS, History, StepRecord, Update
from trainscope.layers import LayerInfo
from trainscope.runlog import Run, RunSet, RunWriter, open_run
from trainscope.runlog import _format as F
from trainscope.stats import NBINS

from .conftest import make_mlp


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is faster, and steady on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def assert_same_history(a: History, b: History) -> None:
    """Every series of ``b`` equals ``a`` exactly (same buckets, same values)."""
    assert a.layer_names == b.layer_names
    assert sorted(a.scalar_names()) == sorted(b.scalar_names())
    for n in a.scalar_names():
        sa, sb = a.scalar(n), b.scalar(n)
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k], err_msg=f"scalar {n} {k}")
    for m in LAYER_METRICS:
        ra, rb = a.layer_series_range(m), b.layer_series_range(m)
        for k in ra:
            np.testing.assert_array_equal(ra[k], rb[k], err_msg=f"{m} {k}")
    for kind in ("act", "ograd"):
        for x, y in zip(a.histograms(kind), b.histograms(kind), strict=True):
            np.testing.assert_array_equal(x, y)
    assert a.samples() == b.samples()
    assert [(e.id, e.step, e.kind, e.label) for e in a.events] == [
        (e.id, e.step, e.kind, e.label) for e in b.events
    ]
    assert (a.latest is None) == (b.latest is None)
    if a.latest is not None and b.latest is not None:
        assert a.latest.step == b.latest.step
        for m in LAYER_METRICS:
            np.testing.assert_allclose(
                a.latest.metrics[m], b.latest.metrics[m], rtol=1e-6, equal_nan=True
            )
        assert a.latest.dead_units.keys() == b.latest.dead_units.keys()
        for i in a.latest.dead_units:
            np.testing.assert_array_equal(a.latest.dead_units[i], b.latest.dead_units[i])


def train(
    model: nn.Module, probe: trainscope.Probe, x: torch.Tensor, y: torch.Tensor, steps: int
) -> None:
    opt = probe.optimizer
    assert opt is not None
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        probe.log(loss=loss)
        loss.backward()
        opt.step()


def test_probe_logdir_replays_exactly_through_compactions(tmp_path, blobs) -> None:
    x, y = blobs
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hist = History(
        scalar_recent=64,
        scalar_buckets=32,
        layer_recent=16,
        layer_buckets=16,
        param_recent=16,
        param_buckets=16,
        hist_recent=8,
        hist_buckets=8,
    )
    probe = trainscope.Probe(
        model, opt, every=3, cheap_every=1, history=hist, logdir=tmp_path / "run"
    )
    w = probe.run_writer
    assert isinstance(w, RunWriter)
    w.segment_bytes = 4096  # compact often
    for chunk in range(6):
        train(model, probe, x[:64], y[:64], 40)
        probe.history.add_event(
            "note", f"chunk {chunk}", tag=("a", 1), arr=np.arange(3), by_layer={0: 1.5}
        )
        probe.flush()
        w.flush()
    probe.detach()
    w.close()
    assert w.errors == []
    assert w.stats["compactions"] >= 3
    names = sorted(os.listdir(tmp_path / "run"))
    assert names == [
        "meta.json",
        F.seg_name(w._seq - 1),
        F.seg_name(w._seq),
        F.snap_name(w._seq - 1),
        F.snap_name(w._seq),
    ]  # two snapshots and their segments: the older pair is the fallback
    run = Run(tmp_path / "run")
    assert run.finished and run.errors == [] and run.stats["skipped_bytes"] == 0
    assert_same_history(probe.history, run.history)
    ev = run.history.events[-1]
    assert ev.data == {"tag": ("a", 1), "arr": [0, 1, 2], "by_layer": {0: 1.5}}
    assert run.history.meta["model"] == "Sequential" and run.history.meta["optimizer"] == "SGD"
    # the per-step parameter series (cheap steps) survives too
    sa, va = probe.history.layer_series("grad_norm")
    sb, vb = run.history.layer_series("grad_norm")
    assert np.all(np.diff(sa[-10:]) == 1)  # every step, not only the sampled ones (every=3)
    np.testing.assert_array_equal(sa, sb)
    np.testing.assert_array_equal(va, vb)


def _synthetic_record(step: int, L: int, rng: np.random.Generator) -> StepRecord:
    return StepRecord(
        step=step,
        time=float(step),
        metrics={m: rng.random(L) for m in LAYER_METRICS},
        act_hist=rng.random((L, NBINS)).astype(np.float32),
        ograd_hist=rng.random((L, NBINS)).astype(np.float32),
        forward_order=list(range(L)),
        backward_order=list(range(L))[::-1],
        first_nonfinite_forward=None,
        first_nonfinite_backward=None,
        dead_units={0: rng.random(37) < 0.5},
    )


def record(h: History, rec: StepRecord) -> None:
    """Add a record the way the probe does: add, then tell the subscribers."""
    h.add_record(rec)
    h.notify(Update(step=rec.step, scalars=True, record=True))


def _layers(n: int) -> list[LayerInfo]:
    return [LayerInfo(f"l{i}", "Linear", "linear", 10, 10, False, None, False) for i in range(n)]


def test_directory_size_stays_bounded_however_long_the_run(tmp_path) -> None:
    rng = np.random.default_rng(0)
    L = 6
    h = History(
        _layers(L),
        scalar_recent=256,
        scalar_buckets=64,
        layer_recent=32,
        layer_buckets=32,
        hist_recent=8,
        hist_buckets=8,
    )
    w = RunWriter(tmp_path / "r", h, segment_bytes=64 << 10, flush_interval=60)
    sizes, snaps = [], []
    for step in range(12_000):
        h.add_scalars(step, {"loss": float(np.exp(-step / 3000)), "lr": 0.1})
        if step % 4 == 0:
            record(h, _synthetic_record(step, L, rng))
        if step % 500 == 0:
            h.add_event("note", f"step {step}")
        if step % 50 == 0:
            w.flush()
            sizes.append(w.directory_bytes())
            snaps.append(w._snap_bytes)
    w.close()
    snap = max(snaps)  # a snapshot's size varies a little with the history's content
    # two snapshots and their two segments (the older pair is the fallback for the newer)
    bound = 2 * snap + 2 * max(64 << 10, snap) + (64 << 10)
    assert max(sizes) <= bound, (max(sizes), bound)
    # the second half of the run does not make the directory bigger than the first half did
    half = len(sizes) // 2
    assert max(sizes[half:]) <= 1.1 * max(sizes[:half])
    assert w.stats["bytes"] > 10 * max(sizes)  # far more was written than is kept
    run = Run(tmp_path / "r")
    assert_same_history(h, run.history)


def _segment_bytes(tmp_path, n_records: int = 5) -> tuple[bytes, list[int]]:
    """A segment with ``n_records`` records; returns its bytes and each record's end offset."""
    rng = np.random.default_rng(1)
    data = bytearray(F.SEGMENT_MAGIC)
    ends = []
    for i in range(n_records):
        header, arrays = F.record_to_parts(_synthetic_record(i, 3, rng))
        data += F.encode(header, arrays)
        ends.append(len(data))
    return bytes(data), ends


def test_a_reader_never_returns_a_torn_record(tmp_path) -> None:
    data, ends = _segment_bytes(tmp_path)
    start = len(F.SEGMENT_MAGIC)
    rng = np.random.default_rng(2)
    cuts = sorted(
        set(rng.integers(start, len(data), 300).tolist())
        | set(ends)
        | {e - 1 for e in ends}
        | {e + 1 for e in ends[:-1]}
    )
    for cut in cuts:
        res = F.scan(data[:cut], start)
        complete = sum(e <= cut for e in ends)
        assert len(res.records) == complete, cut
        assert [h["step"] for h, _ in res.records] == list(range(complete))
        assert res.skipped == 0
        assert res.status == ("clean" if cut in ends or cut == start else "partial")
        assert res.end == (ends[complete - 1] if complete else start)


def test_corruption_in_the_middle_is_skipped_and_the_rest_is_read() -> None:
    data, ends = _segment_bytes(None)
    bad = bytearray(data)
    bad[ends[1] + 40] ^= 0xFF  # inside record 2's body: its checksum fails
    res = F.scan(bytes(bad), len(F.SEGMENT_MAGIC))
    assert [h["step"] for h, _ in res.records] == [0, 1, 3, 4]
    assert res.skipped == ends[2] - ends[1]
    assert res.status == "clean"
    # a checksum failure on the *last* record is a torn tail, never returned
    bad2 = bytearray(data)
    bad2[-5] ^= 0xFF
    res2 = F.scan(bytes(bad2), len(F.SEGMENT_MAGIC))
    assert [h["step"] for h, _ in res2.records] == [0, 1, 2, 3] and res2.status == "partial"


def test_record_codec_round_trips_nested_values() -> None:
    arrays: dict[str, np.ndarray] = {}
    value = {
        "a": (1, 2.5, "x"),
        3: [np.float32(1.5), np.arange(4)],
        "__a__": None,
        "nan": float("nan"),
        "t": torch.tensor(2.0),
    }
    j = F.to_json(value, arrays, "p")
    frame = F.encode({"t": "x", "v": j}, arrays)
    (magic, blen, crc) = F._HEAD.unpack_from(frame, 0)
    assert (
        magic == F.RECORD_MAGIC
        and zlib.crc32(frame[F.HEAD_SIZE :]) == crc
        and blen == len(frame) - F.HEAD_SIZE
    )
    header, arrs = F.decode_body(frame[F.HEAD_SIZE :])
    back = F.from_json(header["v"], arrs)
    assert (
        back["a"] == (1, 2.5, "x")
        and back[3][0] == 1.5
        and back["__a__"] is None
        and back["t"] == 2.0
    )
    np.testing.assert_array_equal(back[3][1], np.arange(4))
    assert np.isnan(back["nan"])


@pytest.mark.parametrize("crash", ["before_rename", "after_snapshot", "before_cleanup"])
def test_every_crash_point_of_a_compaction_leaves_a_readable_run(
    tmp_path, monkeypatch, crash
) -> None:
    rng = np.random.default_rng(3)
    h = History(_layers(3), layer_recent=8, layer_buckets=8, hist_recent=4, hist_buckets=4)
    w = RunWriter(tmp_path / "r", h, segment_bytes=4096, flush_interval=60)
    for step in range(30):
        h.add_scalars(step, {"loss": 1.0 / (step + 1)})
        record(h, _synthetic_record(step, 3, rng))
    w.flush()  # first compaction succeeds
    assert w.stats["compactions"] == 1
    expected = History(_layers(3), layer_recent=8, layer_buckets=8, hist_recent=4, hist_buckets=4)

    class Crash(Exception):
        pass

    def boom(*a: object, **k: object) -> None:
        raise Crash(crash)

    if crash == "before_rename":
        monkeypatch.setattr(F.os, "replace", boom)
    elif crash == "after_snapshot":
        monkeypatch.setattr(RunWriter, "_open_segment", boom)
    else:
        monkeypatch.setattr("trainscope.runlog.writer._unlink", boom)
    for step in range(30, 70):
        h.add_scalars(step, {"loss": 1.0 / (step + 1)})
        record(h, _synthetic_record(step, 3, rng))
    with pytest.warns(RuntimeWarning, match="writing the run directory"):
        w.flush()  # the second compaction is interrupted
    assert w.errors and "Crash" in w.errors[0]
    monkeypatch.undo()
    if crash == "before_rename":
        assert any(n.endswith(".tmp-" + str(os.getpid())) for n in os.listdir(tmp_path / "r"))
    # the writer "died" here: whatever it wrote is consistent and complete up to the last flush
    run = Run(tmp_path / "r")
    assert run.errors == [] and run.stats["skipped_bytes"] == 0
    del expected
    assert_same_history(h, run.history)


def test_open_api_and_clear_errors(tmp_path, blobs) -> None:
    x, y = blobs
    for name in ("a", "b"):
        model = make_mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05 if name == "a" else 0.5)
        probe = trainscope.Probe(model, opt, every=5, logdir=tmp_path / "runs" / name)
        train(model, probe, x[:32], y[:32], 20)
        probe.detach()
        probe.run_writer.close()
    one = open_run(tmp_path / "runs" / "a")
    assert isinstance(one, Run) and one.finished and not one.following
    both = open_run(tmp_path / "runs")
    assert isinstance(both, RunSet) and [r.name for r in both] == ["a", "b"]
    assert both["b"].history.scalar("lr")["mean"][-1] == pytest.approx(0.5)
    again = open_run([tmp_path / "runs" / "b", tmp_path / "runs" / "a"])
    assert [r.name for r in again] == ["b", "a"]
    assert "<svg" in both._repr_html_()
    try:  # the read-only dashboard overlays the runs (when the Jupyter layer is installed)
        dash = both.show()
    except ImportError:
        pass
    else:
        assert dash.histories == [r.history for r in both] and dash.probe is None
    with pytest.raises(FileExistsError, match="already holds a trainscope run"):
        trainscope.Probe(make_mlp(), logdir=tmp_path / "runs" / "a")
    with pytest.raises(FileNotFoundError, match="no run directory"):
        open_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a trainscope run"):
        open_run(tmp_path / "empty")
    with pytest.raises(ValueError, match="follow must be"):
        open_run(tmp_path / "runs" / "a", follow="yes")
    with pytest.raises(ValueError, match="flush_interval"):
        RunWriter(tmp_path / "c", History(), flush_interval=0)
    with pytest.raises(TypeError, match="History"):
        RunWriter(tmp_path / "d", object())  # type: ignore[arg-type]


def test_follow_reads_new_records_while_they_are_written_and_after_compactions(tmp_path) -> None:
    rng = np.random.default_rng(4)
    h = History(_layers(2), layer_recent=8, layer_buckets=8, hist_recent=4, hist_buckets=4)
    w = RunWriter(tmp_path / "r", h, segment_bytes=4096, flush_interval=60)
    run = Run(tmp_path / "r")
    seen: list[int] = []
    run.history.subscribe(lambda u: seen.append(u.step))
    for block in range(8):
        for step in range(block * 10, block * 10 + 10):
            h.add_scalars(step, {"loss": float(step)})
            record(h, _synthetic_record(step, 2, rng))
        w.flush()
        if block in (2, 3, 4, 5):
            # fall behind: compactions between reads delete segments we never opened (the writer
            # keeps two generations, so this takes more than two compactions)
            continue
        assert run.refresh()
        assert run.history.step == block * 10 + 9
        assert_same_history(h, run.history)
    w.close()
    run.refresh()
    assert run.finished and run.errors == []
    assert_same_history(h, run.history)
    assert seen and seen[-1] == 79
    assert w.stats["compactions"] >= 4
    assert (
        run.stats["reloads"] >= 2
    )  # the first load, and at least one start-over after falling behind


def test_compaction_removes_only_its_own_files(tmp_path) -> None:
    rng = np.random.default_rng(5)
    h = History(_layers(2))
    w = RunWriter(tmp_path / "r", h, segment_bytes=4096, flush_interval=60)
    keep = tmp_path / "r" / "notes.txt"
    keep.write_text("mine")
    for step in range(40):
        record(h, _synthetic_record(step, 2, rng))
        w.flush()
    w.close()
    assert w.stats["compactions"] >= 2
    assert keep.read_text() == "mine"
    assert sorted(os.listdir(tmp_path / "r")) == [
        "meta.json",
        "notes.txt",
        F.seg_name(w._seq - 1),
        F.seg_name(w._seq),
        F.snap_name(w._seq - 1),
        F.snap_name(w._seq),
    ]


CHILD = r"""
import os, sys, time
import torch
from torch import nn
import trainscope

path, mode = sys.argv[1], sys.argv[2]
if mode == "slowdisk":  # a slow disk: the writer thread is nearly always in the middle of a record
    _write = os.write
    def slow_write(fd, data):
        n = _write(fd, bytes(memoryview(data)[:1024]))
        time.sleep(0.002)
        return n
    os.write = slow_write
torch.manual_seed(0)
layers = []
for _ in range(12):
    layers += [nn.Linear(64, 64), nn.ReLU()]
model = nn.Sequential(*layers, nn.Linear(64, 5))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
probe = trainscope.Probe(model, opt, every=1, logdir=path)
probe.run_writer.flush_interval = 0.05
x, y = torch.randn(128, 64), torch.randint(0, 5, (128,))
print("ready", flush=True)
while True:
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    probe.log(loss=loss)
    loss.backward()
    opt.step()
    print(probe.history.step, time.time(), flush=True)
"""


@pytest.mark.slow
def test_killed_writers_lose_at_most_the_flush_interval_and_never_tear_a_record(tmp_path) -> None:
    import random
    import subprocess
    import sys
    import threading
    import time

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    modes = {"fast": tmp_path / "fast", "slow1": tmp_path / "slow1", "slow2": tmp_path / "slow2"}
    procs = {}
    lines: dict[str, list[tuple[int, float]]] = {k: [] for k in modes}
    ready = {k: threading.Event() for k in modes}

    def pump(name: str, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            parts = raw.split()
            if parts == ["ready"]:
                ready[name].set()
            elif len(parts) == 2:
                lines[name].append((int(parts[0]), float(parts[1])))

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    for name, path in modes.items():
        mode = "fast" if name == "fast" else "slowdisk"
        p = subprocess.Popen(
            [sys.executable, str(script), str(path), mode],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        procs[name] = p
        threading.Thread(target=pump, args=(name, p), daemon=True).start()
    try:
        for name in modes:
            assert ready[name].wait(60), f"child {name} did not start"
        # follow the fast child live while it writes: every refresh sees only whole records
        live = Run(modes["fast"])
        last = -1
        t_end = time.time() + random.uniform(1.5, 2.5)
        while time.time() < t_end:
            live.refresh()
            assert live.errors == [] and live.stats["skipped_bytes"] == 0
            assert live.history.step >= last
            if live.history.latest is not None:
                assert live.history.latest.metrics["act_mean"].shape == (len(live.history.layers),)
            last = live.history.step
            time.sleep(0.01)
        assert last > 0, "the live reader saw nothing"
        kill_time = {}
        for name, p in procs.items():
            p.kill()
            kill_time[name] = time.time()
            time.sleep(random.uniform(0.05, 0.3))
    finally:
        for p in procs.values():
            p.kill()
            p.wait(30)
    torn = 0
    for name, path in modes.items():
        run = Run(path)
        assert run.errors == [] and run.stats["skipped_bytes"] == 0
        assert not run.finished  # killed: no end record
        h = run.history
        assert h.latest is not None and h.samples() > 0
        steps = h.scalar("loss")["last"]
        assert np.all(np.diff(steps) > 0)
        torn += run.torn_tail_bytes > 0
        if name == "fast":
            live.refresh()
            assert live.history.step == h.step
            # every step the child had completed flush_interval (+ scheduling slack) before the
            # kill is on disk
            slack = 0.05 + 0.5
            done = [s for s, t in lines[name] if t <= kill_time[name] - slack]
            assert done, "no progress reported"
            assert h.step >= max(done), (h.step, max(done))
    assert torn >= 1, (
        "no kill landed in the middle of a record; the test did not exercise torn writes"
    )


FOLLOWED_CHILD = r"""
import sys, time
import torch
from torch import nn
import trainscope

torch.set_num_threads(1)
model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
probe = trainscope.Probe(model, opt, every=5, logdir=sys.argv[1])
probe.run_writer.flush_interval = 0.1
x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
for step in range(80):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    probe.log(loss=loss)
    loss.backward()
    opt.step()
    time.sleep(0.03)
probe.detach()
probe.run_writer.close()
"""


@pytest.mark.slow
def test_a_script_in_another_process_is_followed_live_and_the_dashboard_refreshes(tmp_path) -> None:
    import subprocess
    import sys
    import time

    from trainscope.widgets._run_display import keep_refreshed

    script = tmp_path / "train.py"
    script.write_text(FOLLOWED_CHILD)
    path = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    child = subprocess.Popen([sys.executable, str(script), str(path)], env=env)
    try:
        deadline = time.time() + 60
        while not (path / "meta.json").exists():
            assert time.time() < deadline and child.poll() is None, "the script did not start"
            time.sleep(0.05)
        run = trainscope.open(path, interval=0.05)
        assert isinstance(run, Run) and run.following
        try:
            dash = run.show(refresh_every=0.1)  # the real read-only dashboard when available
            orig = dash.refresh
        except ImportError:
            dash, orig = None, None

        class Spy:
            closed = False

            def __init__(self) -> None:
                self.steps: list[int] = []

            def refresh(self) -> None:
                self.steps.append(run.history.step)
                if orig is not None:
                    orig()

        spy = Spy()
        refresher = keep_refreshed(spy, [run], every=0.1)
        assert refresher is not None
        seen = []
        while child.poll() is None:
            seen.append(run.history.step)
            time.sleep(0.05)
        assert child.returncode == 0
        live = sorted({s for s in seen if s >= 0})
        assert len(live) >= 5, f"the history did not grow while the script ran: {live}"
        deadline = time.time() + 10
        while run.following and time.time() < deadline:
            time.sleep(0.05)
        assert run.finished and not run.following
        refresher.join(5)
        assert not refresher.is_alive()
        assert len(spy.steps) >= 3 and spy.steps == sorted(spy.steps)
        assert spy.steps[-1] == run.history.step == 79
        assert_same_history(Run(path).history, run.history)
        del dash
    finally:
        child.kill()
        child.wait(10)

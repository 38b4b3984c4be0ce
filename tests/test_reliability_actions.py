"""Regression tests for the interventions / action-queue defects of the reliability review
(issue 11: items 1, 3, 7, 12 (dropout after tuple outputs, tied weights), 16, 17, 19)."""

from __future__ import annotations

import copy
import gc
import io
import os
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import trainscope
from trainscope.actions import MAX_DEPTH, ActionQueue
from trainscope.interventions import _base
from trainscope.interventions._control import controller
from trainscope.interventions._state import ModelCapture, OptimizerCapture
from trainscope.interventions.dropout import DropoutHook, added_dropouts
from trainscope.interventions.schedule import LiveSchedule, set_schedule_
from trainscope.interventions.snapshots import Snapshot, snapshots
from trainscope.widgets._acks import AckStore
from trainscope.widgets._messages import MessageError, parse_message


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _steps(model: nn.Module, opt: torch.optim.Optimizer, n: int = 1) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
    for _ in range(n):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _nest(depth: int) -> object:
    v: object = 1
    for _ in range(depth):
        v = [v]
    return v


def _dropout_hooks(m: nn.Module) -> list[DropoutHook]:
    return [h for h in m._forward_hooks.values() if isinstance(h, DropoutHook)]


# ---------------------------------------------------------------------------- 1: add_dropout and copies
def test_add_dropout_leaves_a_model_that_deepcopies_pickles_and_saves_with_the_same_dropout() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = trainscope.Probe(model, opt)
    t = probe.request("add_dropout", after=["1"], p=0.5)
    _steps(model, opt, 2)
    assert t.status == "applied"
    x = torch.randn(256, 8)

    def dropped(m: nn.Module) -> float:
        out: list[torch.Tensor] = []
        h = m[2].register_forward_pre_hook(lambda mod, args: out.append(args[0]))
        m(x)
        h.remove()
        relu = torch.relu(m[0](x))
        alive = relu > 0
        return float((out[0][alive] == 0).float().mean())

    copies = {
        "deepcopy": copy.deepcopy(model),
        "pickle": pickle.loads(pickle.dumps(model)),
    }
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    copies["torch.save"] = torch.load(buf, weights_only=False)
    for how, c in copies.items():
        hooks = _dropout_hooks(c[1])
        assert len(hooks) == 1 and hooks[0].owner is None, how  # not tied to the probe
        c.train()
        assert 0.35 < dropped(c) < 0.65, how  # the copy drops like the original (p=0.5)
        c.eval()
        assert dropped(c) == 0.0, how
        assert "1" in added_dropouts(c), how  # set_dropout / remove_dropout find it
    probe.detach()
    # removed at once by detach (not lazily at the next forward), and copies still work
    assert _dropout_hooks(model[1]) == []
    copy.deepcopy(model)
    torch.save(model, io.BytesIO())


def test_a_saved_model_with_added_dropout_loads_in_a_process_without_the_probe(tmp_path: object) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = trainscope.Probe(model, opt)
    probe.request("add_dropout", after=["1"], p=0.5)
    _steps(model, opt, 1)
    path = os.path.join(str(tmp_path), "model.pt")
    torch.save(model, path)
    code = (
        "import sys, torch; m = torch.load(sys.argv[1], weights_only=False); m.train(); x = torch.randn(64, 8);"
        "a = torch.relu(m[0](x)); seen = [];"
        "m[2].register_forward_pre_hook(lambda mod, args: seen.append(args[0])); m(x);"
        "frac = float((seen[0][a > 0] == 0).float().mean()); print(round(frac, 2)); assert 0.3 < frac < 0.7"
    )
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]


# ---------------------------------------------------------------------------- 12: tuple outputs, tied weights
class _Rnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(4, 16)
        self.rnn = nn.LSTM(16, 32, batch_first=True)
        self.head = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(x))
        return self.head(out[:, -1])


def test_add_dropout_after_an_lstm_drops_its_output_and_leaves_the_state_alone() -> None:
    torch.manual_seed(0)
    model = _Rnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = trainscope.Probe(model, opt)
    t = probe.request("add_dropout", after=["rnn"], p=0.5)
    probe.actions.apply_pending()
    assert t.status == "applied", t.message
    x = torch.randn(8, 5, 16)
    with torch.no_grad():
        out, (h, c) = model.rnn(x)
        hooks = dict(model.rnn._forward_hooks)
        model.rnn._forward_hooks.clear()
        ref_out, (ref_h, ref_c) = model.rnn(x)
        model.rnn._forward_hooks.update(hooks)
    frac = float((out == 0).float().mean())
    assert 0.4 < frac < 0.6  # before the fix: 0.0 (the tuple passed through untouched)
    kept = out != 0
    assert torch.allclose(out[kept], 2 * ref_out[kept])  # inverted dropout scaling
    assert torch.equal(h, ref_h) and torch.equal(c, ref_c)  # the recurrent state is not dropped
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.rnn(x)[0], ref_out)
    probe.detach()


class _DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"h": self.a(x)}


def test_add_dropout_after_a_module_it_cannot_drop_into_says_so() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = _DictOut()
            self.out = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.block(x)["h"])

    model = M()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = trainscope.Probe(model, opt)
    probe.request("add_dropout", after=["block"], p=0.5)
    probe.actions.apply_pending()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        model(torch.randn(4, 8))
        model(torch.randn(4, 8))
    errs = [e for e in probe.errors if "add_dropout" in e.where]
    assert len(errs) == 1 and "nothing was dropped" in errs[0].error and "dict" in errs[0].error
    assert sum("nothing was dropped" in str(x.message) for x in w) == 1
    probe.detach()


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(20, 8)
        self.body = nn.Linear(8, 8)
        self.lm_head = nn.Linear(8, 20, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.relu(self.body(self.wte(x))))


def test_reinit_of_a_tied_lm_head_names_the_embedding_it_also_reinitializes() -> None:
    torch.manual_seed(0)
    model = _Tied()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = trainscope.Probe(model, opt)
    before = model.wte.weight.detach().clone()
    t = probe.request("reinit", layers=["lm_head"], scheme="normal", std=0.5)
    assert t.status == "pending"
    assert "tied" in t.message and "wte" in t.message  # the validation message says so
    probe.actions.apply_pending()
    assert t.status == "applied"
    assert "tied" in t.message and "wte.weight" in t.message and "wte" in t.message  # and the ack
    assert not torch.equal(model.wte.weight, before)  # what the note warns about
    a = trainscope.interventions.reinit_(model, "normal", ["body"], std=0.5)
    assert "tied" not in a.message  # no false alarm for an untied layer
    every = trainscope.interventions.reinit_(model, "normal", None, std=0.5)
    assert "one tensor (tied)" in every.message and "lm_head.weight" in every.message
    probe.detach()


# ---------------------------------------------------------------------------- 7: undo order
def _apply(probe: trainscope.Probe, action: str, **params: object) -> trainscope.actions.Ticket:
    t = probe.request(action, **params)
    probe.actions.apply_pending()
    return t


def test_undo_of_an_older_action_is_refused_while_a_later_one_on_the_same_state_is_applied() -> None:
    model = nn.Sequential(nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    probe = trainscope.Probe(model, opt)
    a = _apply(probe, "set_lr", lr=1e-2)
    b = _apply(probe, "set_lr", lr=1e-1)
    u = _apply(probe, "undo", ticket=a.id)
    assert u.status == "refused" and b.id in u.message and "undo it first" in u.message
    assert a.status == "applied" and opt.param_groups[0]["lr"] == pytest.approx(1e-1)
    assert _apply(probe, "undo", ticket=b.id).status == "applied"
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2)
    assert _apply(probe, "undo", ticket=a.id).status == "applied"
    assert a.status == b.status == "undone"
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)  # before the fix: 0.01
    probe.detach()


@pytest.mark.parametrize("kind", ["reinit", "weight_decay", "rollback"])
def test_undo_in_reverse_order_restores_the_original_exactly(kind: str) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=0.0)
    probe = trainscope.Probe(model, opt)
    _steps(model, opt, 2)
    if kind == "rollback":
        _apply(probe, "snapshot")
        _steps(model, opt, 2)
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    wd0 = opt.param_groups[0]["weight_decay"]
    params = {"reinit": {"layers": ["0"], "scheme": "normal", "std": 1.0},
              "weight_decay": {"value": 0.1}, "rollback": {"to": "last"}}[kind]
    a = _apply(probe, kind, **params)
    if kind == "weight_decay":
        b = _apply(probe, kind, value=0.3)
    elif kind == "rollback":
        _steps(model, opt, 2)
        b = _apply(probe, kind, to="last")
    else:
        b = _apply(probe, kind, **{**params, "std": 3.0})
    assert a.status == b.status == "applied"
    refused = _apply(probe, "undo", ticket=a.id)
    assert refused.status == "refused" and b.id in refused.message
    assert _apply(probe, "undo", ticket=b.id).status == "applied"
    assert _apply(probe, "undo", ticket=a.id).status == "applied"
    if kind == "rollback":  # the state of the moment before the first rollback
        for k, v in model.state_dict().items():
            assert torch.equal(v, w0[k]), k
    elif kind == "reinit":
        for k, v in model.state_dict().items():
            assert torch.equal(v, w0[k]), k
    else:
        assert opt.param_groups[0]["weight_decay"] == wd0
    probe.detach()


def test_undo_on_independent_state_works_in_any_order() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, weight_decay=0.0)
    probe = trainscope.Probe(model, opt)
    a = _apply(probe, "set_lr", lr=1e-2)
    b = _apply(probe, "weight_decay", value=0.1)
    c = _apply(probe, "add_dropout", after=["1"], p=0.3)
    for t in (a, c, b):  # oldest first: nothing they changed overlaps
        assert _apply(probe, "undo", ticket=t.id).status == "applied", t
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[0]["weight_decay"] == 0.0
    assert _dropout_hooks(model[1]) == []
    probe.detach()


def test_python_undo_refuses_out_of_order_and_changes_nothing() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    a = trainscope.interventions.set_lr_(opt, 1e-2)
    b = trainscope.interventions.scale_lr_(opt, 0.5)
    with pytest.raises(RuntimeError, match="undo it first"):
        a.undo()
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-3) and not a.undone
    b.undo()
    a.undo()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)


# ---------------------------------------------------------------------------- 3: bounded memory
def _rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def test_snapshot_and_rollback_tickets_do_not_pin_memory() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)  # a snapshot: 4 MiB weights + 8 MiB moments
    probe = trainscope.Probe(model, opt, every=50)
    _steps(model, opt, 2)
    gc.collect()
    rss0 = _rss_mb()
    n = 20
    for i in range(n):
        _apply(probe, "snapshot", label=f"s{i}")
        _steps(model, opt, 1)
    rollbacks = [_apply(probe, "rollback", to="last") for _ in range(n)]
    gc.collect()
    objs = gc.get_objects()
    live_snaps = sum(type(o) is Snapshot and o.model.model is model for o in objs)
    live_models = sum(type(o) is ModelCapture and o.model is model for o in objs)
    live_opts = sum(type(o) is OptimizerCapture and o.optimizer is opt for o in objs)
    del objs
    kept = snapshots(model).max_snapshots
    assert len(snapshots(model)) == kept
    assert live_snaps == kept  # before the fix: 20 (every snapshot ticket pinned its Snapshot)
    assert live_models <= kept + _base.MAX_HEAVY_UNDO  # before the fix: 40
    assert live_opts <= kept + _base.MAX_HEAVY_UNDO
    rss1 = _rss_mb()
    if rss0 is not None and rss1 is not None:
        # bound: 5 snapshots + 3 rollback captures of 12 MiB = 96 MiB (before the fix: ~480 MiB)
        assert rss1 - rss0 < 200, (rss0, rss1)
    # the oldest rollbacks' undo was released: refused with the reason, shown as not undoable
    old = rollbacks[0]
    assert old.as_dict()["undoable"] is False
    u = _apply(probe, "undo", ticket=old.id)
    assert u.status == "refused" and "released to bound memory" in u.message
    # the newest one is still exact
    before = {k: v.clone() for k, v in model.state_dict().items()}
    last = rollbacks[-1]
    assert last.as_dict()["undoable"] is True
    assert _apply(probe, "undo", ticket=last.id).status == "applied"
    assert last.status == "undone"
    del before
    # a snapshot ticket's result is the snapshot while the store keeps it
    t = _apply(probe, "snapshot", label="fresh")
    assert t.result.result is snapshots(model).items[-1]
    probe.detach()


# ---------------------------------------------------------------------------- 16: absurd parameters
@pytest.mark.parametrize(
    ("action", "params", "reason"),
    [
        ("clip_grad", {"mode": "norm", "max_norm": 1.0, "norm_type": 1000.0}, "norm_type"),
        ("clip_grad", {"mode": "norm", "max_norm": 1.0, "norm_type": 1e308}, "norm_type"),
        ("set_schedule", {"kind": "cosine_restarts", "eta_min": 1e6, "T_0": 10}, "eta_min"),
        ("set_schedule", {"kind": "cosine_restarts", "eta_min": 1e-3, "T_0": 10}, "eta_min"),
        ("set_schedule", {"kind": "plateau", "min_lr": 10.0}, "min_lr"),
        ("set_schedule", {"kind": "cosine_restarts", "T_0": 10**400}, "T_0"),
        ("set_schedule", {"kind": "step", "step_size": 1e308}, "step_size"),
        ("one_cycle", {"total_steps": 1e300}, "total_steps"),
        ("snapshot_ensemble", {"eta_min": 1.0}, "eta_min"),
    ],
)
def test_absurd_parameters_are_refused_with_a_reason(action: str, params: dict[str, object], reason: str) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    probe = trainscope.Probe(model, opt)
    w0 = model[0].weight.detach().clone()
    t = probe.request(action, **params)
    assert t.status == "refused" and reason in t.message, t.message
    _steps(model, opt, 1)
    assert opt.param_groups[0]["lr"] == 1e-3
    assert controller(opt, create=False) is None or controller(opt).schedule is None  # type: ignore[union-attr]
    assert not torch.equal(model[0].weight, w0)  # training went on normally
    probe.detach()


def test_sane_edge_values_are_still_accepted() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    probe = trainscope.Probe(model, opt)
    ok = [
        probe.request("clip_grad", mode="norm", max_norm=1.0, norm_type=100.0),
        probe.request("clip_grad", mode="norm", max_norm=1.0, norm_type="inf"),
        probe.request("clip_grad", mode="norm", max_norm=1.0, norm_type=float("inf")),
        probe.request("set_schedule", kind="cosine_restarts", eta_min=1e-5, T_0=10),
        probe.request("set_schedule", kind="cosine_restarts", eta_min=1e-2, lr=0.1, T_0=10),  # below the given lr
        probe.request("set_schedule", kind="plateau", min_lr=1e-6),
    ]
    for t in ok:
        assert t.status == "pending", t.message
    probe.actions.apply_pending()
    assert all(t.status == "applied" for t in ok), [t.message for t in ok]
    with pytest.raises(ValueError, match="eta_min"):  # the Python function refuses too
        set_schedule_(opt, "cosine_restarts", eta_min=5.0)
    probe.detach()


# ---------------------------------------------------------------------------- 17: failed schedule
def test_a_schedule_that_fails_while_applied_leaves_the_running_one_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = trainscope.Probe(model, opt)
    one = _apply(probe, "one_cycle", max_lr=0.1, total_steps=100)
    assert one.status == "applied"
    running = controller(opt).schedule  # type: ignore[union-attr]
    lr_before = opt.param_groups[0]["lr"]
    real = LiveSchedule.lrs_at

    def broken(self: LiveSchedule, t: int) -> list[float]:
        if self.kind == "step":
            raise OverflowError("int too large to convert to float")
        return real(self, t)

    monkeypatch.setattr(LiveSchedule, "lrs_at", broken)
    bad = _apply(probe, "set_schedule", kind="step", step_size=10)
    assert bad.status == "failed" and "OverflowError" in bad.message
    assert controller(opt).schedule is running  # type: ignore[union-attr]  # before the fix: the broken one
    assert opt.param_groups[0]["lr"] == lr_before
    n_err = len(probe.errors)
    lrs = []
    for _ in range(5):
        _steps(model, opt, 1)
        lrs.append(opt.param_groups[0]["lr"])
    assert len(set(lrs)) == 5  # the one-cycle keeps moving the lr
    assert len(probe.errors) == n_err
    probe.detach()


# ---------------------------------------------------------------------------- 19: nesting and ids
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 800, 5000, 100_000])
def test_deeply_nested_params_are_refused_with_a_reason_and_acknowledged(depth: int) -> None:
    with pytest.raises(MessageError, match="deeper than"):
        parse_message({"kind": "action", "action": "set_lr", "params": {"lr": _nest(depth)}, "id": "b1"})
    model = _mlp()
    probe = trainscope.Probe(model, torch.optim.SGD(model.parameters(), lr=0.1))
    seen: list[dict[str, object]] = []
    probe.actions.on_change(lambda t: seen.append(t.as_dict()))
    t = probe.actions.submit("set_lr", {"lr": _nest(depth)}, source="ui", id="b2")
    assert t.status == "refused" and "deeper than" in t.message
    assert seen and seen[-1]["status"] == "refused"  # the acknowledgement went out
    assert probe.actions.listener_errors == []
    acks = AckStore()
    acks.remember(t)
    assert acks.latest()["status"] == "refused"  # type: ignore[index]
    probe.detach()


def test_dashboard_acknowledges_a_deeply_nested_message() -> None:
    model = _mlp()
    dash = trainscope.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), display=False)
    probe = dash.probe
    assert probe is not None
    try:
        for i, depth in enumerate((900, 5000)):
            content = {"kind": "action", "action": "set_lr", "id": f"deep{i}", "params": {"lr": _nest(depth)}}
            # exactly how a custom message from the browser reaches the widget
            dash.controls._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})
            latest = dash._acks.latest()
            assert latest is not None and latest["id"] == f"deep{i}" and latest["status"] == "refused"
            assert "deeper than" in latest["message"]
        assert probe.actions.listener_errors == []
    finally:
        dash.close()
        probe.detach()


def test_request_ids_are_unique_over_the_ticket_store() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    probe = trainscope.Probe(model, opt)
    q: ActionQueue = probe.actions
    browser = q.submit("snapshot", {}, source="ui", id="a2")  # a browser id that looks like a Python one
    py = [q.submit("set_lr", {"lr": 1e-2}), q.submit("set_lr", {"lr": 2e-2})]
    assert "a2" not in {t.id for t in py}  # generated ids skip ids already taken
    q.apply_pending()
    dup = q.submit("set_lr", {"lr": 0.5}, source="ui", id=py[0].id)
    assert dup.status == "refused" and "already used" in dup.message
    assert q.find(py[0].id) is py[0]  # the store still points at the original
    assert sum(t.id == py[0].id for t in q.tickets) == 1
    # undo by that id targets the original set_lr, not the refused duplicate
    assert _apply(probe, "undo", ticket=py[1].id).status == "applied"
    assert _apply(probe, "undo", ticket=py[0].id).status == "applied"
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert browser.status == "applied"
    # ids are checked over the whole store, not a recent window
    for i in range(300):
        q.submit("snapshot", {"label": ""}, source="ui", id=f"x{i}")
        if i % 50 == 0:
            q.apply_pending()
    q.apply_pending()
    assert q.submit("set_lr", {"lr": 0.1}, source="ui", id="x0").status == "refused"
    probe.detach()


def test_an_ack_is_never_overwritten_by_a_later_message_with_the_same_id() -> None:
    model = _mlp()
    probe = trainscope.Probe(model, torch.optim.SGD(model.parameters(), lr=1e-3))
    acks = AckStore()
    probe.actions.on_change(acks.remember)
    t = _apply(probe, "set_lr", lr=1e-2)
    assert t.status == "applied"
    acks.refuse(t.id, "set_lr", "malformed message: ...", step=0)  # a malformed message reusing the id
    dup = probe.actions.submit("set_lr", {"lr": 0.5}, source="ui", id=t.id)  # a replayed request
    assert dup.status == "refused"
    entries = [d for d in acks.newest_first() if d["id"] == t.id]
    assert len(entries) == 3
    original = [d for d in entries if d["status"] == "applied"]
    assert len(original) == 1 and original[0]["undoable"] is True
    probe.detach()


def test_weight_decay_undo_restores_the_value_exactly() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)  # weight_decay=0, an int
    a = trainscope.interventions.weight_decay_(opt, 0.1)
    a.undo()
    wd = opt.param_groups[0]["weight_decay"]
    assert wd == 0 and type(wd) is int  # before: 0.0 (a float)


def test_snapshots_and_early_stopping_do_not_keep_a_deleted_model_alive() -> None:
    import weakref

    from trainscope.interventions import early_stopping_, snapshot_

    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = trainscope.Probe(model, opt, every=50)
    _steps(model, opt, 1)
    for i in range(3):  # through the probe (a request applied at a step boundary) and the plain function
        _apply(probe, "snapshot", label=f"p{i}")
        _steps(model, opt, 1)
    snapshot_(model, opt, label="plain")
    assert len(snapshots(model)) == 4
    stopper = early_stopping_(model, opt, patience=1, smoothing=1).result
    stopper.observe(1.0)
    _steps(model, opt, 1)
    assert stopper.observe(2.0) is True  # stopped: the best weights were written back, the lr frozen
    assert snapshots(model).best is not None
    assert trainscope.interventions.should_stop(model)
    probe.detach()
    ref, opt_ref = weakref.ref(model), weakref.ref(opt)
    del model, opt, probe, stopper
    gc.collect()
    # before the fix: the stores (weak dicts keyed by the model) held captures that held the model
    assert ref() is None
    assert opt_ref() is None

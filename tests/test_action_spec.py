"""``@action`` + ``register_builtins``: an intervention declared next to its function is whitelisted."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch
from torch import nn

import trainscope
from trainscope import actions
from trainscope.builtins import register_builtins
from trainscope.interventions import _spec
from trainscope.interventions._base import Applied


def test_declared_action_validates_once_and_applies_at_boundary() -> None:
    calls: list[str] = []

    def check(ctx: Any, p: dict[str, Any]) -> None:
        calls.append("check")
        if p["factor"] > 5:
            raise ValueError("spec_demo: factor too large; use <= 5")

    @_spec.action("spec_demo", label="Spec demo", category="other",
                  schema={"factor": {"type": "float", "min": 0.0, "max": 10.0, "default": 2.0}},
                  description="multiply the first weight", check=check)
    def run(ctx: Any, p: dict[str, Any]) -> Applied:
        calls.append("run")
        w = ctx.model[0].weight
        old = w.detach().clone()
        with torch.no_grad():
            w.mul_(p["factor"])

        def undo() -> None:
            with torch.no_grad():
                w.copy_(old)

        return Applied("spec_demo", dict(p), undo, message=f"x{p['factor']}", details={"factor": p["factor"]})

    mod = types.SimpleNamespace(run=run, other=lambda: None)
    (defn, fn), = _spec.declared(vars(mod))
    assert defn.name == "spec_demo" and fn is run
    _spec.register(defn, fn)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        before = model[0].weight.detach().clone()
        probe = trainscope.Probe(model, opt, loss_fn=nn.MSELoss())
        try:
            bad = probe.request("spec_demo", factor=7.0)
            assert bad.status == "refused" and "too large" in bad.message
            assert torch.equal(model[0].weight, before)
            t = probe.request("spec_demo", factor=3.0)
            assert t.status == "pending" and calls.count("run") == 0
            x, y = torch.randn(4, 3), torch.randn(4, 2)
            nn.MSELoss()(model(x), y).backward()
            opt.step()
            assert t.status == "applied", t.message
            assert calls.count("run") == 1
        finally:
            probe.detach()
    finally:
        actions.REGISTRY.pop("spec_demo", None)


def test_register_builtins_finds_every_declared_action() -> None:
    names = register_builtins()
    assert len(names) == len(set(names))
    for n in names:
        assert n in actions.REGISTRY
    # the existing whitelist is still complete
    for n in ("reinit", "add_dropout", "set_lr", "lr_find", "rollback"):
        assert n in actions.REGISTRY


def test_two_declarations_of_one_name_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainscope.interventions import _base

    def a(ctx: Any, p: dict[str, Any]) -> None: ...

    def b(ctx: Any, p: dict[str, Any]) -> None: ...

    _spec.action("dup_demo", label="d", category="other", schema={}, description="")(a)
    _spec.action("dup_demo", label="d", category="other", schema={}, description="")(b)
    monkeypatch.setattr(_base, "dup_a", a, raising=False)
    monkeypatch.setattr(_base, "dup_b", b, raising=False)
    with pytest.raises(RuntimeError, match="two built-in actions are named 'dup_demo'"):
        register_builtins()
    actions.REGISTRY.pop("dup_demo", None)

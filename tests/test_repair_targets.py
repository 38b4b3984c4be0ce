"""Binary cross-entropy on targets outside [0, 1] (DeepFD's faults: binary labels stored as 1 / 2;
bounded regression targets in [0, 10]) now comes with a one-click fix, ``rescale_targets``; class
indices through one output (0 / 1 / 2) still get none (only the code can add outputs)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import trainscope


def _run(y: torch.Tensor, steps: int = 12, apply_first: bool = False) -> tuple[list, list[float], trainscope.Probe]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(len(y), 4, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    lf = nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    probe = trainscope.Probe(model, opt, loss_fn=lf)
    seen: list[torch.Tensor] = []
    lf.register_forward_hook(lambda m, a, o: seen.append(a[1].detach().clone()))
    losses: list[float] = []
    findings: list = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in range(steps):
            idx = torch.arange(s * 16, s * 16 + 16) % len(y)
            opt.zero_grad()
            loss = lf(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if s == 9:
                findings = [f for f in probe.findings() if f.label == "wrong_loss"]
                if apply_first and findings and findings[0].interventions:
                    iv = findings[0].interventions[0]
                    probe.request(iv["action"], **iv["params"])
    return findings, [float(seen[-1].min()), float(seen[-1].max())], probe


def test_binary_labels_stored_as_1_and_2_are_mapped_to_0_and_1() -> None:
    y = (torch.rand(256, 1, generator=torch.Generator().manual_seed(2)) < 0.5).float() + 1
    found, _, probe = _run(y)
    probe.detach()
    assert found and found[0].severity == "error"
    iv = found[0].interventions[0]
    assert iv["action"] == "rescale_targets" and iv["params"] == {"low": 1.0, "high": 2.0}
    _, rng, probe = _run(y, apply_first=True)
    try:
        assert rng == [0.0, 1.0]  # the loss now sees 0 / 1
        assert any(e.data.get("action") == "rescale_targets" for e in probe.history.events)
    finally:
        probe.detach()


def test_bounded_regression_targets_are_mapped_onto_0_1_and_class_indices_get_no_fake_fix() -> None:
    y = torch.rand(256, 1, generator=torch.Generator().manual_seed(3)) * 10
    found, _, probe = _run(y)
    probe.detach()
    iv = found[0].interventions[0]
    assert iv["action"] == "rescale_targets" and iv["params"]["low"] >= 0 and iv["params"]["high"] <= 10
    y3 = torch.randint(0, 3, (256, 1), generator=torch.Generator().manual_seed(4)).float()
    found, _, probe = _run(y3)
    probe.detach()
    assert found and not any(i["action"] == "rescale_targets" for i in found[0].interventions)


def test_rescale_targets_refuses_constant_targets_and_undo_restores_them() -> None:
    from trainscope.interventions.target_fix import rescale_targets_

    with pytest.raises(ValueError, match="binary cross-entropy"):
        rescale_targets_(nn.CrossEntropyLoss(), 0.0, 1.0)
    lf = nn.BCEWithLogitsLoss()
    with pytest.raises(ValueError, match="larger than low"):
        rescale_targets_(lf, 2.0, 2.0)
    a = rescale_targets_(lf, 1.0, 2.0)
    pred, y = torch.zeros(4, 1), torch.tensor([[1.0], [2.0], [2.0], [1.0]])
    assert float(lf(pred, y)) == pytest.approx(float(nn.functional.binary_cross_entropy_with_logits(pred, y - 1)))
    a.undo()
    assert float(lf(pred, y)) == pytest.approx(float(nn.functional.binary_cross_entropy_with_logits(pred, y)))

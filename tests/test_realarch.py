"""Healthy short trainings of real architectures (HF GPT-2 / BERT / T5 / LLaMA from tiny configs,
timm-style ConvNeXt / ViT, a ResNet and a SqueezeNet, a BN CNN, a UNet, a frozen backbone, a
sequence-first LSTM and a weight-tied GRU language model): no finding at warning level or above,
and no internal error.  Random weights and synthetic data; nothing is downloaded."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from .realarch.cases import CASES
from .realarch.runner import run

HF = importlib.util.find_spec("transformers") is not None


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_healthy_real_architecture_gets_no_warning(case) -> None:  # type: ignore[no-untyped-def]
    if case.name.startswith("hf_") and not HF:
        pytest.skip("needs transformers (pip install trainscope[test])")
    o = run(case)
    assert o.errors == [], o.errors[:1]
    assert o.probe.history.samples() >= 10  # the rules had evidence to judge on
    alarms = [(f.label, f.severity, f.evidence) for f in o.severe]
    assert alarms == [], alarms
    mixing = (o.probe.history.meta.get("checks") or {}).get("batch_mixing", {})
    assert mixing.get("status") == "pass", mixing  # the automatic check ran, on the right batch dimension

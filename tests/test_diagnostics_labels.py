"""The head / loss / target labels and the stopping label (issue 13): each fires on its fault, at
the right step, naming the layer, and stays silent on the healthy twin."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

import trainscope
from trainscope.diagnostics import Context, diagnose
from trainscope.history import History

NEW = ("head_loss_mismatch", "unscaled_targets", "class_imbalance", "still_improving")


def train(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int = 30,
          batch: int = 32, lr: float = 1e-3, opt: str = "adam",
          transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[trainscope.diagnostics.Finding]:
    """A plain loop with a probe at its defaults; the findings at the end."""
    torch.manual_seed(0)
    o: torch.optim.Optimizer = (torch.optim.Adam(model.parameters(), lr=lr) if opt == "adam"
                                else torch.optim.SGD(model.parameters(), lr=lr))
    probe = trainscope.Probe(model, o, loss_fn=loss_fn)
    g = torch.Generator().manual_seed(1)
    try:
        for step in range(steps):
            idx = torch.randint(0, len(x), (batch,), generator=g)
            o.zero_grad()
            out = model(x[idx])
            if transform is not None:
                out = transform(out)
            loss_fn(out, y[idx]).backward()
            o.step()
            if step % 10 == 9:
                probe.findings()
        probe.flush()
        return list(probe.findings())
    finally:
        probe.detach()


def only(findings: list[trainscope.diagnostics.Finding], label: str) -> trainscope.diagnostics.Finding | None:
    return next((f for f in findings if f.label == label), None)


def severe_new(findings: list[trainscope.diagnostics.Finding]) -> list[tuple[str, str]]:
    return [(f.label, f.evidence) for f in findings if f.label in NEW and f.severity != "info"]


def mlp(i: int, h: int, o: int, head: nn.Module | None = None) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = [("fc1", nn.Linear(i, h)), ("relu1", nn.ReLU()), ("out", nn.Linear(h, o))]
    if head is not None:
        layers.append(("head", head))
    from collections import OrderedDict

    return nn.Sequential(OrderedDict(layers))


G = torch.Generator().manual_seed(0)
X = torch.randn(512, 8, generator=G)
W = torch.randn(8, generator=G)
Y_REG = (X @ W / 3).unsqueeze(1)  # standardized-ish regression target, (N, 1)
Y_BIN = (X[:, :1] > 0).float()  # 0 / 1 floats, (N, 1)
Y_CLS = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()  # three classes 0..2


# ----------------------------------------------------------------------------- head_loss_mismatch
def test_softmax_over_one_unit_is_an_error_at_step_0_naming_the_head() -> None:
    fs = train(mlp(8, 16, 1, nn.Softmax(dim=1)), nn.MSELoss(), X, Y_REG)
    f = only(fs, "head_loss_mismatch")
    assert f is not None and f.severity == "error", fs
    assert f.layers == ["head"] and f.first_step == 0
    assert "size 1" in f.evidence and "1.0" in f.evidence


def test_sigmoid_into_bce_on_0_1_floats_is_healthy() -> None:
    fs = train(mlp(8, 16, 1, nn.Sigmoid()), nn.BCELoss(), X, Y_BIN)
    assert only(fs, "head_loss_mismatch") is None and severe_new(fs) == []


def test_softmax_over_the_batch_dimension_is_an_error() -> None:
    fs = train(mlp(8, 16, 3), nn.NLLLoss(), X, Y_CLS, transform=lambda o: torch.log_softmax(o, dim=0))
    f = only(fs, "head_loss_mismatch")
    assert f is not None and f.severity == "error" and "dim=0" in f.evidence, fs
    fs = train(mlp(8, 16, 3), nn.NLLLoss(), X, Y_CLS, transform=lambda o: torch.log_softmax(o, dim=1))
    assert only(fs, "head_loss_mismatch") is None


def test_relu_output_cannot_reach_negative_regression_targets() -> None:
    fs = train(mlp(8, 16, 1, nn.ReLU()), nn.MSELoss(), X, Y_REG)
    f = only(fs, "head_loss_mismatch")
    assert f is not None and f.severity == "warning" and f.layers == ["head"] and f.first_step == 0, fs
    assert "ReLU" in f.evidence
    # twins: a linear output; a ReLU output on non-negative targets (counts); a sigmoid on [0, 1] targets
    assert only(train(mlp(8, 16, 1), nn.MSELoss(), X, Y_REG), "head_loss_mismatch") is None
    counts = Y_REG.abs() * 3
    assert only(train(mlp(8, 16, 1, nn.ReLU()), nn.MSELoss(), X, counts), "head_loss_mismatch") is None
    unit = torch.sigmoid(Y_REG)
    assert only(train(mlp(8, 16, 1, nn.Sigmoid()), nn.MSELoss(), X, unit), "head_loss_mismatch") is None


def test_sigmoid_into_cross_entropy_is_flagged() -> None:
    fs = train(mlp(8, 16, 3, nn.Sigmoid()), nn.CrossEntropyLoss(), X, Y_CLS)
    f = only(fs, "head_loss_mismatch")
    assert f is not None and f.severity == "warning" and f.layers == ["head"], fs


def test_relu_on_the_logits_is_flagged_but_not_relu_then_pool_as_in_squeezenet() -> None:
    fs = train(mlp(8, 16, 3, nn.ReLU()), nn.CrossEntropyLoss(), X, Y_CLS)
    f = only(fs, "head_loss_mismatch")
    assert f is not None and f.layers == ["head"] and "logits" in f.evidence, fs

    class Squeeze(nn.Module):  # SqueezeNet's classifier: conv -> ReLU -> global average pool -> flatten
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.final = nn.Conv2d(8, 3, 1)
            self.relu = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.conv(x.view(-1, 1, 2, 4)))
            return torch.flatten(self.pool(self.relu(self.final(h))), 1)

    fs = train(Squeeze(), nn.CrossEntropyLoss(), X, Y_CLS)
    assert only(fs, "head_loss_mismatch") is None and severe_new(fs) == [], fs


def test_softmax_into_multilabel_bce_is_flagged_sigmoid_is_not() -> None:
    y = torch.stack([X[:, 0] > 0, X[:, 1] > 0, X[:, 2] > 0, X[:, 3] > 0], 1).float()
    fs = train(mlp(8, 16, 4, nn.Softmax(dim=1)), nn.BCELoss(), X, y)
    f = only(fs, "head_loss_mismatch")
    assert f is not None and f.severity == "warning" and f.layers == ["head"], fs
    fs = train(mlp(8, 16, 4, nn.Sigmoid()), nn.BCELoss(), X, y)
    assert only(fs, "head_loss_mismatch") is None and severe_new(fs) == []


def test_sum_reduction_is_flagged_with_a_learning_rate_fix() -> None:
    fs = train(mlp(8, 16, 3), nn.CrossEntropyLoss(reduction="sum"), X, Y_CLS)
    f = only(fs, "head_loss_mismatch")
    assert f is not None and f.severity == "warning", fs
    assert f.interventions[0]["action"] == "scale_lr" and f.interventions[0]["params"]["factor"] == pytest.approx(1 / 32)
    assert only(train(mlp(8, 16, 3), nn.CrossEntropyLoss(), X, Y_CLS), "head_loss_mismatch") is None


# ------------------------------------------------------------------------------ unscaled_targets
def test_unscaled_regression_targets_warn_when_the_loss_does_not_come_down() -> None:
    raw = Y_REG * 100 + 500
    fs = train(mlp(8, 16, 1), nn.MSELoss(), X, raw, steps=40)
    f = only(fs, "unscaled_targets")
    assert f is not None and f.severity == "warning" and f.first_step == 0, fs
    assert "Standardize the targets" in f.evidence
    assert only(train(mlp(8, 16, 1), nn.MSELoss(), X, Y_REG, steps=40), "unscaled_targets") is None
    # [0, 1] pixel-like inputs with targets in [0, 1]: nothing to say about either
    px = torch.rand(512, 8, generator=torch.Generator().manual_seed(3))
    assert severe_new(train(mlp(8, 16, 1), nn.MSELoss(), px, torch.sigmoid(Y_REG), steps=40)) == []


# ------------------------------------------------------------------------------- class_imbalance
def test_a_single_class_in_the_targets_is_flagged() -> None:
    zeros = torch.zeros_like(Y_CLS)
    fs = train(mlp(8, 16, 3), nn.CrossEntropyLoss(), X, zeros)
    f = only(fs, "class_imbalance")
    assert f is not None and f.severity == "warning" and "class 0" in f.evidence, fs
    assert only(train(mlp(8, 16, 3), nn.CrossEntropyLoss(), X, Y_CLS), "class_imbalance") is None
    assert only(train(mlp(8, 16, 1), nn.BCEWithLogitsLoss(), X, Y_BIN), "class_imbalance") is None


# ------------------------------------------------------------------------------- still_improving
def _val_history(values: list[float], stop_at: int | None = None) -> History:
    h = History()
    for k in range(100):
        h.add_scalars(k, {"loss": 2.0 * 0.99**k})
    for j, v in enumerate(values):
        h.add_scalars(10 * (j + 1), {"val_loss": v})
    if stop_at is not None:
        h.add_event("early_stop", "early stop (val_loss)", step=stop_at)
    return h


def test_early_stop_while_validation_still_falls_is_a_warning() -> None:
    falling = [2.0, 1.8, 1.7, 1.55, 1.5, 1.42, 1.38, 1.3]
    fs = diagnose(_val_history(falling, stop_at=80), Context(), labels=["still_improving"])
    assert len(fs) == 1 and fs[0].severity == "warning" and fs[0].first_step == 80
    fs = diagnose(_val_history(falling), Context(), labels=["still_improving"])
    assert len(fs) == 1 and fs[0].severity == "info"  # the run may go on: only the stop makes it a fault
    flat = [2.0, 1.5, 1.31, 1.3, 1.31, 1.29, 1.3, 1.31]
    assert diagnose(_val_history(flat, stop_at=80), Context(), labels=["still_improving"]) == []


# ------------------------------------------------------------------------------ healthy twins
def test_a_healthy_seq_first_lstm_gets_none_of_the_new_labels() -> None:
    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(20, 16)
            self.lstm = nn.LSTM(16, 32)  # (T, B, F)
            self.out = nn.Linear(32, 20)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, _ = self.lstm(self.emb(x.t()))
            return self.out(h).permute(1, 2, 0)  # (B, C, T)

    seq = torch.randint(0, 20, (256, 13), generator=torch.Generator().manual_seed(5))
    fs = train(LM(), nn.CrossEntropyLoss(), seq[:, :-1], seq[:, 1:], steps=40)
    assert severe_new(fs) == [], fs


# -------------------------------------------- parameters not in the graph (frozen_parameters, step 1)
class _Branches(nn.Module):
    """Two hidden branches; ``mode`` decides how the second reaches (or does not reach) the loss."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(8, 16)
        self.out = nn.Linear(16, 3)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        if self.mode == "detach":
            h = h + torch.relu(self.fc2(x)).detach()
        elif self.mode == "used":
            h = h + torch.relu(self.fc2(x))
        # "unused": fc2 built, never called
        return self.out(h)


def _frozen_at(mode: str, steps: int) -> trainscope.diagnostics.Finding | None:
    return only(train(_Branches(mode), nn.CrossEntropyLoss(), X, Y_CLS, steps=steps), "frozen_parameters")


@pytest.mark.parametrize("mode", ["detach", "unused"])
def test_parameters_whose_grad_stays_none_are_named_from_step_1(mode: str) -> None:
    f = _frozen_at(mode, steps=2)  # two optimizer steps, findings read right after
    assert f is not None and f.severity == "warning" and f.layers == ["fc2"], f
    assert f.first_step <= 1
    assert "`fc2.weight`" in f.evidence and "`fc2.bias`" in f.evidence


def test_a_connected_branch_is_not_flagged() -> None:
    assert _frozen_at("used", steps=2) is None
    assert _frozen_at("used", steps=30) is None


def test_a_dominant_class_is_a_warning_only_while_the_model_learns_no_more_than_the_prior() -> None:
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(512, 8, generator=g)
    rare = torch.zeros(512, dtype=torch.long)
    rare[::40] = 1  # 2.5% positives, unrelated to the inputs: only the prior can be learned
    fs = train(mlp(8, 16, 2), nn.CrossEntropyLoss(), noise, rare, steps=60, batch=64)
    f = only(fs, "class_imbalance")
    assert f is not None and f.severity == "warning" and "predicting the class frequencies" in f.evidence, fs
    learnable = (X[:, 0] > 1.96).long()  # ~2.5% positives, a function of the inputs: the model learns it
    fs = train(mlp(8, 16, 2), nn.CrossEntropyLoss(), X, learnable, steps=200, batch=64, lr=1e-2)
    f = only(fs, "class_imbalance")
    assert f is not None and f.severity == "info", fs


def test_unscaled_targets_that_are_learned_anyway_are_only_an_info() -> None:
    raw = Y_REG * 100 + 500  # plain SGD at a learning rate that suits this linear problem fits them
    f = only(train(nn.Linear(8, 1), nn.MSELoss(), X, raw, steps=100, lr=0.1, opt="sgd"), "unscaled_targets")
    assert f is not None and f.severity == "info", f


# ------------------------------------------------------------------------------- oscillation
def test_a_converged_models_noise_after_a_click_is_not_an_oscillation() -> None:
    """After a change (here a scale_lr click) the rules read the losses since it; on a converged model
    that segment has made no progress, so the batches' noise around a loss of 1e-5 (swinging 1e-6 to
    1e-4) met "jumps by as much as it improved" and the browser test's dashboard recommended the LR
    finder for it.  The improvement is now counted from the run's start."""
    rng = np.random.default_rng(0)
    h = History()
    n = 300
    for i in range(n):
        base = math.exp(-i / 10) + 1e-5  # converged (flat at 1e-5) from step ~120
        h.add_scalars(i, {"loss": float(base * math.exp(rng.normal(0, 1.2)) if i > 150 else base)})
    h.add_event("intervention", "Scale learning rate", step=200, action="scale_lr")
    assert diagnose(h, Context(), labels=["oscillation"]) == []
    # a loss that swings by as much as the run ever gained is still one
    g = History()
    for i in range(n):
        g.add_scalars(i, {"loss": 1.0 + (0.6 if i % 2 else -0.6) * (i > 100)})
    assert [f.label for f in diagnose(g, Context(), labels=["oscillation"])] == ["oscillation"]

"""Detection on short runs at the probe's defaults (issue 13): evidence that only shows late in a
run of a few dozen sampled steps -- a ReLU layer that dies under oversized first updates -- and a
plateau hidden in the batches' noise.  Synthetic data, seconds each."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import trainscope
from trainscope.diagnostics import Context, diagnose
from trainscope.history import History

SEVERE = ("warning", "error")


def _regression(lr: float, steps: int = 66, seed: int = 0) -> tuple[list[trainscope.diagnostics.Finding], float]:
    """A 64-100-4 ReLU regression trained with Adam at ``lr`` for ``steps`` steps (batch 64)."""
    torch.manual_seed(seed)
    x = torch.rand(512, 64)
    w = torch.randn(64, 4) * 0.1
    y = torch.tanh(x @ w - (x @ w).mean(0))
    model = nn.Sequential(nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 4))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    lf = nn.MSELoss()
    probe = trainscope.Probe(model, opt, loss_fn=lf)
    g = torch.Generator().manual_seed(seed)
    try:
        for _ in range(steps):
            idx = torch.randint(0, len(x), (64,), generator=g)
            opt.zero_grad()
            lf(model(x[idx]), y[idx]).backward()
            opt.step()
        probe.flush()
        found = probe.findings()
    finally:
        probe.detach()
    with torch.no_grad():
        r2 = float(1 - ((model(x) - y) ** 2).mean() / y.var(0).mean())
    return found, r2


def test_relu_layer_killed_by_the_first_adam_steps_is_found_on_a_short_run() -> None:
    """Adam at lr 0.1: the first updates change ~80% of the weights per step, the ReLU layer dies
    within ~10 steps and the output freezes near the mean.  The dead-unit window (20 samples) still
    holds the samples from before the death on a 66-step run; the recent samples must be enough."""
    found, r2 = _regression(0.1)
    assert r2 < 0.5  # the fault is real: the output hardly depends on the input
    sev = [f for f in found if f.severity in SEVERE]
    labels = [f.label for f in sev]
    assert "dead_units" in labels, [(f.severity, f.label, f.title) for f in found]
    dead = next(f for f in sev if f.label == "dead_units")
    assert {"0", "1"} & set(dead.layers)  # names the layer (the Linear and its ReLU)
    # the root cause comes first: the learning rate, read from the update / weight ratio at the start
    assert labels[0] == "lr_too_high", labels
    lr = sev[0]
    assert "died" in lr.evidence and "step 0" in lr.evidence
    # the fix lowers the learning rate (on its own, or after re-initializing the dead layers: recover)
    assert lr.interventions and lr.interventions[0]["action"] in ("scale_lr", "recover")
    assert any(iv["action"] == "scale_lr" for iv in lr.interventions)


def test_healthy_adam_on_the_same_regression_gets_no_warning() -> None:
    found, r2 = _regression(1e-3)
    assert r2 > 0.3
    assert not [f for f in found if f.severity in SEVERE], [(f.severity, f.label, f.title) for f in found]


def _sigmoid_regression(act: type[nn.Module], steps: int = 300, seed: int = 0) -> list[trainscope.diagnostics.Finding]:
    """An 8-8-8-1 net with Keras' N(0, 0.05) init (zero biases), SGD lr 0.05, batch 16, MSE on a
    standardized regression, validated every 25 steps."""
    torch.manual_seed(seed)
    x = torch.randn(800, 8)
    y = (x @ torch.randn(8, 1) + 0.3 * torch.randn(800, 1))
    y = (y - y.mean()) / y.std()
    xt, yt, xv, yv = x[:600], y[:600], x[600:], y[600:]
    model = nn.Sequential(nn.Linear(8, 8), act(), nn.Linear(8, 8), act(), nn.Linear(8, 1))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.05)
            nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    lf = nn.MSELoss()
    probe = trainscope.Probe(model, opt, loss_fn=lf)
    g = torch.Generator().manual_seed(seed)
    try:
        for step in range(steps):
            idx = torch.randint(0, len(xt), (16,), generator=g)
            model.train()
            opt.zero_grad()
            lf(model(xt[idx]), yt[idx]).backward()
            opt.step()
            if step % 25 == 24:
                model.eval()
                with torch.no_grad():
                    lf(model(xv), yv)
                model.train()
        probe.flush()
        return probe.findings()
    finally:
        probe.detach()


def test_flat_loss_hidden_in_small_batch_noise_is_not_learning() -> None:
    """Sigmoids on a N(0, 0.05) init: the output barely depends on the input and the loss stays at
    the targets' variance.  With batches of 16 the best running median of the flat loss sits
    10-15% below its start by chance: that must not count as progress.  Info only: a flat stretch
    that noisy looks the same at the slow start of a run that takes off later (the cause,
    a constant output, is the warning)."""
    found = _sigmoid_regression(nn.Sigmoid)
    nl = [f for f in found if f.label == "not_learning"]
    assert nl and nl[0].severity == "info", [(f.severity, f.label, f.evidence) for f in found]
    assert "standard errors of the batches' noise" in nl[0].evidence


def test_same_net_with_relu_learns_and_gets_no_warning() -> None:
    found = _sigmoid_regression(nn.ReLU)
    assert not [f for f in found if f.severity in SEVERE], [(f.severity, f.label, f.evidence) for f in found]


def _flat_history(val: list[float]) -> History:
    rng = np.random.default_rng(0)
    h = History()
    for k, v in enumerate(1.0 + 0.01 * rng.standard_normal(300)):
        h.add_scalars(k, {"loss": float(v)})
    for j, v in enumerate(val):
        h.add_scalars(24 + 25 * j, {"val_loss": v})
    return h


def test_validation_noise_that_sets_no_new_best_does_not_soften_not_learning() -> None:
    """"Validation improved at each of the last 4 evaluations" softens not_learning to info (the
    model learns, slowly).  Four falling values of a flat series that stay above an earlier
    evaluation are noise (1 in 24 by chance), not learning."""
    noisy = [0.923, 0.917, 0.927, 0.918, 0.918, 0.927, 0.925, 0.919, 0.950, 0.947, 0.923, 0.9177]
    f = diagnose(_flat_history(noisy), Context(), labels=["not_learning"])
    assert f and f[0].severity == "warning", [(x.severity, x.evidence) for x in f]
    learning = [*noisy[:-4], 0.91, 0.90, 0.89, 0.88]  # down to a new best: the model learns, slowly
    f = diagnose(_flat_history(learning), Context(), labels=["not_learning"])
    assert f and f[0].severity == "info"


def test_output_that_does_not_depend_on_the_input_is_named_before_the_plateau() -> None:
    """The same sigmoid net: its output varies ~1e4x less across the batch than the targets do --
    the forward signal is lost on the way (N(0, 0.05) weights, sigmoids passing 1/4 of the
    variation per layer).  That is the root of the plateau and comes first."""
    found = _sigmoid_regression(nn.Sigmoid)
    sev = [f for f in found if f.severity in SEVERE]
    assert sev and sev[0].label == "vanishing_activations", [(f.severity, f.label) for f in found]
    assert "hardly depends on the input" in sev[0].title
    assert sev[0].interventions[0]["action"] == "reinit"


class _SkipToOutput(nn.Module):
    """A small correction net on top of a skip from the input: ``net(x) + x[:, :1]``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 1))
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.05)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + x[:, :1]


def test_a_tiny_last_module_behind_a_skip_is_not_a_constant_output() -> None:
    """The last module's output is ~1e-4 of the targets' spread, but the prediction the loss gets
    (the skip plus it) varies like the targets: no constant-output finding."""
    torch.manual_seed(0)
    x = torch.randn(600, 8)
    y = x[:, :1] + 0.5 * torch.randn(600, 1)  # the skip already predicts what can be predicted: a flat loss
    model = _SkipToOutput()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    lf = nn.MSELoss()
    probe = trainscope.Probe(model, opt, loss_fn=lf)
    try:
        for _ in range(300):
            idx = torch.randint(0, len(x), (16,))
            opt.zero_grad()
            lf(model(x[idx]), y[idx]).backward()
            opt.step()
        probe.flush()
        found = probe.findings()
    finally:
        probe.detach()
    assert not [f for f in found if f.label == "vanishing_activations"], [(f.severity, f.title) for f in found]

"""PyTorch Lightning callback (skipped, with the reason shown, when Lightning is not installed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pl = pytest.importorskip(
    "lightning.pytorch", reason="PyTorch Lightning is not installed (pip install lightning)"
)

import trainscope  # noqa: E402
from trainscope.integrations.lightning import TrainscopeCallback  # noqa: E402


class Lit(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
        self.losses: list[float] = []
        self.val_epochs = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.losses.append(float(loss))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.val_epochs += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loaders(blobs):
    x, y = blobs
    ds = torch.utils.data.TensorDataset(x, y)
    train = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=False)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:64], y[:64]), batch_size=32)
    return train, val


def _trainer(cb, steps: int, **kw):
    return pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[cb],
        **kw,
    )


def test_callback_records_a_lightning_fit(tmp_path, blobs) -> None:
    torch.set_num_threads(1)
    model = Lit()
    cb = TrainscopeCallback(every=5, logdir=tmp_path / "run")
    train, val = _loaders(blobs)
    _trainer(cb, 30, val_check_interval=10, limit_val_batches=2).fit(model, train, val)
    probe = cb.probe
    assert probe is not None and not probe.is_attached  # detached at the end of fit
    assert probe.step_count == 30 and probe.errors == []
    h = probe.history
    loss = h.scalar("loss")
    assert list(loss["first"]) == list(range(30))
    assert loss["mean"] == pytest.approx(
        model.losses, rel=1e-6
    )  # exactly what training_step returned
    assert h.samples() == 6  # steps 0, 5, ..., 25
    assert h.latest is not None and h.latest.step == 25
    assert h.layer_names == ["net.0", "net.1", "net.2"]
    assert model.val_epochs >= 2
    assert len(h.scalar("val_loss")["mean"]) == model.val_epochs  # one per validation run
    assert not model.net[0]._forward_hooks and not model._forward_pre_hooks  # no hook left behind
    run = trainscope.open(tmp_path / "run")
    assert (
        run.finished and run.history.samples() == 6 and run.history.meta["framework"] == "lightning"
    )


def test_callback_with_gradient_accumulation_counts_optimizer_steps(blobs) -> None:
    torch.set_num_threads(1)
    model = Lit()
    cb = TrainscopeCallback(every=2)
    train, _ = _loaders(blobs)
    _trainer(cb, 6, accumulate_grad_batches=2, limit_val_batches=0).fit(model, train)
    probe = cb.probe
    assert probe is not None and probe.step_count == 6
    loss = probe.history.scalar("loss")
    # two batches per optimizer step: their losses are averaged into that step
    assert list(loss["first"]) == list(range(6))
    assert loss["mean"] == pytest.approx(
        [(a + b) / 2 for a, b in zip(model.losses[::2], model.losses[1::2], strict=True)], rel=1e-6
    )


def test_callback_rejects_arguments_it_sets_itself() -> None:
    with pytest.raises(TypeError, match="sets optimizer= itself"):
        TrainscopeCallback(optimizer=None)

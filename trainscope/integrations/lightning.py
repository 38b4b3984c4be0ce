"""PyTorch Lightning: a callback that attaches a trainscope probe for the length of ``fit()``.

>>> from trainscope.integrations.lightning import TrainscopeCallback     # doctest: +SKIP
>>> cb = TrainscopeCallback(every=10, logdir="runs/lit")                  # doctest: +SKIP
>>> trainer = lightning.Trainer(callbacks=[cb]); trainer.fit(model, data)  # doctest: +SKIP
>>> cb.probe.history, cb.probe.findings()                                  # doctest: +SKIP

Works with ``lightning`` (2.x, ``lightning.pytorch``) or the older ``pytorch_lightning`` package,
whichever is installed; neither is a dependency of trainscope (``pip install lightning``).

* The probe's step boundary is the optimizer's step (Lightning's closure-based automatic
  optimization calls ``optimizer.step(closure)``, whose hooks the probe uses).  With several
  optimizers or manual optimization the probe counts one step per training batch instead.
* The training loss returned by ``training_step`` is logged as ``loss`` (as a tensor: no device
  sync), once per optimizer step (the mean over the batches of a gradient accumulation); at the end of each validation epoch every scalar in ``trainer.callback_metrics`` whose
  name contains ``val`` is logged under its own name (``val_loss``, ``val_acc``...).
* Under a multi-process strategy (DDP) the callback creates a
  :class:`~trainscope.distributed.DistributedProbe` on every rank; rank 0 records.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

try:  # lightning >= 2.0
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as e:
        raise ImportError(
            "trainscope.integrations.lightning needs PyTorch Lightning: pip install lightning"
        ) from e

from ..probe import Probe

__all__ = ["TrainscopeCallback"]


class TrainscopeCallback(pl.Callback):  # type: ignore[misc]
    """Attach a :class:`~trainscope.Probe` to the LightningModule when ``fit()`` starts and
    detach it when it ends (the history stays available as ``callback.probe.history``).

    Parameters
    ----------
    logdir
        Run directory to record to (see :mod:`trainscope.runlog`); ``{version}`` is replaced by
        the trainer's logger version when there is one.
    show
        Display the live dashboard when training starts (in Jupyter).
    log_validation
        Log validation metrics (names containing ``val``) at each validation epoch end.
    **probe_kwargs
        Passed to :class:`~trainscope.Probe` (``every``, ``include``, ``budget``...).
    """

    def __init__(
        self,
        *,
        logdir: str | os.PathLike[str] | None = None,
        show: bool = False,
        log_validation: bool = True,
        **probe_kwargs: Any,
    ) -> None:
        super().__init__()
        for bad in ("optimizer", "model", "logdir"):
            if bad in probe_kwargs:
                raise TypeError(
                    f"TrainscopeCallback sets {bad}= itself; remove it from the keyword arguments"
                )
        self.logdir = logdir
        self.show = show
        self.log_validation = log_validation
        self.probe_kwargs = probe_kwargs
        self.probe: Probe | None = None
        self._manual_steps = False
        self._losses: list[torch.Tensor] = []
        self._last_step = 0

    # ------------------------------------------------------------------ lifecycle
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.probe is not None and self.probe.is_attached:
            self.probe.detach()
        opts = list(getattr(trainer, "optimizers", []) or [])
        automatic = bool(getattr(pl_module, "automatic_optimization", True))
        optimizer = opts[0] if len(opts) == 1 and automatic else None
        self._manual_steps = optimizer is None
        self._losses = []
        self._last_step = 0
        logdir = self.logdir
        if logdir is not None:
            logdir = os.fspath(logdir).replace("{version}", str(_logger_version(trainer)))
        kwargs = dict(self.probe_kwargs)
        if (
            int(getattr(trainer, "world_size", 1)) > 1
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
        ):
            from ..distributed import DistributedProbe

            self.probe = DistributedProbe(pl_module, optimizer, logdir=logdir, **kwargs)
        else:
            self.probe = Probe(pl_module, optimizer, logdir=logdir, **kwargs)
        self.probe.history.meta.update(
            framework="lightning", trainer_max_steps=getattr(trainer, "max_steps", None)
        )
        if self.show and getattr(trainer, "is_global_zero", True):
            import trainscope

            trainscope.show(self.probe)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        probe = self.probe
        if probe is None or not probe.is_attached:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            loss = loss.detach().reshape(())
            k = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
            if not self._manual_steps and k > 1:
                loss = loss * k  # Lightning hands over loss / accumulate_grad_batches
            self._losses.append(loss)
        # log once per optimizer step: with gradient accumulation, the mean of its batches' losses
        if self._manual_steps or probe.step_count != self._last_step:
            self._log_losses()
            self._last_step = probe.step_count
        if self._manual_steps:
            probe.step()

    def _log_losses(self) -> None:
        if self.probe is not None and self._losses:
            losses, self._losses = self._losses, []
            self.probe.log(
                loss=losses[0] if len(losses) == 1 else torch.stack(losses).float().mean()
            )

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        probe = self.probe
        if (
            probe is None
            or not probe.is_attached
            or not self.log_validation
            or getattr(trainer, "sanity_checking", False)
        ):
            return
        values: dict[str, float | torch.Tensor] = {}
        for name, v in dict(getattr(trainer, "callback_metrics", {}) or {}).items():
            if "val" not in name:
                continue
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                values[name] = v.detach()
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                values[name] = float(v)
        if values:
            probe.log(**values)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._finish()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._finish()

    def _finish(self) -> None:
        probe = self.probe
        if probe is None:
            return
        if probe.is_attached:
            self._log_losses()  # a last partial accumulation
        probe.detach()
        if probe.run_writer is not None:
            probe.run_writer.close()


def _logger_version(trainer: Any) -> Any:
    logger = getattr(trainer, "logger", None)
    return getattr(logger, "version", 0) if logger is not None else 0

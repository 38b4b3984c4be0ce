"""Run a case (a deliberately broken training or a healthy control) with a probe, like a user would
with the dashboard open: ``probe.findings()`` is polled during training, then read at the end."""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import trainscope

SEVERE = ("warning", "error")


@lru_cache(maxsize=1)
def digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8x8 digits (1797 images, raw 0..16 pixel values)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data, dtype=torch.float32), torch.tensor(d.target)


def standardized_digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train (1400) / validation (397) split, standardized with the training statistics."""
    x, y = digits()
    mu, sd = x[:1400].mean(0), x[:1400].std(0) + 1e-3
    x = (x - mu) / sd
    return x[:1400], y[:1400], x[1400:], y[1400:]


@dataclass
class Setup:
    """Everything a case's training loop needs; the flags reproduce loop-level bugs."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    x: Tensor
    y: Tensor
    xv: Tensor | None = None
    yv: Tensor | None = None
    steps: int = 200
    batch: int = 64
    every: int = 2
    val_every: int = 10
    shuffle: bool = True
    zero_grad: bool = True
    train_mode: bool = True  # model.train() before each training step
    val_eval_mode: bool = True  # model.eval() around validation
    restore_train: bool = True  # model.train() after validation
    transform: Callable[[Tensor], Tensor] | None = None  # applied to the output in the loop
    loss_sign: float = 1.0  # -1: gradient ascent
    accumulate: int = 1  # micro-batches per optimizer step (gradient accumulation)
    after_step: Callable[[], Any] | None = None  # e.g. an LR scheduler's step
    probe_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Case:
    name: str
    expect: str | None  # the label a broken run must get; None for a healthy control
    build: Callable[[], Setup]
    layers: tuple[str, ...] = ()  # where the fault is local: one of these must be in the finding's layers
    note: str = ""
    held_out: bool = False  # written after the rules were fixed; never used to adjust them


@dataclass
class Outcome:
    case: Case
    findings: list[trainscope.diagnostics.Finding]
    seconds: float
    steps: int
    errors: list[str]
    probe: trainscope.Probe | None = None

    @property
    def severe(self) -> list[str]:
        return [f.label for f in self.findings if f.severity in SEVERE]

    @property
    def detected(self) -> bool:
        return self.case.expect is not None and self.case.expect in self.severe

    @property
    def layer_ok(self) -> bool | None:
        if not self.case.layers or not self.detected:
            return None
        f = next(f for f in self.findings if f.label == self.case.expect)
        return any(x in f.layers for x in self.case.layers)


def seed_all(s: int = 0) -> None:
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def run(case: Case, seed: int = 0, poll_every: int = 10) -> Outcome:
    seed_all(seed)
    s = case.build()
    model, opt, lf = s.model, s.optimizer, s.loss_fn
    probe = trainscope.Probe(model, opt, loss_fn=lf, every=s.every, **s.probe_kwargs)
    gen = torch.Generator().manual_seed(seed)
    n = len(s.x)
    order = torch.randperm(n, generator=gen) if s.shuffle else torch.arange(n)
    pos = 0
    t0 = time.perf_counter()
    quiet = warnings.catch_warnings()
    quiet.__enter__()
    warnings.filterwarnings("ignore", message="Using a target size", category=UserWarning)  # the suite's own bug
    try:
        model.train(s.train_mode)
        for step in range(s.steps):
            if pos + s.batch > n:
                order = torch.randperm(n, generator=gen) if s.shuffle else torch.arange(n)
                pos = 0
            idx = order[pos : pos + s.batch]
            pos += s.batch
            if s.train_mode:
                model.train()
            if s.zero_grad:
                opt.zero_grad()
            for part in idx.chunk(s.accumulate):
                out = model(s.x[part])
                if s.transform is not None:
                    out = s.transform(out)
                loss = s.loss_sign * lf(out, s.y[part]) / s.accumulate
                loss.backward()
            opt.step()
            if s.after_step is not None:
                s.after_step()
            if s.xv is not None and (step % s.val_every == 0 or step == s.steps - 1):
                if s.val_eval_mode:
                    model.eval()
                with torch.no_grad():
                    vo = model(s.xv)
                    if s.transform is not None:
                        vo = s.transform(vo)
                    lf(vo, s.yv)
                if s.val_eval_mode and s.restore_train:
                    model.train()
            if step % poll_every == poll_every - 1:
                probe.findings()  # as the dashboard does while training runs
        findings = probe.finish()  # the loop is over: the end-of-run rules judge too
    finally:
        probe.detach()
        quiet.__exit__(None, None, None)
    errs = trainscope.diagnostics.diagnoser_for(probe).errors + [e.error for e in probe.errors]
    return Outcome(case, findings, time.perf_counter() - t0, s.steps, errs, probe)

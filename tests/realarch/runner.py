"""Run a real-architecture case with a probe as a user would: findings polled during training."""

from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

import trainscope

from .cases import Case

SEVERE = ("warning", "error")


@dataclass
class Outcome:
    case: Case
    findings: list[trainscope.diagnostics.Finding]
    seconds: float
    errors: list[str]
    probe: trainscope.Probe

    @property
    def severe(self) -> list[trainscope.diagnostics.Finding]:
        return [f for f in self.findings if f.severity in SEVERE]


def run(case: Case, seed: int = 0, poll_every: int = 10, every: int | None = 4) -> Outcome:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    r = case.build()
    probe = trainscope.Probe(r.model, r.optimizer, loss_fn=r.loss_fn, every=every, **r.probe_kwargs)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for step in range(r.steps):
                x, y = r.batch(step)
                r.optimizer.zero_grad()
                pred, tgt = r.shape_for_loss(r.forward(r.model, x), y)
                assert r.loss_fn is not None
                loss = r.loss_fn(pred, tgt)
                loss.backward()
                r.optimizer.step()
                if r.val is not None and (step % r.val_every == 0 or step == r.steps - 1):
                    xv, yv = r.val()
                    was = r.model.training
                    r.model.eval()
                    with torch.no_grad():
                        pv, tv = r.shape_for_loss(r.forward(r.model, xv), yv)
                        r.loss_fn(pv, tv)
                        probe.log(val_acc=float((pv.argmax(-1) == tv).float().mean()))
                    r.model.train(was)
                if step % poll_every == poll_every - 1:
                    probe.findings()
            findings = probe.finish()  # the loop is over: the end-of-run rules judge too
    finally:
        probe.detach()
    errs = trainscope.diagnostics.diagnoser_for(probe).errors + [str(e) for e in probe.errors]
    return Outcome(case, findings, time.perf_counter() - t0, errs, probe)

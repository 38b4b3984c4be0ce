"""``probe.request("loss_landscape", dims=1, points=21)``: a loss-landscape slice mid-training.

Runs at the next step boundary (training waits meanwhile, the probe is paused), on the probe's
most recent training batch (``probe.data``'s first batch when none was kept), with the model and
RNG restored bit-identically afterwards (:func:`trainscope.landscape.loss_landscape`).  The slice
lands on the timeline as an event of kind ``"loss_landscape"`` holding the grid (what the
dashboard's Landscape panel draws, also from a saved run); it changes nothing, so there is nothing
to undo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._spec import action
from ._state import first_batch

if TYPE_CHECKING:
    from ..run import RunContext

__all__ = ["LANDSCAPE_SCHEMA"]

LANDSCAPE_SCHEMA: dict[str, dict[str, Any]] = {
    "dims": {"type": "int", "min": 1, "max": 2, "default": 1, "help": "1-D line or 2-D plane"},
    "points": {"type": "int", "min": 3, "max": 101, "default": 21,
               "help": "grid points per direction (2-D: points² forwards)"},
    "span": {"type": "float", "min": 0.0, "min_open": True, "max": 100.0, "default": 1.0,
             "help": "half-width of the grid, in filter-normalized units"},
    "seed": {"type": "int", "min": 0, "max": 2**31 - 1, "default": 0, "help": "seed of the random directions"},
    "mode": {"type": "choice", "choices": ["eval", "train"], "default": "eval",
             "help": "evaluate in eval mode (BN running stats, no dropout) or train mode"},
}


def _batch(probe: RunContext) -> tuple[Any, str]:
    for b in reversed(probe.recent_batches):
        if b.target is not None:
            return b, f"the training batch of step {b.step}"
    if probe.data is not None:
        return first_batch(probe.data), "the first batch of probe.data"
    raise ValueError("loss_landscape needs a batch: train one step (with the probe's loss_fn) so it can reuse "
                     "the most recent batch, or give the Probe data=loader")


def _check(probe: RunContext, p: dict[str, Any]) -> None:
    if probe.loss_fn is None:
        raise ValueError("loss_landscape needs the loss: create the probe with loss_fn=... (e.g. nn.CrossEntropyLoss())")
    if p["dims"] == 2 and p["points"] > 51:
        raise ValueError(f"loss_landscape: a 2-D slice of {p['points']}x{p['points']} points is "
                         f"{p['points'] ** 2} forwards while training waits; use points <= 51 here "
                         "(or trainscope.loss_landscape(...) outside the loop)")
    if probe.data is None and not any(b.target is not None for b in probe.recent_batches):
        raise ValueError("loss_landscape needs a batch: train one step (with the probe's loss_fn) so it can "
                         "reuse the most recent batch, or give the Probe data=loader")


@action("loss_landscape", label="Loss landscape", category="analysis", schema=LANDSCAPE_SCHEMA,
        description="A 1-D / 2-D loss slice around the current weights along filter-normalized random "
                    "directions (Li et al. 2018), on the latest batch; model and RNG restored exactly.",
        check=_check, order=2000)
def _run_landscape(probe: RunContext, p: dict[str, Any]) -> tuple[None, dict[str, Any]]:
    from ..landscape import loss_landscape

    batch, src = _batch(probe)
    res = loss_landscape(probe.model, probe.loss_fn, batch, dims=p["dims"], points=p["points"], span=p["span"],
                         seed=p["seed"], mode=p["mode"], probe=probe)
    probe.history.add_event("loss_landscape", "Loss landscape", step=probe.step_count, data=src, **res.as_event())
    s = res.sharpness
    summary = {"center_loss": res.center_loss, "argmin": s["argmin"], "max_increase": s["max_increase"],
               "keskar": s["keskar"], "curvature": s["curvature"], "data": src}
    return None, {**summary, "message": f"{res.summary()}; on {src}"}

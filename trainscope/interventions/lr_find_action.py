"""The LR range test as a whitelisted action (``probe.request("lr_find", ...)``, the dashboard's LR
finder panel): the sweep itself lives in :mod:`trainscope.lr_finder`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import Applied
from ._spec import action, need_optimizer

if TYPE_CHECKING:
    from ..run import RunContext

LR_FIND_SCHEMA: dict[str, dict[str, Any]] = {
    "start_lr": {"type": "float", "min": 0.0, "min_open": True, "max": 1e3, "default": 1e-7, "log": True, "help": "sweep start"},
    "end_lr": {"type": "float", "min": 0.0, "min_open": True, "max": 1e4, "default": 10.0, "log": True, "help": "sweep end"},
    "num_iter": {"type": "int", "min": 6, "max": 10000, "default": 100, "help": "sweep length (stops early on divergence)"},
    "mode": {"type": "choice", "choices": ["exp", "linear"], "default": "exp", "help": "lr spacing"},
    "apply": {"type": "choice", "choices": ["none", "set_lr", "one_cycle"], "default": "none",
              "help": "then use the suggestion: set it, or start a one-cycle schedule peaking at it"},
    "total_steps": {"type": "int", "min": 2, "default": 1000, "help": "one_cycle: its length in steps"},
}


def _check_lr_find(ctx: RunContext, p: dict[str, Any]) -> None:
    need_optimizer(ctx, "lr_find")
    if p["end_lr"] <= p["start_lr"]:
        raise ValueError(f"lr_find: end_lr ({p['end_lr']:g}) must be larger than start_lr ({p['start_lr']:g})")
    if ctx.loss_fn is None:
        raise ValueError("lr_find needs the loss: create the probe with loss_fn=... (e.g. nn.CrossEntropyLoss())")
    if ctx.data is None:
        if not any(b.target is not None for b in ctx.recent_batches):
            raise ValueError("lr_find needs data: give the Probe data=loader, or train one step (with the probe's "
                             "loss_fn) so it can reuse the most recent batch")


@action("lr_find", label="LR finder", category="lr", schema=LR_FIND_SCHEMA, order=120,
        description="Run the LR range test now (state restored exactly), then optionally apply the suggestion.",
        check=_check_lr_find)
def _run_lr_find(ctx: RunContext, p: dict[str, Any]) -> tuple[Applied | None, dict[str, Any]]:
    from ..lr_finder import lr_find

    data: Any = ctx.data
    src = "probe.data"
    if data is None:
        data = [b for b in ctx.recent_batches if b.target is not None]
        src = f"the {len(data)} most recent training batch(es), cycled"
    res = lr_find(ctx.model, ctx.optimizer, ctx.loss_fn, data, start_lr=p["start_lr"], end_lr=p["end_lr"],  # type: ignore[arg-type]
                  num_iter=p["num_iter"], mode=p["mode"], probe=ctx, data_note=src)
    summary = {"suggestion": res.suggestion, "suggestions": res.suggestions, "spread": res.spread,
               "iterations": res.iterations, "stop_reason": res.stop_reason, "data": src}
    msg = res.summary(src)  # says whether the rules agree, which to trust, and flags a fragile sweep
    if res.suggestion is None:
        return None, {**summary, "message": msg}
    if p["apply"] == "none":
        return None, {**summary, "message": msg}
    applied = res.apply(ctx.optimizer, p["apply"], total_steps=p["total_steps"], probe=ctx)  # type: ignore[arg-type]
    return applied, {**applied.details, **summary, "message": f"{msg}; {applied.message}"}

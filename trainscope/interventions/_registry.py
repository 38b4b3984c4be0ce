"""Every intervention as a whitelisted action (``probe.request(name, **params)``, dashboard buttons).

``validate(probe, params)`` checks everything that can be checked before the step boundary (types,
ranges, layer names, that an optimizer / loss / data exists...) and returns the cleaned
parameters; ``apply(probe, params)`` calls the plain Python function on ``probe.model`` /
``probe.optimizer`` at the boundary and returns ``(Applied, details)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..actions import note, register_action
from ._base import Applied, action_context, validate_params
from .dropout import (
    ADD_SCHEMA,
    REMOVE_SCHEMA,
    SET_SCHEMA,
    _dropouts_in,
    add_dropout_,
    remove_dropout_,
    set_dropout_,
)
from .init import REINIT_SCHEMA, reinit_, target_modules, tied_note
from .optimizers import SWITCH_SCHEMA, switch_optimizer_
from .regularization import CLIP_SCHEMA as _CLIP
from .regularization import L1_SCHEMA, WD_SCHEMA, clip_grad_, clip_params, l1_, weight_decay_
from .schedule import (
    KINDS,
    ONE_CYCLE_SCHEMA,
    SCALE_LR_SCHEMA,
    SCHEDULE_SCHEMA,
    SET_LR_SCHEMA,
    check_floor,
    one_cycle_,
    scale_lr_,
    set_lr_,
    set_schedule_,
)
from .snapshots import ROLLBACK_SCHEMA, SNAPSHOT_SCHEMA, check_rollback, rollback_, snapshot_
from .stopping import EARLY_SCHEMA, ENSEMBLE_SCHEMA, early_stopping_, snapshot_ensemble_

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


def _opt(probe: RunContext, action: str) -> Any:
    if probe.optimizer is None:
        raise ValueError(f"{action} needs the probe to know the optimizer: Probe(model, optimizer, ...)")
    return probe.optimizer


def _result(applied: Applied | None, extra: Mapping[str, Any] | None = None) -> tuple[Applied | None, dict[str, Any]]:
    details: dict[str, Any] = {}
    if applied is not None:
        details.update(applied.details)
        details["message"] = applied.message
    details.update(extra or {})
    return applied, details


def _reg(name: str, label: str, category: str, schema: dict[str, dict[str, Any]], description: str,
         check: Callable[[RunContext, dict[str, Any]], None] | None, run: Callable[[RunContext, dict[str, Any]], Any], *,
         clean: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
    def validate(probe: RunContext, params: dict[str, Any]) -> dict[str, Any]:
        p = clean(params) if clean is not None else validate_params(name, schema, params)
        if check is not None:
            check(probe, p)
        return p

    def apply(probe: RunContext, params: dict[str, Any]) -> Any:
        with action_context():
            out = run(probe, dict(params))
        return out if isinstance(out, tuple) else _result(out)

    register_action(name, validate=validate, apply=apply, label=label, description=description,
                    category=category, schema=schema)


# ---------------------------------------------------------------------------- checks
def _check_reinit(probe: RunContext, p: dict[str, Any]) -> None:
    tied = tied_note(probe.model, target_modules(probe.model, p["layers"]))
    if tied:
        note(f"note: {tied}")
    if p["scheme"] in ("lsuv", "data_dependent") and probe.data is None and not probe.recent_batches:
        raise ValueError(f"{p['scheme']} needs a real batch: give the Probe data=loader, or let training run one step first")


def _check_add_dropout(probe: RunContext, p: dict[str, Any]) -> None:
    from ._base import owner_alive, resolve_modules
    from .dropout import _ADDED, _DROPOUT_TYPES

    if p["after"] is None:
        raise ValueError("add_dropout: name the modules to follow with dropout (after=[...])")
    for n, m in resolve_modules(probe.model, p["after"], "add_dropout: after"):
        if m is probe.model:
            raise ValueError("add_dropout: name a submodule, not the whole model")
        if isinstance(m, _DROPOUT_TYPES) or (m in _ADDED and owner_alive(_ADDED[m].owner)):
            raise ValueError(f"add_dropout: {n!r} already has dropout; use set_dropout to change p")


def _check_clip(probe: RunContext, p: dict[str, Any]) -> None:
    _opt(probe, "clip_grad")


def _check_schedule(action: str) -> Callable[[RunContext, dict[str, Any]], None]:
    def check(probe: RunContext, p: dict[str, Any]) -> None:
        opt = _opt(probe, action)
        check_floor(opt, {"kind": "cosine_restarts", **p} if action == "snapshot_ensemble" else p, action)

    return check


def _check_one_cycle(probe: RunContext, p: dict[str, Any]) -> None:
    _opt(probe, "one_cycle")
    if p["base_momentum"] > p["max_momentum"]:
        raise ValueError("one_cycle: base_momentum must be <= max_momentum")


def _check_switch(probe: RunContext, p: dict[str, Any]) -> None:
    _opt(probe, "switch_optimizer")
    if p["name"] == "sgd" and p["nesterov"] and p["momentum"] <= 0:
        raise ValueError("switch_optimizer: Nesterov needs momentum > 0")


def _check_rollback(probe: RunContext, p: dict[str, Any]) -> None:
    check_rollback(probe.model, probe.optimizer, p["to"], p["weights_only"])


def _check_lr_find(probe: RunContext, p: dict[str, Any]) -> None:
    _opt(probe, "lr_find")
    if p["end_lr"] <= p["start_lr"]:
        raise ValueError(f"lr_find: end_lr ({p['end_lr']:g}) must be larger than start_lr ({p['start_lr']:g})")
    if probe.loss_fn is None:
        raise ValueError("lr_find needs the loss: create the probe with loss_fn=... (e.g. nn.CrossEntropyLoss())")
    if probe.data is None:
        if not any(b.target is not None for b in probe.recent_batches):
            raise ValueError("lr_find needs data: give the Probe data=loader, or train one step (with the probe's "
                             "loss_fn) so it can reuse the most recent batch")


def _needs_opt(action: str) -> Callable[[RunContext, dict[str, Any]], None]:
    def check(probe: RunContext, p: dict[str, Any]) -> None:
        _opt(probe, action)

    return check


def _check_dropouts(action: str) -> Callable[[RunContext, dict[str, Any]], None]:
    def check(probe: RunContext, p: dict[str, Any]) -> None:
        _dropouts_in(probe.model, p["layers"], action)

    return check


def _run_lr_find(probe: RunContext, p: dict[str, Any]) -> tuple[Applied | None, dict[str, Any]]:
    from ..lr_finder import lr_find

    data: Any = probe.data
    src = "probe.data"
    if data is None:
        data = [b for b in probe.recent_batches if b.target is not None]
        src = f"the {len(data)} most recent training batch(es), cycled"
    res = lr_find(probe.model, probe.optimizer, probe.loss_fn, data, start_lr=p["start_lr"], end_lr=p["end_lr"],  # type: ignore[arg-type]
                  num_iter=p["num_iter"], mode=p["mode"], probe=probe, data_note=src)
    summary = {"suggestion": res.suggestion, "suggestions": res.suggestions, "spread": res.spread,
               "iterations": res.iterations, "stop_reason": res.stop_reason, "data": src}
    msg = res.summary(src)  # says whether the rules agree, which to trust, and flags a fragile sweep
    if res.suggestion is None:
        return None, {**summary, "message": msg}
    if p["apply"] == "none":
        return None, {**summary, "message": msg}
    applied = res.apply(probe.optimizer, p["apply"], total_steps=p["total_steps"], probe=probe)  # type: ignore[arg-type]
    return applied, {**applied.details, **summary, "message": f"{msg}; {applied.message}"}


# ---------------------------------------------------------------------------- the whitelist
_reg("reinit", "Re-initialize", "init", REINIT_SCHEMA,
     "Re-initialize the whole model or chosen layers (He, Xavier, orthogonal, LSUV, data-dependent...).",
     _check_reinit, lambda pr, p: reinit_(pr.model, p.pop("scheme"), p.pop("layers"), optimizer=pr.optimizer, probe=pr, **p))
_reg("add_dropout", "Add dropout", "regularization", ADD_SCHEMA, "Apply dropout to the output of chosen modules.",
     _check_add_dropout, lambda pr, p: add_dropout_(pr.model, p["after"], p["p"], probe=pr))
_reg("set_dropout", "Set dropout p", "regularization", SET_SCHEMA, "Change p of the dropouts (all or in chosen layers).",
     _check_dropouts("set_dropout"),
     lambda pr, p: set_dropout_(pr.model, p["p"], p["layers"], probe=pr))
_reg("remove_dropout", "Remove dropout", "regularization", REMOVE_SCHEMA, "Remove trainscope dropouts; set p=0 on the model's own.",
     _check_dropouts("remove_dropout"),
     lambda pr, p: remove_dropout_(pr.model, p["layers"], probe=pr))
_reg("weight_decay", "Weight decay", "regularization", WD_SCHEMA, "Set weight decay / L2 in every param group.",
     _needs_opt("weight_decay"), lambda pr, p: weight_decay_(_opt(pr, "weight_decay"), p["value"], probe=pr))
_reg("l1", "L1 penalty", "regularization", L1_SCHEMA, "Add an L1 penalty on the weights (inside optimizer.step()).",
     _needs_opt("l1"), lambda pr, p: l1_(_opt(pr, "l1"), p["value"], include_bias=p["include_bias"], probe=pr))
_reg("clip_grad", "Clip gradients", "regularization", _CLIP, "Clip gradients by total norm or by value at every step.",
     _check_clip, lambda pr, p: clip_grad_(_opt(pr, "clip_grad"), p["max_norm"], value=p["value"], mode=p["mode"],
                                           norm_type=p["norm_type"], probe=pr),
     clean=clip_params)
_reg("set_lr", "Set learning rate", "lr", SET_LR_SCHEMA, "Set the learning rate now (group ratios kept).",
     _needs_opt("set_lr"), lambda pr, p: set_lr_(_opt(pr, "set_lr"), p["lr"], probe=pr))
_reg("scale_lr", "Scale learning rate", "lr", SCALE_LR_SCHEMA, "Multiply the learning rate (and an active schedule).",
     _needs_opt("scale_lr"), lambda pr, p: scale_lr_(_opt(pr, "scale_lr"), p["factor"], probe=pr))
_reg("set_schedule", "LR schedule", "lr", SCHEDULE_SCHEMA,
     f"Switch the learning-rate schedule live ({', '.join(KINDS)}).",
     _check_schedule("set_schedule"), lambda pr, p: set_schedule_(_opt(pr, "set_schedule"), p.pop("kind"), probe=pr, **p))
_reg("one_cycle", "One-cycle", "lr", ONE_CYCLE_SCHEMA, "Start a one-cycle schedule (lr and momentum cycling) now.",
     _check_one_cycle, lambda pr, p: one_cycle_(_opt(pr, "one_cycle"), p.pop("max_lr"), p.pop("total_steps"), probe=pr, **p))
_reg("lr_find", "LR finder", "lr", LR_FIND_SCHEMA,
     "Run the LR range test now (state restored exactly), then optionally apply the suggestion.",
     _check_lr_find, _run_lr_find)
_reg("switch_optimizer", "Switch optimizer", "optimizer", SWITCH_SCHEMA,
     "Switch to SGD / Adam / AdamW / RAdam / Lookahead / Ranger, carrying over what state can be carried.",
     _check_switch, lambda pr, p: switch_optimizer_(_opt(pr, "switch_optimizer"), p.pop("name"), probe=pr, **p))
_reg("snapshot", "Snapshot", "run", SNAPSHOT_SCHEMA, "Save the weights and optimizer state now.",
     None, lambda pr, p: snapshot_(pr.model, pr.optimizer, label=p["label"], weights_only=p["weights_only"], probe=pr))
_reg("rollback", "Roll back", "run", ROLLBACK_SCHEMA, "Go back to a snapshot ('last', 'best' or an id).",
     _check_rollback, lambda pr, p: rollback_(pr.model, pr.optimizer, p["to"], weights_only=p["weights_only"], probe=pr))
_reg("early_stopping", "Early stopping", "run", EARLY_SCHEMA,
     "Stop when the smoothed metric has not improved for `patience` observations; restore the best weights.",
     None, lambda pr, p: early_stopping_(pr.model, pr.optimizer, probe=pr, **p))
_reg("snapshot_ensemble", "Snapshot ensemble", "run", ENSEMBLE_SCHEMA,
     "SGDR with a snapshot at the end of every cycle; the averaged prediction is evaluated.",
     _check_schedule("snapshot_ensemble"), lambda pr, p: snapshot_ensemble_(pr.model, _opt(pr, "snapshot_ensemble"), probe=pr, **p))

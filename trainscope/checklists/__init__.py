"""Josh Tobin's and Andrej Karpathy's debugging checklists, with the automatable items as checks.

>>> trainscope.checklist_state(probe)              # items with status and evidence  # doctest: +SKIP
>>> trainscope.run_check("overfit_batch", probe)   # or (name, model, optimizer, loss_fn, batch)  # doctest: +SKIP
>>> probe.request("run_check", check="batch_mixing")  # at the next step boundary  # doctest: +SKIP

Every check runs inside :func:`isolated`: the model's parameters, gradients, buffers and modes, the
optimizer's state and the torch / CUDA / numpy / python RNG states are restored bit for bit after it,
also when it fails or raises.
"""

from __future__ import annotations

from .checks import CHECKS, CheckEnv, CheckResult, CheckSpec
from .isolation import StateSnapshot, isolated, same_bits
from .items import ITEMS, Item, item
from .runner import AUTO_CHECKS, auto_checks, check_names, checklist_state, run_check, run_checks

__all__ = [
    "AUTO_CHECKS",
    "CHECKS",
    "ITEMS",
    "CheckEnv",
    "CheckResult",
    "CheckSpec",
    "Item",
    "StateSnapshot",
    "auto_checks",
    "check_names",
    "checklist_state",
    "isolated",
    "item",
    "run_check",
    "run_checks",
    "same_bits",
]

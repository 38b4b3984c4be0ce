"""Composition: put trainscope's own actions on the whitelist, in one explicit call.

:func:`register_builtins` registers, in this order (the order the dashboard lists them):

1. ``undo`` (:mod:`trainscope.actions`);
2. every function of :mod:`trainscope.interventions` declared with
   :func:`trainscope.interventions._spec.action`, by its ``order`` then name -- a new intervention
   is one new module (its function, its schema, its ``@action``) and nothing else;
   ``run_check`` (:mod:`trainscope.checklists`) sits among them at order :data:`RUN_CHECK_ORDER`.

It also hands the diagnosis the checklists' ``run_check`` / ``auto_checks`` (the diagnosis asks
for a check without importing the checklists).  Nothing registers itself by being imported.  :mod:`trainscope` calls this once at import; calling
it again re-registers the same entries (idempotent).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

RUN_CHECK_ORDER = 500
"""``run_check`` comes after the built-in interventions (orders 10-170) and before the added ones
(default order 1000)."""


def _registrar(defn: Any, run: Any) -> Callable[[], None]:
    from .interventions import _spec

    return lambda: _spec.register(defn, run)


def register_builtins() -> list[str]:
    """Register every built-in action; return their names (in registration order)."""
    from . import interventions
    from .actions import register_undo
    from .checklists import auto_checks, run_check
    from .checklists.runner import register as register_run_check
    from .diagnostics import diagnoser
    from .interventions import _spec

    diagnoser.CHECKS.update(run=run_check, auto=auto_checks)  # diagnosis asks for checks through it
    register_undo()
    names: list[str] = ["undo"]
    found: list[tuple[int, str, str, Callable[[], None]]] = [
        (RUN_CHECK_ORDER, "run_check", f"{register_run_check.__module__}.register", register_run_check)
    ]
    for info in sorted(pkgutil.iter_modules(interventions.__path__), key=lambda i: i.name):
        mod = importlib.import_module(f"{interventions.__name__}.{info.name}")
        for defn, run in _spec.declared(vars(mod)):
            found.append((defn.order, defn.name, f"{run.__module__}.{run.__qualname__}", _registrar(defn, run)))
    seen: dict[str, str] = {}
    for _order, name, where, register in sorted(found, key=lambda t: (t[0], t[1])):
        if name in seen and seen[name] != where:
            raise RuntimeError(f"two built-in actions are named {name!r}: {seen[name]} and {where}")
        if name in seen:
            continue  # the same function, imported into a second module
        seen[name] = where
        register()
        names.append(name)
    return names

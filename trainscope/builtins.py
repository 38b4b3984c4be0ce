"""Composition: put trainscope's own actions on the whitelist, in one explicit call.

:func:`register_builtins` imports every module of :mod:`trainscope.interventions` and registers
each function declared with :func:`trainscope.interventions._spec.action`.  A new intervention is
one new module (its function, its schema, its ``@action``) and nothing else.  It is idempotent:
calling it again re-registers the same entries.
"""

from __future__ import annotations

import importlib
import pkgutil


def register_builtins() -> list[str]:
    """Register every declared built-in action; return their names (in registration order)."""
    from . import interventions
    from .interventions import _spec

    names: list[str] = []
    found: list[tuple[_spec.ActionDef, _spec.Run]] = []
    for info in sorted(pkgutil.iter_modules(interventions.__path__), key=lambda i: i.name):
        mod = importlib.import_module(f"{interventions.__name__}.{info.name}")
        found.extend(_spec.declared(vars(mod)))
    seen: dict[str, str] = {}
    for defn, run in sorted(found, key=lambda t: (t[0].order, t[0].name)):
        where = f"{run.__module__}.{run.__qualname__}"
        if defn.name in seen and seen[defn.name] != where:
            raise RuntimeError(f"two built-in actions are named {defn.name!r}: {seen[defn.name]} and {where}")
        seen[defn.name] = where
        _spec.register(defn, run)
        names.append(defn.name)
    return names

"""``@action``: an intervention declares its whitelist entry next to its function.

A module under :mod:`trainscope.interventions` writes::

    @action("insert_norm", label="Insert normalization", category="normalization",
            schema=INSERT_NORM_SCHEMA, description="...", check=_check_insert_norm)
    def _insert_norm(ctx, p):
        return insert_norm_(ctx.model, p["after"], kind=p["kind"], optimizer=ctx.optimizer, probe=ctx)

and nothing else: :func:`trainscope.builtins.register_builtins` finds every decorated function
in the package and registers it.  ``check(ctx, params)`` runs after the schema validation
(``clean(params)`` replaces it when given) and raises ``ValueError`` with a reason to refuse;
``run(ctx, params)`` is called at the step boundary inside :func:`action_context` and returns an
:class:`Applied` (or ``None``), or ``(Applied | None, details)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ._base import Applied, action_context, validate_params

Check = Callable[[Any, dict[str, Any]], None]
Run = Callable[[Any, dict[str, Any]], Any]
F = TypeVar("F", bound=Callable[..., Any])

ATTR = "__trainscope_action__"


@dataclass(frozen=True)
class ActionDef:
    """What the whitelist needs to know about one intervention."""

    name: str
    label: str
    category: str
    schema: Mapping[str, Mapping[str, Any]]
    description: str
    check: Check | None = None
    clean: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    order: int = field(default=1000)


def action(name: str, *, label: str, category: str, schema: Mapping[str, Mapping[str, Any]], description: str,
           check: Check | None = None, clean: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
           order: int = 1000) -> Callable[[F], F]:
    """Mark ``run(ctx, params)`` as the whitelisted action ``name`` (see the module docstring)."""

    def deco(run: F) -> F:
        setattr(run, ATTR, ActionDef(name, label, category, dict(schema), description, check, clean, order))
        return run

    return deco


def need_optimizer(ctx: Any, action: str) -> Any:
    """The run's optimizer; refuses an action that needs one when the probe has none."""
    if ctx.optimizer is None:
        raise ValueError(f"{action} needs the probe to know the optimizer: Probe(model, optimizer, ...)")
    return ctx.optimizer


def needs_optimizer(action: str) -> Check:
    """A ``check`` that only asks for an optimizer."""

    def check(ctx: Any, p: dict[str, Any]) -> None:
        need_optimizer(ctx, action)

    return check


def result(applied: Applied | None, extra: Mapping[str, Any] | None = None) -> tuple[Applied | None, dict[str, Any]]:
    """``(applied, details)`` with the applied record's details and message, plus ``extra``."""
    details: dict[str, Any] = {}
    if applied is not None:
        details.update(applied.details)
        details["message"] = applied.message
    details.update(extra or {})
    return applied, details


def register(defn: ActionDef, run: Run) -> None:
    """Put one declared intervention on the whitelist (validate once; apply at the boundary)."""
    from ..actions import register_action

    def validate(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
        p = defn.clean(params) if defn.clean is not None else validate_params(defn.name, defn.schema, params)
        if defn.check is not None:
            defn.check(ctx, p)
        return p

    def apply(ctx: Any, params: dict[str, Any]) -> Any:
        with action_context():
            out = run(ctx, dict(params))
        return out if isinstance(out, tuple) else result(out)

    register_action(defn.name, validate=validate, apply=apply, label=defn.label, description=defn.description,
                    category=defn.category, schema=dict(defn.schema))


def declared(namespace: Mapping[str, Any]) -> list[tuple[ActionDef, Run]]:
    """The ``@action`` functions defined in a module namespace, in (order, name) order."""
    found = [(getattr(v, ATTR), v) for v in namespace.values() if callable(v) and isinstance(getattr(v, ATTR, None), ActionDef)]
    return sorted(found, key=lambda t: (t[0].order, t[0].name))

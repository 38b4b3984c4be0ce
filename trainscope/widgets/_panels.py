"""Payloads of the Controls panels: the action forms, the diagnosis, the checklists.

Diagnosis and checklists come from other modules that may be absent or fail; every call here is
guarded and turns a failure into a message the panel shows ("diagnosis unavailable ...").
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from ..actions import REGISTRY
from ..history import History
from ..probe import Probe
from ..run import jsonable as _jsonable

__all__ = [
    "action_specs",
    "checklist_payload",
    "findings_payload",
    "jsonable",
    "register_optional_actions",
]

_OPTIONAL = ("trainscope.interventions", "trainscope.lr_finder", "trainscope.checklists")


def jsonable(v: Any) -> Any:
    """Plain JSON: numpy scalars and arrays converted, non-finite floats -> ``None``."""
    return _jsonable(v, finite=True, fallback=str)


def register_optional_actions() -> None:
    """Import the modules that register the built-in interventions, checks and the LR finder
    (each is optional: the dashboard offers whatever is registered)."""
    for name in _OPTIONAL:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        except Exception as e:  # a broken optional module must not break the dashboard
            warnings.warn(
                f"trainscope: could not load {name}: {type(e).__name__}: {e}",
                RuntimeWarning,
                stacklevel=3,
            )


def action_specs() -> list[dict[str, Any]]:
    """The whitelisted actions as the Interventions panel renders them (``undo`` is per ticket)."""
    return [
        {
            "name": s.name,
            "label": s.label,
            "description": s.description,
            "category": s.category,
            "schema": jsonable(dict(s.schema)),
        }
        for s in REGISTRY.values()
        if s.name != "undo"
    ]


def _unavailable(message: str) -> dict[str, Any]:
    return {"available": False, "message": message, "items": []}


def findings_payload(probe: Probe | None, history: History) -> dict[str, Any]:
    """``{"available", "message", "items": [finding.as_dict(), ...]}`` for the Findings panel."""
    try:
        if probe is not None:
            items = probe.findings()
        else:
            diagnostics = importlib.import_module("trainscope.diagnostics")
            diagnose = getattr(diagnostics, "diagnose", None)
            if diagnose is None:
                return _unavailable("diagnosis of saved runs is not available")
            items = diagnose(history)
    except ImportError:
        return _unavailable(
            "diagnosis unavailable (trainscope.diagnostics is not part of this installation)"
        )
    except Exception as e:
        return _unavailable(f"diagnosis failed: {type(e).__name__}: {e}")
    out = [jsonable(f.as_dict() if hasattr(f, "as_dict") else dict(f)) for f in list(items)[:50]]
    return {"available": True, "message": "", "items": out}


def checklist_payload(probe: Probe | None) -> dict[str, Any]:
    """``{"available", "message", "items": [...]}`` for the Checklist panel."""
    if probe is None:
        return _unavailable("checklists run against a live probe")
    try:
        checklists = importlib.import_module("trainscope.checklists")
        items = checklists.checklist_state(probe)
    except (ImportError, AttributeError):
        return _unavailable(
            "checklists unavailable (trainscope.checklists is not part of this installation)"
        )
    except Exception as e:
        return _unavailable(f"checklist failed: {type(e).__name__}: {e}")
    return {
        "available": True,
        "message": "",
        "items": [jsonable(dict(i)) for i in list(items)[:100]],
    }

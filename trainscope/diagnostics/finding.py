"""The :class:`Finding` record: what looks wrong, since when, where, the evidence and the fixes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..run import jsonable

__all__ = ["SEVERITIES", "Finding", "intervention", "severity_rank"]

SEVERITIES: tuple[str, ...] = ("info", "warning", "error")
"""From least to most severe.  ``info``: worth knowing, training can be fine; ``warning``: very
likely hurts training; ``error``: training is broken or about to be."""


def severity_rank(severity: str) -> int:
    """``info`` < ``warning`` < ``error`` (raises ``ValueError`` for anything else)."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        raise ValueError(
            f"severity must be one of {', '.join(SEVERITIES)}; got {severity!r}"
        ) from None


def intervention(action: str, label: str, **params: Any) -> dict[str, Any]:
    """One suggested fix: the action name (see :mod:`trainscope.actions`), its parameters and a
    button label.  Apply it with ``probe.request(action, **params)``."""
    return {"action": action, "params": dict(params), "label": label}


@dataclass
class Finding:
    """One diagnosis.

    Attributes
    ----------
    label
        A label of the vocabulary (``trainscope.diagnostics.LABELS``).
    severity
        ``"info"``, ``"warning"`` or ``"error"``.
    title
        One line for a list view.
    evidence
        The numbers behind the finding, in words (e.g. "activation std falls from 0.9 at `fc1`
        to 2e-4 at `fc5`").
    layers
        Module names concerned (``named_modules()`` names), most relevant first; empty when the
        finding is about the whole run.
    checklist
        Ids of the related checklist items (:func:`trainscope.checklists.checklist_state`).
    interventions
        Suggested fixes, ``{"action", "params", "label"}`` each.
    first_step, last_step
        The step where the finding was first seen and the last step where it held (``-1``:
        not set yet; :func:`~trainscope.diagnostics.diagnose` fills them in).
    active
        Whether it still holds at the latest diagnosis.
    data
        Machine-readable numbers behind ``evidence`` (not part of :meth:`as_dict`).
    """

    label: str
    severity: str
    title: str
    evidence: str
    layers: list[str] = field(default_factory=list)
    checklist: list[str] = field(default_factory=list)
    interventions: list[dict[str, Any]] = field(default_factory=list)
    first_step: int = -1
    last_step: int = -1
    active: bool = True
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        severity_rank(self.severity)  # validates

    def as_dict(self) -> dict[str, Any]:
        """The JSON-friendly form the dashboard renders (exactly the documented keys)."""
        return {
            "label": self.label,
            "severity": self.severity,
            "title": self.title,
            "first_step": int(self.first_step),
            "last_step": int(self.last_step),
            "active": bool(self.active),
            "layers": [str(x) for x in self.layers],
            "evidence": self.evidence,
            "checklist": [str(x) for x in self.checklist],
            "interventions": [
                {"action": str(i["action"]), "params": _plain(i.get("params", {})), "label": str(i["label"])}
                for i in self.interventions
            ],
        }


def _plain(v: Any) -> Any:
    """Plain JSON types only (numpy scalars become floats / ints)."""
    return jsonable(v, fallback=str)

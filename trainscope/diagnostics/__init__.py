"""Diagnosis: name what is wrong with a training run, show the evidence, point to the fix.

Each label of the vocabulary (:data:`LABELS`) has one small pure rule, ``(history, context) ->
Finding | None``, that reads the probe's bounded history (and a few facts read from the model at
diagnosis time, see :class:`Context`).  Thresholds live in :class:`Thresholds`, each with its
reason; ``docs/diagnosis.md`` documents every label.

>>> findings = probe.findings()                       # doctest: +SKIP
>>> [f.as_dict() for f in findings]                   # what the dashboard renders  # doctest: +SKIP
>>> from trainscope.diagnostics import diagnose       # stateless, on any History  # doctest: +SKIP
"""

from __future__ import annotations

from .config import Thresholds
from .context import Context, context_from_probe
from .diagnoser import Diagnoser, diagnose_probe, diagnoser_for
from .finding import SEVERITIES, Finding, intervention, severity_rank
from .registry import LABELS, RULES, RuleSpec, diagnose

__all__ = [
    "LABELS",
    "RULES",
    "SEVERITIES",
    "Context",
    "Diagnoser",
    "Finding",
    "RuleSpec",
    "Thresholds",
    "context_from_probe",
    "diagnose",
    "diagnose_probe",
    "diagnoser_for",
    "intervention",
    "severity_rank",
]

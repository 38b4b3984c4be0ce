"""Controls: interventions (forms built from the action registry), findings, checklist, and
the activity list that acknowledges every request (pending -> applied at step N / refused /
failed, with Undo)."""

from __future__ import annotations

from typing import Any

import anywidget
import traitlets as t

from ._static import CSS, esm


class Controls(anywidget.AnyWidget):
    """The dashboard's action side.

    The browser sends ``{"kind": "action", "action", "params", "id"}`` for a click and
    ``{"kind": "select", "layer"}`` when a finding's layer is clicked; :class:`Dashboard`
    validates, submits to ``probe.actions`` and reports back through :attr:`tickets`.
    """

    _esm = esm("controls")
    _css = CSS

    actions: t.List[dict[str, Any]] = t.List().tag(sync=True)
    """
    Whitelisted actions the panel offers: ``{"name", "label", "description", "category",
    "schema"}`` from ``trainscope.actions.REGISTRY`` (``undo`` is offered per ticket instead).

    - Type: ``list[dict]``
    - Default: ``[]``
    """

    tickets: t.List[dict[str, Any]] = t.List().tag(sync=True)
    """
    Recent requests, newest first (``Ticket.as_dict()`` plus ``"label"``), at most 50.

    - Type: ``list[dict]``
    - Default: ``[]``
    """

    findings = t.Dict().tag(sync=True)
    """
    ``{"available": bool, "message": str, "items": [finding.as_dict(), ...]}``.

    - Type: ``dict``
    - Default: ``{}``
    """

    checklist = t.Dict().tag(sync=True)
    """
    ``{"available": bool, "message": str, "items": [{"id", "source", "title", "meaning",
    "status", "evidence", "automated"}, ...]}``.

    - Type: ``dict``
    - Default: ``{}``
    """

    layers: t.List[str] = t.List().tag(sync=True)
    """
    Layer names in forward order (choices for ``layer`` / ``layers`` parameters).

    - Type: ``list[str]``
    - Default: ``[]``
    """

    read_only = t.Unicode("").tag(sync=True)
    """
    Non-empty when the dashboard cannot act (a saved run, or a detached probe): the reason.

    - Type: ``str``
    - Default: ``""``
    """

    delivery = t.Dict().tag(sync=True)
    """
    How clicks reach Python while a cell runs: ``{"name", "live", "note"}``.

    - Type: ``dict``
    - Default: ``{}``
    """

    busy = t.Dict().tag(sync=True)
    """
    The request that holds the training loop right now (applied on the training thread, e.g. an
    LR sweep or a check): ``{"id", "action", "label", "seconds"}``; ``{}`` when none.

    - Type: ``dict``
    - Default: ``{}``
    """

    layer_params: t.List[int] = t.List().tag(sync=True)
    """
    Number of parameters of each layer in :attr:`layers` (same order): layer pickers offer the
    layers with parameters first (``0``: a parameter-free module such as an activation).

    - Type: ``list[int]``
    - Default: ``[]``
    """

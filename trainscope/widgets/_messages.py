"""Validation of messages from the browser: only a few shapes are accepted, nothing is executed.

A message is ``{"kind": "action", "action": <registered name>, "params": {...}, "id": <str>}``
(a click on an intervention, a finding's suggestion, a checklist "Run", an Undo),
``{"kind": "select", "layer": <name>}`` or ``{"kind": "cancel", "id": <request id>}`` (Cancel on a
long action that holds the training, or on a queued request).  Anything else is refused with a reason that the
dashboard shows.  The action's own ``validate`` (in :mod:`trainscope.actions`) then checks the
parameters; this module only checks the envelope.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..actions import MAX_DEPTH, nesting_depth

__all__ = ["MAX_DEPTH", "MAX_PARAMS_BYTES", "Message", "MessageError", "parse_message"]

MAX_PARAMS_BYTES = 16_384
_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
KINDS = ("action", "select", "cancel")


class MessageError(ValueError):
    """A message that does not have an accepted shape; ``id`` / ``action`` when known."""

    def __init__(self, reason: str, *, id: str | None = None, action: str | None = None) -> None:
        super().__init__(reason)
        self.id = id
        self.action = action


@dataclass(frozen=True)
class Message:
    kind: str
    action: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    layer: str = ""


def _json_size(v: Any) -> int:
    """Size of ``v`` as JSON; -1 when it is not plain JSON (NaN, objects, nesting too deep...).
    Callers check the nesting first (:func:`nesting_depth`, no recursion)."""
    try:
        return len(json.dumps(v, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        return -1


def parse_message(content: Any) -> Message:
    """Check a custom message's envelope; raise :class:`MessageError` saying what is wrong."""
    if not isinstance(content, dict):
        raise MessageError(f"expected a JSON object, got {type(content).__name__}")
    kind = content.get("kind")
    if kind not in KINDS:
        raise MessageError(f"unknown message kind {kind!r}; accepted kinds: {', '.join(KINDS)}")
    if kind == "select":
        layer = content.get("layer")
        if not isinstance(layer, str) or len(layer) > 512:
            raise MessageError("select needs 'layer': a layer name")
        return Message("select", layer=layer)
    if kind == "cancel":
        rid = content.get("id")
        if not isinstance(rid, str) or not _ID.match(rid):
            raise MessageError("cancel needs 'id': the id of the request to cancel (1-64 characters of "
                               "letters, digits and _.:-)", action="cancel")
        return Message("cancel", id=rid)
    raw_id = content.get("id")
    mid = raw_id if isinstance(raw_id, str) and _ID.match(raw_id) else None
    action = content.get("action")
    act = action if isinstance(action, str) and _NAME.match(action) else None
    if raw_id is not None and mid is None:
        raise MessageError("'id' must be 1-64 characters of letters, digits and _.:-", action=act)
    if act is None:
        raise MessageError(f"'action' must be an action name, got {action!r}", id=mid)
    params = content.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise MessageError("'params' must be an object with string keys", id=mid, action=act)
    if nesting_depth(params) > MAX_DEPTH:
        raise MessageError(
            f"'params' nests deeper than {MAX_DEPTH} levels of lists / objects (no action takes more than "
            "a list of names)", id=mid, action=act,
        )
    size = _json_size(params)
    if size < 0:
        raise MessageError(
            "'params' must hold plain JSON values (finite numbers)", id=mid, action=act
        )
    if size > MAX_PARAMS_BYTES:
        raise MessageError(f"'params' is larger than {MAX_PARAMS_BYTES} bytes", id=mid, action=act)
    return Message("action", action=act, params=dict(params), id=mid or "")

"""The LR finder panel: the latest LR range test (a history event of kind ``"lr_find"``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import bqplot as bq
import ipywidgets as W
import numpy as np

from ..history import History
from ._bq import (
    EMPTY,
    PALETTE,
    Y_FMT,
    figure,
    set_marks,
    set_ticks,
)
from ._series import minmax_decimate

__all__ = ["LRFinderPanel"]

MAX_WARNINGS = 5
"""Warnings shown under the curve (a crafted run may carry any number)."""
MAX_TEXT = 800
"""Characters of one advice / warning line (the rest is cut, with an ellipsis)."""


def _text(v: Any) -> str:
    s = v if isinstance(v, str) else ""
    s = " ".join(s.split())
    return s if len(s) <= MAX_TEXT else s[: MAX_TEXT - 1] + "…"


def _sentence(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def verdict(data: dict[str, Any]) -> tuple[str, str]:
    """What the panel says about the suggestion, as ``(css state, text)``: whether the rules
    agree and which to trust (the result's ``advice``), and why there is none (``note``)."""
    note, advice = _text(data.get("note")), _text(data.get("advice"))
    agree = data.get("agree")
    parts = [p if p.endswith("…") else _sentence(p).rstrip(". ") + "." for p in (note, advice) if p]
    text = " ".join(parts)
    if agree is True:
        return "is-agree", text or "The rules agree."
    if agree is False:
        return "is-disagree", text
    return "is-none", text


class LRFinderPanel(W.VBox):
    """The latest LR range test (a history event of kind ``"lr_find"``) and its suggestion."""

    def __init__(self, submit: Callable[[str, dict[str, Any]], Any]) -> None:
        self._submit = submit
        lx, ly = bq.LogScale(), bq.LinearScale()
        unit = bq.LinearScale(min=0.0, max=1.0)
        self.curve = bq.Lines(
            x=EMPTY, y=EMPTY, scales={"x": lx, "y": ly}, colors=[PALETTE[0]], stroke_width=2
        )
        self.mark = bq.Lines(
            x=EMPTY,
            y=EMPTY,
            scales={"x": lx, "y": unit},
            colors=["#d62728"],
            line_style="dashed",
            stroke_width=2,
        )
        self.others = bq.Lines(
            x=EMPTY,
            y=EMPTY,
            scales={"x": lx, "y": unit},
            colors=["#9e9e9e"],
            line_style="dotted",
            stroke_width=1.2,
        )
        self._yaxis = bq.Axis(
            scale=ly, side="left", label="loss", tick_format=Y_FMT, label_offset="45px"
        )
        self.fig = figure(
            "LR range test",
            [self.curve, self.others, self.mark],
            [
                bq.Axis(scale=lx, label="learning rate", tick_format=".0e"),
                self._yaxis,
            ],
            height="280px",
        )
        # text only (never HTML): the summary holds names read from a run directory
        self.info = W.Label(
            "No LR range test yet: run the LR finder from the Interventions panel (group: lr)."
        )
        self.info.add_class("trainscope-lr-info")
        # whether the rules agree and which to trust, and the result's warnings (text widgets)
        self.advice = W.Label("")
        self.advice.add_class("trainscope-lr-advice")
        self.warnings = W.VBox([])
        self.warnings.add_class("trainscope-lr-warnings")
        self.apply_lr = W.Button(
            description="Apply as LR", disabled=True, tooltip="submit set_lr(lr=suggestion)"
        )
        self.apply_cycle = W.Button(
            description="One-cycle with it",
            disabled=True,
            tooltip="submit one_cycle(max_lr=suggestion)",
        )
        self.apply_lr.add_class("trainscope-lr-apply")
        self.apply_cycle.add_class("trainscope-lr-cycle")
        self.apply_lr.on_click(lambda _b: self._click("set_lr", "lr"))
        self.apply_cycle.on_click(lambda _b: self._click("one_cycle", "max_lr"))
        self.suggestion: float | None = None
        self._event_id: int | None = None
        self._row = W.HBox([self.info, self.apply_lr, self.apply_cycle])
        # the plot joins the panel with the first range test: no empty 0..1 axes before it (and
        # no figure laid out at zero size in a hidden tab)
        super().__init__([self._row])

    def _click(self, action: str, param: str) -> None:
        if self.suggestion is not None:
            self._submit(action, {param: self.suggestion})

    def update(self, h: History, *, read_only: bool, registry: Sequence[str]) -> None:
        ev = next((e for e in reversed(list(h.events)) if e.kind == "lr_find"), None)
        if ev is not None and ev.id != self._event_id:
            self._draw(ev)
        # nothing to apply without a suggestion (the sweep said why): the buttons are off
        off = read_only or ev is None or self.suggestion is None
        self.apply_lr.disabled = off or "set_lr" not in registry
        self.apply_cycle.disabled = off or "one_cycle" not in registry

    def _draw(self, ev: Any) -> None:
        self._event_id = ev.id
        shown: tuple[Any, ...] = tuple(getattr(self, "children", ()))
        if self.fig not in shown:
            self.children = (self.fig, self._row, self.advice, self.warnings)
        lrs = np.asarray(ev.data.get("lrs", []), dtype=np.float64)
        losses = np.asarray(ev.data.get("losses", []), dtype=np.float64)
        ok = (lrs > 0) & np.isfinite(lrs)
        x, y = minmax_decimate(
            lrs[ok], losses[ok] if len(losses) == len(lrs) else np.full(ok.sum(), np.nan)
        )
        set_marks(self.curve, x=x, y=y)
        set_ticks(self._yaxis, y, log=False, fit_format=True)  # a memorized loss spans 1e-7
        sug = ev.data.get("suggestion")
        self.suggestion = (
            float(sug) if isinstance(sug, (int, float)) and math.isfinite(sug) and sug > 0 else None
        )
        if self.suggestion is not None:
            set_marks(
                self.mark,
                x=np.array([[self.suggestion] * 2], np.float32),
                y=np.array([[0.0, 1.0]], np.float32),
            )
        others = {
            k: float(v)
            for k, v in (ev.data.get("suggestions") or {}).items()
            if isinstance(v, (int, float)) and math.isfinite(v) and v > 0
        }
        if others:
            xs = np.array([[v, v] for v in others.values()], np.float32)
            set_marks(
                self.others, x=xs, y=np.tile(np.array([0.0, 1.0], np.float32), (len(others), 1))
            )
        text = (
            f"step {ev.step:,}: suggested lr {self.suggestion:.3g}"
            if self.suggestion
            else f"step {ev.step:,}: no suggestion"
        )
        if others:
            text += "  (" + ", ".join(f"{k}: {v:.2g}" for k, v in others.items()) + ")"
        self.info.value = text
        state, says = verdict(ev.data)
        self.advice.value = says
        for c in ("is-agree", "is-disagree", "is-none"):
            self.advice.remove_class(c)
        self.advice.add_class(state)
        warns = [w for w in (_text(x) for x in list(ev.data.get("warnings") or [])[:MAX_WARNINGS]) if w]
        labels = []
        for w in warns:
            lab = W.Label("⚠ " + _sentence(w))
            lab.add_class("trainscope-lr-warning")
            labels.append(lab)
        old = list(self.warnings.children)
        self.warnings.children = labels
        for o in old:
            o.close()

"""The LR finder panel says whether the rules agree, which one to trust, and shows the sweep's
warnings -- as text widgets (never HTML built from data), bounded in number and length."""

from __future__ import annotations

from typing import Any

import ipywidgets as W
import numpy as np

from trainscope.history import History
from trainscope.lr_finder import agreement
from trainscope.widgets.lr_finder_panel import MAX_TEXT, MAX_WARNINGS, LRFinderPanel


def _event(h: History, **data: Any) -> None:
    lrs = list(np.logspace(-6, 0, 40))
    losses = [2.0 - 0.03 * i if i < 30 else 1.1 + 0.3 * (i - 30) for i in range(40)]
    h.add_event("lr_find", "LR finder", step=10, lrs=lrs, losses=losses, data="probe.data", **data)


def _classes(w: W.Widget) -> list[str]:
    return list(w._dom_classes)


def test_disagreeing_rules_are_said_plainly_with_the_rule_to_trust() -> None:
    sugg = {"steep": 0.00076, "valley": 0.11, "minimum": 0.89}  # the newcomer review's sweep
    lr, trusted, agree, advice = agreement(sugg)
    h = History()
    _event(h, suggestion=lr, suggestions=sugg, spread=3.07, agree=agree, trusted=trusted, advice=advice,
           note="", warnings=["fragile: the sweep cycled ONE batch 100 times, so the curve shows how fast "
                              "the model memorizes that batch"])
    panel = LRFinderPanel(lambda a, p: None)
    panel.update(h, read_only=False, registry=["set_lr", "one_cycle"])
    assert panel.advice in panel.children and panel.warnings in panel.children
    assert isinstance(panel.advice, W.Label)  # text, not HTML
    assert panel.advice.value.startswith("The rules DISAGREE") and f"Trust {trusted}" in panel.advice.value
    assert "is-disagree" in _classes(panel.advice)
    (w,) = panel.warnings.children
    assert isinstance(w, W.Label) and w.value.startswith("⚠ Fragile: the sweep cycled ONE batch")
    assert "trainscope-lr-warning" in _classes(w)


def test_agreeing_rules_and_no_suggestion_are_shown_too() -> None:
    sugg = {"steep": 0.01, "valley": 0.02, "minimum": 0.03}
    lr, trusted, agree, advice = agreement(sugg)
    h = History()
    _event(h, suggestion=lr, suggestions=sugg, agree=agree, trusted=trusted, advice=advice, warnings=[])
    panel = LRFinderPanel(lambda a, p: None)
    panel.update(h, read_only=False, registry=[])
    assert panel.advice.value.startswith("The rules agree") and "is-agree" in _classes(panel.advice)
    assert panel.warnings.children == ()
    # a newer sweep with no suggestion: the note says why, the advice what to do; old classes go
    _event(h, suggestion=None, suggestions={}, agree=None, note="the loss did not fall anywhere in the sweep",
           advice="keep the current lr", warnings=["w"] * 50)
    panel.update(h, read_only=False, registry=[])
    assert panel.advice.value == "The loss did not fall anywhere in the sweep. Keep the current lr."
    assert "is-none" in _classes(panel.advice) and "is-agree" not in _classes(panel.advice)
    assert len(panel.warnings.children) == MAX_WARNINGS


def test_crafted_texts_are_bounded_and_stay_text() -> None:
    h = History()
    _event(h, suggestion=0.01, suggestions={"steep": 0.01}, agree=False, advice="<img src=x onerror=alert(1)>" * 500,
           warnings=["<script>x</script>" * 500, 42, None])
    panel = LRFinderPanel(lambda a, p: None)
    panel.update(h, read_only=True, registry=[])
    assert len(panel.advice.value) <= MAX_TEXT + 1 and panel.advice.value.endswith("…")
    assert [type(c) for c in panel.warnings.children] == [W.Label]  # non-text warnings are dropped
    assert len(panel.warnings.children[0].value) <= MAX_TEXT + 2


def test_apply_buttons_are_off_when_the_sweep_has_no_suggestion() -> None:
    """'Apply as LR' stayed enabled after a sweep with no suggestion (a converged model), and its
    click did nothing: the e2e run waited for a 'Set learning rate' that never came."""
    sugg = {"steep": 0.01, "valley": 0.02, "minimum": 0.03}
    lr, trusted, agree, advice = agreement(sugg)
    h = History()
    sent: list[tuple[str, dict[str, Any]]] = []
    panel = LRFinderPanel(lambda a, p: sent.append((a, p)))
    _event(h, suggestion=lr, suggestions=sugg, agree=agree, trusted=trusted, advice=advice, warnings=[])
    panel.update(h, read_only=False, registry=["set_lr", "one_cycle"])
    assert not panel.apply_lr.disabled and not panel.apply_cycle.disabled
    _event(h, suggestion=None, suggestions={}, agree=None, note="the loss did not fall anywhere in the sweep",
           advice="keep the current lr", warnings=[])
    panel.update(h, read_only=False, registry=["set_lr", "one_cycle"])
    assert panel.apply_lr.disabled and panel.apply_cycle.disabled
    panel.update(h, read_only=False, registry=["set_lr", "one_cycle"])  # and stay off on later updates
    assert panel.apply_lr.disabled

"""Opening someone else's run must be safe: no widget of the dashboard renders data as HTML.

A crafted run directory can put markup in any recorded string (an lr_find event's suggestion
names, labels, layer names, metric names).  Every widget that the browser renders as HTML
(``ipywidgets.HTML`` / ``HTMLMath``, descriptions with ``description_allow_html``) is checked
for data-built content; the anywidget parts render with ``textContent`` (``js/lib/dom.js``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ipywidgets as W
import torch
from torch import nn

import trainscope
from trainscope.runlog import _format as F
from trainscope.widgets import Dashboard
from trainscope.widgets.lr_finder_panel import LRFinderPanel

MARK = "<img src=x onerror=alert('ts')>"


def _walk(w: Any) -> Iterator[Any]:
    seen: set[int] = set()
    stack = [w]
    while stack:
        x = stack.pop()
        if id(x) in seen or not isinstance(x, W.Widget):
            continue
        seen.add(id(x))
        yield x
        for name in x.keys:
            v = getattr(x, name, None)
            if isinstance(v, W.Widget):
                stack.append(v)
            elif isinstance(v, (list, tuple)):
                stack.extend(c for c in v if isinstance(c, W.Widget))


def _html_sinks(root: Any) -> list[str]:
    """Every string the browser would parse as HTML, with where it came from."""
    out = []
    for w in _walk(root):
        if isinstance(w, (W.HTML, W.HTMLMath)):
            out.append(f"{type(w).__name__}.value: {w.value}")
        if getattr(w, "description_allow_html", False):
            out.append(f"{type(w).__name__}.description: {w.description}")
        if getattr(w, "tooltip", None) and getattr(w, "description_allow_html", False):
            out.append(f"{type(w).__name__}.tooltip: {w.tooltip}")
    return out


def _crafted_run(tmp_path: Path) -> trainscope.History:
    d = str(tmp_path / "shared-run")
    model = nn.Sequential(nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    p = trainscope.Probe(model, opt, every=1, logdir=d)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).sum().backward()
        opt.step()
        p.log(**{"acc": 0.5})
    p.detach()
    p.run_writer.close()
    seg = os.path.join(d, sorted(n for n in os.listdir(d) if n.startswith("seg-"))[-1])
    with open(seg, "ab") as f:
        f.write(
            F.encode(
                {
                    "t": "event",
                    "id": 99,
                    "step": 3,
                    "kind": "lr_find",
                    "label": MARK,
                    "time": 0.0,
                    "data": {
                        "lrs": [1e-3, 1e-2, 1e-1],
                        "losses": [1, 0.5, 0.7],
                        "suggestion": 0.01,
                        "suggestions": {MARK: 0.01},
                    },
                }
            )
        )
        f.write(
            F.encode(
                {
                    "t": "event",
                    "id": 100,
                    "step": 2,
                    "kind": "intervention",
                    "label": MARK,
                    "time": 0.0,
                    "data": {},
                }
            )
        )
    return trainscope.open(d, follow=False).history


def test_lr_finder_panel_never_renders_run_data_as_html(tmp_path: Path) -> None:
    h = _crafted_run(tmp_path)
    panel = LRFinderPanel(lambda a, p: None)
    panel.update(h, read_only=True, registry=[])
    assert panel.suggestion == 0.01
    sinks = [s for s in _html_sinks(panel) if "<img" in s or "ts')" in s]
    assert not sinks, sinks
    # the text is still there, as text
    assert MARK in panel.info.value and "0.01" in panel.info.value


def test_no_widget_of_a_saved_run_dashboard_parses_data_as_html(tmp_path: Path) -> None:
    h = _crafted_run(tmp_path)
    dash = Dashboard(h)
    try:
        dash.tabs.selected_index = 4  # the LR finder view is drawn when shown
        dash.refresh(force=True)
        assert dash.lr_finder.suggestion == 0.01
        sinks = [s for root in (dash, *dash._tab_content) for s in _html_sinks(root)]
        leaks = [s for s in sinks if "<img" in s or "onerror" in s]
        assert not leaks, leaks
    finally:
        dash.close()

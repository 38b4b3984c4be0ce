"""The HTML report: layer table, findings, checklist, timeline, meta, comparison; write_report."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from typing import Any

import numpy as np

from .._version import __version__
from ..history import History
from ._backends import (
    _svg,
)
from ._charts import (
    _fmt,
    _layout_heatmap,
    _layout_line,
    _LineChart,
)
from ._runcharts import (
    _curve_charts,
    _heatmaps,
)
from ._sources import (
    _TABLE_METRICS,
    PALETTE,
    _layer_name,
    _order,
    _Source,
    _sources,
    esc,
)

# ============================================================================ HTML
_CSS = """
body{font:14px/1.45 -apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#777}.grid{display:flex;flex-wrap:wrap;gap:12px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f4f4f4;position:sticky;top:0}td.l,th.l{text-align:left}.sev-error{background:#fde2e2}.sev-warning{background:#fff3d6}
.sev-info{background:#e8f1fb}.bad{background:#fde2e2;font-weight:600}.warn{background:#fff3d6}.badge{display:inline-block;
padding:0 6px;border-radius:8px;font-size:11.5px;font-weight:600}.pass{color:#17692b}.fail{color:#a40000}.warnc{color:#8a5a00}
code{background:#f4f4f4;padding:0 3px;border-radius:3px}details{margin:8px 0}summary{cursor:pointer;font-weight:600}
.kv td{text-align:left}svg{background:#fff;border:1px solid #eee}
"""


def _cell(v: float, metric: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '<td class="muted">-</td>'
    cls = ""
    if metric in ("act_nonfinite", "grad_nonfinite") and v != 0:
        cls = ' class="bad"'
        return f"<td{cls}>{'yes' if v < 0 else esc(_fmt(float(v)))}</td>"
    if not math.isfinite(v):
        cls = ' class="bad"'
    elif metric in ("act_dead_frac", "act_frac_sat") and v > 0.5:
        cls = ' class="warn"'
    return f"<td{cls}>{esc(_fmt(float(v)))}</td>"


def _metric(rec: Any, m: str, i: int) -> float:
    try:
        return float(rec.metrics[m][i])
    except (KeyError, IndexError, TypeError, ValueError):
        return math.nan


def _layer_table(h: History) -> str:
    rec = h.latest
    if rec is None:
        return '<p class="muted">No sampled step recorded yet.</p>'
    head = "".join(f"<th>{esc(lbl)}</th>" for _, lbl in _TABLE_METRICS)
    rows = []
    for i in _order(h):
        info = h.layers[i]
        cells = "".join(_cell(_metric(rec, m, i), m) for m, _ in _TABLE_METRICS)
        rows.append(
            f'<tr><td class="l"><code>{esc(info.name)}</code></td><td class="l">{esc(info.type)}</td><td>{esc(info.n_params)}</td>{cells}</tr>'
        )
    nf = []
    for idx, what in (
        (rec.first_nonfinite_forward, "first non-finite activation (forward order)"),
        (rec.first_nonfinite_backward, "first non-finite output gradient (backward order)"),
    ):
        if idx is not None:
            name = _layer_name(h, idx)
            shown = esc(name) if name is not None else f"layer index {esc(idx)} (no such layer)"
            nf.append(f"{what}: <code>{shown}</code>")
    note = f'<p class="bad">{"; ".join(nf)}</p>' if nf else ""
    return (
        f'<p class="muted">Latest sampled step: {esc(rec.step)}. Layers in forward order.</p>{note}'
        f'<div style="overflow-x:auto"><table><tr><th class="l">layer</th><th class="l">type</th><th>params</th>{head}</tr>{"".join(rows)}</table></div>'
    )


def _findings_for(src: _Source) -> tuple[list[dict[str, Any]] | None, str]:
    try:
        if src.probe is not None:
            found = src.probe.findings()
        else:
            from ..diagnostics import diagnose

            found = diagnose(src.history)
        return [f.as_dict() if hasattr(f, "as_dict") else dict(f) for f in found], ""
    except ImportError as e:
        return None, f"diagnosis is not available in this installation ({e})"
    except Exception as e:
        return None, f"diagnosis failed: {type(e).__name__}: {e}"


def _findings_html(src: _Source) -> str:
    items, why = _findings_for(src)
    if items is None:
        return f'<p class="muted">{esc(why)}</p>'
    if not items:
        return '<p class="pass">No findings: nothing looks wrong in the recorded statistics.</p>'
    rows = []
    for f in items:
        sev = str(f.get("severity", "info"))
        layers = ", ".join(f"<code>{esc(x)}</code>" for x in f.get("layers", [])[:8])
        fixes = "; ".join(
            f"{esc(i.get('label', i.get('action')))} (<code>{esc(i.get('action'))}</code> {esc(json.dumps(i.get('params', {}), default=str))})"
            for i in f.get("interventions", [])
        )
        span = f"{f.get('first_step', '?')}–{f.get('last_step', '?')}"
        state = "" if f.get("active", True) else ' <span class="muted">(no longer holds)</span>'
        rows.append(
            f'<tr class="sev-{esc(sev)}"><td class="l"><span class="badge">{esc(sev)}</span></td><td class="l"><b>{esc(f.get("title", ""))}</b>{state}<br>'
            f'{esc(f.get("evidence", ""))}</td><td class="l">{layers}</td><td>{esc(span)}</td><td class="l">{fixes}</td></tr>'
        )
    return f'<table><tr><th class="l">severity</th><th class="l">finding and evidence</th><th class="l">layers</th><th>steps</th><th class="l">suggested fixes</th></tr>{"".join(rows)}</table>'


def _checklist_items(src: _Source) -> tuple[list[dict[str, Any]] | None, str]:
    try:
        from ..checklists import checklist_state
    except ImportError as e:
        return None, f"checklists are not available in this installation ({e})"
    try:
        if src.probe is not None:
            return list(checklist_state(src.probe)), ""
        items = [dict(it) for it in checklist_state(None)]
        checks = src.history.meta.get("checks") or {}
        found, _ = _findings_for(src)
        for it in items:
            res = checks.get(it.get("check")) if it.get("check") else None
            related = [
                f
                for f in (found or [])
                if it.get("id") in f.get("checklist", [])
                and f.get("severity") in ("warning", "error")
            ]
            if isinstance(res, dict) and "status" in res:
                it["status"], it["evidence"] = res["status"], res.get("evidence", "")
            elif related:
                it["status"] = "fail" if any(f["severity"] == "error" for f in related) else "warn"
                it["evidence"] = "; ".join(f"{f['title']}: {f['evidence']}" for f in related)
        return items, ""
    except Exception as e:
        return None, f"checklist failed: {type(e).__name__}: {e}"


def _checklist_html(src: _Source) -> str:
    items, why = _checklist_items(src)
    if items is None:
        return f'<p class="muted">{esc(why)}</p>'
    cls = {"pass": "pass", "fail": "fail", "warn": "warnc"}
    rows = "".join(
        f'<tr><td class="l">{esc(it.get("source", ""))}</td><td class="l">{esc(it.get("title", it.get("id", "")))}</td>'
        f'<td class="l {cls.get(str(it.get("status")), "muted")}">{esc(it.get("status", ""))}</td><td class="l">{esc(it.get("evidence", ""))}</td></tr>'
        for it in items
    )
    return f'<table><tr><th class="l">list</th><th class="l">item</th><th class="l">status</th><th class="l">evidence</th></tr>{rows}</table>'


def _when(t: Any) -> str:
    try:
        return _dt.datetime.fromtimestamp(float(t)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def _timeline_html(h: History) -> str:
    evs = list(h.events)
    if not evs:
        return '<p class="muted">No interventions or other events were recorded.</p>'
    rows = []
    for e in evs[-500:]:
        when = _when(e.time)
        data = json.dumps(e.data, default=str, sort_keys=True)
        if len(data) > 400:
            data = data[:400] + "…"
        rows.append(
            f'<tr><td>{esc(e.step)}</td><td class="l">{esc(when)}</td><td class="l">{esc(e.kind)}</td><td class="l">{esc(e.label)}</td><td class="l"><code>{esc(data)}</code></td></tr>'
        )
    more = (
        f'<p class="muted">Showing the last 500 of {esc(len(evs))} events.</p>'
        if len(evs) > 500
        else ""
    )
    return f'{more}<table><tr><th>step</th><th class="l">time</th><th class="l">kind</th><th class="l">label</th><th class="l">details</th></tr>{"".join(rows)}</table>'


def _meta_html(src: _Source) -> str:
    h = src.history
    m = h.meta
    rows = [
        ("model", m.get("model")),
        ("parameters", m.get("n_params")),
        ("trainable", m.get("n_trainable")),
        ("optimizer", m.get("optimizer")),
        ("loss", m.get("loss_fn")),
        ("processes (DDP)", m.get("world_size")),
        ("last step", h.step),
        ("sampled steps", h.samples()),
        ("tracked layers", len(h.layers)),
        ("run directory", src.path),
        (
            "finished",
            None
            if src.finished is None
            else ("yes" if src.finished else "no (still written, or the writer stopped)"),
        ),
    ]
    for name in ("loss", "val_loss"):
        d = h.scalar(name)
        if len(d["mean"]):
            rows.append((f"last {name}", _fmt(float(d["mean"][-1]))))
            fin = d["min"][np.isfinite(d["min"])]
            if len(fin):
                rows.append((f"best {name}", _fmt(float(fin.min()))))
    body = "".join(
        f'<tr><th class="l">{esc(k)}</th><td>{esc(v)}</td></tr>' for k, v in rows if v is not None
    )
    return f'<table class="kv">{body}</table>'


def _chart_svgs(charts: list[Any], W: int, H: int) -> str:
    parts = []
    for ch in charts:
        prims = (
            _layout_line(ch, W, H, 1)
            if isinstance(ch, _LineChart)
            else _layout_heatmap(ch, W, H, 1)
        )
        parts.append(_svg(prims, W, H))
    return '<div class="grid">' + "".join(parts) + "</div>"


def _run_section(src: _Source, *, heading: bool) -> str:
    h = src.history
    parts = []
    if heading:
        parts.append(f"<h2>Run <code>{esc(src.name)}</code></h2>")
    parts.append(_meta_html(src))
    parts.append("<h3>Layers</h3>" if heading else "<h2>Layers</h2>")
    parts.append(_layer_table(h))
    hms = _heatmaps(h)
    parts.append("<h3>Heatmaps</h3>" if heading else "<h2>Heatmaps</h2>")
    parts.append(
        _chart_svgs(hms, 1140, max(170, min(26 + 13 * len(h.layers), 520) + 48))
        if hms
        else '<p class="muted">No per-layer series recorded yet.</p>'
    )
    parts.append("<h3>Findings</h3>" if heading else "<h2>Findings</h2>")
    parts.append(_findings_html(src))
    parts.append("<h3>Checklist</h3>" if heading else "<h2>Checklist</h2>")
    parts.append(_checklist_html(src))
    parts.append(
        "<h3>Interventions timeline</h3>" if heading else "<h2>Interventions timeline</h2>"
    )
    parts.append(_timeline_html(h))
    return "".join(parts)


def report_html(source: Any, *, title: str | None = None) -> str:
    """The report as one HTML string (see :func:`write_report`)."""
    srcs = _sources(source)
    multi = len(srcs) > 1
    ttl = title or (
        f"trainscope report: {srcs[0].name}"
        if not multi
        else f"trainscope comparison of {len(srcs)} runs"
    )
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(ttl)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(ttl)}</h1>",
        f'<p class="muted">Generated {esc(now)} by trainscope {esc(__version__)}. Self-contained: opens offline.</p>',
    ]
    parts.append("<h2>Curves</h2>")
    charts = _curve_charts(srcs)
    parts.append(
        _chart_svgs(charts, 560, 300) if charts else '<p class="muted">No scalars recorded.</p>'
    )
    if multi:
        parts.append("<h2>Runs</h2>")
        parts.append(_comparison_table(srcs))
        for src in srcs:
            parts.append(
                f"<details><summary>{esc(src.name)}</summary>{_run_section(src, heading=True)}</details>"
            )
    else:
        parts.append("<h2>Run</h2>")
        parts.append(_run_section(srcs[0], heading=False))
    parts.append("</body></html>")
    return "\n".join(parts)


def _comparison_table(srcs: list[_Source]) -> str:
    rows = []
    for i, s in enumerate(srcs):
        h = s.history
        cells = []
        for name in ("loss", "val_loss"):
            d = h.scalar(name)
            fin = d["min"][np.isfinite(d["min"])] if len(d["min"]) else np.zeros(0)
            cells.append(_fmt(float(d["mean"][-1])) if len(d["mean"]) else "-")
            cells.append(_fmt(float(fin.min())) if len(fin) else "-")
        lr = h.scalar("lr")
        cells.append(_fmt(float(lr["mean"][-1])) if len(lr["mean"]) else "-")
        swatch = f'<span class="badge" style="background:{PALETTE[i % len(PALETTE)]}">&nbsp;</span>'
        rows.append(
            f'<tr><td class="l">{swatch} <code>{esc(s.name)}</code></td><td>{esc(h.step)}</td><td>{esc(h.samples())}</td>'
            + "".join(f"<td>{esc(c)}</td>" for c in cells)
            + f"<td>{esc(len(h.events))}</td></tr>"
        )
    return (
        '<table><tr><th class="l">run</th><th>last step</th><th>samples</th><th>last loss</th><th>best loss</th><th>last val_loss</th><th>best val_loss</th><th>last lr</th><th>events</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def runs_overview_html(runs: Any) -> str:
    """A compact HTML fragment: the runs' loss curves overlaid and a comparison table."""
    srcs = _sources(list(runs) if isinstance(runs, (list, tuple)) else runs)
    charts = [c for c in _curve_charts(srcs) if c.title in ("Loss", "Learning rate")]
    if not charts:
        charts = _curve_charts(srcs)[:1]
    return _chart_svgs(charts, 520, 260) + _comparison_table(srcs)


def write_report(source: Any, path: str | os.PathLike[str], *, title: str | None = None) -> str:
    """Write a self-contained offline HTML report of ``source`` to ``path``; returns the path.

    Parameters
    ----------
    source
        A Probe, a History, a run (``trainscope.open(path)``) or a run directory path; or a list
        of those / a RunSet to compare several runs (their curves are overlaid).
    path
        Where to write the ``.html`` file (parent directories are created).
    title
        The report's title (default: from the model's name).
    """
    doc = report_html(source, title=title)
    p = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(p))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{p}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(doc)
    os.replace(tmp, p)
    return p



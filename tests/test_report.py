"""Offline HTML report (self-contained, escaped, complete) and PNG figures (valid, drawn)."""

from __future__ import annotations

import os
import re
import struct
import zlib
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from torch import nn

import trainscope
from trainscope import _raster as R
from trainscope import report
from trainscope.history import History

EVIL = "<script>alert(1)</script>"
EVIL2 = '"><img src=x onerror=alert(2)>'


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class _Evil(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


def _evil_probe(tmp_path, *, logdir: bool = False) -> trainscope.Probe:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
    model.add_module(EVIL, _Evil())  # a user-chosen module name
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = trainscope.Probe(
        model,
        opt,
        loss_fn=nn.CrossEntropyLoss(),
        every=4,
        logdir=(tmp_path / "run") if logdir else None,
    )
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(128, 20, generator=g), torch.randint(0, 5, (128,), generator=g)
    for step in range(60):
        opt.zero_grad()
        out = model(x)
        probe.loss_fn(out, y).backward()
        opt.step()
        probe.log(**{EVIL: float(step), EVIL2: 1.0})  # user-chosen metric names
        if step == 30:
            probe.history.add_event(
                "intervention", EVIL2, step=30, action="set_lr", params={"lr": EVIL}
            )
        if step % 10 == 0:
            with torch.no_grad():
                probe.log(val_loss=probe.loss_fn(model(x[:32]), y[:32]))
    probe.flush()
    return probe


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: list[tuple[str, str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs += [(tag, k, v) for k, v in attrs]


ALLOWED_TAGS = {
    "html",
    "head",
    "meta",
    "title",
    "style",
    "body",
    "h1",
    "h2",
    "h3",
    "p",
    "div",
    "table",
    "tr",
    "th",
    "td",
    "span",
    "code",
    "b",
    "br",
    "i",
    "details",
    "summary",
    "svg",
    "rect",
    "line",
    "polyline",
    "polygon",
    "path",
    "text",
    "image",
}


def _assert_offline_and_escaped(doc: str) -> None:
    assert EVIL not in doc and EVIL2 not in doc  # never raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in doc
    assert not re.search(
        r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/|<link|@import|url\(|<script|<iframe|<object|<embed",
        doc,
        re.I,
    )
    p = _Tags()
    p.feed(doc)
    assert p.tags <= ALLOWED_TAGS, p.tags - ALLOWED_TAGS
    for tag, name, value in p.attrs:
        assert not name.startswith("on"), (tag, name)
        if name in ("href", "src"):
            assert value is not None and value.startswith("data:image/png;base64,"), (
                tag,
                name,
                value[:40] if value else value,
            )


def test_report_is_self_contained_escaped_and_complete(tmp_path) -> None:
    probe = _evil_probe(tmp_path)
    path = report.write_report(probe, tmp_path / "out" / "report.html", title=f"My {EVIL} run")
    doc = open(path, encoding="utf-8").read()
    _assert_offline_and_escaped(doc)
    for section in (
        "Curves",
        "Layers",
        "Heatmaps",
        "Findings",
        "Checklist",
        "Interventions timeline",
    ):
        assert f"<h2>{section}</h2>" in doc
    # curves: one chart per scalar group, including the user's metrics (escaped titles)
    assert doc.count("<svg") >= 5
    assert report.esc(EVIL2) in doc
    # the layer table lists every tracked layer, in forward order
    table = doc[doc.index("<h2>Layers</h2>") : doc.index("<h2>Heatmaps</h2>")]
    names = list(re.findall(r"<td class=\"l\"><code>(.*?)</code>", table))
    assert names == [report.esc(probe.layers[i].name) for i in probe.history.forward_order]
    # heatmaps are embedded PNGs
    heat = doc[doc.index("<h2>Heatmaps</h2>") : doc.index("<h2>Findings</h2>")]
    assert heat.count("data:image/png;base64,") >= 3
    # the intervention is on the timeline and marked on the curves
    timeline = doc[doc.index("<h2>Interventions timeline</h2>") :]
    assert report.esc(EVIL2) in timeline and "set_lr" in timeline
    assert doc.count(f">{report.esc(EVIL2[:24])}<") >= 2
    # findings and checklist come from the diagnosis and checklist engines when installed
    try:
        findings = probe.findings()
    except ImportError:
        findings = None
    if findings is not None:
        for f in findings:
            assert report.esc(f.title) in doc
    try:
        from trainscope.checklists import checklist_state
    except ImportError:
        pass
    else:
        check = doc[doc.index("<h2>Checklist</h2>") : doc.index("<h2>Interventions timeline</h2>")]
        for item in checklist_state(probe):
            assert report.esc(item["title"]) in check


def test_report_of_saved_runs_overlays_them(tmp_path) -> None:
    probe = _evil_probe(tmp_path, logdir=True)
    probe.detach()
    probe.run_writer.close()
    h2 = History(probe.history.layers)
    for s in range(40):
        h2.add_scalars(s, {"loss": 2.0 / (s + 1), "lr": 0.01})
    doc = report.report_html({EVIL: trainscope.open(tmp_path / "run"), "baseline": h2})
    _assert_offline_and_escaped(doc)
    loss_chart = doc[doc.index(">Loss<") - 400 : doc.index("</svg>", doc.index(">Loss<"))]
    assert f"{report.esc(EVIL)}: loss" in loss_chart and "baseline: loss" in loss_chart
    assert loss_chart.count("<polyline") >= 3  # two runs' losses and one val_loss
    assert "<h2>Runs</h2>" in doc and doc.count("<details>") == 2
    # a Run renders itself in a notebook with the same overview
    run = trainscope.open(tmp_path / "run")
    assert "<svg" in run._repr_html_() and "Loss" in run._repr_html_()


def test_non_finite_values_are_shown_not_dropped(tmp_path) -> None:
    h = History()
    for s in range(50):
        h.add_scalars(s, {"loss": float("nan") if s >= 40 else 1.0 / (s + 1)})
    doc = report.report_html(h)
    assert "non-finite" in doc and "from step 40" in doc
    png = _decode_png(report.figure_png(h, "loss", width=300, height=200, scale=1))
    red = np.all(png == np.array([192, 0, 0]), axis=-1)
    assert red.sum() > 5  # the markers for the non-finite points


def _decode_png(data: bytes) -> np.ndarray:
    """A strict minimal PNG reader (8-bit RGB, filter 0): checks signature and every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, kind
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    assert ihdr is not None and kind == b"IEND"
    w, h, depth, ctype, _, _, interlace = ihdr
    assert (depth, ctype, interlace) == (8, 2, 0)
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, 1 + 3 * w)
    assert np.all(raw[:, 0] == 0)
    return raw[:, 1:].reshape(h, w, 3)


def test_png_figures_are_valid_and_show_the_data(tmp_path) -> None:
    probe = _evil_probe(tmp_path)
    paths = report.save_figures(probe, tmp_path / "figs", width=400, height=250, scale=2)
    names = sorted(p.split("/")[-1] for p in paths)
    assert {
        "loss.png",
        "lr.png",
        "grad_norm_total.png",
        "heatmap_act_std.png",
        "hist_act.png",
        "hist_ograd.png",
    } <= set(names)
    loss = _decode_png(open(tmp_path / "figs" / "loss.png", "rb").read())
    assert loss.shape == (500, 800, 3)
    blue = np.abs(loss.astype(int) - [31, 119, 180]).sum(-1) < 30  # the loss curve's colour
    red = np.abs(loss.astype(int) - [214, 39, 40]).sum(-1) < 30  # val_loss
    assert blue.sum() > 300 and red.sum() > 100
    # the curve goes down: its pixels on the left are higher (smaller row) than on the right
    rows, cols = np.nonzero(blue)
    left, right = rows[cols < cols.min() + 60].mean(), rows[cols > cols.max() - 60].mean()
    assert left < right
    assert (loss[:20, :200].sum(-1) < 300).sum() > 20  # the title text is drawn
    heat = _decode_png(open(tmp_path / "figs" / "heatmap_act_std.png", "rb").read())
    viridis_like = (heat[..., 2].astype(int) > heat[..., 0].astype(int) + 30) | (
        heat[..., 1].astype(int) > 150
    ) & (heat[..., 2] < 100)
    assert viridis_like.sum() > 10_000


def test_figure_errors_are_clear(tmp_path) -> None:
    h = History()
    h.add_scalars(0, {"loss": 1.0})
    with pytest.raises(ValueError, match="no scalar 'acc' recorded; scalars are: loss"):
        report.figure_png(h, "acc")
    with pytest.raises(ValueError, match="unknown per-layer metric"):
        report.figure_png(h, "heatmap:nope")
    with pytest.raises(ValueError, match="no hist:act histogram"):
        report.figure_png(h, "hist:act")
    with pytest.raises(ValueError, match="scale"):
        report.figure_png(h, "loss", scale=9)
    with pytest.raises(TypeError, match="cannot report on a int"):
        report.write_report(3, tmp_path / "x.html")
    with pytest.raises(ValueError, match="empty"):
        report.report_html([])


def test_font_and_png_encoder() -> None:
    printable = [chr(c) for c in range(32, 127)]
    assert set(printable) <= set(R.GLYPHS)
    alnum = [c for c in printable if c.isalnum()]
    bitmaps = {R.GLYPHS[c].tobytes() for c in alnum}
    assert len(bitmaps) == len(alnum)  # every letter and digit is distinguishable
    cv = R.Raster(60, 20)
    cv.text(1, 1, "Ab9", "#000000", 1)
    img = _decode_png(cv.to_png())
    ink = img.sum(-1) < 100
    expected = np.zeros((20, 60), bool)
    for i, ch in enumerate("Ab9"):
        expected[1:8, 1 + 6 * i : 6 + 6 * i] = R.GLYPHS[ch]
    np.testing.assert_array_equal(ink, expected)
    with pytest.raises(ValueError, match="H, W, 3"):
        R.encode_png(np.zeros((4, 4)))


def test_every_field_is_escaped_even_when_it_holds_a_string(tmp_path) -> None:
    """A History filled by other code (or an old reader) may hold strings where numbers belong:
    the report escapes every field it writes, numbers included, and skips bad layer indices."""
    import dataclasses

    from trainscope.history import Event

    probe = _evil_probe(tmp_path)
    h = probe.history
    h.layers = [dataclasses.replace(x, n_params=EVIL2) for x in h.layers]  # type: ignore[arg-type]
    rec = h.latest
    assert rec is not None
    rec.step = EVIL  # type: ignore[assignment]
    rec.first_nonfinite_forward = 10_000  # out of range: not an IndexError
    rec.first_nonfinite_backward = EVIL2  # type: ignore[assignment]
    h.events.append(Event(id=10**6, step=EVIL, kind="note", label="x"))  # type: ignore[arg-type]
    h.step = EVIL2  # type: ignore[assignment]
    doc = report.report_html(h)
    _assert_offline_and_escaped(doc)
    _assert_offline_and_escaped(report.report_html([h, h]))


def test_a_crafted_run_directory_is_refused_field_by_field_and_reported_safely(tmp_path) -> None:
    from trainscope.runlog import Run
    from trainscope.runlog import _format as F

    probe = _evil_probe(tmp_path, logdir=True)
    probe.detach()
    probe.run_writer.close()
    d = tmp_path / "run"
    seg = d / sorted(n for n in os.listdir(d) if n.startswith("seg-"))[-1]
    layers = F.layers_to_json(probe.history.layers)
    bad_layers = [dict(x) for x in layers]
    bad_layers[0]["n_params"] = EVIL2
    header, arrays = F.record_to_parts(probe.history.latest)
    header["ffwd"] = len(layers) + 5
    header["step"] = 10_000
    with open(seg, "ab") as f:
        f.write(F.encode({"t": "layers", "layers": bad_layers}))
        f.write(F.encode(header, arrays))
        f.write(
            F.encode({"t": "event", "id": "7", "step": 3, "kind": "note", "label": EVIL, "time": 0})
        )
    run = Run(d)
    errs = "\n".join(run.errors)
    assert "'n_params' must be a non-negative integer" in errs, errs
    assert "'ffwd' must be a layer index" in errs
    assert "event field 'id' must be an integer" in errs
    assert [x.n_params for x in run.history.layers] == [x.n_params for x in probe.history.layers]
    assert run.history.latest is not None and run.history.latest.step != 10_000
    doc = report.report_html(run)
    assert EVIL2 not in doc and "<script>alert" not in doc


def test_malformed_run_files_give_a_message_naming_the_file(tmp_path) -> None:
    import json

    from trainscope.runlog import Run

    probe = _evil_probe(tmp_path, logdir=True)
    probe.detach()
    probe.run_writer.close()
    meta = tmp_path / "run" / "meta.json"
    good = meta.read_bytes()
    meta.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"meta\.json is damaged: it is not valid JSON"):
        Run(tmp_path / "run")
    info = json.loads(good)
    info["history_config"]["scalar_recent"] = 10**12
    meta.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"meta\.json.*'scalar_recent'.*1 to"):
        Run(tmp_path / "run")
    info["history_config"]["scalar_recent"] = "64"
    meta.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"meta\.json.*'scalar_recent'"):
        Run(tmp_path / "run")
    meta.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"meta\.json is not a trainscope run description"):
        Run(tmp_path / "run")

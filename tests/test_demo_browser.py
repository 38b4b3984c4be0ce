"""The README's demo in JupyterLab (headless Chromium): the broken training, the finding that
names why, one click on its button while the cell runs, and the curves recovering.

Screenshots go to ``.artifacts/e2e/demo_*.png`` (the README's demo image is taken from there).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ._browser import NotebookPage, Server, browser, require_browser
from ._jupyter import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# cells of examples/demo.ipynb (markdown cells sit between the code cells)
SETUP, WATCH, TRAIN, DIAGNOSIS = 1, 2, 4, 6
DASH = ".trainscope-dashboard"
FIX = "Re-initialize with LSUV"


def _copy_demo(root: Path, seconds: int) -> str:
    nb = json.loads((ROOT / "examples" / "demo.ipynb").read_text())
    src = "".join(nb["cells"][SETUP]["source"])
    assert "SECONDS = 90" in src, "the demo's set-up cell changed; update this test"
    nb["cells"][SETUP]["source"] = src.replace("SECONDS = 90", f"SECONDS = {seconds}")
    assert "train(SECONDS)" in "".join(nb["cells"][TRAIN]["source"])
    root.mkdir(parents=True, exist_ok=True)
    (root / "demo.ipynb").write_text(json.dumps(nb))
    return "demo.ipynb"


def test_demo_one_click_fixes_the_broken_training(tmp_path: Path) -> None:
    require_browser()
    name = _copy_demo(tmp_path / "nb", seconds=75)  # margin for a slow machine: the click lands mid-cell
    server = Server("lab", tmp_path, tmp_path / "nb")
    try:
        with browser(tmp_path / "profile") as ctx, server.explain_failure("demo"):
            nb = NotebookPage(ctx.new_page(), server, name)
            page = nb.page
            nb.run_cell(SETUP, timeout=240)
            nb.run_cell(WATCH, timeout=240)
            page.wait_for_selector(DASH, timeout=60_000)
            nb.run_cell(TRAIN, wait=False)
            nb.wait_cell_started(TRAIN)
            # the finding that names why, with its one-click fix
            page.locator(f"{DASH} .trainscope-tab-findings").first.click()
            button = page.locator(f"{DASH} button:has-text('{FIX}')").first
            button.wait_for(state="visible", timeout=45_000)
            finding = nb.text(f"{DASH} .trainscope-finding:has(button:has-text('{FIX}'))")
            assert "Gradients vanish toward the input" in finding, finding
            nb.screenshot(DASH, "demo_1_broken.png")
            button.click()
            ticket = f"{DASH} .trainscope-ticket:has-text('Re-initialize')"
            page.wait_for_selector(
                f"{ticket}.status-applied, {ticket}.status-failed, {ticket}.status-refused",
                timeout=30_000,
            )
            assert page.locator(f"{ticket}.status-applied").count() > 0, nb.text(ticket)
            assert nb.cell_running(TRAIN), "the click was applied while the training cell ran"
            page.wait_for_timeout(8_000)  # the curves recover
            nb.screenshot(DASH, "demo_2_fixed.png")
            nb.wait_cell_done(TRAIN, timeout=180)
            out = nb.output_text(TRAIN)
            acc = re.findall(r"val_acc ([\d.]+)", out)
            assert acc and float(acc[-1]) > 0.9, out  # it learned after the click
            nb.run_cell(DIAGNOSIS, timeout=120)
            assert "you clicked" in nb.output_text(DIAGNOSIS)  # no fallback needed
    finally:
        server.stop()

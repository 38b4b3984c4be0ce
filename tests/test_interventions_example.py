"""The debugging example: its headless twin tells the whole story; the notebook is clean and runs."""

from __future__ import annotations

import ast
import json
import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_headless_debugging_session_tells_the_story() -> None:
    main = runpy.run_path(str(EXAMPLES / "debugging.py"))["main"]
    out = main(verbose=False)
    assert out["acc_before"] < 0.2 and out["loss_before"] > 2.25  # stuck at chance, loss ~ ln 10
    assert out["fix"] == "applied"
    assert out["acc_after_fix"] > 0.6  # the curves recover after LSUV
    assert all(0.5 < s < 2.5 for s in out["act_std_after"])
    assert out["restored"] and 1e-4 < out["suggestion"] < 1.0
    assert out["acc_final"] > 0.9  # one-cycle finishes the run
    kinds = [k for k, _ in out["events"]]
    assert ("intervention", "reinit") in out["events"] and "lr_find" in kinds
    assert ("intervention", "one_cycle") in out["events"]
    # every fix the diagnosis offered is a valid request for its action (names and parameters agree)
    from trainscope.actions import REGISTRY

    assert out["suggested"]
    for action, params in out["suggested"]:
        REGISTRY[action].validate(out["probe"], dict(params))


def test_notebook_is_clean_and_parses() -> None:
    nb = json.loads((EXAMPLES / "debugging.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)
    for c in code:
        src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        ast.parse("\n".join(line for line in src.splitlines() if not line.startswith("%")))
    text = "".join("".join(c["source"]) for c in code)
    assert "trainscope.watch(" in text and "trainscope.lr_find(" in text and '"reinit"' in text


@pytest.mark.kernel
@pytest.mark.slow
def test_notebook_executes_top_to_bottom() -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(str(EXAMPLES / "debugging.ipynb"), 4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}})
    client.execute()
    streams = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "model restored bit-identically: True" in streams
    assert "final validation accuracy:" in streams and "Re-initialize" in streams

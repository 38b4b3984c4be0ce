"""The quickstart notebook runs top to bottom in a real kernel (nbclient) and saves its widgets."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from ._jupyter import ROOT, jupyter_env

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def test_quickstart_runs_and_stores_the_dashboard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbclient import NotebookClient

    for k, v in jupyter_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit the notebook with outputs cleared"
    )
    setup = nb.cells[1]
    assert "EPOCHS, BATCH = 600, 32" in setup.source
    setup.source = setup.source.replace("EPOCHS, BATCH = 600, 32", "EPOCHS, BATCH = 3, 32")
    NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        store_widget_state=True,
        resources={"metadata": {"path": str(ROOT)}},
    ).execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors, errors
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "done: val_loss=" in text and "trainscope: step" in text
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    header = [
        m["state"] for m in state.values() if m["state"].get("_anywidget_id", "").endswith("Header")
    ]
    assert len(header) == 1
    st = header[0]["state"]
    assert st["step"] == 3 * 47 and st["run_state"] == "finished" and st["delivery"]["live"], (
        json.dumps(st)
    )

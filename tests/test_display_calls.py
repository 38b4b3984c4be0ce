"""The documented calls show what the README says, once: ``watch()`` and ``open()`` display the
dashboard themselves in a notebook (assigned or not), and the value they return is not shown a
second time by the cell's automatic display; ``display=False`` opts out."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import trainscope
from trainscope.widgets import _live

from .conftest import make_mlp

VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture
def ip() -> Iterator[Any]:
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.user_ns["trainscope"] = trainscope
    yield shell
    for d in _live.dashboards():
        d.close()
        if d.probe is not None:
            d.probe.detach()
    _live.uninstall(shell)  # a dashboard installs the end-of-cell hook; the shell is shared
    shell.user_ns.pop("trainscope", None)


def _cell(ip: Any, source: str) -> tuple[list[dict[str, Any]], str]:
    """Run ``source`` as a notebook cell; return the rich outputs it displayed and the text of
    its automatic display of the last expression (the ``Out[n]`` value), if any."""
    from IPython.utils.capture import capture_output

    with capture_output() as c:
        result = ip.run_cell(source, store_history=True)  # as a notebook runs it
    assert result.success, result.error_in_exec or result.error_before_exec
    views = [o.data for o in c.outputs if VIEW in o.data]
    out = re.sub(r"Out\[\d+\]:\s*", "", c.stdout).strip()  # the prompt alone shows nothing
    return views, out


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    probe = trainscope.Probe(model, opt, loss_fn=loss_fn, every=2, logdir=tmp_path / "exp1")
    x, y = torch.randn(16, 20), torch.randint(0, 5, (16,))
    for _ in range(6):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    probe.detach()
    return tmp_path / "exp1"


def test_watch_assigned_or_bare_shows_one_dashboard(ip: Any) -> None:
    ip.user_ns["model"] = make_mlp()
    views, out = _cell(ip, "scope = trainscope.watch(model)")
    assert len(views) == 1 and not out
    # bare: shown once by watch(), not again by the cell's automatic display
    views, out = _cell(ip, "trainscope.watch(model)")
    assert len(views) == 1 and not out, out
    views, out = _cell(ip, "scope = trainscope.watch(model)\nscope")
    assert len(views) == 1 and not out, out
    # a later cell that ends with it displays it again, as any widget
    views, out = _cell(ip, "scope")
    assert len(views) == 1 and not out
    # and an explicit show in the same cell always displays
    views, _ = _cell(ip, "s2 = trainscope.watch(model)\ntrainscope.show(s2)")
    assert len(views) == 2
    views, out = _cell(ip, "trainscope.watch(model, display=False)")
    assert not views and "Dashboard" in out  # opted out: only the cell's own display


def test_open_assigned_shows_the_dashboard(ip: Any, run_dir: Path) -> None:
    ip.user_ns["path"] = str(run_dir)
    views, out = _cell(ip, "run = trainscope.open(path)")
    assert len(views) == 1 and not out  # the README's form: it shows the dashboard
    assert isinstance(ip.user_ns["run"], trainscope.runlog.Run)
    dash = _live.latest()
    assert dash is not None and dash.history is ip.user_ns["run"].history
    views, out = _cell(ip, "trainscope.open(path)")  # bare: once, not twice
    assert len(views) == 1 and not out, out
    views, out = _cell(ip, "run = trainscope.open(path, display=False)")
    assert not views and not out
    views, out = _cell(ip, "run.show()")  # the explicit way, always one dashboard
    assert len(views) == 1
    views, out = _cell(ip, "trainscope.open([path, path])")  # a RunSet: overlaid, once
    assert len(views) == 1 and not out, out


def test_open_in_a_plain_script_displays_nothing(run_dir: Path) -> None:
    code = (
        "import sys, trainscope\n"
        "run = trainscope.open(sys.argv[1])\n"
        "assert 'trainscope.widgets' not in sys.modules, 'a script must not build widgets'\n"
        "print(run.history.step)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "5"  # the last step recorded (steps count from 0)


@pytest.mark.kernel
@pytest.mark.slow
def test_in_a_real_kernel_each_call_shows_one_dashboard(
    tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ipykernel's own displayhook (execute_result) and display (display_data), through nbclient."""
    import nbformat
    from nbclient import NotebookClient

    from ._jupyter import ROOT, jupyter_env

    for k, v in jupyter_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    cells = [
        "import torch, trainscope\nfrom torch import nn\nmodel = nn.Sequential(nn.Linear(4, 2))",
        "scope = trainscope.watch(model)",
        "trainscope.watch(model)",
        "scope",
        f"run = trainscope.open({str(run_dir)!r})",
        f"trainscope.open({str(run_dir)!r})",
        f"run = trainscope.open({str(run_dir)!r}, display=False)",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    views = [
        sum(1 for o in c.outputs if VIEW in o.get("data", {})) for c in nb.cells
    ]
    errors = [o for c in nb.cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert views == [0, 1, 1, 1, 1, 1, 0], views

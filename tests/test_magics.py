"""``%load_ext trainscope``, ``%trainscope`` and ``%unload_ext trainscope`` in an IPython shell."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from trainscope.widgets import Dashboard, _live

from .conftest import make_mlp


@pytest.fixture
def ip() -> Iterator[Any]:
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    yield shell
    shell.run_line_magic("unload_ext", "trainscope")
    for d in _live.dashboards():
        d.close()
        if d.probe is not None:
            d.probe.detach()


def test_load_and_unload_register_and_remove_everything(ip: Any) -> None:
    before = list(ip.events.callbacks["post_run_cell"])
    ip.run_line_magic("load_ext", "trainscope")
    assert "trainscope" in ip.magics_manager.magics["line"]
    assert _live.installed(ip)
    ip.run_line_magic("load_ext", "trainscope")  # loading twice is harmless
    assert ip.events.callbacks["post_run_cell"].count(_live._post_run_cell) == 1
    ip.run_line_magic("unload_ext", "trainscope")
    assert "trainscope" not in ip.magics_manager.magics["line"]
    assert not _live.installed(ip)
    assert ip.events.callbacks["post_run_cell"] == before
    ip.run_line_magic("load_ext", "trainscope")  # and again after unloading
    assert "trainscope" in ip.magics_manager.magics["line"]


def test_magic_attaches_shows_detaches_and_shows_again(ip: Any, blobs: Any) -> None:
    ip.run_line_magic("load_ext", "trainscope")
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    ip.user_ns.update(model=model, opt=opt, loss_fn=loss_fn)
    ip.run_line_magic("trainscope", "model opt --loss loss_fn --every 2 --total 100 --name scope")
    dash = ip.user_ns["scope"]
    assert isinstance(dash, Dashboard) and dash.probe.is_attached
    assert dash.probe.loss_fn is loss_fn and dash.probe.every == 2 and dash.total_steps == 100
    x, y = blobs
    ip.user_ns.update(x=x[:32], y=y[:32])
    # a cell, run the way a notebook runs it: post_run_cell flushes the final state
    ip.run_cell(
        "for _ in range(12):\n    l = loss_fn(model(x), y); opt.zero_grad(); l.backward(); opt.step()"
    )
    assert dash.header.state["step"] == 12 and dash.header.state["run_state"] == "idle"
    # a cell that raises after training: the final state is flushed all the same
    ip.run_cell(
        "for _ in range(3):\n    l = loss_fn(model(x), y); opt.zero_grad(); l.backward(); opt.step()\n1/0"
    )
    assert (
        dash.header.state["step"] == 15
        and dash.header.state["run_state"] == "error: ZeroDivisionError"
    )
    ip.run_line_magic("trainscope", "show")  # displays the same dashboard again
    ip.run_line_magic("trainscope", "detach scope")
    assert not dash.probe.is_attached and dash.header.state["run_state"] == "detached"
    assert "detached" in dash.controls.read_only


def test_magic_errors_say_what_to_do(ip: Any) -> None:
    ip.run_line_magic("load_ext", "trainscope")
    with pytest.raises(NameError, match="no model named 'nothing'"):
        ip.run_line_magic("trainscope", "nothing")
    with pytest.raises(ValueError, match="usage: %trainscope"):
        ip.run_line_magic("trainscope", "")
    with pytest.raises(ValueError, match="unrecognized arguments"):
        ip.run_line_magic("trainscope", "model --bogus 1")
    ip.user_ns["not_a_model"] = 3
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        ip.run_line_magic("trainscope", "not_a_model")
    with pytest.raises(NameError, match="not a trainscope dashboard"):
        ip.run_line_magic("trainscope", "show not_a_model")


def test_info_reports_no_kernel(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("load_ext", "trainscope")
    ip.run_line_magic("trainscope", "info")
    assert "not running in a Jupyter kernel" in capsys.readouterr().out

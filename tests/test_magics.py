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


def _cell(ip: Any, source: str, capfd: pytest.CaptureFixture[str]) -> tuple[Any, str]:
    """Run ``source`` the way a notebook runs a cell; return the result and what it printed."""
    capfd.readouterr()
    result = ip.run_cell(source)
    out = capfd.readouterr()
    return result, out.out + out.err


def test_magic_errors_say_what_to_do_in_one_line(
    ip: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    from IPython.core.error import UsageError

    ip.run_line_magic("load_ext", "trainscope")
    ip.user_ns["not_a_model"] = 3
    ip.user_ns["model"] = make_mlp()
    cases = {
        "%trainscope nothing": "no model named 'nothing'",
        "%trainscope model --bogus 1": "unrecognized arguments: --bogus 1",
        "%trainscope not_a_model": "torch.nn.Module",
        "%trainscope show not_a_model": "not a trainscope dashboard",
        "%trainscope model --every 0": "every must be a positive int",
        "%trainscope 'unclosed": "No closing quotation",
    }
    for line, message in cases.items():
        result, printed = _cell(ip, line, capfd)
        assert isinstance(result.error_in_exec, UsageError), (line, result.error_in_exec)
        assert message in printed, (line, printed)
        assert "Traceback" not in printed and "----" not in printed, (line, printed)
    assert not _live.dashboards()  # nothing was left attached by a refused call


def test_bare_magic_prints_its_usage_and_is_not_an_error(
    ip: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    ip.run_line_magic("load_ext", "trainscope")
    result, printed = _cell(ip, "%trainscope", capfd)
    assert result.success, result.error_in_exec
    assert "usage: %trainscope MODEL [OPTIMIZER]" in printed and "--loss" in printed
    assert "Traceback" not in printed and len(printed.splitlines()) <= 6


def test_magic_without_a_loss_says_so_and_how_to_fix_it(
    ip: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    ip.run_line_magic("load_ext", "trainscope")
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for k in [k for k, v in ip.user_ns.items() if isinstance(v, nn.modules.loss._Loss)]:
        del ip.user_ns[k]  # the shell is shared between tests
    ip.user_ns.update(model=model, opt=opt, criterion=nn.CrossEntropyLoss())
    result, printed = _cell(ip, "%trainscope model opt", capfd)
    assert result.success, result.error_in_exec
    lines = [ln for ln in printed.splitlines() if "loss" in ln]
    assert len(lines) == 1, printed  # one line
    # names the loss module the notebook holds, and both ways to capture a loss
    assert "no training loss is captured" in lines[0] and "--loss criterion" in lines[0]
    assert "scope.log(loss=loss)" in lines[0]
    _live.latest().detach()
    ip.user_ns["loss_fn"] = nn.MSELoss()  # two candidates: both are named
    _, printed = _cell(ip, "%trainscope model opt --name s2", capfd)
    assert "--loss LOSS_FN (one of: criterion, loss_fn)" in printed and "s2.log(loss=" in printed
    _live.latest().detach()
    # with --loss: no warning
    result, printed = _cell(ip, "%trainscope model opt --loss criterion --name scope", capfd)
    assert result.success and "no training loss" not in printed, printed
    assert ip.user_ns["scope"].probe.loss_fn is ip.user_ns["criterion"]


def test_magic_without_a_loss_module_in_the_namespace_names_the_placeholder(
    ip: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    ip.run_line_magic("load_ext", "trainscope")
    for k in [k for k, v in ip.user_ns.items() if isinstance(v, nn.modules.loss._Loss)]:
        del ip.user_ns[k]
    ip.user_ns.update(model=make_mlp())
    _, printed = _cell(ip, "%trainscope model", capfd)
    assert "no training loss is captured" in printed and "--loss LOSS_FN" in printed


def test_detach_confirms_what_it_did(ip: Any, capfd: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("load_ext", "trainscope")
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ip.user_ns.update(model=model, opt=opt, loss_fn=nn.CrossEntropyLoss())
    _cell(ip, "%trainscope model opt --loss loss_fn --name scope", capfd)
    result, printed = _cell(ip, "%trainscope detach", capfd)
    assert result.success
    assert "detached" in printed and "step 0" in printed and "%trainscope show" in printed
    assert not ip.user_ns["scope"].probe.is_attached
    _, printed = _cell(ip, "%trainscope detach scope", capfd)
    assert "already detached" in printed
    result, printed = _cell(ip, "%trainscope show scope", capfd)
    assert result.success and "Traceback" not in printed


def test_info_reports_no_kernel(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("load_ext", "trainscope")
    ip.run_line_magic("trainscope", "info")
    assert "not running in a Jupyter kernel" in capsys.readouterr().out

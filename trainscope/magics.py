"""IPython extension: ``%load_ext trainscope`` and the ``%trainscope`` line magic.

::

    %load_ext trainscope
    %trainscope model optimizer [--loss loss_fn] [--every 10] [--total 5000] [--steps-per-epoch 47] [--name scope]
    %trainscope show [name]        # display the dashboard again
    %trainscope detach [name]      # detach the probe (hooks removed), keep the final state
    %trainscope info               # how clicks reach Python in this kernel
    %trainscope                    # prints the usage
    %unload_ext trainscope         # removes the magic and the end-of-cell hook

A mistake (a name that is not in the notebook, a bad option) is reported in one line, without a
traceback (IPython's ``UsageError``), and leaves nothing attached.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from torch import nn

__all__ = ["TrainscopeMagics", "load_ipython_extension", "unload_ipython_extension"]

USAGE = (
    "usage: %trainscope MODEL [OPTIMIZER] [--loss LOSS_FN] [--every N] [--total N] "
    "[--steps-per-epoch N] [--delivery auto|subshell|pump|ui_poll|none] [--name VAR]\n"
    "       %trainscope show [VAR] | detach [VAR] | info"
)
HELP = (
    USAGE
    + "\n  attaches a probe to MODEL (every OPTIMIZER.step() is a step) and shows the live dashboard;"
    "\n  --loss names the loss module your loop calls (else no training loss is captured)."
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would call sys.exit
        raise UsageError(f"%trainscope: {message}\n{USAGE}")


def _parser() -> _Parser:
    p = _Parser(prog="%trainscope", add_help=False)
    p.add_argument("model")
    p.add_argument("optimizer", nargs="?")
    p.add_argument("--loss", dest="loss_fn")
    p.add_argument("--every", type=int)
    p.add_argument("--total", type=int, dest="total_steps")
    p.add_argument("--steps-per-epoch", type=int, dest="steps_per_epoch")
    p.add_argument("--delivery", default="auto")
    p.add_argument("--name")
    return p


@magics_class
class TrainscopeMagics(Magics):
    """The ``%trainscope`` line magic."""

    @line_magic
    def trainscope(self, line: str) -> None:
        """Attach to a model and show the dashboard; ``show`` / ``detach`` / ``info``."""
        from .widgets import _live, api

        try:
            words = shlex.split(line)
        except ValueError as e:
            raise UsageError(f"%trainscope: {e}\n{USAGE}") from None
        if not words:
            print(HELP)
            return
        cmd = words[0]
        if cmd in ("show", "detach"):
            dash = self._dashboard(words[1] if len(words) > 1 else None, _live)
            if cmd == "show":
                api.show(dash)
            else:
                self._detach(dash)
            return
        if cmd == "info":
            self._info()
            return
        args = _parser().parse_args(words)
        if args.name is not None and not args.name.isidentifier():
            raise UsageError(f"%trainscope: --name must be a Python identifier, got {args.name!r}")
        ns = self.shell.user_ns if self.shell is not None else {}
        model = self._lookup(ns, args.model, "model")
        optimizer = self._lookup(ns, args.optimizer, "optimizer") if args.optimizer else None
        kw: dict[str, Any] = {"delivery": args.delivery}
        if args.loss_fn:
            kw["loss_fn"] = self._lookup(ns, args.loss_fn, "loss function")
        if args.every is not None:
            kw["every"] = args.every
        for key in ("total_steps", "steps_per_epoch"):
            if getattr(args, key) is not None:
                kw[key] = getattr(args, key)
        try:
            dash = api.watch(model, optimizer, **kw)
        except (TypeError, ValueError) as e:  # refused input: the message says what to do
            raise UsageError(f"%trainscope: {e}") from None
        if args.name:
            ns[args.name] = dash
        if not args.loss_fn:
            print(_no_loss_hint(ns, args.name))

    @staticmethod
    def _detach(dash: Any) -> None:
        probe = dash.probe
        if probe is None or not probe.is_attached:
            print("trainscope: already detached; nothing is recorded any more.")
            return
        dash.detach()
        print(
            f"trainscope: detached at step {probe.step_count:,}: hooks removed, the model is as it was; "
            "the dashboard keeps the final state (%trainscope show displays it again)."
        )

    @staticmethod
    def _lookup(ns: dict[str, Any], expr: str, what: str) -> Any:
        if expr in ns:
            return ns[expr]
        head, _, rest = expr.partition(".")
        if head in ns and rest:
            obj = ns[head]
            for part in rest.split("."):
                if not hasattr(obj, part):
                    break
                obj = getattr(obj, part)
            else:
                return obj
        raise UsageError(f"%trainscope: no {what} named {expr!r} in the notebook's namespace")

    def _dashboard(self, name: str | None, live: Any) -> Any:
        from .widgets import Dashboard

        if name is not None:
            obj = (self.shell.user_ns if self.shell is not None else {}).get(name)
            if not isinstance(obj, Dashboard):
                raise UsageError(
                    f"%trainscope: {name!r} is not a trainscope dashboard (see --name VAR)"
                )
            return obj
        dash = live.latest()
        if dash is None:
            raise UsageError(
                "%trainscope: no dashboard yet; start one with %trainscope MODEL OPTIMIZER --loss LOSS_FN"
            )
        return dash

    @staticmethod
    def _info() -> None:
        from .widgets import _delivery

        k = _delivery.current_kernel()
        if k is None:
            print(
                "trainscope: not running in a Jupyter kernel; clicks cannot reach a running cell."
            )
            return
        from importlib.metadata import version

        names = _delivery.available(k)
        print(
            f"trainscope: ipykernel {version('ipykernel')}; click delivery available: {', '.join(names) or 'none'}"
        )
        print("  in use:", ", ".join(d.name for d in _delivery.active()) or "none yet")


def _no_loss_hint(ns: dict[str, Any], name: str | None) -> str:
    """One line: no training loss reaches the probe, and the two ways to fix it (naming the loss
    module the notebook holds, when there is exactly one)."""
    losses = [
        k
        for k, v in ns.items()
        if not k.startswith("_") and isinstance(v, nn.modules.loss._Loss)
    ]
    if len(losses) == 1:
        loss_arg = losses[0]
    elif losses:
        loss_arg = "LOSS_FN (one of: " + ", ".join(sorted(losses)[:3]) + ")"
    else:
        loss_arg = "LOSS_FN (your loss module)"
    log = f"call {name}.log(loss=loss)" if name else "add --name scope and call scope.log(loss=loss)"
    return (
        "trainscope: no training loss is captured (the loss plot stays empty): "
        f"add --loss {loss_arg}, or {log} each step."
    )


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%trainscope`` and the end-of-cell flush hook."""
    from .widgets import _live

    ipython.register_magics(TrainscopeMagics)
    _live.install(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove ``%trainscope`` and the hook (open dashboards stay on screen)."""
    from .widgets import _live

    _live.uninstall(ipython)
    mm = ipython.magics_manager
    mm.magics["line"].pop("trainscope", None)
    mm.registry.pop("TrainscopeMagics", None)

"""trainscope: make neural-network training visible and fixable from inside a Jupyter notebook.

The core (this package's top level) needs only torch and numpy.  The Jupyter layer
(:mod:`trainscope.widgets`, the ``%trainscope`` magics) is imported lazily.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .history import LAYER_METRICS, History, StepRecord
from .layers import LayerInfo
from .probe import Probe, ProbeError

__all__ = [
    "LAYER_METRICS",
    "History",
    "LayerInfo",
    "Probe",
    "ProbeError",
    "StepRecord",
    "__version__",
    "load_ipython_extension",
    "unload_ipython_extension",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext trainscope``: register the magics and the end-of-cell flush."""
    from .magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext trainscope``: remove everything ``%load_ext`` added."""
    from .magics import unload_ipython_extension as _unload

    _unload(ipython)

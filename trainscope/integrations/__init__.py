"""Integrations with training frameworks (each an optional dependency, imported on demand).

* :mod:`trainscope.integrations.lightning` -- ``TrainscopeCallback`` for PyTorch Lightning.
"""

from __future__ import annotations

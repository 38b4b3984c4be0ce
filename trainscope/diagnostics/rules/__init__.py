"""One small pure rule per label, grouped by what they read (importing this registers them)."""

from __future__ import annotations

from . import activations, curves, dynamics, generalization, gradients, headloss, params, setup

__all__ = ["activations", "curves", "dynamics", "generalization", "gradients", "headloss", "params", "setup"]

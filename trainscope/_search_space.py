"""The search space of :func:`trainscope.search`: the distributions and their checks.

``loguniform`` / ``uniform`` / ``choice`` / ``randint`` build a :class:`Dist`; a space is a dict
``{name: Dist or constant}`` (:func:`check_space`), sampled per trial by :func:`sample_config`.
Re-exported by :mod:`trainscope.search`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .interventions._base import as_int

__all__ = ["Choice", "Dist", "LogUniform", "RandInt", "Uniform", "check_space", "choice", "loguniform", "randint",
           "sample_config", "uniform"]


# ---------------------------------------------------------------------------- the space
class Dist:
    """A hyper-parameter's distribution (made by :func:`loguniform`, :func:`uniform`, :func:`choice`,
    :func:`randint`)."""

    def sample(self, rng: np.random.Generator) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def position(self, value: Any) -> float:
        """Where ``value`` lies on this axis, in [0, 1] (the parallel-coordinates plot)."""
        raise NotImplementedError  # pragma: no cover - abstract


def _finite(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__} {v!r}")
    x = float(v)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return x


@dataclass(frozen=True)
class LogUniform(Dist):
    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

    def position(self, value: Any) -> float:
        return (math.log(float(value)) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))

    def __repr__(self) -> str:
        return f"loguniform({self.low:g}, {self.high:g})"


@dataclass(frozen=True)
class Uniform(Dist):
    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))

    def position(self, value: Any) -> float:
        return (float(value) - self.low) / (self.high - self.low)

    def __repr__(self) -> str:
        return f"uniform({self.low:g}, {self.high:g})"


@dataclass(frozen=True)
class Choice(Dist):
    options: tuple[Any, ...]

    def sample(self, rng: np.random.Generator) -> Any:
        return self.options[int(rng.integers(len(self.options)))]

    def position(self, value: Any) -> float:
        idx = next((i for i, o in enumerate(self.options) if o == value), 0)
        return idx / (len(self.options) - 1) if len(self.options) > 1 else 0.5

    def __repr__(self) -> str:
        return f"choice({list(self.options)!r})"


@dataclass(frozen=True)
class RandInt(Dist):
    low: int
    high: int

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.low, self.high + 1))

    def position(self, value: Any) -> float:
        return (float(value) - self.low) / (self.high - self.low)

    def __repr__(self) -> str:
        return f"randint({self.low}, {self.high})"


def loguniform(low: float, high: float) -> LogUniform:
    """A float drawn uniformly in log space between ``low`` and ``high`` (both > 0): learning rates,
    weight decay."""
    lo, hi = _finite("loguniform low", low), _finite("loguniform high", high)
    if lo <= 0:
        raise ValueError(f"loguniform needs low > 0 (a log scale has no 0), got low={low!r}; "
                         "use uniform(0, high) for a range that starts at 0")
    if hi <= lo:
        raise ValueError(f"loguniform needs high > low, got low={low!r}, high={high!r}")
    return LogUniform(lo, hi)


def uniform(low: float, high: float) -> Uniform:
    """A float drawn uniformly between ``low`` and ``high``."""
    lo, hi = _finite("uniform low", low), _finite("uniform high", high)
    if hi <= lo:
        raise ValueError(f"uniform needs high > low, got low={low!r}, high={high!r}")
    return Uniform(lo, hi)


def choice(options: Sequence[Any]) -> Choice:
    """One of ``options``, each equally likely."""
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
        raise TypeError(f"choice takes a list of options, got {type(options).__name__} {options!r}")
    if len(options) == 0:
        raise ValueError("choice needs at least one option, got an empty list")
    return Choice(tuple(options))


def randint(low: int, high: int) -> RandInt:
    """An integer between ``low`` and ``high``, both included."""
    lo, hi = as_int("randint low", low), as_int("randint high", high)
    if hi <= lo:
        raise ValueError(f"randint needs high > low (both are included), got low={low!r}, high={high!r}")
    return RandInt(lo, hi)


def check_space(space: Any) -> dict[str, Any]:
    """The space as a dict ``{name: Dist or constant}``, or a clear error."""
    if not isinstance(space, Mapping) or not space:
        raise TypeError("space must be a non-empty dict {name: loguniform(a, b) | uniform(a, b) | choice([...]) | "
                        f"randint(a, b) | a constant}}, got {type(space).__name__ if not isinstance(space, Mapping) else 'an empty dict'}")
    out: dict[str, Any] = {}
    for k, v in space.items():
        if not isinstance(k, str) or not k:
            raise TypeError(f"space keys are hyper-parameter names (non-empty strings), got {k!r}")
        if isinstance(v, (list, tuple, set, range)):
            raise TypeError(f"space[{k!r}] is a {type(v).__name__}: write choice({list(v)!r}) to draw one of them")
        if isinstance(v, (Mapping, np.ndarray)) or (callable(v) and not isinstance(v, Dist)):
            raise TypeError(f"space[{k!r}] must be loguniform(a, b), uniform(a, b), choice([...]), randint(a, b) "
                            f"or a constant, got {type(v).__name__}")
        out[k] = v
    if not any(isinstance(v, Dist) for v in out.values()):
        raise ValueError("space has only constants: nothing to search (use loguniform / uniform / choice / randint)")
    return out


def sample_config(space: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    return {k: v.sample(rng) if isinstance(v, Dist) else v for k, v in space.items()}

"""What a ported program is made of: the :class:`Program` one version of a case builds, the data it
trains on (scikit-learn's bundled datasets and generators, nothing downloaded) and the metrics it
is judged by (higher is better, computed on held-out data in eval mode)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch import Tensor, nn

Metric = Callable[[Tensor, Tensor], float]


@dataclass
class Program:
    """One version (buggy or fixed) of a ported program: what the user's plain loop trains.

    The loop (:func:`tests.realbugs.runner.run_program`) draws shuffled mini-batches of ``batch``
    rows of ``x`` / ``y`` for ``steps`` steps, calls ``loss_fn(model(xb), yb)``, and validates
    with ``loss_fn`` on ``xv`` / ``yv`` every ``val_every`` steps (eval mode, no grad).  ``metric``
    scores the trained model's output on ``xv`` against ``yv`` (higher is better).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    x: Tensor
    y: Tensor
    xv: Tensor
    yv: Tensor
    steps: int
    metric: Metric
    batch: int = 32
    val_every: int = 25


def steps_for(epochs: int, n: int, batch: int) -> int:
    """Optimizer steps of ``epochs`` passes over ``n`` rows in batches of ``batch``."""
    return epochs * math.ceil(n / batch)


def seq(*layers: tuple[str, nn.Module]) -> nn.Sequential:
    """A ``nn.Sequential`` with named layers (the names findings report)."""
    return nn.Sequential(OrderedDict(layers))


def init_normal(model: nn.Module, std: float, bias_std: float | None = None) -> nn.Module:
    """Keras' ``RandomNormal(stddev=std)`` (``init='normal'`` is std 0.05) on every Linear / Conv."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                if bias_std is None:
                    nn.init.zeros_(m.bias)
                else:
                    nn.init.normal_(m.bias, 0.0, bias_std)
    return model


# ------------------------------------------------------------------------------------ data
def _t(a: np.ndarray, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.tensor(np.asarray(a), dtype=dtype)


def split(x: Tensor, y: Tensor, frac: float = 0.75, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A seeded shuffle, then train / held-out."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)
    k = int(len(x) * frac)
    return x[idx[:k]], y[idx[:k]], x[idx[k:]], y[idx[k:]]


def standardize(x: Tensor, ref: Tensor | None = None) -> Tensor:
    """``(x - mean) / std`` with the statistics of ``ref`` (default ``x``): scikit-learn's
    ``StandardScaler``."""
    r = x if ref is None else ref
    return (x - r.mean(0)) / (r.std(0) + 1e-6)


@cache
def digits() -> tuple[Tensor, Tensor]:
    """8x8 digits (1797 images), raw pixel values 0..16, labels 0..9."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return _t(d.data), _t(d.target, torch.long)


@cache
def iris() -> tuple[Tensor, Tensor]:
    """150 flowers, 4 raw measurements in cm, labels 0..2."""
    from sklearn.datasets import load_iris

    d = load_iris()
    return _t(d.data), _t(d.target, torch.long)


@cache
def cancer() -> tuple[Tensor, Tensor]:
    """569 tumours, 30 raw features (areas up to ~2500), labels 0 / 1."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return _t(d.data), _t(d.target, torch.long)


@cache
def wine() -> tuple[Tensor, Tensor]:
    """178 wines, 13 raw features (proline up to ~1700), labels 0..2."""
    from sklearn.datasets import load_wine

    d = load_wine()
    return _t(d.data), _t(d.target, torch.long)


def classification(n: int = 1200, features: int = 20, informative: int = 8, classes: int = 2,
                   seed: int = 0, sep: float = 1.0) -> tuple[Tensor, Tensor]:
    """``make_classification`` (standard-normal-ish features)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=n, n_features=features, n_informative=informative,
                               n_redundant=0, n_classes=classes, class_sep=sep, random_state=seed)
    return _t(x), _t(y, torch.long)


def regression(n: int = 1000, features: int = 8, noise: float = 5.0, seed: int = 0,
               nonlinear: bool = True) -> tuple[Tensor, Tensor]:
    """``make_regression``; ``nonlinear`` passes the target through a smooth nonlinearity so that
    a hidden layer helps.  Target shape ``(n, 1)``, raw scale (std ~ 100)."""
    from sklearn.datasets import make_regression

    x, y = make_regression(n_samples=n, n_features=features, n_informative=features, noise=noise,
                           random_state=seed)
    if nonlinear:
        s = y.std()
        y = s * np.tanh(y / s) * 1.5 + 0.2 * y
    return _t(x), _t(y).unsqueeze(1)


def multilabel(n: int = 1200, features: int = 20, classes: int = 6, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``make_multilabel_classification``: counts as features, several labels per row."""
    from sklearn.datasets import make_multilabel_classification

    x, y = make_multilabel_classification(n_samples=n, n_features=features, n_classes=classes,
                                          n_labels=2, random_state=seed)
    return _t(x), _t(y)


def xor() -> tuple[Tensor, Tensor]:
    """The four XOR points and their labels (as floats, shape (4, 1))."""
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    return x, torch.tensor([[0.0], [1.0], [1.0], [0.0]])


def life(seed: int = 0) -> tuple[Tensor, Tensor]:
    """Conway's Game of Life on a 3x3 patch: all 512 neighbourhoods -> the centre's next state."""
    del seed
    bits = torch.tensor([[(i >> k) & 1 for k in range(9)] for i in range(512)], dtype=torch.float32)
    centre = bits[:, 4]
    n = bits.sum(1) - centre
    nxt = ((n == 3) | ((centre == 1) & (n == 2))).float()
    return bits, nxt.unsqueeze(1)


def one_hot(y: Tensor, classes: int) -> Tensor:
    return nn.functional.one_hot(y, classes).float()


# ------------------------------------------------------------------------------------ metrics
def accuracy(out: Tensor, y: Tensor) -> float:
    """Argmax accuracy; ``y`` holds class indices or one-hot / probability rows."""
    target = y.argmax(-1) if y.dim() == out.dim() and y.shape[-1] > 1 else y.reshape(out.shape[:-1])
    return float((out.argmax(-1) == target).float().mean())


def thresholded(at: float) -> Metric:
    """Binary (or multi-label, element-wise) accuracy of ``out > at`` against 0 / 1 targets."""

    def metric(out: Tensor, y: Tensor) -> float:
        return float(((out.reshape(y.shape) > at).float() == y.float()).float().mean())

    metric.__name__ = f"accuracy(>{at:g})"
    return metric


def binary_index(at: float) -> Metric:
    """Binary accuracy of a one-unit output thresholded at ``at`` against 0 / 1 class indices."""

    def metric(out: Tensor, y: Tensor) -> float:
        return float(((out.reshape(-1) > at).long() == y.reshape(-1).long()).float().mean())

    metric.__name__ = f"accuracy(>{at:g})"
    return metric


def r2(out: Tensor, y: Tensor) -> float:
    """Coefficient of determination of ``out`` against ``y`` (1 is perfect, 0 predicts the mean);
    invariant to an affine rescaling of the target, so scaled and unscaled versions compare."""
    out = out.reshape(y.shape).double()
    yd = y.double()
    sse = float(((out - yd) ** 2).sum())
    sst = float(((yd - yd.mean(0)) ** 2).sum())
    if not math.isfinite(sse):
        return -1.0
    return max(1.0 - sse / max(sst, 1e-12), -1.0)

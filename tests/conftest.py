"""Shared fixtures: seeded tiny models and synthetic / bundled data (nothing is downloaded)."""

from __future__ import annotations

import itertools
import random
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none present)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_cell_hooks_left_behind() -> Iterator[None]:
    """A dashboard built while an IPython shell exists (another test made one) registers
    trainscope's end-of-cell hooks on it; a test that did not find them there must not leave them
    to the next test (test_magics checks that unloading removes exactly what loading added)."""
    shell = _ipython_shell()
    had = shell is not None and _hooks_installed(shell)
    yield
    shell = _ipython_shell()
    if shell is not None and not had and _hooks_installed(shell):
        from trainscope.widgets import _live

        _live.uninstall(shell)


def _ipython_shell() -> Any:
    mod = sys.modules.get("IPython.core.interactiveshell")
    if mod is None or not mod.InteractiveShell.initialized():
        return None
    return mod.InteractiveShell.instance()


def _hooks_installed(shell: Any) -> bool:
    live = sys.modules.get("trainscope.widgets._live")
    return live is not None and bool(live.installed(shell))


@pytest.fixture
def device() -> torch.device:
    return torch.device("cpu")


def make_mlp(
    sizes: tuple[int, ...] = (20, 32, 32, 5), act: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1])


@pytest.fixture
def mlp() -> nn.Sequential:
    return make_mlp()


@pytest.fixture
def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    """A small 5-class classification problem with learnable structure."""
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(5, 20, generator=g) * 2
    y = torch.randint(0, 5, (512,), generator=g)
    x = centers[y] + torch.randn(512, 20, generator=g)
    return x, y


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits (1797 images), standardized; ships inside the package."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x, torch.tensor(d.target)

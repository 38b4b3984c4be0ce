"""Small models for the suite (healthy building blocks and deliberately broken pieces)."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mlp(sizes: tuple[int, ...], act: type[nn.Module] = nn.ReLU, out_act: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    if out_act is not None:
        layers.append(out_act)
    return nn.Sequential(*layers)


def init_linear(model: nn.Module, scheme: str, gain: float = 1.0) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if scheme == "he":
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif scheme == "xavier":
                nn.init.xavier_normal_(m.weight, gain=nn.init.calculate_gain("tanh"))
            elif scheme == "normal":
                nn.init.normal_(m.weight, std=gain)
            elif scheme == "constant":
                nn.init.constant_(m.weight, gain)
            if scheme != "default":
                with torch.no_grad():
                    m.weight.mul_(gain if scheme in ("he", "xavier") else 1.0)
                nn.init.zeros_(m.bias)
    return model


class Images(nn.Module):
    """Reshape flat 64-pixel digits to (N, 1, 8, 8)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.view(-1, 1, 8, 8)


def cnn(channels: tuple[int, int] = (16, 32), act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    a, b = channels
    return nn.Sequential(
        Images(),
        nn.Conv2d(1, a, 3, padding=1), act(), nn.MaxPool2d(2),
        nn.Conv2d(a, b, 3, padding=1), act(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(b * 4, 10),
    )  # fmt: skip


class FunctionalMLP(nn.Module):
    """ReLU applied with F.relu (no activation modules to hook)."""

    def __init__(self, sizes: tuple[int, ...] = (64, 64, 64, 10)) -> None:
        super().__init__()
        self.fc1 = nn.Linear(sizes[0], sizes[1])
        self.fc2 = nn.Linear(sizes[1], sizes[2])
        self.fc3 = nn.Linear(sizes[2], sizes[3])

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class LogOfRelu(nn.Module):
    """A numerically unsafe layer: log of a ReLU output (log 0 = -inf)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.log(F.relu(x))


class SqrtLayer(nn.Module):
    """Another unsafe layer: sqrt of a value that goes negative (NaN)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sqrt(x)


class NaiveSoftplus(nn.Module):
    """softplus written as log(1 + exp(x)): exp overflows to inf for x > 88."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.log(1 + torch.exp(x))


class CenterOverBatch(nn.Module):
    """A per-example model with a bug in forward: centering over the batch instead of features."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.fc1(x))
        h = h - h.mean(dim=0, keepdim=True)  # bug: dim=0 is the batch
        return self.fc2(h)


class SeqMixer(nn.Module):
    """A sequence model whose attention-like weights are normalized over the batch (softmax dim=0)."""

    def __init__(self, vocab: int = 10, d: int = 16, classes: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.score = nn.Linear(d, 1)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: Tensor) -> Tensor:
        e = self.emb(tokens)  # (B, T, d)
        w = torch.softmax(self.score(e), dim=0)  # bug: over the batch, not over time (dim=1)
        return self.head((w * e).sum(dim=1))


class DetachedFirst(nn.Module):
    """fc1's output is detached in forward: fc1 never receives a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.fc1(x)).detach()
        return self.fc3(F.relu(self.fc2(h)))


class TinyTransformer(nn.Module):
    """Embedding + one pre-LN transformer encoder block + mean pooling + linear head."""

    def __init__(self, vocab: int = 10, d: int = 32, classes: int = 2, seq: int = 12) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(seq, d) * 0.02)
        self.block = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.1, batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.block(self.emb(tokens) + self.pos[: tokens.shape[1]])
        return self.head(self.norm(h).mean(dim=1))


def sequences(n: int, seq: int = 12, vocab: int = 10, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Token sequences labelled 1 when most tokens are >= vocab / 2."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, vocab, (n, seq), generator=g)
    return t, ((t >= vocab // 2).sum(1) > seq // 2).long()


def blobs(n: int, d: int = 20, classes: int = 2, seed: int = 0, sep: float = 2.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=g) * sep
    y = torch.randint(0, classes, (n,), generator=g)
    return centers[y] + torch.randn(n, d, generator=g), y


class ResidualMLP(nn.Module):
    """Pre-LayerNorm residual MLP blocks."""

    def __init__(self, d_in: int, d: int, blocks: int, classes: int) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)) for _ in range(blocks)
        )
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, classes))

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.out(h)


class GRUClassifier(nn.Module):
    def __init__(self, vocab: int = 10, d: int = 32, classes: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.gru = nn.GRU(d, d, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: Tensor) -> Tensor:
        out, _ = self.gru(self.emb(tokens))
        return self.head(out[:, -1])


class DivideByBatchStd(nn.Module):
    """A hand-written normalization that divides by the batch std: 0 / 0 on constant features."""

    def forward(self, x: Tensor) -> Tensor:
        return x / x.std(dim=0, keepdim=True)


class ReluRNN(nn.Module):
    """Embedding + ReLU RNN whose recurrent matrix (1.3 I) amplifies the state at every step."""

    def __init__(self, vocab: int = 10, d: int = 32, classes: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.rnn = nn.RNN(d, d, batch_first=True, nonlinearity="relu")
        self.head = nn.Linear(d, classes)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(torch.eye(d) * 1.3)

    def forward(self, tokens: Tensor) -> Tensor:
        out, _ = self.rnn(self.emb(tokens))
        return self.head(out[:, -1])

"""standardize_inputs on features that are constant in the measured batches (an always-zero pixel
in a small sample): a later input that is non-zero there must come out at a standardized scale,
not at its raw one (a divisor of 1 let a raw 255 through among features of size ~1)."""

from __future__ import annotations

import torch
from torch import nn

import trainscope


def test_a_feature_constant_in_the_sample_is_scaled_like_the_others() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(32, 6, generator=g) * 255
    x[:, 2] = 0.0  # never lit in the measured batch
    y = torch.randint(0, 3, (32,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    seen: list[torch.Tensor] = []
    model[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    lf = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = trainscope.Probe(model, opt, loss_fn=lf)
    try:
        opt.zero_grad()
        lf(model(x), y).backward()
        opt.step()
        t = probe.request("standardize_inputs")
        opt.zero_grad()
        lf(model(x), y).backward()
        opt.step()
        assert t.status == "applied", t.message
        later = torch.full((1, 6), 255.0)
        with torch.no_grad():
            model(later)
        z = seen[-1][0]
        assert float(z.abs().max()) < 5.0, z  # 255 at the constant feature was passed through raw before
        assert float(z[2]) > 0  # still centred on the sample's value (0) and scaled, not dropped
    finally:
        probe.detach()

"""trainscope without Jupyter: probe a small network on scikit-learn's bundled digits and print
what it recorded.  Run:  python examples/headless.py
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn

import trainscope


def main(epochs: int = 8, seed: int = 0) -> trainscope.Probe:
    torch.manual_seed(seed)
    d = load_digits()  # 1797 8x8 images that ship with scikit-learn: nothing is downloaded
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x))
    train, val = perm[:1500], perm[1500:]

    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    # The only trainscope line: the loop below is the user's own, unchanged.
    probe = trainscope.Probe(model, opt, loss_fn=loss_fn)

    for _epoch in range(epochs):
        model.train()
        for idx in train[torch.randperm(len(train))].split(64):
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])  # captured as "loss"
            loss.backward()
            opt.step()  # the step boundary
        model.eval()
        with torch.no_grad():
            logits = model(x[val])
            loss_fn(logits, y[val])  # captured as "val_loss" (no_grad forwards are kept apart)
            probe.log(val_acc=(logits.argmax(1) == y[val]).float().mean())
    probe.flush()

    h = probe.history
    loss = h.scalar("loss")["mean"]
    print(f"{probe.step_count} optimizer steps, {h.samples()} sampled (interval now {probe.every})")
    print(
        f"loss {loss[0]:.3f} -> {loss[-1]:.3f}; val_loss {h.scalar('val_loss')['mean'][-1]:.3f}; "
        f"val_acc {h.scalar('val_acc')['mean'][-1]:.3f}"
    )
    ov = probe.overhead
    print(f"measured probe overhead: {ov * 100:.1f}% of step time" if ov is not None else "")
    print(f"history memory: {h.memory_bytes() / 1e6:.2f} MB (bounded)")
    print(probe.summary())
    probe.detach()
    return probe


if __name__ == "__main__":
    main()

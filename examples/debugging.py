"""A debugging session end to end, without Jupyter (the headless twin of ``debugging.ipynb``).

A deep ReLU network with a bad init (weights ~ N(0, 0.01)) cannot learn: activations vanish
with depth and the loss sits at ln(10).  The probe shows it and the diagnosis names the fix;
LSUV re-initializes the network at a step boundary (the request the dashboard's button sends);
the curves recover; the LR finder picks a learning rate (the model and optimizer are restored
exactly afterwards); a one-cycle schedule finishes the run.  Everything lands on the timeline.

Run:  python examples/debugging.py
"""

from __future__ import annotations

from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn

import trainscope


def data(seed: int = 0) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]:
    d = load_digits()  # 1797 8x8 images that ship with scikit-learn: nothing is downloaded
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    tr, va = perm[:1500], perm[1500:]
    train = [(x[i], y[i]) for i in tr.split(64)]
    return train, (x[va], y[va])


def deep_net(depth: int = 6, width: int = 128) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(64, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    for m in model.modules():  # the bug: a "small random" init that is far too small for this depth
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
    return model


def run_epochs(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: nn.Module, train: Any, val: Any,
               epochs: int, probe: trainscope.Probe) -> float:
    """The user's own plain loop (trainscope is not called in it); returns validation accuracy."""
    acc = 0.0
    for _ in range(epochs):
        model.train()
        for xb, yb in train:
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            out = model(val[0])
            loss_fn(out, val[1])  # the probe logs it as val_loss
            acc = float((out.argmax(1) == val[1]).float().mean())
        probe.log(val_acc=acc)
    return acc


def act_std_by_depth(probe: trainscope.Probe) -> list[float]:
    rec = probe.history.latest
    assert rec is not None
    return [float(rec.metrics["act_std"][i]) for i in probe.history.forward_order if probe.layers[i].type == "ReLU"]


def main(epochs: tuple[int, int, int] = (2, 1, 5), seed: int = 0, verbose: bool = True) -> dict[str, Any]:
    say = print if verbose else (lambda *a, **k: None)
    torch.manual_seed(seed)
    train, val = data(seed)
    model = deep_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    probe = trainscope.Probe(model, opt, loss_fn=loss_fn, data=train, every=5)
    out: dict[str, Any] = {}

    # 1. the symptom
    acc = run_epochs(model, opt, loss_fn, train, val, epochs[0], probe)
    probe.flush()
    out["loss_before"] = float(probe.history.scalar("loss")["mean"][-5:].mean())
    out["acc_before"] = acc
    stds = act_std_by_depth(probe)
    say(f"after {probe.step_count} steps: loss {out['loss_before']:.3f} (ln 10 = 2.303), val acc {acc:.2f}")
    say("activation std by depth: " + " ".join(f"{s:.0e}" for s in stds))
    findings = probe.findings()
    out["suggested"] = [(i["action"], i["params"]) for f in findings for i in f.interventions]
    for f in findings[:3]:
        say(f"finding [{f.severity}] {f.title}")
        say("   suggested: " + "; ".join(i["label"] for i in f.interventions))

    # 2. the fix: the intervention the diagnosis suggests (LSUV), applied at the next step boundary
    fix = next((i for f in findings for i in f.interventions if i["action"] == "reinit"),
               {"action": "reinit", "params": {"scheme": "lsuv"}})
    ticket = probe.request(fix["action"], **fix["params"])
    acc = run_epochs(model, opt, loss_fn, train, val, epochs[1], probe)
    probe.flush()
    say(f"{fix['action']} {fix['params']}: {ticket.status} at step {ticket.applied_step} -- {ticket.message}")
    out["fix"] = ticket.status
    out["acc_after_fix"] = acc
    stds = act_std_by_depth(probe)
    out["act_std_after"] = stds
    say(f"after the fix: loss {float(probe.history.scalar('loss')['mean'][-5:].mean()):.3f}, val acc {acc:.2f}")
    say("activation std by depth: " + " ".join(f"{s:.2f}" for s in stds))

    # 3. the LR finder (the dashboard's button runs the same as an action at the next step)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = trainscope.lr_find(model, opt, loss_fn, train, probe=probe)  # an "lr_find" event: plotted
    out["suggestion"], out["suggestions"] = res.suggestion, res.suggestions
    out["restored"] = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    say(f"LR finder: suggestion {res.suggestion:.3g}, spread {res.spread:.2f} decades, "
        f"{res.iterations} iterations ({res.stop_reason})")
    say("   rules: " + ", ".join(f"{k} {v:.2g}" for k, v in res.suggestions.items()))
    say(f"   model restored bit-identically: {out['restored']}")

    # 4. one-cycle from the suggestion finishes the run
    cycle = res.apply(opt, "one_cycle", total_steps=epochs[2] * len(train), probe=probe)
    say(cycle.message)
    acc = run_epochs(model, opt, loss_fn, train, val, epochs[2], probe)
    probe.flush()
    say(f"final val acc {acc:.3f}, loss {float(probe.history.scalar('loss')['mean'][-5:].mean()):.3f}")
    out["acc_final"] = acc
    say("timeline:")
    for e in probe.history.events:
        say(f"   step {e.step:4d}  {e.kind:12s} {e.label}")
    out["events"] = [(e.kind, e.data.get("action")) for e in probe.history.events]
    probe.detach()
    out["probe"] = probe
    return out


if __name__ == "__main__":
    main()

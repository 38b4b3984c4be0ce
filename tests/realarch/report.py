"""Print the findings of every real-architecture case: ``python -m tests.realarch.report [names]``."""

from __future__ import annotations

import sys

import torch

from .cases import CASES
from .runner import run


def main(select: list[str]) -> None:
    torch.set_num_threads(1)
    for c in CASES:
        if select and c.name not in select:
            continue
        o = run(c)
        print(f"{c.name:18s} {o.seconds:5.1f}s  samples={o.probe.history.samples():3d}  "
              f"severe={[f.label for f in o.severe]}  errors={len(o.errors)}")
        for f in o.findings:
            print(f"    {f.severity:7s} {f.label}: {f.evidence[:300]}")
        for e in o.errors[:2]:
            print("    ERROR", e[-600:])


if __name__ == "__main__":
    main(sys.argv[1:])

"""Run the whole suite and print the confusion table (markdown).

    python -m tests.broken.report            # everything
    python -m tests.broken.report dead_units # cases whose name or expected label matches
    python -m tests.broken.report --matrix   # also the full fault x label matrix
"""

from __future__ import annotations

import sys
import time
from collections import Counter

import torch

from .cases import ALL
from .runner import SEVERE, Outcome, run


def run_all(select: list[str] | None = None) -> list[Outcome]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread is fastest, and fair to a shared machine
    try:
        cases = [c for c in ALL if not select or c.name in select or (c.expect or "healthy") in select]
        return [run(c) for c in cases]
    finally:
        torch.set_num_threads(threads)


def summary(outcomes: list[Outcome]) -> str:
    broken = [o for o in outcomes if o.case.expect is not None]
    healthy = [o for o in outcomes if o.case.expect is None]
    hits = sum(o.detected for o in broken)
    local = [o for o in broken if o.case.layers]
    layer_hits = sum(bool(o.layer_ok) for o in local)
    alarms = sum(bool(o.severe) for o in healthy)
    labels = {o.case.expect for o in broken}
    ho = [o for o in outcomes if o.case.held_out]
    ho_b = [o for o in ho if o.case.expect is not None]
    held = (
        f" Of these, held out (written after the rules were fixed): {sum(o.detected for o in ho_b)}/{len(ho_b)} "
        f"detected, {sum(bool(o.severe) for o in ho if o.case.expect is None)}/{len(ho) - len(ho_b)} healthy with a warning."
        if ho else ""
    )
    return (
        f"**Detection: {hits}/{len(broken)} broken runs get their label ({100 * hits / max(len(broken), 1):.0f}%); "
        f"right layer in {layer_hits}/{len(local)} runs where the fault is local; "
        f"{alarms}/{len(healthy)} healthy runs with a finding at warning level or above; {len(labels)} labels covered.**"
        + held
    )


def confusion(outcomes: list[Outcome]) -> str:
    """One row per fault: how often its label was found, and what else was reported."""
    rows = sorted({o.case.expect or "healthy" for o in outcomes}, key=lambda r: (r == "healthy", r))
    lines = [
        "| fault put in | runs | its label found | right layer | other labels reported (runs) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        runs = [o for o in outcomes if (o.case.expect or "healthy") == r]
        others: Counter[str] = Counter()
        for o in runs:
            others.update(x for x in set(o.severe) if x != r)
        other = ", ".join(f"{k} ({n})" for k, n in sorted(others.items(), key=lambda kv: (-kv[1], kv[0]))) or "-"
        if r == "healthy":
            lines.append(f"| *healthy* | {len(runs)} | - | - | {other} |")
            continue
        local = [o for o in runs if o.case.layers]
        layer = f"{sum(bool(o.layer_ok) for o in local)}/{len(local)}" if local else "n/a"
        lines.append(f"| {r} | {len(runs)} | {sum(o.detected for o in runs)}/{len(runs)} | {layer} | {other} |")
    return "\n".join(lines)


def per_run(outcomes: list[Outcome]) -> str:
    lines = ["| run | expected | found (warning / error) | label | layer |", "|---|---|---|---|---|"]
    for o in outcomes:
        exp = o.case.expect or "*(healthy)*"
        found = ", ".join(dict.fromkeys(o.severe)) or "-"
        if o.case.expect is None:
            ok, layer = ("ok" if not o.severe else "FALSE ALARM"), ""
        else:
            ok = "yes" if o.detected else "**MISSED**"
            layer = "" if o.layer_ok is None else ("yes" if o.layer_ok else "**no**")
        lines.append(f"| `{o.case.name}` ({o.case.note}) | {exp} | {found} | {ok} | {layer} |")
    return "\n".join(lines)


def matrix(outcomes: list[Outcome]) -> str:
    """Full confusion matrix: fault put in x label reported (counts of runs)."""
    rows = sorted({o.case.expect or "healthy" for o in outcomes}, key=lambda r: (r == "healthy", r))
    cols: Counter[str] = Counter()
    for o in outcomes:
        cols.update(set(o.severe))
    names = sorted(cols, key=lambda c: (-cols[c], c))
    lines = ["| fault \\ reported | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in rows:
        runs = [o for o in outcomes if (o.case.expect or "healthy") == r]
        cells = [str(sum(c in o.severe for o in runs) or ".") for c in names]
        cells = [f"**{x}**" if c == r and x != "." else x for x, c in zip(cells, names, strict=True)]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(outcomes: list[Outcome]) -> str:
    return "\n\n".join([summary(outcomes), confusion(outcomes), per_run(outcomes)])


def main(argv: list[str]) -> int:
    t0 = time.perf_counter()
    full = "--matrix" in argv
    outcomes = run_all([a for a in argv if not a.startswith("--")] or None)
    print(table(outcomes))
    if full:
        print("\n" + matrix(outcomes))
    errs = [(o.case.name, e) for o in outcomes for e in o.errors]
    print(f"\n{len(outcomes)} runs in {time.perf_counter() - t0:.0f} s (CPU, 1 thread); severities counted: {', '.join(SEVERE)}")
    for name, e in errs[:5]:
        print(f"internal error in {name}: {e.strip().splitlines()[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

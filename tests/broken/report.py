"""Run the whole suite and print the confusion table (markdown).

    python -m tests.broken.report            # everything
    python -m tests.broken.report dead_units # cases whose name or expected label matches
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


def table(outcomes: list[Outcome]) -> str:
    broken = [o for o in outcomes if o.case.expect is not None]
    healthy = [o for o in outcomes if o.case.expect is None]
    hits = sum(o.detected for o in broken)
    local = [o for o in broken if o.case.layers]
    layer_hits = sum(bool(o.layer_ok) for o in local)
    false_alarms = [o for o in healthy if o.severe]
    labels = sorted({o.case.expect for o in broken if o.case.expect})
    lines = [
        f"**Detection: {hits}/{len(broken)} broken runs get their label ({100 * hits / max(len(broken), 1):.0f}%); "
        f"right layer in {layer_hits}/{len(local)} runs where the fault is local; "
        f"{len(false_alarms)}/{len(healthy)} healthy runs with a finding at warning level or above; "
        f"{len(labels)} labels covered.**",
        "",
        "| run | expected | found (warning / error) | label | layer |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        exp = o.case.expect or "*(healthy)*"
        found = ", ".join(dict.fromkeys(o.severe)) or "-"
        if o.case.expect is None:
            ok = "ok" if not o.severe else "FALSE ALARM"
            layer = ""
        else:
            ok = "yes" if o.detected else "**MISSED**"
            layer = "" if o.layer_ok is None else ("yes" if o.layer_ok else "**no**")
        lines.append(f"| `{o.case.name}` ({o.case.note}) | {exp} | {found} | {ok} | {layer} |")
    # confusion: expected label x reported label (warning / error findings)
    rows = sorted({o.case.expect or "healthy" for o in outcomes}, key=lambda r: (r == "healthy", r))
    cols: Counter[str] = Counter()
    for o in outcomes:
        cols.update(set(o.severe))
    colnames = sorted(cols, key=lambda c: (-cols[c], c))
    lines += ["", "Confusion table -- rows: the fault put in; columns: labels reported at warning level or above "
              "(counts of runs; a run can get several labels):", ""]
    short = {c: c.replace("_", " ") for c in colnames}
    lines.append("| fault \\ reported | runs | " + " | ".join(short[c] for c in colnames) + " |")
    lines.append("|---|---|" + "---|" * len(colnames))
    for r in rows:
        runs = [o for o in outcomes if (o.case.expect or "healthy") == r]
        cells = []
        for c in colnames:
            n = sum(c in o.severe for o in runs)
            cells.append((f"**{n}**" if c == r else str(n)) if n else ".")
        lines.append(f"| {r} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    t0 = time.perf_counter()
    outcomes = run_all(argv or None)
    print(table(outcomes))
    errs = [(o.case.name, e) for o in outcomes for e in o.errors]
    print(f"\n{len(outcomes)} runs in {time.perf_counter() - t0:.0f} s (CPU, 1 thread); severities counted: {', '.join(SEVERE)}")
    for name, e in errs[:5]:
        print(f"internal error in {name}: {e.strip().splitlines()[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""The floors of the package hold (docs/architecture.md), read from the code itself.

Every import is parsed with ``ast`` -- module level, under ``if TYPE_CHECKING:`` and inside
functions -- so a lazy import cannot hide an upward arrow.  Floors, bottom to top:

0. contracts: ``run.py``, ``metrics.py`` -- import nothing from trainscope at run time;
1-3. numbers and storage, the recording engine, the services -- never import ``probe.py``;
4. composition: ``trainscope/__init__``, ``builtins``, ``probe``, ``distributed``;
5. the Jupyter layer: ``widgets/``, ``magics``, ``integrations/``, ``_delivery``, ``_background``.

Nothing below floor 5 imports the Jupyter layer (nor IPython / ipywidgets / anywidget / bqplot),
except the package root's documented one-line hops (``trainscope.watch / show / open``...).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import trainscope

ROOT = Path(trainscope.__file__).parent
JUPYTER = ("IPython", "ipywidgets", "anywidget", "bqplot", "traitlets", "ipykernel", "comm")
# The Jupyter layer: imported lazily, by watch()/show()/%load_ext only.
JUPYTER_LAYER = ("trainscope.widgets", "trainscope.magics", "trainscope._delivery", "trainscope._background",
                 "trainscope.integrations")
# Optional integrations with their own heavy dependency.
OPTIONAL = ("trainscope.integrations.lightning",)
FLOOR0 = ("trainscope.run", "trainscope.metrics")
COMPOSITION = ("trainscope", "trainscope.builtins", "trainscope.probe", "trainscope.distributed")
FLOOR0_TYPES = {"trainscope.run": {"trainscope.history", "trainscope.layers"}}
"""Annotation-only imports floor 0 may make: the storage types of floor 1 (which never import it)."""

KNOWN_CYCLES: dict[frozenset[str], str] = {
}
"""Import cycles that remain, each with why; a new cycle, or one that grows, fails the test."""

KNOWN_PROBE_IMPORTS: dict[str, str] = {
    "trainscope.search": "builds a Probe per trial when asked to record (a composition job)",
}
"""Modules below the composition floor that still import probe.py, each with why."""

KNOWN_UI_IMPORTS: dict[str, str] = {
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                ids.update(id(n) for n in ast.walk(sub))
    return ids


def _targets(mod: str, node: ast.Import | ast.ImportFrom, is_pkg: bool) -> list[str]:
    def known(name: str) -> str:
        while name not in MODULES and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    if isinstance(node, ast.Import):
        return [a.name for a in node.names if not a.name.startswith("trainscope")] + [
            known(a.name) for a in node.names if a.name.startswith("trainscope")
        ]
    base = node.module or ""
    if node.level:
        pkg = mod if is_pkg else mod.rsplit(".", 1)[0]
        for _ in range(node.level - 1):
            pkg = pkg.rsplit(".", 1)[0]
        base = f"{pkg}.{base}" if base else pkg
    if not base.startswith("trainscope"):
        return [base]
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else known(base) for a in node.names]


def imports() -> dict[str, dict[str, str]]:
    """module -> {imported name: "runtime" | "type"} (an import seen both ways counts as runtime)."""
    out: dict[str, dict[str, str]] = {}
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typed = _type_checking_nodes(tree)
        edges: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                kind = "type" if id(node) in typed else "runtime"
                for t in _targets(mod, node, path.name == "__init__.py"):
                    if t != mod and edges.get(t) != "runtime":
                        edges[t] = kind
        out[mod] = edges
    return out


GRAPH = imports()


def _in(mod: str, prefixes: tuple[str, ...]) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[frozenset[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(frozenset(comp))
    return out


def test_the_parser_sees_every_kind_of_import() -> None:
    assert len(MODULES) > 50 and "trainscope.probe" in MODULES
    assert GRAPH["trainscope.actions"]["trainscope.run"] == "runtime"  # module level
    assert GRAPH["trainscope.run"]["trainscope.history"] == "type"  # under TYPE_CHECKING
    assert "trainscope.lr_finder" in GRAPH["trainscope.interventions.lr_find_action"]  # in a function
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [frozenset({"a", "b", "c"})]


def test_floor0_imports_nothing_from_trainscope_at_run_time() -> None:
    for mod in FLOOR0:
        inner = {t: k for t, k in GRAPH[mod].items() if t.startswith("trainscope")}
        runtime = [t for t, k in inner.items() if k == "runtime"]
        assert runtime == [], f"{mod} imports {runtime} at run time"
        typed = {t for t, k in inner.items() if k == "type"}
        assert typed <= FLOOR0_TYPES.get(mod, set()), f"{mod}: annotation imports {typed}"
        for t in typed:  # and those never import back
            assert mod not in GRAPH[t], f"{t} imports {mod}: a cycle through floor 0"


def test_nothing_below_the_composition_floor_imports_probe() -> None:
    users = sorted(m for m, e in GRAPH.items()
                   if "trainscope.probe" in e and m not in COMPOSITION and not _in(m, JUPYTER_LAYER))
    unexpected = [m for m in users if m not in KNOWN_PROBE_IMPORTS]
    assert unexpected == [], f"services must take a run.RunContext, not import probe.py: {unexpected}"


def test_the_core_never_imports_the_jupyter_layer() -> None:
    bad = []
    for mod, edges in GRAPH.items():
        if _in(mod, JUPYTER_LAYER) or mod == "trainscope" or mod in KNOWN_UI_IMPORTS:
            continue
        for t in edges:
            if _in(t, JUPYTER_LAYER) or t.split(".")[0] in JUPYTER:
                bad.append(f"{mod} -> {t}")
    assert bad == [], bad


def test_no_import_cycles_beyond_the_known_ones() -> None:
    graph = {m: {t for t in e if t in MODULES} for m, e in GRAPH.items()}
    for comp in _cycles(graph):
        assert any(comp <= known for known in KNOWN_CYCLES), (
            f"import cycle among {sorted(comp)}: break it (see docs/architecture.md) or, if it cannot "
            "be broken now, list it in KNOWN_CYCLES with the reason"
        )


def core_modules() -> list[str]:
    return [m for m in MODULES if not _in(m, JUPYTER_LAYER + OPTIONAL)]


def test_core_modules_import_no_jupyter_package() -> None:
    mods = core_modules()
    assert "trainscope.probe" in mods and "trainscope.stats" in mods and len(mods) > 10
    code = (
        "import importlib, sys\n"
        f"for name in {mods!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(','.join(m for m in {JUPYTER!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"core modules imported Jupyter packages: {out.stdout.strip()}"


def test_the_jupyter_layer_is_where_the_jupyter_imports_are() -> None:
    code = "import sys, trainscope.widgets; print('ipywidgets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"  # the check above would notice a leak


def test_the_old_delivery_paths_name_the_same_module_whatever_is_imported_first() -> None:
    """``trainscope._delivery`` / ``_background`` are shims for the modules now in the Jupyter layer.
    Imported first, the shim started importing the widgets package, whose dashboard bound the
    half-initialized shim instead of the real module: a patch of ``_delivery.get_delivery`` (as
    tests and users do) then missed the dashboard, depending on import order."""
    code = (
        "import trainscope\n"
        "from trainscope import _delivery, _background\n"
        "import trainscope.widgets.dashboard as d, trainscope.widgets._live as live\n"
        "import trainscope.widgets._delivery as wd, trainscope.widgets._background as wb\n"
        "assert _delivery is wd and _background is wb\n"
        "assert d._delivery is wd and d._background is wb and live._background is wb, (d._delivery, d._background)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]

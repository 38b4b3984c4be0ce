"""The core never imports the Jupyter layer (IPython, ipywidgets, anywidget, bqplot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trainscope

JUPYTER = ("IPython", "ipywidgets", "anywidget", "bqplot", "traitlets", "ipykernel", "comm")
# The Jupyter layer: imported lazily, by watch()/show()/%load_ext only.
JUPYTER_LAYER = ("trainscope.widgets", "trainscope.magics", "trainscope._delivery")
# Optional integrations with their own heavy dependency.
OPTIONAL = ("trainscope.integrations.lightning",)


def core_modules() -> list[str]:
    root = Path(trainscope.__file__).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if not name.startswith(JUPYTER_LAYER + OPTIONAL):
            names.append(name)
    return names


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

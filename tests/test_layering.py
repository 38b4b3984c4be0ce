"""The core never imports the Jupyter layer (IPython, ipywidgets, anywidget, bqplot)."""

from __future__ import annotations

import subprocess
import sys

JUPYTER = ("IPython", "ipywidgets", "anywidget", "bqplot", "traitlets", "ipykernel", "comm")


def test_core_imports_no_jupyter_modules() -> None:
    code = (
        "import sys, importlib, pkgutil, trainscope\n"
        "core = [m.name for m in pkgutil.walk_packages(trainscope.__path__, 'trainscope.')\n"
        "        if not m.name.startswith(('trainscope.widgets', 'trainscope.magics', 'trainscope._delivery'))]\n"
        "for name in core:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as e:\n"
        "        if 'lightning' in str(e).lower() or 'distributed' in str(e).lower():\n"
        "            continue\n"
        "        raise\n"
        f"bad = [m for m in {JUPYTER!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core modules imported Jupyter packages: {out.stdout.strip()}"

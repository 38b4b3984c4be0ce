"""Where the bundled frontend lives (``npm run build`` writes it; wheels ship it)."""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).parent / "static"
MODULES = ("header", "layer_table", "heatmap", "controls")


def check_built() -> None:
    """Raise a clear error when the JavaScript bundle is missing (a source checkout, unbuilt)."""
    missing = [f"{m}.js" for m in MODULES if not (STATIC / f"{m}.js").is_file()]
    if not (STATIC / "styles.css").is_file():
        missing.append("styles.css")
    if missing:
        raise ImportError(
            "trainscope's dashboard frontend is not built (missing "
            f"{', '.join(missing)} in {STATIC}). In a source checkout run `npm ci && npm run build` "
            "at the repository root (or `bash scripts/demo.sh`), or install trainscope from a wheel."
        )


def esm(name: str) -> Path:
    return STATIC / f"{name}.js"


CSS = STATIC / "styles.css"

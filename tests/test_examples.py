"""Every example script runs end to end (headless), as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted(p for p in (Path(__file__).parent.parent / "examples").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script: Path) -> None:
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=script.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr


def test_headless_example_records_what_it_says() -> None:
    sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
    try:
        import headless
    finally:
        sys.path.pop(0)
    probe = headless.main(epochs=2)
    h = probe.history
    assert probe.step_count == 2 * 24  # 1500 examples / 64 per batch, 2 epochs
    assert len(h.scalar("loss")["mean"]) == probe.step_count
    assert len(h.scalar("val_loss")["mean"]) == 2 and len(h.scalar("val_acc")["mean"]) == 2
    assert h.samples() >= 2 and h.latest is not None
    assert not probe.is_attached

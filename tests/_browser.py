"""JupyterLab / Notebook 7 on 127.0.0.1 driven by Playwright with Debian's Chromium.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (``apt-get install
chromium``; ``TRAINSCOPE_CHROMIUM`` overrides the path).  Servers run in their own process group
and are stopped by PID; every Jupyter directory points into a scratch folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ._jupyter import ROOT, jupyter_env

CHROMIUM = os.environ.get("TRAINSCOPE_CHROMIUM", "/usr/bin/chromium")
CHROME_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / ".artifacts" / "e2e"

# settings a user could set too: plain (non-virtual) notebook windowing so every output is in the
# DOM, and no news / update pop-ups over the screenshots
USER_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_browser() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"{CHROMIUM} not found: apt-get install -y chromium (Playwright must not download one)"
        )
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install -e '.[test]')")


class Server:
    """``jupyter lab`` or ``jupyter notebook`` serving ``root`` on 127.0.0.1."""

    def __init__(self, app: str, scratch: Path, root: Path) -> None:
        self.app = app
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = scratch / "config" / "lab" / "user-settings"
        for name, value in USER_SETTINGS.items():
            f = settings / name
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(value))
        expose = "LabApp" if app == "lab" else "JupyterNotebookApp"
        cmd = [
            sys.executable, "-m", "jupyter", app,
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}", "--ServerApp.open_browser=False",
            f"--ServerApp.root_dir={root}", f"--{expose}.expose_app_in_browser=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--ServerApp.allow_root=True",
        ]  # fmt: skip
        self.pages: list[NotebookPage] = []  # for the failure report
        self.log = (scratch / f"jupyter-{app}.log").open("w")
        env = jupyter_env(scratch)
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            start_new_session=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(
                    f"{self.url}/api/status?token={self.token}", timeout=2
                ).read()
                return
            except Exception:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"jupyter {app} exited; see {self.log.name}") from None
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"jupyter {app} did not start within 120 s")

    def stop(self) -> None:
        """Stop the server and its kernels (their own process group), by PID."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(Exception):
            self.log.flush()
            return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])
        return "(server log unreadable)"

    @contextlib.contextmanager
    def explain_failure(self, tag: str) -> Iterator[None]:
        """On a failure, attach what a person would look at: every open notebook's cells (prompt,
        end of the output), the dashboard's state and activity list, the server log's end, and a
        full-page screenshot (``.artifacts/e2e/<tag>_failure.png``).  CI prints only the test
        output, so this is how a failure on a slower machine explains itself."""
        try:
            yield
        except BaseException as e:
            parts = [f"--- e2e failure report ({tag}) ---"]
            for i, page in enumerate(self.pages):
                parts.append(page.report())
                with contextlib.suppress(Exception):
                    ARTIFACTS.mkdir(parents=True, exist_ok=True)
                    shot = ARTIFACTS / f"{tag}_failure{i or ''}.png"
                    page.page.screenshot(path=str(shot), full_page=True)
                    parts.append(f"screenshot: {shot}")
            parts.append(f"server log (end):\n{self.log_tail()}")
            report = "\n".join(parts)
            if hasattr(e, "add_note"):
                e.add_note(report)
            else:  # Python 3.10: pytest shows captured output of a failing test
                print(report, file=sys.stderr)
            raise

    def notebook_url(self, name: str) -> str:
        if self.app == "lab":
            return f"{self.url}/lab/tree/{name}?token={self.token}&reset"
        return f"{self.url}/notebooks/{name}?token={self.token}"


@contextlib.contextmanager
def browser(profile: Path, viewport: tuple[int, int] = (1400, 2000)) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            args=CHROME_ARGS,
            headless=True,
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        try:
            yield ctx
        finally:
            ctx.close()


class NotebookPage:
    """One open notebook, driven through ``window.jupyterapp`` (the app is exposed for tests)."""

    def __init__(self, page: Any, server: Server, name: str) -> None:
        self.page = page
        server.pages.append(self)
        # the page's own errors, for the failure report (a widget's exception shows only here)
        self.errors: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on(
            "console",
            lambda m: self.errors.append(f"console.{m.type}: {m.text}")
            if m.type in ("error", "warning")
            else None,
        )
        page.goto(server.notebook_url(name), timeout=120_000)
        page.wait_for_function(
            "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
            " && window.jupyterapp.shell.currentWidget.sessionContext"
            " && window.jupyterapp.shell.currentWidget.sessionContext.session"
            " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
            timeout=120_000,
        )
        page.wait_for_function(f"() => ({self._KSTATUS})() === 'idle'", timeout=120_000)

    _KSTATUS = (
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
        " return k ? k.status : 'none'; }"
    )

    def run_cell(self, idx: int, wait: bool = True, timeout: float = 180) -> None:
        before = self.execution_count(idx)
        for attempt in (1, 2):
            self.page.evaluate(
                """(idx) => { const nb = window.jupyterapp.shell.currentWidget.content;
                   nb.activeCellIndex = idx; window.jupyterapp.commands.execute('notebook:run-cell'); }""",
                idx,
            )
            try:  # JupyterLab shows [*] as soon as the request is queued, running or not
                self.page.wait_for_function(
                    """([idx, before]) => { const c = window.jupyterapp.shell.currentWidget.content.widgets[idx];
                       return (c.promptNode && c.promptNode.textContent.includes('*'))
                              || c.model.executionCount !== before; }""",
                    arg=[idx, before],
                    timeout=30_000,
                )
                break
            except Exception:
                if attempt == 2:
                    raise AssertionError(
                        f"cell {idx} was never queued: run-cell was issued twice, 30 s apart"
                    ) from None
                print(f"[e2e] cell {idx} not queued after 30 s; issuing run-cell again")
        if wait:
            self.wait_cell_done(idx, timeout)

    def wait_cell_started(self, idx: int, timeout: float = 60) -> None:
        self.page.wait_for_function(
            """(idx) => { const c = window.jupyterapp.shell.currentWidget.content.widgets[idx];
               return !!(c.promptNode && c.promptNode.textContent.includes('*')); }""",
            arg=idx,
            timeout=timeout * 1000,
        )

    def wait_cell_done(self, idx: int, timeout: float = 180) -> None:
        # the prompt shows [*] while the cell runs; with kernel subshells the kernel status can
        # read "idle" during a running cell, so the prompt is the reliable signal
        self.page.wait_for_function(
            """(idx) => { const c = window.jupyterapp.shell.currentWidget.content.widgets[idx];
               return c.model.executionCount !== null && c.promptNode && !c.promptNode.textContent.includes('*'); }""",
            arg=idx,
            timeout=timeout * 1000,
        )

    def cell_running(self, idx: int) -> bool:
        return bool(
            self.page.evaluate(
                """(idx) => { const c = window.jupyterapp.shell.currentWidget.content.widgets[idx];
                   return !!(c.promptNode && c.promptNode.textContent.includes('*')); }""",
                idx,
            )
        )

    def execution_count(self, idx: int) -> int | None:
        return self.page.evaluate(
            "(idx) => window.jupyterapp.shell.currentWidget.content.widgets[idx].model.executionCount",
            idx,
        )

    def output_text(self, idx: int) -> str:
        return str(
            self.page.evaluate(
                """(idx) => { const c = window.jupyterapp.shell.currentWidget.content.widgets[idx];
                   return c.outputArea ? c.outputArea.node.innerText : ''; }""",
                idx,
            )
        )

    def report(self) -> str:
        """Kernel status, each code cell's prompt and end of output, the dashboard's state."""
        try:
            info = self.page.evaluate(
                """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                   if (!w || !w.content || !w.content.widgets) return {missing: true};
                   const k = w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
                   const q = (s) => { const e = document.querySelector(s); return e ? e.innerText : null; };
                   return {
                     kernel: k ? `${k.name} ${k.status}` : 'none',
                     cells: w.content.widgets.filter(c => c.model.type === 'code').map(c => ({
                       prompt: c.promptNode ? c.promptNode.textContent : '',
                       out: (c.outputArea ? c.outputArea.node.innerText : '').slice(-800) })),
                     header: q('.trainscope-dashboard .trainscope-header'),
                     activity: q('.trainscope-dashboard .trainscope-activity'),
                     dashboards: document.querySelectorAll('.trainscope-dashboard').length,
                     form_errors: [...document.querySelectorAll('.trainscope-dashboard .trainscope-form-error')]
                       .map(e => e.textContent).filter(t => t),
                   }; }"""
            )
        except Exception as e:
            return f"page: could not be read ({type(e).__name__}: {e})"
        if info.get("missing"):
            return "page: no notebook open"
        lines = [f"page {self.page.url.split('?')[0]}: kernel {info['kernel']}"]
        for c in info["cells"]:
            out = " | ".join(line for line in c["out"].splitlines() if line.strip())
            lines.append(f"  cell {c['prompt']}: {out[-800:]}")
        lines.append(f"  dashboard header: {info['header']}")
        lines.append(f"  activity: {(info['activity'] or '').replace(chr(10), ' | ')[:1500]}")
        lines.append(f"  dashboards on the page: {info['dashboards']}; form errors: {info['form_errors']}")
        errors = self.errors[-15:]
        lines.append(f"  page errors/warnings ({len(self.errors)}):" + "".join(f"\n    {e[:300]}" for e in errors))
        return "\n".join(lines)

    def interrupt(self) -> None:
        self.page.evaluate("() => window.jupyterapp.commands.execute('notebook:interrupt-kernel')")

    def text(self, selector: str) -> str:
        return str(self.page.locator(selector).first.inner_text())

    def screenshot(self, selector: str, name: str, folder: Path = ARTIFACTS) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        loc = self.page.locator(selector).first
        loc.scroll_into_view_if_needed()
        loc.screenshot(path=str(path))
        return path

"""Drive a real ``ser-listen`` from another program: for tests, benchmarks and the dashboard screenshot.

A harness, not part of ser: it lives in ``bench/``, which the tests, the benchmark drivers and
``docs/screenshot.py`` import from the repository root, and which the wheel does not ship
(``[tool.setuptools.packages.find]`` in pyproject.toml lists the shipped packages). It used to be
``realtime/testing.py``, installed with the daemon.

``ListenProcess`` starts the daemon as a subprocess, collects what it prints and reads
the dashboard URL from its stderr (``--port 0`` lets it pick a free port, so nothing
races for one). ``CHROMIUM_ARGS`` are the flags that make Debian's Chromium run headless
in a container without touching the network; ``launch_chromium`` uses them through
Playwright, never downloading a browser.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
)
URL_RE = re.compile(r"dashboard at (http://[^\s/]+:(\d+)/)")


def script(name: str) -> list[str]:
    """The command for one of ser's console scripts: the venv's entry point, else ``python -m``."""
    exe = Path(sys.executable).with_name(name)
    module = {"ser-listen": "realtime.cli", "ser-client": "realtime.client"}[name]
    return [str(exe)] if exe.exists() else [sys.executable, "-m", module]


class ListenProcess:
    """A running ``ser-listen``: its stdout and stderr lines, and the dashboard URL it printed."""

    def __init__(self, args: Sequence[str], env: dict | None = None, cwd: Path | None = None,
                 echo: Callable[[str], object] | None = None) -> None:
        self.p = subprocess.Popen(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=cwd, env=env, start_new_session=True)
        self.err: list[str] = []
        self.out: list[str] = []
        self.url: str | None = None
        self.port: int | None = None
        self._echo = echo
        self._found = threading.Event()
        threading.Thread(target=self._read_err, daemon=True).start()
        threading.Thread(target=self._read_out, daemon=True).start()

    def _read_err(self) -> None:
        for line in self.p.stderr:
            self.err.append(line)
            if self._echo is not None:
                self._echo(line)
            m = URL_RE.search(line)
            if m and self.url is None:
                self.url, self.port = m.group(1), int(m.group(2))
                self._found.set()
        self._found.set()  # exited: wake a waiter, which then sees no URL

    def _read_out(self) -> None:
        for line in self.p.stdout:
            self.out.append(line)

    def wait_url(self, timeout: float = 30) -> int:
        """The dashboard's port, once printed; RuntimeError with the daemon's stderr if it never is."""
        if not self._found.wait(timeout):
            raise RuntimeError(f"ser-listen printed no URL in {timeout:g} s:\n" + "".join(self.err))
        if self.port is None:
            raise RuntimeError(f"ser-listen exited with {self.p.wait()} before printing a URL:\n" + "".join(self.err))
        return self.port

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)


def launch_chromium(pw, extra_args: Sequence[str] = (), **kw):  # noqa: ANN001, ANN201 - Playwright objects
    """Headless Debian Chromium through a Playwright instance (``sync_playwright()``)."""
    return pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[*CHROMIUM_ARGS, *extra_args], **kw)

"""Make docs/dashboard.png from a real run: ``ser-listen --device demo`` with the shipped model.

Starts the daemon on a free loopback port, opens the page it serves in Debian's
Chromium (Playwright, never a browser download), lets the demo clip play long
enough for the timeline to fill, and saves the screenshot.

    python docs/screenshot.py                    # docs/dashboard.png, 1280x860, 25 s of audio
    python docs/screenshot.py --seconds 40 --out /tmp/dash.png
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=25.0, help="how long the demo plays before the shot")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    ap.add_argument("--size", default="1280x860", help="viewport WIDTHxHEIGHT")
    args = ap.parse_args()
    width, height = map(int, args.size.split("x"))

    exe = Path(sys.executable).with_name("ser-listen")
    daemon = subprocess.Popen([str(exe), "--device", "demo", "--port", "0"], stderr=subprocess.PIPE, text=True, cwd=REPO)
    found: list[str] = []
    ready = threading.Event()

    def read_stderr() -> None:
        for line in daemon.stderr:
            sys.stderr.write(line)
            m = re.search(r"dashboard at (http://\S+)", line)
            if m:
                found.append(m.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=read_stderr, daemon=True).start()
    try:
        if not ready.wait(60) or not found:
            print("screenshot: ser-listen printed no dashboard URL", file=sys.stderr)
            return 1
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(found[0])
            time.sleep(args.seconds)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
        print(f"wrote {args.out}")
        return 0
    finally:
        daemon.terminate()
        daemon.wait(10)


if __name__ == "__main__":
    sys.exit(main())

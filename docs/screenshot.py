"""Make docs/dashboard.png from a real run: ``ser-listen --device demo`` with the shipped model.

Starts the daemon on a free loopback port, opens the page it serves in Debian's
Chromium (Playwright, never a browser download), lets the demo clip play long
enough for the timeline to fill, and saves the screenshot.

    python -m docs.screenshot                    # docs/dashboard.png, 1280x860, 25 s of audio
    python -m docs.screenshot --seconds 40 --out /tmp/dash.png

Run as a module from the repository root: it imports ``bench.harness``, which is not installed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from bench.harness import ListenProcess, launch_chromium, script

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=25.0, help="how long the demo plays before the shot")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    ap.add_argument("--size", default="1280x860", help="viewport WIDTHxHEIGHT")
    args = ap.parse_args()
    width, height = map(int, args.size.split("x"))

    daemon = ListenProcess([*script("ser-listen"), "--device", "demo", "--port", "0"], cwd=REPO, echo=sys.stderr.write)
    try:
        try:
            daemon.wait_url(60)
        except RuntimeError as exc:
            print(f"screenshot: {exc}", file=sys.stderr)
            return 1
        with sync_playwright() as pw:
            browser = launch_chromium(pw)
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(daemon.url)
            time.sleep(args.seconds)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
        print(f"wrote {args.out}")
        return 0
    finally:
        daemon.stop()


if __name__ == "__main__":
    sys.exit(main())

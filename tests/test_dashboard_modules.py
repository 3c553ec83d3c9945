"""The dashboard's ES modules: their node unit tests, and the files the daemon must serve for them.

The unit tests (``tests/dashboard/*.test.mjs``) use only ``node:test`` and ``node:assert``;
they are skipped, with the reason, where ``node`` is not on PATH. The browser itself is
tested in ``tests/test_dashboard.py``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "realtime" / "dashboard"
NODE_TESTS = REPO / "tests" / "dashboard"
IMPORT_RE = re.compile(r"""^\s*import\s+(?:[^;]*?\s+from\s+)?["']([^"']+)["']""", re.M)


def test_node_unit_tests_pass():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH (apt-get install nodejs); the dashboard's unit tests need it")
    files = sorted(NODE_TESTS.glob("*.test.mjs"))
    assert files, f"no *.test.mjs under {NODE_TESTS}"
    # The files by name: node 21 and later no longer search a directory given to --test.
    proc = subprocess.run(
        [node, "--test", "--test-reporter=tap", *map(str, files)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    passed = re.search(r"^# pass (\d+)$", out, re.M)
    assert passed and int(passed.group(1)) > 0, out[-2000:]
    assert re.search(r"^# fail 0$", out, re.M), out[-2000:]


def test_modules_import_only_files_the_daemon_serves():
    """The daemon serves files directly inside the dashboard folder, by exact name, typed by suffix."""
    from realtime.server import CONTENT_TYPES

    modules = sorted(DASHBOARD.glob("*.mjs"))
    assert "app.mjs" in {m.name for m in modules}
    page = (DASHBOARD / "index.html").read_text()
    assert '<script type="module" src="app.mjs"></script>' in page
    assert CONTENT_TYPES[".mjs"].startswith("text/javascript")  # browsers refuse modules of other types
    reached, todo = set(), ["app.mjs"]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        for spec in IMPORT_RE.findall((DASHBOARD / name).read_text()):
            assert spec.startswith("./") and "/" not in spec[2:], f"{name} imports {spec}: not a file beside it"
            assert spec.endswith(".mjs"), f"{name} imports {spec}"
            assert (DASHBOARD / spec[2:]).is_file(), f"{name} imports {spec}, which is missing"
            todo.append(spec[2:])
    assert reached == {m.name for m in modules}, f"modules no page loads: {sorted({m.name for m in modules} - reached)}"
    mic = (DASHBOARD / "mic.mjs").read_text()
    assert 'new URL("mic-worklet.js", import.meta.url)' in mic and (DASHBOARD / "mic-worklet.js").is_file()

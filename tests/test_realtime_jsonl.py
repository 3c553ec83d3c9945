"""realtime/jsonl.py: the --jsonl writer never blocks on a stalled reader (bounded, whole lines, in
order) and loses no line to a reader that keeps up."""

from __future__ import annotations

import threading
import time


def test_jsonl_writer_never_blocks_on_a_stalled_reader():
    """Finding 3: a stdout pipe nobody reads used to block the event loop (and /healthz, and SIGTERM)."""
    import os

    from realtime.jsonl import JsonlWriter

    r, w = os.pipe()
    try:
        out = JsonlWriter(w, max_lines=100)
        line = "x" * 1000
        t0 = time.monotonic()
        accepted = sum(out.write(line) for _ in range(2000))  # 2 MB into a 64 kB pipe
        assert accepted < 2000 and out.dropped == 2000 - accepted
        assert out.close(timeout=0.2) is False  # bounded even though nothing drains the pipe
        assert time.monotonic() - t0 < 30
        first = os.read(r, 1001)
        assert first == (line + "\n").encode()  # what was written is whole lines, in order
    finally:
        os.close(r)  # the writer's next write fails (EPIPE) and it stops; only then may its fd number be reused
        assert out._done.wait(30)
        os.close(w)


def test_jsonl_writer_writes_every_line_to_a_reader():
    import os

    from realtime.jsonl import JsonlWriter

    r, w = os.pipe()
    got = bytearray()
    reader = threading.Thread(target=lambda: [got.extend(b) for b in iter(lambda: os.read(r, 65536), b"")], daemon=True)
    reader.start()
    out = JsonlWriter(w, max_lines=10_000)
    for i in range(3000):
        assert out.write(f'{{"i": {i}}}')
    assert out.close(timeout=10.0)
    os.close(w)
    reader.join(10)
    os.close(r)
    assert got.decode().splitlines() == [f'{{"i": {i}}}' for i in range(3000)] and out.dropped == 0

"""``--jsonl`` output that never blocks the event loop: a bounded line queue drained by its own thread.

Owns writing predictions to stdout. The event loop only enqueues (never
waits); a writer thread does the blocking ``os.write`` on the file
descriptor. A reader that stalls (a pipe nobody reads) fills the pipe, then
the queue; from then on new lines are dropped and counted, and the loop, the
HTTP endpoints and SIGTERM carry on. Writing goes to the raw descriptor, not
through ``sys.stdout``'s buffer, so interpreter exit has nothing buffered to
flush into a stalled pipe. A reader that goes away (EPIPE) ends the output
quietly. Imports the standard library only.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time

log = logging.getLogger("ser-listen")

_STOP = object()


class JsonlWriter:
    """``write(line)`` from one thread, never blocking; lines reach ``fd`` in order or are counted in ``dropped``."""

    def __init__(self, fd: int, max_lines: int = 4096) -> None:
        if max_lines < 1:
            raise ValueError(f"max_lines must be >= 1, got {max_lines}")
        self.fd = fd
        self.dropped = 0
        self.accepted = 0
        self.written = 0
        self.broken = False
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_lines)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ser-jsonl", daemon=True)
        self._thread.start()

    def write(self, line: str) -> bool:
        """Queue one line (a newline is added); False when it was dropped (queue full or reader gone)."""
        if self.broken:
            self.dropped += 1
            return False
        try:
            self._queue.put_nowait((line + "\n").encode())
            self.accepted += 1
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("--jsonl: stdout is not being read; dropping lines (counted) rather than stalling")
            return False
        return True

    def pending(self) -> int:
        """Lines accepted but not yet written."""
        return 0 if self.broken else self.accepted - self.written

    def drain(self, idle_timeout: float) -> bool:
        """Wait until every accepted line is written, as long as the reader keeps taking them.

        Gives up (False) only when no line went out for ``idle_timeout`` s: a
        slow reader gets everything, a stalled one cannot hold the exit.
        """
        last, since = self.written, time.monotonic()
        while self.pending() > 0 and self._thread.is_alive():
            if self.written != last:
                last, since = self.written, time.monotonic()
            elif time.monotonic() - since > idle_timeout:
                return False
            time.sleep(0.01)
        return self.pending() == 0

    def close(self, timeout: float = 1.0) -> bool:
        """Let queued lines out for up to ``timeout`` s; True when all were written. Never blocks longer."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    break
        self._done.wait(max(0.0, deadline - time.monotonic()))
        left = self._queue.qsize()
        if not self._done.is_set() or left:
            self.dropped += left
            log.warning("--jsonl: %d line(s) not written at exit (stdout stalled)", left)
        return self._done.is_set() and not left

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                assert isinstance(item, bytes)
                if not self._write_all(item):
                    return
        finally:
            self._done.set()

    def _write_all(self, data: bytes) -> bool:
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except (BrokenPipeError, OSError) as exc:  # the reader went away: stop writing, keep serving
            self.broken = True
            log.info("--jsonl: stdout closed (%s); no more lines", exc)
            return False
        self.written += 1
        return True

"""The batching scheduler: one inference thread that scores the due windows of all streams together.

Owns the engine's time. Streams submit windows as they fall due (from any
thread); the worker waits for the first, gives others up to ``max_wait_s`` to
join, takes at most ``max_batch`` of them oldest first, copies their audio
into one preallocated ``[batch, samples]`` array, runs the engine once and
hands every result (and every drop) to ``on_results``. It never queues without
bound: a window older than ``stale_after_s`` when its turn comes is dropped
(counted), the queue is capped at ``max_queue`` by dropping the oldest
droppable window, and a window whose audio the ring has already overwritten
is dropped too. Windows of streams fed as fast as the engine goes (``--fast``)
are not droppable: those streams wait for the engine instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine import Engine
from realtime.metrics import DaemonMetrics
from realtime.stream import Window

log = logging.getLogger("ser-listen")


@dataclass
class Result:
    """The fate of one window: ``probs`` when scored, ``dropped`` (a reason) when not."""

    window: Window
    probs: np.ndarray | None
    dropped: str | None = None
    batch_size: int = 0
    inference_s: float = 0.0
    done_at: float = 0.0


class Scheduler:
    """One worker thread, one engine, cross-stream batches bounded in size and wait."""

    def __init__(
        self,
        engine: Engine,
        on_results: Callable[[list[Result]], None],
        metrics: DaemonMetrics,
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        stale_after_s: float = 1.0,
        max_queue: int = 256,
        active_streams: Callable[[], int] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.engine = engine
        self.on_results = on_results
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.stale_after_s = stale_after_s
        self.max_queue = max(max_queue, max_batch)
        # How many streams could still add a window to this batch; when every one of them already
        # has a window queued, waiting max_wait_s for more would only add latency.
        self.active_streams = active_streams
        self._queue: deque[Window] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._batch = np.zeros((max_batch, engine.window_samples), dtype=np.float32)
        self._thread = threading.Thread(target=self._run, name="ser-inference", daemon=True)

    # ------------------------------------------------------------ any thread

    def start(self) -> None:
        self._thread.start()

    def submit(self, window: Window) -> None:
        """Queue a due window; never blocks. Overflow drops the oldest droppable window."""
        dropped: Window | None = None
        with self._cond:
            if len(self._queue) >= self.max_queue:
                for i, w in enumerate(self._queue):
                    if w.droppable:
                        dropped = w
                        del self._queue[i]
                        break
            self._queue.append(window)
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify()
        if dropped is not None:
            self._report_drops([dropped], "queue_full")

    def pending(self) -> int:
        """Windows queued or being scored right now."""
        with self._cond:
            return len(self._queue) + (1 if self._busy else 0)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every submitted window has been scored or dropped (used when flushing)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------ worker

    def _take(self) -> tuple[list[Window], list[Window]]:
        """Wait for due windows and take a batch (oldest first); also return the stale ones skipped."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait(0.25)
            if self._stopping:
                return [], []
            deadline = time.monotonic() + self.max_wait_s
            while len(self._queue) < self.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0 or self._everyone_queued():
                    break
                self._cond.wait(left)
            now = time.monotonic()
            batch: list[Window] = []
            stale: list[Window] = []
            while self._queue and len(batch) < self.max_batch:
                w = self._queue.popleft()
                if w.droppable and now - w.due > self.stale_after_s:
                    stale.append(w)
                else:
                    batch.append(w)
            self._busy = bool(batch)
            self.metrics.queue_depth.set(len(self._queue))
            return batch, stale

    def _everyone_queued(self) -> bool:
        if self.active_streams is None:
            return False
        return len({id(w.stream) for w in self._queue}) >= self.active_streams()

    def _run(self) -> None:
        while True:
            batch, stale = self._take()
            if stale:
                self._report_drops(stale, "stale")
            if not batch:
                if self._stopping:
                    return
                continue
            try:
                self._score(batch)
            except Exception:  # a daemon must outlive one bad batch; the windows are reported lost
                log.exception("inference failed for a batch of %d windows", len(batch))
                self.metrics.engine_failures.inc()
                self._report_drops(batch, "engine_error")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _score(self, batch: list[Window]) -> None:
        kept: list[Window] = []
        lost: list[Window] = []
        for w in batch:
            if w.stream.read_window(w, self._batch[len(kept)]):
                kept.append(w)
            else:
                lost.append(w)
        if lost:
            self._report_drops(lost, "overwritten")
        if not kept:
            return
        n = len(kept)
        t0 = time.perf_counter()
        probs = self.engine.infer(self._batch[:n])
        dt = time.perf_counter() - t0
        self.metrics.batch_size.observe(n)
        self.metrics.inference_seconds.observe(dt)
        self.metrics.windows_scored.inc(n)
        now = time.monotonic()
        results = [Result(w, np.asarray(probs[i]), None, n, dt, now) for i, w in enumerate(kept)]
        self._deliver(results)

    def _report_drops(self, windows: list[Window], reason: str) -> None:
        self.metrics.windows_dropped.inc(len(windows), reason)
        now = time.monotonic()
        self._deliver([Result(w, None, reason, 0, 0.0, now) for w in windows])

    def _deliver(self, results: list[Result]) -> None:
        try:
            self.on_results(results)
        finally:
            for r in results:
                r.window.stream.window_done()

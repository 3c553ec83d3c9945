"""Remote streams' intake off the event loop: one worker thread runs their DSP, in order, through a bounded queue.

Owns the hand-off between a client's decoded PCM (on the event loop) and its
:class:`~realtime.stream.Stream`. ``Stream.push`` downmixes, resamples (soxr),
analyses voice (webrtcvad), writes the ring and cuts due windows: that is most
of a remote stream's CPU outside the engine, and on the event loop it delayed
every prediction the loop had to deliver meanwhile. Here the loop only queues
the frames (:meth:`Intake.push`) and the stop (:meth:`Intake.finish`); one
worker thread feeds the streams, so each stream is fed by one thread, in the
order its frames came, and its window clock still advances only once the audio
is in its ring (``Stream.push`` cuts windows after writing).

Bounded: at most ``max_items`` frames or ``max_bytes`` of audio wait. When the
queue is full, ``push`` waits (the event loop goes on; only that connection
stops reading, so TCP slows its sender), which is what the loop doing the DSP
itself did before: a connection's audio was taken no faster than it was
processed, and the protocol's per-connection rate rules (``Session``) apply
to every frame before it gets here. A stop is never refused (it is one small
marker, queued behind the stream's audio). The worker starts with the first
frame; ``stop`` ends it, and what comes after is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque

import numpy as np

from realtime.stream import Stream

log = logging.getLogger("ser-listen")

MAX_ITEMS = 1024  # frames waiting at most (100 ms frames: about one second of 96 streams) ...
MAX_BYTES = 16 << 20  # ... and decoded audio waiting at most (a frame alone may exceed it: never a deadlock)


class Intake:
    """One worker thread feeding remote streams their frames in arrival order; a bounded queue from the loop."""

    def __init__(self, max_items: int = MAX_ITEMS, max_bytes: int = MAX_BYTES) -> None:
        self.max_items = max(1, max_items)
        self.max_bytes = max(1, max_bytes)
        self._queue: deque[tuple[Stream, np.ndarray | None]] = deque()  # None: the stream's input ended
        self._bytes = 0
        self._busy = False
        self._stopping = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._space_wanted = False  # a producer waits for room (set under _cond, cleared by the worker)
        self._waiters: list[asyncio.Future[None]] = []  # event loop only

    # ------------------------------------------------------------ event loop

    async def push(self, stream: Stream, frames: np.ndarray) -> None:
        """Queue a frame for ``stream``; waits (without blocking the loop) while the queue is full."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._stopping:  # shutting down: nothing will feed it any more, and nothing may pile up
                    return
                if not self._full():
                    self._put(stream, frames)
                    return
                self._space_wanted = True
                self._loop = loop
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def finish(self, stream: Stream) -> None:
        """``stream``'s input ended: it is finished (final window, retirement) after the frames queued before."""
        with self._cond:
            if not self._stopping:
                self._put(stream, None)

    # ------------------------------------------------------------ any thread

    def pending(self) -> int:
        """Frames and stops queued or being fed right now."""
        with self._cond:
            return len(self._queue) + (1 if self._busy else 0)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until everything queued so far was fed (used when flushing at shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout=timeout)

    def stop(self, timeout: float = 0.5) -> None:
        """End the worker after the item it is feeding; what is still queued is not fed."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
        self._wake_soon()

    def is_alive(self) -> bool:
        """Whether the worker can feed streams (a health check's question, as ``Scheduler.is_alive``): it runs,
        or has not been needed yet (it starts with the first frame). False once stopped, or once it died:
        every remote stream would then wait for audio that never reaches its ring."""
        with self._cond:
            if self._stopping:
                return False
            return self._thread is None or self._thread.is_alive()

    # ------------------------------------------------------------ internals

    def _full(self) -> bool:
        return len(self._queue) >= self.max_items or self._bytes >= self.max_bytes

    def _put(self, stream: Stream, frames: np.ndarray | None) -> None:
        """Under ``_cond``: append, wake the worker (started on first use)."""
        self._queue.append((stream, frames))
        if frames is not None:
            self._bytes += frames.nbytes
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ser-intake", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                stream, frames = self._queue.popleft()
                self._busy = True
                wake = self._room_freed()
            if wake:
                self._wake_soon()
            try:
                if frames is None:
                    stream.finish()
                else:
                    stream.push(frames)
            except Exception:  # one stream's bad frame must not stop every other stream's intake
                log.exception("intake: stream %s: feeding failed", stream.id)
            finally:
                with self._cond:
                    if frames is not None:
                        self._bytes -= frames.nbytes
                    self._busy = False
                    wake = self._room_freed()
                    self._cond.notify_all()
                if wake:
                    self._wake_soon()

    def _room_freed(self) -> bool:
        """Under ``_cond``: whether a producer waits and now has room (it is told once)."""
        if self._space_wanted and not self._full():
            self._space_wanted = False
            return True
        return False

    def _wake_soon(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        """Event loop: every producer waiting for room looks again."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

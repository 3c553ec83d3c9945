"""Fixed-size ring buffers of float32 audio, written by one thread and read by others without locks.

Owns the one data structure that sits between an audio callback and the rest of
the daemon. The writer never allocates and never waits: it copies into a
preallocated array and then publishes the new total. Readers address samples by
their absolute index since the stream began (``written`` is the index of the next
sample), copy what they need, and then check that the writer did not overwrite
it meanwhile — a sequence-lock without the lock. Imports numpy only.
"""

from __future__ import annotations

import numpy as np


class RingBuffer:
    """A ring of ``capacity`` frames, mono (``channels=None``) or ``[capacity, channels]``.

    Single producer: ``write`` must only ever be called from one thread at a
    time (the capture callback, or the one thread feeding a stream). Any
    number of readers may call ``read``/``read_into`` concurrently.
    """

    def __init__(self, capacity: int, channels: int | None = None) -> None:
        if capacity <= 0:
            raise ValueError(f"ring buffer capacity must be positive, got {capacity}")
        shape = (capacity,) if channels is None else (capacity, channels)
        self._buf = np.zeros(shape, dtype=np.float32)
        self.capacity = capacity
        self.channels = channels
        # ``_claimed`` moves before the copy, ``written`` after it: a reader that sees its range
        # still above ``_claimed - capacity`` after copying knows the copy was not torn.
        self._claimed = 0
        self.written = 0

    @property
    def oldest(self) -> int:
        """Absolute index of the oldest sample still held."""
        return max(0, self.written - self.capacity)

    def write(self, data: np.ndarray) -> None:
        """Append frames; the oldest are overwritten once the ring is full. Allocation-free."""
        n = len(data)
        if n == 0:
            return
        if n > self.capacity:  # only the newest ``capacity`` frames can be kept
            self._claimed = self.written + n
            self.written += n - self.capacity
            data = data[n - self.capacity :]
            n = self.capacity
        else:
            self._claimed = self.written + n
        pos = self.written % self.capacity
        first = min(n, self.capacity - pos)
        self._buf[pos : pos + first] = data[:first]
        if first < n:
            self._buf[: n - first] = data[first:]
        self.written += n

    def available(self, start: int, end: int) -> bool:
        """Whether samples ``[start, end)`` have been written and not yet overwritten."""
        return 0 <= start <= end <= self.written and start >= self._claimed - self.capacity

    def read_into(self, out: np.ndarray, start: int) -> bool:
        """Copy samples ``[start, start + len(out))`` into ``out``; False if they are not (or no longer) there.

        The check after the copy is what makes this safe against a concurrent
        writer: if the writer claimed the region while we copied, the copy is
        discarded by the caller.
        """
        end = start + len(out)
        if not self.available(start, end):
            return False
        n = end - start
        pos = start % self.capacity
        first = min(n, self.capacity - pos)
        out[:first] = self._buf[pos : pos + first]
        if first < n:
            out[first:n] = self._buf[: n - first]
        return start >= self._claimed - self.capacity

    def read(self, start: int, end: int) -> np.ndarray | None:
        """A copy of samples ``[start, end)``, or None when they are not (or no longer) held."""
        shape = (end - start,) if self.channels is None else (end - start, self.channels)
        out = np.empty(shape, dtype=np.float32)
        return out if self.read_into(out, start) else None

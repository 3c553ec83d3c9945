"""realtime/ringbuffer.py: reads of exact ranges across the seam, writes larger than the ring, writes
at the capacity boundaries."""

from __future__ import annotations

import numpy as np

from realtime.ringbuffer import RingBuffer


def test_ring_buffer_wraps_and_reads_exact_ranges():
    ring = RingBuffer(10)
    ring.write(np.arange(7, dtype=np.float32))
    np.testing.assert_array_equal(ring.read(0, 7), np.arange(7))
    ring.write(np.arange(7, 15, dtype=np.float32))  # wraps: holds 5..14
    assert ring.written == 15 and ring.oldest == 5
    np.testing.assert_array_equal(ring.read(5, 15), np.arange(5, 15))  # exactly the whole ring, across the seam
    np.testing.assert_array_equal(ring.read(8, 12), np.arange(8, 12))
    assert ring.read(4, 6) is None  # overwritten
    assert ring.read(14, 16) is None  # not written yet
    np.testing.assert_array_equal(ring.read(15, 15), np.zeros(0))


def test_ring_buffer_keeps_the_newest_when_one_write_exceeds_capacity():
    ring = RingBuffer(4, channels=2)
    data = np.arange(20, dtype=np.float32).reshape(10, 2)
    ring.write(data)
    assert ring.written == 10
    np.testing.assert_array_equal(ring.read(6, 10), data[6:])
    assert ring.read(5, 10) is None


def test_ring_buffer_write_is_exact_at_capacity_boundaries():
    ring = RingBuffer(8)
    for i in range(5):  # writes of exactly the capacity, each landing at position 0
        ring.write(np.full(8, i, dtype=np.float32))
        np.testing.assert_array_equal(ring.read(8 * i, 8 * i + 8), np.full(8, i))
    out = np.empty(8, dtype=np.float32)
    assert ring.read_into(out, 32)
    assert not ring.read_into(out, 31)

"""realtime.intake: remote streams' frames fed off the event loop, in order per stream, through a bounded queue."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from realtime.intake import Intake


class Recorder:
    """What the intake calls on a stream (push, finish), recorded with the thread that called it."""

    def __init__(self, sid: str, gate: threading.Event | None = None) -> None:
        self.id = sid
        self.got: list[float | str] = []
        self.threads: set[str] = set()
        self.gate = gate
        self.entered = threading.Event()  # the worker is inside push (held at the gate, if any)

    def push(self, frames: np.ndarray) -> None:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        self.threads.add(threading.current_thread().name)
        if frames[0] < 0:
            raise ValueError("a bad frame")
        self.got.append(float(frames[0]))

    def finish(self) -> None:
        self.threads.add(threading.current_thread().name)
        self.got.append("end")


def frame(v: float, n: int = 160) -> np.ndarray:
    return np.full(n, v, np.float32)


def test_each_streams_frames_are_fed_in_order_on_the_worker_then_its_stop():
    streams = [Recorder(f"s{i}") for i in range(3)]
    intake = Intake(max_items=8)  # small: producers wait for room many times

    async def client(s: Recorder) -> None:
        for k in range(200):
            await intake.push(s, frame(k))
            if k % 17 == 0:
                await asyncio.sleep(0)
        intake.finish(s)

    async def main() -> None:
        await asyncio.gather(*(client(s) for s in streams))

    asyncio.run(main())
    assert intake.wait_idle(30)
    intake.stop()
    for s in streams:
        assert s.got == [float(k) for k in range(200)] + ["end"]
        assert s.threads == {"ser-intake"}  # never the event loop's thread


def test_a_full_queue_makes_the_producer_wait_never_grow_and_a_stop_still_goes_in():
    gate = threading.Event()
    stuck = Recorder("stuck", gate)
    intake = Intake(max_items=4, max_bytes=1 << 30)

    async def main() -> None:
        await intake.push(stuck, frame(0))
        assert await asyncio.to_thread(stuck.entered.wait, 30)  # the worker holds frame 0 at the gate
        for k in range(1, 5):  # four queued: the queue is full
            await intake.push(stuck, frame(k))
        assert intake.pending() == 5
        late = asyncio.ensure_future(intake.push(stuck, frame(5)))
        await asyncio.sleep(0.2)
        assert not late.done() and intake.pending() == 5  # waits for room; the queue did not grow
        intake.finish(stuck)  # a stop is never refused
        assert intake.pending() == 6
        gate.set()
        await asyncio.wait_for(late, 30)

    asyncio.run(main())
    assert intake.wait_idle(30)
    intake.stop()
    assert stuck.got == [0.0, 1.0, 2.0, 3.0, 4.0, "end", 5.0]  # the stop went in before the frame that waited


def test_the_queue_is_bounded_in_bytes_too_but_one_big_frame_always_goes():
    gate = threading.Event()
    s = Recorder("s", gate)
    intake = Intake(max_items=1000, max_bytes=4000)

    async def main() -> None:
        await intake.push(s, frame(0, 10_000))  # 40 kB alone, over the bound: taken (no deadlock)
        assert await asyncio.to_thread(s.entered.wait, 30)  # the worker holds it at the gate: queue empty, it still counts
        late = asyncio.ensure_future(intake.push(s, frame(1)))
        await asyncio.sleep(0.1)
        assert not late.done()
        gate.set()
        await asyncio.wait_for(late, 30)

    asyncio.run(main())
    assert intake.wait_idle(30)
    intake.stop()
    assert s.got == [0.0, 1.0]


def test_one_streams_failure_does_not_stop_the_others():
    bad, good = Recorder("bad"), Recorder("good")
    intake = Intake()

    async def main() -> None:
        await intake.push(bad, frame(-1))
        await intake.push(good, frame(1))
        intake.finish(good)

    asyncio.run(main())
    assert intake.wait_idle(30)
    intake.stop()
    assert good.got == [1.0, "end"] and bad.got == [] and not intake.is_alive()


def test_after_stop_nothing_is_queued():
    s = Recorder("s")
    intake = Intake()

    async def main() -> None:
        await intake.push(s, frame(1))
        assert intake.wait_idle(30)
        intake.stop()
        await intake.push(s, frame(2))
        intake.finish(s)

    asyncio.run(main())
    assert intake.pending() == 0 and s.got == [1.0]


class Killer(Recorder):
    """A stream whose push ends the worker thread: something ``except Exception`` does not hold back."""

    def push(self, frames: np.ndarray) -> None:
        raise SystemExit("the intake worker dies")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is the point
def test_is_alive_until_the_worker_dies_or_is_stopped():
    intake = Intake()
    assert intake.is_alive()  # not started yet (it starts with the first frame): nothing is wrong
    s = Recorder("s")

    async def feed(stream: Recorder) -> None:
        await intake.push(stream, frame(1))

    asyncio.run(feed(s))
    assert intake.wait_idle(30) and s.got == [1.0] and intake.is_alive()
    asyncio.run(feed(Killer("k")))
    deadline = time.monotonic() + 30
    while intake.is_alive():
        assert time.monotonic() < deadline, "the worker did not end"
        time.sleep(0.01)
    late = Recorder("late")
    asyncio.run(feed(late))  # queued, and nothing will ever feed it
    assert not intake.wait_idle(0.1) and intake.pending() == 1 and late.got == []
    stopped = Intake()
    stopped.stop()
    assert not stopped.is_alive()  # a stopped intake feeds nothing either

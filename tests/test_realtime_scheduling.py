"""The scheduler's two service classes with the real Scheduler, Stream and (tiny ONNX) engine: an
established live stream is served ahead of a backlog of bursting new streams, and while it is,
the backlog goes in small batches; with no live stream the backlog still batches fully.

(Issue 11: a well-behaved stream got no prediction for 20 s beside a hundred hostile clients;
fairness alone gives it one turn per round, so a backlog of bursts still delays it by a round.)
"""

from __future__ import annotations

from contract.audio import LABELS
from realtime.config import load_daemon_config
from realtime.metrics import DaemonMetrics
from realtime.scheduler import BACKGROUND_BATCH_DIVISOR, BACKGROUND_SHARE, LIVE_RECENT_S, Result, Scheduler
from realtime.stream import Stream, StreamSettings
from tests.conftest import ResultCollector, tone

SR = 16_000


def backlog_and_live(engine, live: bool) -> tuple[list[list[Result]], Scheduler]:
    batches = ResultCollector()
    sched = Scheduler(engine, batches, DaemonMetrics(), max_batch=8, max_wait_s=0.0, stale_after_s=60.0, max_queue=256)
    settings = StreamSettings.from_config(load_daemon_config(), engine.window_samples)
    bursts = [Stream(f"burst-{i}", "remote", settings, SR, 1, sched.submit, LABELS) for i in range(4)]
    for b in bursts:  # new streams that sent 6 s at once: 11 windows each, all due now
        b.push(tone(seconds=6.0, amp=0.2))
    n = 44
    if live:
        stream = Stream("live", "remote", settings, SR, 1, sched.submit, LABELS)
        stream.created -= 10.0  # it has been streaming at real-time pace for 10 s
        stream.push(tone(seconds=2.0, amp=0.1))  # its 3 due windows arrive behind the backlog
        n += 3
    sched.start()
    try:
        return batches.wait_calls(n), sched
    finally:
        sched.stop()


def test_an_established_live_stream_goes_first_and_the_backlog_waits_in_small_batches(engine):
    calls, _ = backlog_and_live(engine, live=True)
    first = [r.window.stream.id for r in calls[0]]
    assert first == ["live"] * 3, first  # fair order alone would give it one window of the first batch
    background = [len(c) for c in calls[1:]]
    assert max(background) <= 8 // BACKGROUND_BATCH_DIVISOR
    assert all(r.probs is not None for c in calls for r in c)


def test_without_live_streams_the_backlog_batches_fully(engine):
    calls, _ = backlog_and_live(engine, live=False)
    assert max(len(c) for c in calls) == 8
    first = [r.window.stream.id for r in calls[0]]
    assert sorted(set(first)) == [f"burst-{i}" for i in range(4)]  # round robin across the bursts


def test_while_a_live_stream_is_served_the_backlog_rests_the_engine_between_its_batches(engine):
    """Background batches back to back kept the engine (and both cores) busy all the time beside a hostile
    crowd: a live window then always waited for one, and the event loop carrying its result for the CPU.
    Each background batch is now followed by a rest of (1 - share) / share times its own cost."""
    calls, sched = backlog_and_live(engine, live=True)
    background = [c for c in calls[1:] if c[0].done_at < sched._live_at + LIVE_RECENT_S]
    assert len(background) >= 2
    rest = (1 - BACKGROUND_SHARE) / BACKGROUND_SHARE
    for prev, nxt in zip(background, background[1:], strict=False):
        # the next batch ends no sooner than the rest after the previous one plus its own inference
        assert nxt[0].done_at - prev[0].done_at >= rest * prev[0].inference_s + nxt[0].inference_s


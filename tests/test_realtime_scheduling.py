"""realtime/scheduler.py with the real Scheduler, Stream and (tiny ONNX) engine: batching across streams,
dropping stale, overflowing and overwritten windows, waiting for an engine a file stream outruns, streaming
engines encoding each chunk once (the offline probabilities, the shared silence chunk, one encode and one
classify call per batch, batches bounded in chunks), fairness by client, non-finite rows, windows served
out of order; and the two service classes.

The service classes: an established live stream is served ahead of a backlog of bursting new streams, and
while it is, the backlog goes in small batches; with no live stream the backlog still batches fully.
(Issue 11: a well-behaved stream got no prediction for 20 s beside a hundred hostile clients;
fairness alone gives it one turn per round, so a backlog of bursts still delays it by a round.)
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from contract.audio import LABELS, WINDOW_SAMPLES
from realtime.config import load_daemon_config
from realtime.metrics import DaemonMetrics
from realtime.scheduler import BACKGROUND_BATCH_DIVISOR, BACKGROUND_SHARE, LIVE_RECENT_S, Result, Scheduler
from realtime.stream import Stream, StreamSettings, Window
from tests.conftest import ResultCollector, tone
from tests.stream_fixtures import engine_settings, expected_window, settings

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


def test_a_streams_windows_from_before_it_was_established_are_served_before_its_later_ones(engine):
    """A new stream's first windows wait as background; once its next window is live they go with it, first.

    bench.daemon at 64 streams: two streams' second windows (due in their first 2 s) sat behind the
    live class for the whole 15 s run, while the stream's later windows were scored, and were dropped
    stale at the end: a window lost and one delivered out of order for each, with the engine mostly idle.
    """
    sched, col, _ = make_scheduler(engine, max_batch=1, max_wait_s=0.0, stale_after_s=60.0, max_queue=256)
    cfg = StreamSettings.from_config(load_daemon_config(), engine.window_samples)
    live = Stream("live", "remote", cfg, SR, 1, sched.submit, LABELS)
    live.created -= 10.0  # streaming at real-time pace for 10 s
    young = Stream("young", "remote", cfg, SR, 1, sched.submit, LABELS)
    young.push(tone(seconds=1.0, amp=0.1))  # its first window, due while it is new: background
    live.push(tone(seconds=3.0, amp=0.1))  # live windows queued behind it
    young.created -= 10.0  # ... and now it has run long enough at real-time pace
    young.push(tone(seconds=0.5, amp=0.1))  # its next window is live
    n = young.seq + live.seq
    sched.start()
    try:
        order = [(r.window.stream.id, r.window.seq) for r in col.wait(n)]
    finally:
        sched.stop()
    mine = [seq for sid, seq in order if sid == "young"]
    assert mine == sorted(mine) and len(mine) == young.seq, order
    assert order.index(("young", mine[0])) < order.index(("live", live.seq - 1)), order  # not left for last


def make_scheduler(engine, **kw) -> tuple[Scheduler, ResultCollector, DaemonMetrics]:
    col = ResultCollector()
    metrics = DaemonMetrics()
    return Scheduler(engine, col, metrics, **kw), col, metrics


def test_scheduler_batches_windows_of_all_streams(engine):
    sched, col, metrics = make_scheduler(engine, max_batch=4, max_wait_s=0.05)
    streams = [Stream(f"s{i}", "test", settings(), SR, 1, sched.submit, LABELS) for i in range(3)]
    for i, s in enumerate(streams):  # queued before the worker starts: it finds them all due
        s.push(tone(seconds=2.0, amp=0.1 * (i + 1)))  # 3 windows each: 1.0, 1.5, 2.0 s
    sched.start()
    results = col.wait(9)
    sched.stop()
    assert sorted(r.batch_size for r in results) == [1] + [4] * 8  # 9 windows: batches of 4, 4, 1
    assert all(r.dropped is None for r in results)
    assert metrics.windows_scored.value() == 9
    # each result is routed back to its own stream and matches scoring that window alone
    for r in results:
        out = np.empty(WINDOW_SAMPLES, dtype=np.float32)
        assert r.window.stream.read_window(r.window, out)
        np.testing.assert_allclose(r.probs, engine.infer(out[None])[0], atol=1e-6)
    assert all(s.outstanding == 0 for s in streams)


def test_scheduler_drops_stale_windows_and_bounds_its_queue(engine):
    sched, col, metrics = make_scheduler(engine, max_batch=8, max_wait_s=0.0, stale_after_s=0.5, max_queue=8)
    stream = Stream("s", "test", settings(), SR, 1, lambda w: None, LABELS)
    stream.push(tone(seconds=7.0))
    old = time.monotonic() - 2.0
    for k in range(12):  # 12 due windows, 4 over the queue bound; the first 6 are stale
        sched.submit(Window(stream, k, 16000 + 8000 * k, old if k < 6 else time.monotonic()))
    sched.start()
    results = col.wait(12)
    sched.stop()
    reasons = [r.dropped for r in sorted(results, key=lambda r: r.window.seq)]
    assert reasons[:4] == ["queue_full"] * 4
    assert reasons[4:6] == ["stale"] * 2
    assert reasons[6:] == [None] * 6
    assert metrics.windows_dropped.value("queue_full") == 4 and metrics.windows_dropped.value("stale") == 2


def test_scheduler_drops_windows_whose_audio_was_overwritten(engine):
    sched, col, _ = make_scheduler(engine, max_batch=4)
    stream = Stream("s", "test", settings(**{"audio.buffer_s": 6.0}), SR, 1, lambda w: None, LABELS)
    stream.push(tone(seconds=5.0))
    w = Window(stream, 0, 5 * SR, time.monotonic(), droppable=False)
    stream.push(tone(seconds=3.0))  # the ring (6 s) no longer holds 0..5 s
    sched.submit(w)
    sched.start()
    (r,) = col.wait(1)
    sched.stop()
    assert r.dropped == "overwritten"


def test_fast_streams_wait_for_the_engine_instead_of_dropping(engine):
    sched, col, _ = make_scheduler(engine, max_batch=8, stale_after_s=0.001)
    stream = Stream("f", "file", StreamSettings.from_config(load_daemon_config(), WINDOW_SAMPLES, 8), SR, 1, sched.submit, LABELS, droppable=False)
    sched.start()
    audio = tone(seconds=30.0)
    for i in range(0, len(audio), 800):
        stream.push(audio[i : i + 800])
        assert stream.wait_outstanding_below(8, timeout=5.0)
    stream.finish()
    results = col.wait(stream.seq)
    sched.stop()
    assert len(results) == stream.seq == 59 and all(r.dropped is None for r in results)  # 1.0, 1.5, ..., 30.0 s


def test_scheduler_does_not_wait_for_streams_that_cannot_join(engine):
    # max_wait is an hour: the window is scored at all only if the scheduler sees that the one
    # active stream is already in the batch and stops waiting (no CPU-dependent time bound).
    sched, col, _ = make_scheduler(engine, max_batch=8, max_wait_s=3600.0, active_streams=lambda: 1)
    stream = Stream("s", "test", settings(), SR, 1, sched.submit, LABELS)
    sched.start()
    stream.push(tone(seconds=1.0))
    (r,) = col.wait(1, timeout=30.0)
    sched.stop()
    assert r.dropped is None and r.batch_size == 1


class CountingEngine:
    """The real engine, with its calls counted (rows per encode_chunks / classify call)."""

    def __init__(self, eng) -> None:
        self.eng = eng
        self.encoded: list[int] = []
        self.classified: list[int] = []

    def __getattr__(self, name):
        return getattr(self.eng, name)

    def encode_chunks(self, x):
        self.encoded.append(len(x))
        return self.eng.encode_chunks(x)

    def classify(self, e):
        self.classified.append(len(e))
        return self.eng.classify(e)


@pytest.fixture(scope="module", params=["energy_model", "chunked_model"])
def any_engine(request):
    from engine.registry import load_engine

    eng = load_engine(request.getfixturevalue(request.param), backend="onnxruntime", device="cpu")
    eng.warmup()
    return eng


def test_streaming_gives_the_offline_probabilities_and_encodes_each_chunk_once(any_engine):
    eng = CountingEngine(any_engine)
    sched, col, _ = make_scheduler(eng, max_batch=4, max_wait_s=0.0)
    rng = np.random.default_rng(5)
    audio = (0.2 * rng.standard_normal(int(7.3 * SR)) * np.sin(np.linspace(0, 40, int(7.3 * SR))) ** 2).astype(np.float32)
    stream = Stream("s", "file", engine_settings(any_engine), SR, 1, sched.submit, LABELS, droppable=False)
    sched.start()
    for i in range(0, len(audio), 1111):
        stream.push(audio[i : i + 1111])
        assert stream.wait_outstanding_below(4, timeout=10.0)
    stream.finish()
    results = col.wait(stream.seq)
    sched.stop()
    results.sort(key=lambda r: r.window.seq)
    assert [r.window.end for r in results] == [16000 + 8000 * k for k in range(13)] + [int(7.3 * SR)]
    assert all(r.dropped is None for r in results)
    for r in results:
        want = any_engine.infer(expected_window(audio, r.window.end, any_engine.chunked)[None])[0]
        np.testing.assert_allclose(r.probs, want, atol=1e-5)
    if any_engine.chunked:
        # the 13 grid windows (ends 1.0 .. 7.0 s) need the chunks ending at 0 (all the zero chunks share it),
        # 0.5, 1.0, ..., 7.0 s: 15, each encoded once; the final window (7.3 s) is off the grid: 9 of its own
        assert sum(eng.encoded) == 15 + 9 and sched.chunks.held(stream) <= any_engine.chunks_per_window
    else:
        assert sum(eng.encoded) == len(results)  # the window is the chunk


def test_the_silence_before_a_stream_start_is_encoded_once_for_all_streams(chunked_model):
    """A new stream's first window is mostly chunks of zeros from before its start: one embedding serves all."""
    from engine.registry import load_engine

    eng = CountingEngine(load_engine(chunked_model, backend="onnxruntime", device="cpu"))
    sched, col, _ = make_scheduler(eng, max_batch=8, max_wait_s=0.0)
    sched.start()
    clips = [tone(seconds=1.0, freq=300, amp=0.2), tone(seconds=1.0, freq=450, amp=0.05)]
    for i, clip in enumerate(clips):
        Stream(f"s{i}", "test", engine_settings(eng), SR, 1, sched.submit, LABELS).push(clip)
        col.wait(i + 1)
    sched.stop()
    # first stream: the zero chunk (key 0) and the chunks ending at 0.5 s and 1.0 s; second: only its own two
    assert eng.encoded == [3, 2]
    for r, clip in zip(sorted(col.results, key=lambda r: r.window.stream.id), clips, strict=True):
        want = eng.eng.infer(expected_window(clip, r.window.end, True)[None])[0]
        np.testing.assert_allclose(r.probs, want, atol=1e-5)


def test_one_encode_and_one_classify_call_per_batch_across_streams(chunked_model):
    from engine.registry import load_engine

    eng = CountingEngine(load_engine(chunked_model, backend="onnxruntime", device="cpu"))
    sched, col, _ = make_scheduler(eng, max_batch=16, max_wait_s=0.0)  # room for the 6 windows' 12 chunks
    streams = [Stream(f"s{i}", "test", engine_settings(eng), SR, 1, sched.submit, LABELS) for i in range(3)]
    for i, s in enumerate(streams):  # queued before the worker starts: one batch of 6 windows
        s.push(tone(seconds=1.5, freq=200 + 100 * i, amp=0.1 * (i + 1)))
    sched.start()
    results = col.wait(6)
    sched.stop()
    assert eng.encoded == [3 * 4] and eng.classified == [6]  # per stream, chunks ending at 0, 8000, 16000, 24000
    assert sorted(r.batch_size for r in results) == [6] * 6
    for r in results:
        s = r.window.stream
        audio = s.ring.read(0, s.ring.written)
        np.testing.assert_allclose(r.probs, eng.infer(expected_window(audio, r.window.end, True)[None])[0], atol=1e-5)


def test_a_batch_encodes_at_most_max_batch_chunks_but_its_first_window_goes_whatever_it_needs(chunked_model):
    """A stream's window after dropped ones needs up to K new chunks, not one: a batch limited in windows
    alone could cost K times what max_batch one-hop windows cost, and a live window falling due meanwhile
    waited for all of it (issue 11: a good stream's p99 beside a hostile crowd)."""
    from engine.registry import load_engine

    eng = CountingEngine(load_engine(chunked_model, backend="onnxruntime", device="cpu"))
    sched, col, _ = make_scheduler(eng, max_batch=2, max_wait_s=0.0)
    stream = Stream("s", "test", engine_settings(eng), SR, 1, sched.submit, LABELS)
    stream.push(tone(seconds=1.5, amp=0.1))  # 2 windows: the first needs chunks ending at 0, 8000, 16000; the next one more
    sched.start()
    results = col.wait(2)
    sched.stop()
    assert eng.encoded == [3, 1] and eng.classified == [1, 1]  # a window limit alone gave one batch: [4], [2]
    assert all(r.probs is not None for r in results)


def test_a_flooding_stream_cannot_starve_a_well_behaved_one(engine):
    """Finding 1: 200 due windows of one stream queued first; the other stream's one window is in the first batch."""
    sched, col, _ = make_scheduler(engine, max_batch=4, max_wait_s=0.0, max_queue=256)
    flood = Stream("flood", "remote", settings(**{"audio.buffer_s": 120.0}), SR, 1, lambda w: None, LABELS, group="client-1")
    calm = Stream("calm", "remote", settings(), SR, 1, lambda w: None, LABELS, group="client-2")
    flood.push(tone(seconds=101.0, amp=0.05))
    calm.push(tone(seconds=1.0, amp=0.2))
    now = time.monotonic()
    for k in range(200):
        sched.submit(Window(flood, k, 16000 + 8000 * k, now, droppable=False))
    sched.submit(Window(calm, 0, 16000, now, droppable=False))
    sched.start()
    results = col.wait(201, timeout=60)
    sched.stop()
    calm_at = next(i for i, r in enumerate(results) if r.window.stream is calm)
    assert calm_at < 4, f"the well-behaved stream's window came {calm_at + 1}th"


def test_one_clients_many_streams_share_one_turn(engine):
    """Fair by client first: a client with 5 streams gets no more of a batch than a client with one."""
    sched, col, _ = make_scheduler(engine, max_batch=2, max_wait_s=0.0)
    many = [Stream(f"m{i}", "remote", settings(), SR, 1, lambda w: None, LABELS, group="greedy") for i in range(5)]
    one = Stream("one", "remote", settings(), SR, 1, lambda w: None, LABELS, group="polite")
    now = time.monotonic()
    for s in [*many, one]:
        s.push(tone(seconds=1.0))
    for s in many:
        sched.submit(Window(s, 0, 16000, now, droppable=False))
    sched.submit(Window(one, 0, 16000, now, droppable=False))
    sched.start()
    results = col.wait(6)
    sched.stop()
    assert one in {r.window.stream for r in results[:2]}


def test_non_finite_rows_cost_only_their_own_windows(nan_model):
    """Finding 5: in one batch a window the model turns into NaN is dropped; the other stream keeps its result."""
    from engine.registry import load_engine

    eng = load_engine(nan_model, backend="onnxruntime", device="cpu")
    sched, col, metrics = make_scheduler(eng, max_batch=4, max_wait_s=0.0)
    bad = Stream("bad", "test", settings(), SR, 1, sched.submit, LABELS)
    good = Stream("good", "test", settings(), SR, 1, sched.submit, LABELS)
    bad.push(np.full(SR, -0.1, np.float32))  # negative mean: the model's sqrt gives NaN
    good.push(np.full(SR, 0.1, np.float32))
    sched.start()
    results = {r.window.stream.id: r for r in col.wait(2)}
    good.push(np.full(SR // 2, 0.1, np.float32))  # and the next batch is scored as usual
    more = col.wait(3)
    sched.stop()
    assert results["bad"].probs is None and results["bad"].dropped == "non_finite"
    assert results["good"].dropped is None and np.isfinite(results["good"].probs).all()
    assert more[-1].window.stream is good and more[-1].dropped is None
    assert metrics.windows_dropped.value("non_finite") == 1
    assert not sched.engine_state().failing  # a NaN window is not an engine failure


def test_a_window_served_late_is_still_scored_right_and_keeps_the_cache_bounded(chunked_model):
    """Windows of one stream can be served out of order (priority classes); chunks are re-encoded if need be."""
    from engine.registry import load_engine

    eng = load_engine(chunked_model, backend="onnxruntime", device="cpu")
    sched, col, _ = make_scheduler(eng, max_batch=1, max_wait_s=0.0)
    stream = Stream("s", "test", engine_settings(eng), SR, 1, lambda w: None, LABELS)
    rng = np.random.default_rng(9)
    audio = (0.1 * rng.standard_normal(8 * SR)).astype(np.float32)
    stream.push(audio)
    now = time.monotonic()
    ends = [96_000, 120_000, 104_000, 128_000]  # the 6.5 s window after the 7.5 s one
    for k, end in enumerate(ends):
        sched.submit(Window(stream, k, end, now, droppable=False))
    sched.start()
    results = col.wait(4)
    sched.stop()
    for r in results:
        np.testing.assert_allclose(r.probs, eng.infer(audio[r.window.end - WINDOW_SAMPLES : r.window.end][None])[0], atol=1e-5)
    assert sched.chunks.held(stream) <= eng.chunks_per_window

"""The daemon's parts one by one: ring buffer, stream windowing, streaming resampling, VAD gate,
smoothing, scheduler batching and overload dropping, protocol validation (metrics: test_realtime_metrics.py).

All real: numpy, soxr, webrtcvad and the tiny ONNX engine from conftest through onnxruntime.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time

import numpy as np
import pytest

from contract.audio import LABELS, SAMPLE_RATE, WINDOW_SAMPLES, load_audio, pad_or_crop
from realtime import protocol
from realtime.config import load_daemon_config
from realtime.metrics import DaemonMetrics
from realtime.postprocess import Smoother, VoiceActivity
from realtime.protocol import ProtocolError
from realtime.ringbuffer import RingBuffer
from realtime.scheduler import Scheduler
from realtime.sources import demo_clip_path
from realtime.stream import Stream, StreamSettings, Window
from tests.conftest import ResultCollector, tone

SR = SAMPLE_RATE


def settings(**over) -> StreamSettings:
    cfg = load_daemon_config([f"{k}={v}" for k, v in over.items()])
    return StreamSettings.from_config(cfg, WINDOW_SAMPLES)


def collect_stream(rate: int = SR, channels: int = 1, **over) -> tuple[Stream, list[Window]]:
    windows: list[Window] = []
    return Stream("s", "test", settings(**over), rate, channels, windows.append, LABELS), windows


# ------------------------------------------------------------------ ring buffer


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


# ------------------------------------------------------------------ stream windows


def test_stream_windows_fall_on_the_hop_grid_after_min_audio():
    stream, windows = collect_stream(**{"audio.hop_s": 0.5, "audio.min_audio_s": 1.0})
    audio = tone(seconds=7.0)
    for i in range(0, len(audio), 1234):  # odd chunk sizes
        stream.push(audio[i : i + 1234])
    ends = [w.end for w in windows]
    assert ends == [16000 + 8000 * k for k in range(13)]  # 1.0, 1.5, ..., 7.0 s
    assert [w.seq for w in windows] == list(range(13))
    w = windows[-1]
    assert (w.t_start(), w.t_end()) == (2.0, 7.0)
    assert windows[0].t_start() == 0.0 and windows[0].t_end() == 1.0
    stream.finish()  # 7.0 s was already scored: no extra window
    assert len(windows) == 13 and stream.ended


def test_stream_final_window_is_flush_with_the_end_and_short_windows_are_padded():
    stream, windows = collect_stream()
    audio = tone(seconds=1.2, freq=300)
    stream.push(audio)
    stream.finish()
    assert [w.end for w in windows] == [16000, 19200]
    out = np.empty(WINDOW_SAMPLES, dtype=np.float32)
    assert stream.read_window(windows[1], out)
    np.testing.assert_allclose(out, pad_or_crop(audio, WINDOW_SAMPLES))  # padded centred, as in training
    full, fw = collect_stream()
    clip = tone(seconds=6.0, freq=200)
    full.push(clip)
    assert full.read_window(fw[-1], out)
    np.testing.assert_array_equal(out, clip[fw[-1].end - WINDOW_SAMPLES : fw[-1].end])


def test_streaming_resampler_joins_chunks_without_seams():
    """44.1 kHz stereo in random chunk sizes -> exactly what one-shot resampling of the whole gives."""
    import soxr

    rate = 44_100
    rng = np.random.default_rng(1)
    t = np.arange(int(rate * 3.0)) / rate
    left = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3000 * t)
    right = 0.4 * np.sin(2 * np.pi * 660 * t)
    stereo = np.stack([left, right], axis=1).astype(np.float32)
    stream, _ = collect_stream(rate=rate, channels=2)
    i = 0
    while i < len(stereo):
        n = int(rng.integers(1, 3000))
        stream.push(stereo[i : i + n])
        i += n
    stream.finish()
    got = stream.ring.read(0, stream.ring.written)
    want = soxr.resample(stereo.mean(axis=1), rate, SR, quality="HQ")
    assert len(got) == len(want) == 3 * SR
    np.testing.assert_allclose(got, want, atol=1e-6)
    # and no seam: the second difference stays as small as the signal's own
    assert np.abs(np.diff(got[100:-100], 2)).max() < 0.1


# ------------------------------------------------------------------ voice gate and smoothing


def voiced(audio: np.ndarray) -> float:
    vad = VoiceActivity(SR, capacity_s=20.0)
    for i in range(0, len(audio), 777):
        vad.process(audio[i : i + 777])
    return vad.voiced_fraction(0, len(audio))


def test_vad_gate_speech_vs_silence_and_noise():
    speech = load_audio(demo_clip_path())[: 5 * SR]
    rng = np.random.default_rng(0)
    assert voiced(speech) > 0.5
    assert voiced(np.zeros(5 * SR, dtype=np.float32)) == 0.0
    assert voiced((0.01 * rng.standard_normal(5 * SR)).astype(np.float32)) < 0.05  # quiet room noise
    assert voiced((0.1 * rng.standard_normal(5 * SR)).astype(np.float32)) < 0.05  # loud steady noise (webrtcvad alone says speech)
    noisy_speech = speech + (0.005 * rng.standard_normal(len(speech))).astype(np.float32)
    assert voiced(noisy_speech) > 0.4


def test_vad_fraction_is_per_window_range():
    speech = load_audio(demo_clip_path())[: 3 * SR]
    audio = np.concatenate([np.zeros(3 * SR, dtype=np.float32), speech])
    vad = VoiceActivity(SR, capacity_s=20.0)
    vad.process(audio)
    assert vad.voiced_fraction(0, 3 * SR) == 0.0
    assert vad.voiced_fraction(3 * SR, 6 * SR) > 0.5
    assert vad.voiced_fraction(100, 50) == 0.0


def voiced_seconds_per_window(audio: np.ndarray, window_s: float = 5.0) -> list[float]:
    vad = VoiceActivity(SR, capacity_s=len(audio) / SR + 1)
    for i in range(0, len(audio), 777):
        vad.process(audio[i : i + 777])
    n = int(window_s * SR)
    return [vad.voiced_seconds(s, s + n) for s in range(0, len(audio) - n + 1, SR // 2)]


def test_vad_counts_voiced_seconds_of_a_window():
    speech = load_audio(demo_clip_path())[SR : 3 * SR]  # 2 s of speech in 6 s of silence
    audio = np.concatenate([np.zeros(2 * SR, np.float32), speech, np.zeros(2 * SR, np.float32)])
    vad = VoiceActivity(SR, capacity_s=20.0)
    vad.process(audio)
    assert 1.5 < vad.voiced_seconds(0, 6 * SR) <= 2.1
    assert vad.voiced_seconds(0, 6 * SR) == pytest.approx(vad.voiced_fraction(0, 6 * SR) * 6.0, abs=0.03)
    assert vad.voiced_seconds(0, 2 * SR) == 0.0 and vad.voiced_seconds(100, 50) == 0.0


def test_smoother_time_constant_and_gate():
    sm = Smoother(6, tau_s=1.0)
    a = np.array([1, 0, 0, 0, 0, 0], dtype=float)
    b = np.array([0, 1, 0, 0, 0, 0], dtype=float)
    np.testing.assert_allclose(sm.update(a, 1.0, True), a)  # first window: taken as is
    out = sm.update(b, 2.0, True)  # dt = tau: alpha = 1 - 1/e
    alpha = 1 - math.exp(-1)
    np.testing.assert_allclose(out, (1 - alpha) * a + alpha * b)
    for k in range(20):  # silence: relaxes towards uniform, no confident emotion
        out = sm.update(a, 3.0 + 0.5 * k, False)
    assert out.max() < 1 / 6 + 0.01
    assert sm.update(b, 13.0, True)[1] > out[1]  # voice again pulls it back


# ------------------------------------------------------------------ scheduler


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


# ------------------------------------------------------------------ protocol and metrics


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", "bad_message"),
        ("[1, 2]", "bad_message"),
        ('{"type": "dance"}', "bad_message"),
        ('{"streams": "*"}', "bad_message"),
        ('{"type": "subscribe", "streams": 5}', "bad_message"),
        ('{"type": "start", "sample_rate": 4000, "encoding": "pcm_s16le"}', "config_invalid"),
        ('{"type": "start", "sample_rate": 16000, "encoding": "mp3"}', "config_invalid"),
        ('{"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 3}', "config_invalid"),
        ('{"type": "start", "sample_rate": 16000.5, "encoding": "pcm_s16le"}', "config_invalid"),
        ('{"type": "start", "encoding": "pcm_s16le"}', "config_invalid"),
    ],
)
def test_protocol_rejects_bad_messages_with_their_codes(text, code):
    with pytest.raises(ProtocolError) as exc:
        protocol.parse_client_message(text)
    assert exc.value.code == code


def test_protocol_accepts_good_messages():
    assert protocol.parse_client_message('{"type": "subscribe", "streams": ["a", "a", "b"], "x": 1}') == {
        "type": "subscribe",
        "streams": ["a", "b"],
    }
    assert protocol.parse_client_message('{"type": "start", "sample_rate": 44100, "encoding": "pcm_f32le"}')["channels"] == 1


def test_decode_pcm():
    pcm = np.array([[0, 16384], [-32768, 32767]], dtype="<i2").tobytes()
    np.testing.assert_allclose(protocol.decode_pcm(pcm, "pcm_s16le", 2), [[0, 0.5], [-1, 32767 / 32768]])
    for frame, enc, ch in [(b"\x00" * 3, "pcm_s16le", 1), (b"\x00" * 6, "pcm_f32le", 1), (b"\x00" * 6, "pcm_s16le", 2), (b"", "pcm_s16le", 1)]:
        with pytest.raises(ProtocolError) as exc:
            protocol.decode_pcm(frame, enc, ch)
        assert exc.value.code == "invalid_audio_frame"
    with pytest.raises(ProtocolError):
        protocol.decode_pcm(np.array([np.nan], dtype="<f4").tobytes(), "pcm_f32le", 1)


def test_realtime_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, realtime.cli, realtime.daemon, realtime.client, realtime.sources, realtime.server;"
        "from engine.backends import ort;"
        "print('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


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


# ------------------------------------------------------------------ streaming engines: each chunk encoded once


def expected_window(audio: np.ndarray, end: int, chunked: bool) -> np.ndarray:
    """What offline scoring feeds the engine for the window ending at ``end``: samples before the start are
    zeros (left) for a chunked model; a whole-window model pads a short window centred, as in training."""
    if end >= WINDOW_SAMPLES:
        return audio[end - WINDOW_SAMPLES : end]
    if chunked:
        return np.concatenate([np.zeros(WINDOW_SAMPLES - end, np.float32), audio[:end]])
    return pad_or_crop(audio[:end], WINDOW_SAMPLES)


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


def engine_settings(eng, **over) -> StreamSettings:
    cfg = load_daemon_config([f"{k}={v}" for k, v in over.items()])
    return StreamSettings.from_config(cfg, eng.geometry)


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


def test_hop_off_the_chunk_grid_is_refused(chunked_model):
    from engine.registry import load_engine

    eng = load_engine(chunked_model, backend="onnxruntime", device="cpu")
    with pytest.raises(ValueError, match=r"audio.hop_s=0.3 is not a multiple of the model's chunk hop \(0.5 s\)"):
        engine_settings(eng, **{"audio.hop_s": 0.3})
    assert engine_settings(eng, **{"audio.hop_s": 1.0}).hop_samples == 16000


# ------------------------------------------------------------------ issue 11: faults and hostile load


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


def test_smoother_ignores_non_finite_probabilities():
    """Finding 5: one NaN vector used to make the smoothed state NaN for good (and top 'anger')."""
    sm = Smoother(6, tau_s=1.0)
    a = np.array([0.1, 0.6, 0.1, 0.1, 0.05, 0.05])
    sm.update(a, 1.0, True)
    out = sm.update(np.full(6, np.nan), 1.5, True)
    np.testing.assert_allclose(out, a)
    out = sm.update(a, 2.0, True)
    assert np.isfinite(out).all() and int(np.argmax(out)) == 1


def failing_onnx(path):
    """A real model that loads but fails at run time on 5 s windows (a Reshape that 80,000 samples cannot fill)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Reshape", ["waveform", "shape"], ["rows"]),
        helper.make_node("ReduceMean", ["rows", "axes"], ["m"], keepdims=0),
        helper.make_node("Slice", ["m", "s", "e", "axes"], ["cut"]),
        helper.make_node("Reshape", ["cut", "out_shape"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "fails",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 6])],
        initializer=[
            helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 7]),
            helper.make_tensor("axes", TensorProto.INT64, [1], [0]),
            helper.make_tensor("s", TensorProto.INT64, [1], [0]),
            helper.make_tensor("e", TensorProto.INT64, [1], [6]),
            helper.make_tensor("out_shape", TensorProto.INT64, [2], [-1, 6]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    import json as _json

    for k, v in {"labels": _json.dumps(list(LABELS)), "sample_rate": "16000", "window_s": "5.0", "name": "fails"}.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def test_a_failing_engine_backs_off_and_reports_itself(tmp_path, caplog):
    """Finding 6: every engine call failing used to log a traceback per batch, at full speed, with /healthz 'ok'."""
    pytest.importorskip("onnx")
    from engine.registry import load_engine
    from realtime.daemon import Daemon

    eng = load_engine(failing_onnx(tmp_path / "fails.onnx"), backend="onnxruntime", device="cpu")
    cfg = load_daemon_config(["server.port=0"])
    d = Daemon(cfg, eng, announce=lambda line: None)
    d.scheduler.backoff_min_s = 0.2
    d.scheduler.start()
    assert d.health()["status"] == "ok"
    stream = Stream("s", "test", settings(**{"audio.hop_s": 0.05}), SR, 1, d.scheduler.submit, LABELS, droppable=False)
    with caplog.at_level(logging.ERROR, logger="ser-listen"):
        t0 = time.monotonic()
        for _ in range(40):  # 2 s of audio, a window every 50 ms: 21 windows due at once
            stream.push(tone(seconds=0.05))
        deadline = time.monotonic() + 20
        while d.scheduler.engine_state().consecutive_failures < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        state = d.scheduler.engine_state()
        health = d.health()
    d.scheduler.stop()
    assert health["status"] == "failing" and health["engine"]["status"] == "failing"
    assert health["engine"]["consecutive_failures"] >= 3 and health["engine"]["backoff_s"] >= 0.4
    assert health["engine"]["last_error"] and "fails.onnx" not in json.dumps(health)  # no file names
    assert state.consecutive_failures <= 1 + elapsed / 0.2  # backed off: not one call per window
    assert sum("Traceback" in (r.exc_text or "") or r.exc_info is not None for r in caplog.records) == 1


def test_a_stopped_stream_holds_its_slot_until_its_windows_are_out(engine):
    """Finding 1: stop freed the remote-stream slot at once, so start/stop cycling bypassed max_remote_streams."""
    import asyncio

    from realtime.daemon import Daemon

    async def main() -> None:
        cfg = load_daemon_config(["server.port=0", "server.max_remote_streams=2"])
        d = Daemon(cfg, engine, announce=lambda line: None)
        d.loop = asyncio.get_running_loop()
        for _ in range(2):  # the worker is not running yet: their windows stay queued
            s = d.open_remote_stream(SR, 1, "pcm_s16le", owner="c1")
            s.push(tone(seconds=1.2))
            d.close_remote_stream(s)
        with pytest.raises(ProtocolError) as exc:
            d.open_remote_stream(SR, 1, "pcm_s16le", owner="c1")
        assert exc.value.code == "server_busy"
        d.scheduler.start()
        try:
            for _ in range(500):  # their windows are delivered, they retire, the slots come back
                if not d.streams:
                    break
                await asyncio.sleep(0.02)
            assert not d.streams
            d.open_remote_stream(SR, 1, "pcm_s16le", owner="c1")
        finally:
            d.scheduler.stop()

    asyncio.run(main())


def test_per_stream_bookkeeping_is_not_kept_after_streams_retire(engine):
    """Finding 10: the daemon kept an entry per stream ever seen (1,050 entries for 20 live streams)."""
    import asyncio

    from realtime.daemon import Daemon

    def held(d) -> int:
        return sum(len(v) for v in vars(d).values() if isinstance(v, (dict, set, list)))

    async def main() -> None:
        d = Daemon(load_daemon_config(["server.port=0"]), engine, announce=lambda line: None)
        d.loop = asyncio.get_running_loop()
        d.scheduler.start()
        try:
            before = held(d)
            for i in range(60):
                s = d.open_remote_stream(SR, 1, "pcm_s16le", owner=f"c{i}")
                s.push(tone(seconds=1.0))
                d.close_remote_stream(s)
                for _ in range(500):
                    if s.retired and s.id not in d.streams:
                        break
                    await asyncio.sleep(0.01)
                assert s.retired
            await asyncio.sleep(0.05)
            assert not d.streams and held(d) <= before
        finally:
            d.scheduler.stop()

    asyncio.run(main())


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


# ------------------------------------------------------------------ the typed daemon config


def test_show_config_documents_every_key_and_reads_back_as_the_same_config(tmp_path):
    import dataclasses

    from omegaconf import OmegaConf

    from realtime.config import DaemonConfig, load_daemon_config, render_yaml

    for section in dataclasses.fields(DaemonConfig):
        for f in dataclasses.fields(section.default_factory):
            assert f.metadata.get("help"), f"{section.name}.{f.name} has no documentation"
    cfg = load_daemon_config(["server.port=9001", "post.smoothing_tau_s=3", "model.threads=1", "server.token='0123'"])
    text = render_yaml(cfg)
    assert "  port: 9001  # 0 picks a free port" in text and "  token: '0123'  #" in text
    path = tmp_path / "ser.yaml"
    path.write_text(text)
    again = load_daemon_config([], path)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)
    assert OmegaConf.to_container(load_daemon_config()) == OmegaConf.to_container(OmegaConf.structured(DaemonConfig))
    later = load_daemon_config(["server.port=9002"], path)  # overrides win over the file
    assert later.server.port == 9002 and later.post.smoothing_tau_s == 3


@pytest.mark.parametrize(("content", "words"), [
    ("server: [1, 2]", "server"), ("- 1", "mapping"), ("server:\n  prot: 1", "prot"), ("a: [", "not YAML"),
])
def test_a_bad_config_file_is_refused_naming_the_key(tmp_path, content, words):
    from contract.config import ConfigError
    from realtime.config import load_daemon_config

    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=words):
        load_daemon_config([], path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_daemon_config([], tmp_path / "absent.yaml")


def test_a_daemon_built_in_python_refuses_a_public_host_without_a_token():
    from contract.config import ConfigError
    from realtime.config import load_daemon_config

    with pytest.raises(ConfigError, match="server.host 0.0.0.0 exposes"):
        load_daemon_config(["server.host=0.0.0.0"])
    assert load_daemon_config(["server.host=0.0.0.0", "server.token=s"]).server.token == "s"
    assert load_daemon_config(["server.host=0.0.0.0", "server.insecure=true"]).server.insecure
    assert load_daemon_config(["server.host=::1"]).server.host == "::1"


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("server.port=abc", "'server.port'"),
        ("audio.hop_s=[1]", "'audio.hop_s'"),
        ("audio.hop_s=-1", "audio.hop_s must be > 0"),
        ("server.port=70000", "server.port must be 0..65535"),
        ("model.backend=cuda", "model.backend must be one of"),
        ("post.vad_frame_ms=25", "post.vad_frame_ms"),
        ("scheduler.max_batch_cpu=0", "scheduler.max_batch_cpu"),
        ("source.reconnect_min_s=20", "source.reconnect_min_s"),
        ("no.such.key=1", "unknown config key"),
    ],
)
def test_daemon_config_rejects_bad_values_naming_the_key(override, words):
    from contract.config import ConfigError

    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("(", r"\(")):
        load_daemon_config([override])


def test_daemon_config_is_typed_once():
    cfg = load_daemon_config(["audio.hop_s=1", "server.token='0123'", "scheduler.max_batch_cpu=null"])
    assert cfg.audio.hop_s == 1.0 and isinstance(cfg.audio.hop_s, float)
    assert cfg.server.token == "0123" and cfg.scheduler.max_batch_cpu is None


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

"""realtime/stream.py: windows on the hop grid once the minimum audio is in, the final window flush
with the end (short ones padded as in training), streaming downmix and resampling without seams, and a
hop off the model's chunk grid refused.

All real: numpy and soxr.
"""

from __future__ import annotations

import numpy as np
import pytest

from contract.audio import LABELS, SAMPLE_RATE, WINDOW_SAMPLES, pad_or_crop
from realtime.stream import Stream, Window
from tests.conftest import tone
from tests.stream_fixtures import engine_settings, settings

SR = SAMPLE_RATE


def collect_stream(rate: int = SR, channels: int = 1, **over) -> tuple[Stream, list[Window]]:
    windows: list[Window] = []
    return Stream("s", "test", settings(**over), rate, channels, windows.append, LABELS), windows


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


def test_hop_off_the_chunk_grid_is_refused(chunked_model):
    from engine.registry import load_engine

    eng = load_engine(chunked_model, backend="onnxruntime", device="cpu")
    with pytest.raises(ValueError, match=r"audio.hop_s=0.3 is not a multiple of the model's chunk hop \(0.5 s\)"):
        engine_settings(eng, **{"audio.hop_s": 0.3})
    assert engine_settings(eng, **{"audio.hop_s": 1.0}).hop_samples == 16000

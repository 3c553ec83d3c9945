"""realtime.frontend: a stream's DSP on its own (downmix, streaming resampling, VAD over every sample it returns)."""

from __future__ import annotations

import numpy as np
import soxr

from contract.audio import SAMPLE_RATE, WINDOW_SAMPLES, load_audio
from realtime.config import load_daemon_config
from realtime.frontend import Frontend
from realtime.sources import demo_clip_path
from realtime.stream import StreamSettings

SR = SAMPLE_RATE


def frontend(rate: int, channels: int) -> Frontend:
    s = StreamSettings.from_config(load_daemon_config(), WINDOW_SAMPLES)
    return Frontend(s.audio, s.post, s.sample_rate, s.buffer_samples, rate, channels)


def test_frames_come_out_downmixed_and_resampled_as_one_and_all_analysed():
    rate = 48_000
    speech = soxr.resample(load_audio(demo_clip_path())[: 4 * SR], SR, rate).astype(np.float32)
    stereo = np.stack([speech, 0.5 * speech], axis=1)
    fe = frontend(rate, 2)
    out = [fe.process(stereo[i : i + 4800]) for i in range(0, len(stereo), 4800)]
    out.append(fe.flush())
    got = np.concatenate(out)
    want = soxr.resample(stereo.mean(axis=1), rate, SR, quality="HQ")
    assert len(got) == len(want) == 4 * SR
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert fe.vad.frames == len(got) // fe.vad.frame  # every sample returned went through the VAD
    assert fe.voiced_seconds(0, len(got)) > 1.0


def test_a_new_input_format_flushes_the_old_resampler_first():
    fe = frontend(44_100, 1)
    first = fe.process(np.zeros(44_100, np.float32))
    tail = fe.set_input(16_000, 1)  # reopened at the stream's own rate: no resampler any more
    assert len(first) + len(tail) == SR and (fe.input_rate, fe.channels) == (16_000, 1)
    assert len(fe.set_input(16_000, 1)) == 0  # same format: nothing to flush
    same = np.arange(160, dtype=np.float32) / 160
    np.testing.assert_array_equal(fe.process(same), same)
    assert len(fe.flush()) == 0

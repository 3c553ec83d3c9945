"""realtime/postprocess.py: the voice-activity gate (speech, silence, steady noise; per window range,
in voiced seconds) and the smoother (time constant, relaxing in silence, non-finite input ignored).

All real: webrtcvad on the bundled demo clip.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from contract.audio import SAMPLE_RATE, load_audio
from realtime.config import load_daemon_config
from realtime.postprocess import Smoother, VoiceActivity
from realtime.sources import demo_clip_path

SR = SAMPLE_RATE


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


def test_window_gate_passes_a_second_of_speech_but_not_noise_or_room_tone():
    """The shipped gate (post.vad_min_voiced_s): a window holding as much speech as the stream scorer scores
    (1 s, under noise 10-30 dB below it) is voiced; 5 s of steady noise or room tone of any colour is not."""
    from realtime.postprocess import window_is_voiced
    from training.features import coloured_noise

    gate = load_daemon_config().post.vad_min_voiced_s
    rng = np.random.default_rng(0)
    speech = load_audio(demo_clip_path())
    for seconds in (1.0, 1.5):
        for snr in (30, 20, 10):
            audio = np.zeros(10 * SR, np.float32)
            part = speech[SR : SR + int(seconds * SR)]
            audio[5 * SR : 5 * SR + len(part)] = part
            audio += (coloured_noise(len(audio), rng, 1.0) * np.sqrt(np.mean(part**2) / 10 ** (snr / 10))).astype(np.float32)
            vad = VoiceActivity(SR, capacity_s=20.0)
            vad.process(audio)
            assert window_is_voiced(vad.voiced_seconds(3 * SR, 8 * SR), gate), (seconds, snr)
    for colour in (0.0, 1.0, 2.0):
        for dbfs in (-70, -50, -35):
            noise = (coloured_noise(20 * SR, rng, colour) * 10 ** (dbfs / 20)).astype(np.float32)
            assert not any(window_is_voiced(v, gate) for v in voiced_seconds_per_window(noise)), (colour, dbfs)
    assert window_is_voiced(0.0, 0.0)  # a gate of 0 s passes everything


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


def test_smoother_ignores_non_finite_probabilities():
    """Finding 5: one NaN vector used to make the smoothed state NaN for good (and top 'anger')."""
    sm = Smoother(6, tau_s=1.0)
    a = np.array([0.1, 0.6, 0.1, 0.1, 0.05, 0.05])
    sm.update(a, 1.0, True)
    out = sm.update(np.full(6, np.nan), 1.5, True)
    np.testing.assert_allclose(out, a)
    out = sm.update(a, 2.0, True)
    assert np.isfinite(out).all() and int(np.argmax(out)) == 1

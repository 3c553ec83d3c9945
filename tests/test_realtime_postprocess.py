"""realtime/postprocess.py: the voice-activity gate (speech, silence, steady noise; per window range,
in voiced seconds) and the smoother (time constant, relaxing in silence, non-finite input ignored).

All real: webrtcvad on the bundled demo clip.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from contract.audio import SAMPLE_RATE, load_audio
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

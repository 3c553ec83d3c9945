"""Speech-like test signals for parity checks, INT8 calibration fallbacks and benchmarks.

Owns only numpy signal synthesis; imports nothing from torch. Parity between
torch and an exported graph must be measured on audio that exercises the whole
dynamic range of the frontend (voiced harmonics, noise, syllable envelopes,
quiet and loud clips, near-silence), not on white noise, whose flat spectrum
hides errors in the log-mel normalisation.
"""

from __future__ import annotations

import numpy as np

from contract.audio import SAMPLE_RATE


def speech_like(batch: int, samples: int, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``[batch, samples]`` float32: gliding harmonic tones + noise under syllable-rate envelopes.

    Each row draws its own pitch (90-320 Hz with vibrato), harmonic count,
    noise level, syllable rate (2-7 Hz) and overall level (-40 to -3 dBFS);
    row 0 of a batch of three or more is near-silent, because silence is where
    the log clamp and the utterance normalisation are most fragile.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(samples, dtype=np.float64) / sample_rate
    out = np.empty((batch, samples), dtype=np.float32)
    for i in range(batch):
        f0 = rng.uniform(90.0, 320.0) * (1.0 + 0.04 * np.sin(2 * np.pi * rng.uniform(3, 7) * t))
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        harmonics = int(rng.integers(3, 12))
        voiced = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, harmonics + 1))
        noise = rng.standard_normal(samples) * rng.uniform(0.02, 0.4)
        envelope = np.clip(np.sin(2 * np.pi * rng.uniform(2, 7) * t + rng.uniform(0, 2 * np.pi)), 0, None) ** 2
        x = (voiced + noise) * (0.15 + envelope)
        level_db = -70.0 if (i == 0 and batch >= 3) else rng.uniform(-40.0, -3.0)
        x *= 10 ** (level_db / 20) / (np.max(np.abs(x)) + 1e-12)
        out[i] = x.astype(np.float32)
    return out

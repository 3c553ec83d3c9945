"""Waveform augmentation from YAML (audiomentations), plus a synthetic room reverberation.

The shipped model must survive microphones and rooms it never heard, so the
pipeline covers gain, pitch, time shift, microphone-like EQ colouring, band
limits, reverberation, coloured noise at random SNR and polarity. Which
transforms run, in what order and how strongly is data in ``conf/augment/``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
from audiomentations.core.transforms_interface import BaseWaveformTransform
from scipy.signal import fftconvolve

Augment = Callable[[np.ndarray, int], np.ndarray]


def synthetic_rir(rt60: float, sample_rate: int, rng: random.Random, direct_delay_s: float = 0.0) -> np.ndarray:
    """A room impulse response: a direct path, then exponentially decaying noise reaching -60 dB at ``rt60``."""
    n = max(int(rt60 * sample_rate), 16)
    t = np.arange(n) / sample_rate
    seed = rng.getrandbits(32)
    tail = np.random.default_rng(seed).standard_normal(n) * np.exp(-6.9078 * t / rt60)  # ln(1000) = 6.9078
    tail[: int(0.0025 * sample_rate)] = 0.0  # first reflections arrive a few ms after the direct sound
    rir = np.zeros(n + int(direct_delay_s * sample_rate))
    rir[0] = 1.0
    rir[-n:] += tail / (np.sqrt(np.sum(tail**2)) + 1e-9)
    return rir.astype(np.float32)


class SyntheticReverb(BaseWaveformTransform):
    """Convolve with a random synthetic room response and mix wet/dry, keeping the input's peak level."""

    supports_multichannel = False

    def __init__(self, min_rt60: float = 0.15, max_rt60: float = 0.7, min_wet: float = 0.2, max_wet: float = 0.7, p: float = 0.5) -> None:
        super().__init__(p)
        self.min_rt60, self.max_rt60 = min_rt60, max_rt60
        self.min_wet, self.max_wet = min_wet, max_wet

    def randomize_parameters(self, samples: np.ndarray, sample_rate: int) -> None:
        super().randomize_parameters(samples, sample_rate)
        if self.parameters["should_apply"]:
            self.parameters["rt60"] = random.uniform(self.min_rt60, self.max_rt60)
            self.parameters["wet"] = random.uniform(self.min_wet, self.max_wet)
            self.parameters["seed"] = random.getrandbits(32)

    def apply(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        rir = synthetic_rir(self.parameters["rt60"], sample_rate, random.Random(self.parameters["seed"]))
        wet = fftconvolve(samples, rir)[: len(samples)].astype(np.float32)
        mix = (1 - self.parameters["wet"]) * samples + self.parameters["wet"] * wet
        peak_in, peak_out = float(np.max(np.abs(samples))), float(np.max(np.abs(mix)))
        return (mix * (peak_in / peak_out) if peak_out > 0 else mix).astype(np.float32)


_OWN = {"SyntheticReverb": SyntheticReverb}


def build_augment(cfg: Any) -> Augment | None:
    """An ``audiomentations.Compose`` from the ``augment`` config section, or None when it is empty."""
    import audiomentations

    transforms = []
    for item in cfg.get("transforms") or []:
        args = dict(item)
        name = args.pop("name")
        cls = _OWN.get(name) or getattr(audiomentations, name, None)
        if cls is None:
            raise ValueError(f"unknown augmentation {name!r} (not in audiomentations nor {', '.join(_OWN)})")
        transforms.append(cls(**args))
    if not transforms or float(cfg.get("p", 1.0)) <= 0:
        return None
    compose = audiomentations.Compose(transforms, p=float(cfg.get("p", 1.0)))

    def augment(samples: np.ndarray, sample_rate: int) -> np.ndarray:
        out = compose(samples=samples, sample_rate=sample_rate)
        peak = float(np.max(np.abs(out))) if out.size else 0.0
        return (out / peak * 0.99 if peak > 1.0 else out).astype(np.float32)  # gain may clip: keep within [-1, 1]

    return augment

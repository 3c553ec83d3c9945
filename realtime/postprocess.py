"""Post-processing of per-window probabilities: exponential smoothing and a voice-activity gate.

Owns what turns raw model output into what a listener should see: probabilities
smoothed over stream time with a time constant (so one odd window does not
flip the display), and a gate that says whether a window holds voice at all.
The gate is webrtcvad (a GMM voice detector, torch-free) on 30 ms frames,
combined with an adaptive noise floor: a frame counts as voiced only when the
VAD says speech *and* it stands above the recent floor, because webrtcvad alone
calls loud stationary noise speech; a window is voiced when it holds enough
seconds of such frames (:func:`window_is_voiced`). Unvoiced windows relax the smoothed
probabilities towards uniform, so silence never shows a confident emotion.
Imports numpy and webrtcvad only.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np


class VoiceActivity:
    """Per-stream frame-level voice flags, fed incrementally with the stream's 16 kHz audio.

    Every sample is analysed once, as it arrives (not once per overlapping
    window), and the flags are kept in a ring addressed by absolute frame
    index so any window can ask for its voiced fraction afterwards.
    """

    def __init__(
        self,
        sample_rate: int,
        capacity_s: float,
        aggressiveness: int = 2,
        frame_ms: int = 30,
        noise_window_s: float = 3.0,
        margin_db: float = 6.0,
        min_dbfs: float = -60.0,
    ) -> None:
        import webrtcvad

        if sample_rate not in (8000, 16000, 32000, 48000):
            raise ValueError(f"webrtcvad needs 8, 16, 32 or 48 kHz audio, got {sample_rate}")
        if frame_ms not in (10, 20, 30):
            raise ValueError(f"webrtcvad frames are 10, 20 or 30 ms, got {frame_ms}")
        self._vad = webrtcvad.Vad(int(aggressiveness))
        self.sample_rate = sample_rate
        self.frame = sample_rate * frame_ms // 1000
        self._pending = np.zeros(self.frame, dtype=np.float32)
        self._pending_n = 0
        self.frames = 0  # frames analysed so far
        self._capacity = max(1, int(math.ceil(capacity_s * sample_rate / self.frame)))
        self._flags = np.zeros(self._capacity, dtype=bool)
        self._recent_db: deque[float] = deque(maxlen=max(1, int(noise_window_s * 1000 / frame_ms)))
        self.margin_db = margin_db
        self.min_dbfs = min_dbfs

    def process(self, audio: np.ndarray) -> None:
        """Analyse newly arrived samples; a partial trailing frame waits for the next call."""
        i = 0
        n = len(audio)
        if self._pending_n:
            take = min(self.frame - self._pending_n, n)
            self._pending[self._pending_n : self._pending_n + take] = audio[:take]
            self._pending_n += take
            i = take
            if self._pending_n < self.frame:
                return
            self._analyse(self._pending)
            self._pending_n = 0
        while i + self.frame <= n:
            self._analyse(audio[i : i + self.frame])
            i += self.frame
        rest = n - i
        if rest:
            self._pending[:rest] = audio[i:]
            self._pending_n = rest

    def _analyse(self, frame: np.ndarray) -> None:
        power = float(np.dot(frame, frame)) / len(frame)
        db = 10.0 * math.log10(power + 1e-12)
        self._recent_db.append(db)
        floor = min(self._recent_db)
        voiced = False
        if db > self.min_dbfs and db > floor + self.margin_db:
            pcm = (np.clip(frame, -1.0, 1.0) * 32767.0).astype(np.int16)
            voiced = bool(self._vad.is_speech(pcm.tobytes(), self.sample_rate))
        self._flags[self.frames % self._capacity] = voiced
        self.frames += 1

    def _range(self, start: int, end: int) -> np.ndarray:
        f0 = max(0, -(-start // self.frame), self.frames - self._capacity)
        f1 = min(end // self.frame, self.frames)
        return self._flags[np.arange(f0, f1) % self._capacity] if f1 > f0 else np.zeros(0, dtype=bool)

    def voiced_fraction(self, start: int, end: int) -> float:
        """Fraction of analysed frames inside samples ``[start, end)`` that hold voice (0 if none)."""
        flags = self._range(start, end)
        return float(flags.mean()) if len(flags) else 0.0

    def voiced_seconds(self, start: int, end: int) -> float:
        """Seconds of voice the analysed frames inside samples ``[start, end)`` hold (what the window's gate asks)."""
        return float(self._range(start, end).sum()) * self.frame / self.sample_rate


def window_is_voiced(voiced_s: float, min_voiced_s: float) -> bool:
    """The window gate: a window holds speech when its VAD found at least ``min_voiced_s`` seconds of voice.

    Seconds, not a share of the window: a window needs about as much speech
    to be worth an emotion whether it is 5 s long or a stream's first 2 s,
    and a 5 s window with one short utterance in it still shows it.
    """
    return voiced_s >= min_voiced_s


class Smoother:
    """Exponential smoothing of probability vectors over stream time.

    ``alpha = 1 - exp(-dt / tau)`` with ``dt`` the stream time since the last
    update, so the result does not depend on the hop. Unvoiced windows pull the
    state towards the uniform distribution instead of towards their own
    (meaningless) probabilities.
    """

    def __init__(self, n_labels: int, tau_s: float) -> None:
        self.tau_s = float(tau_s)
        self.uniform = np.full(n_labels, 1.0 / n_labels, dtype=np.float64)
        self.state: np.ndarray | None = None
        self.t: float | None = None

    def update(self, probs: np.ndarray, t: float, voiced: bool) -> np.ndarray:
        """Fold in the window ending at stream time ``t``; returns the new smoothed vector.

        NaN-safe: a vector that is not finite (or not a distribution's shape)
        is ignored and the state stays as it was, so one bad window cannot
        poison every later one (the engine rejects such output first; this is
        the second line).
        """
        p = np.asarray(probs, dtype=np.float64)
        if voiced and (p.shape != self.uniform.shape or not np.isfinite(p).all()):
            return self.state / self.state.sum() if self.state is not None else self.uniform.copy()
        target = p if voiced else self.uniform
        if self.state is None or self.t is None:
            self.state = target.copy()
        else:
            dt = max(0.0, t - self.t)
            alpha = 1.0 if self.tau_s <= 0 else 1.0 - math.exp(-dt / self.tau_s)
            self.state = (1.0 - alpha) * self.state + alpha * target
        self.t = t
        total = float(self.state.sum())
        return self.state / total if total > 0 else self.uniform.copy()

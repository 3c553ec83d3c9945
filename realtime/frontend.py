"""A stream's signal front end: native-rate frames in, analysed 16 kHz mono out (downmix, streaming resampling, VAD).

Owns the stream's DSP, the intake stage of its path: frames are downmixed
(the mean of the channels), resampled with one ``soxr.ResampleStream`` for the
input's whole life (so consecutive frames join without seams) and every 16 kHz
sample it returns has been through the voice-activity analysis, whose per-frame
flags the post-processor reads back by sample range (``voiced_seconds``). A
device reopened at another rate or channel count gets a fresh resampler
(``set_input``), the old one flushed first. One thread feeds a front end at a
time (a source's thread, or the intake worker for remote streams); the VAD's
flags are read from the event loop by sample range, as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from realtime.config import AudioConfig, PostConfig
from realtime.postprocess import VoiceActivity

_EMPTY = np.zeros(0, dtype=np.float32)


class Frontend:
    """Downmix, resample to the stream's rate and analyse voice; each call returns the new 16 kHz samples."""

    def __init__(
        self, audio: AudioConfig, post: PostConfig, sample_rate: int, history_samples: int, input_rate: int, channels: int
    ) -> None:
        """``audio``/``post``: the stream's config sections; VAD flags are kept for ``history_samples`` (its ring)."""
        self.audio = audio
        self.sample_rate = sample_rate
        self.vad = VoiceActivity(
            sample_rate,
            capacity_s=history_samples / sample_rate,
            aggressiveness=post.vad_aggressiveness,
            frame_ms=post.vad_frame_ms,
            noise_window_s=post.vad_noise_window_s,
            margin_db=post.vad_margin_db,
            min_dbfs=post.vad_min_dbfs,
        )
        self._resampler: Any = None
        self.input_rate = 0
        self.channels = 0
        self.set_input(input_rate, channels)

    def set_input(self, input_rate: int, channels: int) -> np.ndarray:
        """(Re)declare the native format; returns what the old resampler still held (usually nothing)."""
        if input_rate == self.input_rate and channels == self.channels:
            return _EMPTY
        tail = self.flush()
        self.input_rate = int(input_rate)
        self.channels = int(channels)
        self._resampler = None
        if self.input_rate != self.sample_rate:
            import soxr

            self._resampler = soxr.ResampleStream(
                self.input_rate, self.sample_rate, 1, dtype="float32", quality=self.audio.resample_quality
            )
        return tail

    def process(self, frames: np.ndarray) -> np.ndarray:
        """Native-rate float32 frames ``[n]`` or ``[n, channels]`` -> the 16 kHz mono samples they complete."""
        if frames.ndim == 2:
            mono = frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1, dtype=np.float32)
        else:
            mono = frames
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        out = mono if self._resampler is None else self._resampler.resample_chunk(mono, last=False)
        return self._analysed(out)

    def flush(self) -> np.ndarray:
        """End of this input: the samples the resampler still holds."""
        if self._resampler is None:
            return _EMPTY
        return self._analysed(self._resampler.resample_chunk(_EMPTY, last=True))

    def _analysed(self, audio: np.ndarray) -> np.ndarray:
        if len(audio):
            self.vad.process(audio)
        return audio

    def voiced_fraction(self, start: int, end: int) -> float:
        return self.vad.voiced_fraction(start, end)

    def voiced_seconds(self, start: int, end: int) -> float:
        return self.vad.voiced_seconds(start, end)

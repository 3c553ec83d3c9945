"""What the model hears: 16 kHz mono float32 waveforms cut into 5 s windows, and the six labels.

The one place for the audio constants and the pure functions every package
shares (decode, resample, pad or crop, cut into windows). numpy, soundfile
and soxr only: the daemon and ``ser-predict`` run it without torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def exact_div(x: int, y: int) -> int:
    """``x / y`` when it is a whole number; an AssertionError otherwise (as in Whisper's audio.py)."""
    assert x % y == 0, f"{x} is not a multiple of {y}"
    return x // y


SAMPLE_RATE = 16_000
WINDOW_S = 5.0
WINDOW_SAMPLES = int(SAMPLE_RATE * WINDOW_S)  # 80,000: the engine's input length
CHUNK_SAMPLES = SAMPLE_RATE  # 1 s: what the chunk encoder hears at once
CHUNK_HOP_SAMPLES = exact_div(SAMPLE_RATE, 2)  # 0.5 s: one new chunk per daemon hop
LABELS: tuple[str, ...] = ("anger", "disgust", "fear", "happy", "neutral", "sad")
NUM_CLASSES = len(LABELS)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")


class AudioError(Exception):
    """A file that cannot be decoded as audio; the message names the file."""


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode any WAV/FLAC/OGG file to mono float32 at ``sample_rate``.

    Stereo and multichannel files are averaged to mono; other rates are
    resampled with soxr (high quality). Raises :class:`AudioError` naming the
    file for anything libsndfile cannot read, so callers can report and skip.
    """
    import soundfile as sf

    path = Path(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types; all mean "unreadable"
        raise AudioError(f"cannot read audio file {path}: {exc}") from exc
    if data.size == 0:
        raise AudioError(f"audio file {path} holds no samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return resample(np.ascontiguousarray(mono, dtype=np.float32), rate, sample_rate)


def resample(audio: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a whole mono signal (offline); streams use ``soxr.ResampleStream``."""
    if rate_in == rate_out:
        return audio.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(audio, rate_in, rate_out, quality="HQ").astype(np.float32, copy=False)


def pad_or_crop(audio: np.ndarray, length: int = WINDOW_SAMPLES, offset: int | None = None) -> np.ndarray:
    """Return exactly ``length`` samples: zero-pad a short clip centred, crop a long one.

    ``offset`` picks the crop start (training draws it at random); ``None``
    takes the centre, which is what evaluation and ``ser-predict`` do for a
    clip that fits one window.
    """
    n = audio.shape[-1]
    if n == length:
        return audio
    if n < length:
        left = (length - n) // 2
        out = np.zeros(audio.shape[:-1] + (length,), dtype=np.float32)
        out[..., left : left + n] = audio
        return out
    start = (n - length) // 2 if offset is None else int(offset)
    start = min(max(start, 0), n - length)
    return audio[..., start : start + length]


def window_starts(n_samples: int, length: int = WINDOW_SAMPLES, hop: int | None = None) -> list[int]:
    """Starts of the windows that cover a clip, the last one flush with its end.

    A clip no longer than one window gives ``[0]`` (it is padded); a longer
    clip gives windows every ``hop`` samples (default: half a window) plus a
    final one ending at the last sample, so no audio is left unscored.
    """
    hop = hop or length // 2
    if n_samples <= length:
        return [0]
    count = math.ceil((n_samples - length) / hop)
    starts = [i * hop for i in range(count)]
    starts.append(n_samples - length)
    return sorted(set(starts))


def iter_windows(audio: np.ndarray, length: int = WINDOW_SAMPLES, hop: int | None = None) -> Iterator[np.ndarray]:
    """Yield the windows :func:`window_starts` describes, each exactly ``length`` long."""
    if audio.shape[-1] <= length:
        yield pad_or_crop(audio, length)
        return
    for start in window_starts(audio.shape[-1], length, hop):
        yield audio[..., start : start + length]

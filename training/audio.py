"""Audio constants and pure functions shared by training, engine and realtime.

This module is the one place that says what the model hears: 16 kHz mono
float32 waveforms cut into 5 s windows, and the six labels in CREMA-D order.
It imports numpy, soundfile and soxr only (no torch), because the daemon and
``ser-predict`` use it on machines without the training extras.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
WINDOW_S = 5.0
WINDOW_SAMPLES = int(SAMPLE_RATE * WINDOW_S)  # 80,000: the engine's input length
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


def rms_dbfs(audio: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


# --- spectrogram constants as pure functions (used by the torch frontend and its numpy reference) ---


def hz_to_mel(freq: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = freq / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(freq >= min_log_hz, min_log_mel + np.log(np.maximum(freq, 1e-10) / min_log_hz) / logstep, mels)


def mel_to_hz(mels: np.ndarray | float) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None) -> np.ndarray:
    """Triangular Slaney-normalised mel filters ``[n_mels, n_fft // 2 + 1]`` (as librosa.filters.mel)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_pts = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2 : n_mels + 2] - mel_pts[:n_mels]))[:, None]
    return weights.astype(np.float32)


def hann_window(win_length: int, n_fft: int) -> np.ndarray:
    """Periodic Hann window of ``win_length`` centred in ``n_fft`` samples (as torch.stft pads it)."""
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
    left = (n_fft - win_length) // 2
    out = np.zeros(n_fft, dtype=np.float64)
    out[left : left + win_length] = win
    return out


def dft_basis(n_fft: int, win_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Windowed real and imaginary DFT kernels ``[n_fft // 2 + 1, n_fft]`` for an STFT as a strided conv."""
    n = np.arange(n_fft)
    k = np.arange(n_fft // 2 + 1)[:, None]
    window = hann_window(win_length, n_fft)
    angle = 2 * np.pi * k * n / n_fft
    return (np.cos(angle) * window).astype(np.float32), (-np.sin(angle) * window).astype(np.float32)

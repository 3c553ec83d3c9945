"""INT8 calibration windows from a folder of audio, exactly as the engine will see audio.

Torch-free (numpy, soundfile via ``contract.audio``). Calibration sets the
int8 ranges of every activation, so it must be real speech cut and padded the
way ``ser-predict`` and the daemon cut it, not synthetic signals.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from contract.audio import AUDIO_SUFFIXES, SAMPLE_RATE, WINDOW_SAMPLES, AudioError, iter_windows, load_audio
from engine.interface import EngineError

DEFAULT_MAX_WINDOWS = 256


def audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def calibration_windows(
    folder: str | Path,
    window_samples: int = WINDOW_SAMPLES,
    sample_rate: int = SAMPLE_RATE,
    max_windows: int = DEFAULT_MAX_WINDOWS,
) -> np.ndarray:
    """Up to ``max_windows`` windows ``[n, window_samples]`` from the audio files under ``folder``.

    Files are spread evenly over the sorted list (not the first N of one
    speaker); unreadable files are skipped, and no readable audio at all is
    an error naming the folder.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise EngineError(f"calibration folder not found: {folder}")
    files = audio_files(folder)
    if not files:
        raise EngineError(f"calibration folder {folder} holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
    step = max(1, len(files) // max_windows)
    windows: list[np.ndarray] = []
    for path in files[::step]:
        try:
            audio = load_audio(path, sample_rate)
        except AudioError:
            continue
        windows.extend(iter_windows(audio, window_samples))
        if len(windows) >= max_windows:
            break
    if not windows:
        raise EngineError(f"no readable audio in calibration folder {folder}")
    return np.stack(windows[:max_windows]).astype(np.float32)


def fingerprint(windows: np.ndarray) -> str:
    """Short hash of the calibration data, part of an int8 plan's cache key."""
    return hashlib.sha256(np.ascontiguousarray(windows).tobytes()).hexdigest()[:16]

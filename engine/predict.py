"""Offline classification of whole audio files with any engine (the logic behind ``ser-predict``).

Torch-free: numpy and ``contract.audio``. A clip no longer than one window is
zero-padded around its centre, exactly as training pads short clips; a longer
one is cut into half-overlapping windows, the last flush with its end, and
their probabilities are averaged. Windows of several files share a batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.audio import AudioError, iter_windows, load_audio
from engine.interface import Engine


@dataclass
class FileResult:
    path: str
    probs: dict[str, float] | None = None
    windows: int = 0
    error: str | None = None

    @property
    def top(self) -> str | None:
        return max(self.probs, key=self.probs.__getitem__) if self.probs else None

    def to_json(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "top": self.top, "probs": self.probs, "windows": self.windows}


def file_windows(path: str | Path, window_samples: int, sample_rate: int) -> np.ndarray:
    """``[n, window_samples]`` windows of one file (raises AudioError for an unreadable one)."""
    audio = load_audio(path, sample_rate)
    return np.stack(list(iter_windows(audio, window_samples))).astype(np.float32, copy=False)


def classify_files(engine: Engine, paths: Iterable[str | Path], batch: int = 16) -> Iterator[FileResult]:
    """One :class:`FileResult` per path, in order; unreadable files yield a result with ``error`` set."""
    batch = max(1, int(batch))
    pending: list[tuple[FileResult, np.ndarray | None]] = []
    queued = 0

    def flush() -> Iterator[FileResult]:
        nonlocal queued
        arrays = [w for _, w in pending if w is not None]
        probs = _infer_batched(engine, np.concatenate(arrays), batch) if arrays else np.empty((0, len(engine.labels)))
        offset = 0
        for result, windows in pending:
            if windows is not None:
                mean = probs[offset : offset + len(windows)].mean(axis=0)
                offset += len(windows)
                result.probs = {label: float(p) for label, p in zip(engine.labels, mean, strict=True)}
                result.windows = len(windows)
            yield result
        pending.clear()
        queued = 0

    for path in paths:
        result = FileResult(str(path))
        try:
            windows: np.ndarray | None = file_windows(path, engine.window_samples, engine.sample_rate)
        except AudioError as exc:
            result.error, windows = str(exc), None
        pending.append((result, windows))
        queued += 0 if windows is None else len(windows)
        if queued >= batch:
            yield from flush()
    yield from flush()


def _infer_batched(engine: Engine, windows: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([engine.infer(windows[i : i + batch]) for i in range(0, len(windows), batch)])

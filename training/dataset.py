"""Decoded-audio cache and the window datasets training and evaluation read from.

Every clip is decoded and resampled to 16 kHz once, stored as ``.npy`` under
the cache folder (keyed by path, size and modification time) and held in
memory for the run, so an epoch costs augmentation and the network, not
decoding. A file that cannot be decoded is reported by name and skipped.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from contract.audio import SAMPLE_RATE, AudioError, load_audio, pad_or_crop, window_starts
from training.corpora import Record

log = logging.getLogger(__name__)


class AudioCache:
    """16 kHz float32 audio of each file, decoded once and kept on disk across runs."""

    def __init__(self, cache_dir: str | Path | None, sample_rate: int = SAMPLE_RATE) -> None:
        self.dir = Path(cache_dir).expanduser() / f"audio{sample_rate}" if cache_dir else None
        self.sample_rate = sample_rate

    def _key(self, path: Path) -> Path | None:
        if self.dir is None:
            return None
        st = path.stat()
        digest = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
        return self.dir / digest[:2] / f"{digest}.npy"

    def get(self, path: Path) -> np.ndarray:
        key = self._key(path)
        if key is not None and key.is_file():
            try:
                return np.load(key)
            except (OSError, ValueError):
                key.unlink(missing_ok=True)  # a torn write from an interrupted run: decode again
        audio = load_audio(path, self.sample_rate)
        if key is not None:
            key.parent.mkdir(parents=True, exist_ok=True)
            tmp = key.with_suffix(f".{random.getrandbits(32):08x}.tmp")
            with open(tmp, "wb") as fh:
                np.save(fh, audio)
            tmp.replace(key)
        return audio

    def load_all(self, records: Sequence[Record]) -> tuple[list[Record], list[np.ndarray]]:
        """Decode every record; unreadable files are logged by name and left out."""
        kept, audios, failed = [], [], []
        for r in records:
            try:
                audios.append(self.get(r.path))
                kept.append(r)
            except AudioError as exc:
                failed.append(str(exc))
        for msg in failed:
            log.warning("skipped: %s", msg)
        if failed:
            log.warning("%d of %d files could not be read and were skipped", len(failed), len(records))
        return kept, audios


class TrainWindows(Dataset):
    """Random 5 s crops (short clips padded at a random offset), augmented, with their label."""

    def __init__(self, audios: Sequence[np.ndarray], labels: Sequence[int], window: int, augment: Callable | None) -> None:
        self.audios, self.labels = audios, list(labels)
        self.window, self.augment = window, augment

    def __len__(self) -> int:
        return len(self.audios)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        a = self.audios[i]
        n = a.shape[-1]
        if n >= self.window:
            x = pad_or_crop(a, self.window, offset=random.randint(0, n - self.window))
        else:
            x = np.zeros(self.window, dtype=np.float32)
            start = random.randint(0, self.window - n)
            x[start : start + n] = a
        if self.augment is not None:
            x = self.augment(x, SAMPLE_RATE)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), self.labels[i]


class EvalWindows(Dataset):
    """Every window of every clip (centred if short; multi-crop if long), tagged with its clip index.

    Probabilities of a clip's windows are averaged into one prediction, the
    same rule ``ser-predict`` applies to a long file.
    """

    def __init__(self, audios: Sequence[np.ndarray], labels: Sequence[int], window: int, hop: int) -> None:
        self.items: list[tuple[int, int]] = []
        for ci, a in enumerate(audios):
            self.items.extend((ci, s) for s in window_starts(a.shape[-1], window, hop))
        self.audios, self.labels, self.window = audios, list(labels), window

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        ci, start = self.items[i]
        a = self.audios[ci]
        x = pad_or_crop(a, self.window) if a.shape[-1] <= self.window else a[start : start + self.window]
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), self.labels[ci], ci


class MixedEpochSampler(Sampler[int]):
    """All clips of the main corpora each epoch, plus a fresh random subset of training-only ones.

    TESS has 2,400 clips of two speakers: drawing a few hundred per epoch keeps
    its variety while RAVDESS's many voices dominate what the model learns.
    """

    def __init__(self, main: Sequence[int], extra: Sequence[int], extra_per_epoch: int | None) -> None:
        self.main, self.extra = list(main), list(extra)
        self.extra_per_epoch = len(self.extra) if extra_per_epoch is None else min(int(extra_per_epoch), len(self.extra))

    def __len__(self) -> int:
        return len(self.main) + self.extra_per_epoch

    def __iter__(self) -> Iterator[int]:
        idx = self.main + random.sample(self.extra, self.extra_per_epoch)
        random.shuffle(idx)
        return iter(idx)

"""Speaker-disjoint train/validation/test splits and k-fold over speakers.

A clip's speaker never appears in two splits: that is what makes the figures
mean "accuracy on a voice the model never heard". Corpora marked
training-only (TESS: two speakers) go to training whole. Torch-free.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from training.corpora import Record


@dataclass
class Splits:
    train: list[Record]
    val: list[Record]
    test: list[Record]

    def speakers(self) -> dict[str, list[str]]:
        return {name: sorted({r.speaker for r in getattr(self, name)}) for name in ("train", "val", "test")}

    def check_disjoint(self) -> None:
        s = {k: set(v) for k, v in self.speakers().items()}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = s[a] & s[b]
            if shared:
                raise AssertionError(f"speakers in both {a} and {b}: {sorted(shared)}")


def speaker_folds(speakers: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """Cut speakers into ``k`` folds of near-equal size, reproducibly for a seed."""
    unique = sorted(set(speakers))
    if k < 2 or k > len(unique):
        raise ValueError(f"k-fold needs 2 <= k <= {len(unique)} speakers, got k={k}")
    random.Random(seed).shuffle(unique)
    return [sorted(unique[i::k]) for i in range(k)]


def _take(speakers: list[str], fraction: float) -> int:
    if fraction <= 0 or len(speakers) < 2:
        return 0
    return min(len(speakers) - 1, max(1, round(fraction * len(speakers))))


def split_records(records: Sequence[Record], train_only: set[str], cfg: Any, seed: int = 0) -> Splits:
    """Split by speaker as ``cfg`` (the ``split`` config section) says.

    ``cfg["seed"]``, when set, overrides ``seed`` (the run's seed) for the speaker shuffles, so that
    runs with different training seeds can share one split.
    """
    if cfg.get("seed") is not None:
        seed = int(cfg["seed"])
    main = [r for r in records if r.corpus not in train_only]
    extra = [r for r in records if r.corpus in train_only]
    speakers = sorted({r.speaker for r in main})
    rng = random.Random(seed)

    if cfg.get("test_speakers"):
        test = set(cfg["test_speakers"])
        unknown = test - set(speakers)
        if unknown:
            raise ValueError(f"test speakers not in the data: {sorted(unknown)}")
    elif int(cfg.get("k") or 0) > 1:
        folds = speaker_folds(speakers, int(cfg["k"]), seed)
        fold = int(cfg.get("fold") or 0)
        if not 0 <= fold < len(folds):
            raise ValueError(f"fold {fold} out of range for k={len(folds)}")
        test = set(folds[fold])
    else:
        shuffled = speakers[:]
        rng.shuffle(shuffled)
        test = set(shuffled[: _take(shuffled, float(cfg.get("test_fraction") or 0))])

    rest = [s for s in speakers if s not in test]
    if cfg.get("val_speakers"):
        val = set(cfg["val_speakers"]) - test
    else:
        shuffled = rest[:]
        rng.shuffle(shuffled)
        val = set(shuffled[: _take(shuffled, float(cfg.get("val_fraction") or 0))])

    splits = Splits(
        train=[r for r in main if r.speaker not in test and r.speaker not in val] + extra,
        val=[r for r in main if r.speaker in val],
        test=[r for r in main if r.speaker in test],
    )
    splits.check_disjoint()
    return splits

"""Cross-validation of the chunk model's recipe: RAVDESS actor folds and leave-one-corpus-out, several seeds.

Every run trains a head from cached features (:mod:`training.chunk_training`),
calibrates it on its validation actors and scores its test clips with the
served geometry, clean and degraded. Speaker folds are RAVDESS's actors cut
as ``ser-train split.k=5`` cuts them (split seed 0), so fold ``f`` here has
the same test actors as in the compact model's cross-validation; every
other corpus is training data. Leave-one-corpus-out trains on every corpus
but the held-out one and scores all of its clips (a language and set of
voices the head never saw).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from training.chunk_training import train_split
from training.corpora import Record
from training.splits import Splits, split_records

log = logging.getLogger(__name__)

RAVDESS = "ravdess"


def ravdess_folds(records: Sequence[Record], k: int = 5, split_seed: int = 0) -> list[Splits]:
    """``k`` speaker-disjoint splits: RAVDESS actors in folds (2 validation actors each), all else training."""
    others = {r.corpus for r in records if r.corpus != RAVDESS}
    cfg = {"k": k, "val_fraction": 0.1, "seed": split_seed}
    return [split_records(records, others, {**cfg, "fold": f}) for f in range(k)]


def _summary(r: Any) -> dict:
    return {
        "temperature": r.temperature,
        "val_nll": {"before": r.val_nll[0], "after": r.val_nll[1]},
        "ece_uncalibrated": r.test_ece_uncalibrated,
        "layer_weights": r.train_stats.get("layer_weights"),
        "test": r.test,
    }


def cross_validate(model_cfg: Any, trainer_cfg: dict, records: Sequence[Record], cache: Any, seeds: Sequence[int],
                   conditions: dict[str, dict], folds: Sequence[int] | None = None, k: int = 5,
                   keep_models: bool = False) -> list[dict]:
    """One result per (fold, seed): test metrics under each condition (RAVDESS test actors); ``model`` too if kept."""
    splits = ravdess_folds(records, k)
    out = []
    for f in folds if folds is not None else range(k):
        s = splits[f]
        test = {name: (s.test, v) for name, v in conditions.items()}
        for seed in seeds:
            t0 = time.time()
            r = train_split(model_cfg, trainer_cfg, s.train, s.val, test, cache, seed)
            row = {"fold": f, "seed": seed, "test_speakers": sorted({x.speaker for x in s.test}),
                   "val_speakers": sorted({x.speaker for x in s.val}), "seconds": time.time() - t0, **_summary(r)}
            if keep_models:
                row["model"] = r.model
            log.info("fold %d seed %d: UA %.3f (%.0f s)", f, seed, r.test["clean"]["ua"], row["seconds"])
            out.append(row)
    return out


def leave_corpus_out(model_cfg: Any, trainer_cfg: dict, records: Sequence[Record], cache: Any, held_out: str,
                     seeds: Sequence[int]) -> list[dict]:
    """Train without ``held_out``, score all of its clips: one row per seed (:func:`loco_rows`)."""
    return loco_rows(held_out_languages(model_cfg, trainer_cfg, records, cache, {held_out: (held_out,)}, seeds), [held_out])


def loco_rows(runs: list[dict], corpora: Sequence[str]) -> list[dict]:
    """:func:`held_out_languages` runs as leave-one-corpus-out rows: one per run and corpus, its score as ``clean``."""
    return [{"held_out": c, **{k: v for k, v in run.items() if k not in ("test", "seconds")}, "test": {"clean": run["test"][c]}}
            for run in runs for c in corpora]


def held_out_languages(model_cfg: Any, trainer_cfg: dict, records: Sequence[Record], cache: Any,
                       sets: dict[str, Sequence[str]], seeds: Sequence[int]) -> list[dict]:
    """Train once per seed without any corpus of ``sets`` (name -> corpora), score each set's clips pooled.

    One fit serves every held-out language where the recipe weighs none of them (the shipped ones
    weigh only the English corpora): :func:`leave_corpus_out` would refit the same head once per
    corpus (weights and each window's noise-bank draw depend only on its own clip,
    ``training.chunk_training.bank_draws``). Validation (for calibration only) is fold 0's two RAVDESS
    validation actors, as there.
    """
    held = {c for corpora in sets.values() for c in corpora}
    tests = {name: [r for r in records if r.corpus in corpora] for name, corpora in sets.items()}
    if empty := [name for name, recs in tests.items() if not recs]:
        raise ValueError(f"no clips of {', '.join(empty)} in the data")
    val_speakers = {x.speaker for x in ravdess_folds(records)[0].val}
    val = [r for r in records if r.speaker in val_speakers]
    train = [r for r in records if r.corpus not in held and r.speaker not in val_speakers]
    out = []
    for seed in seeds:
        t0 = time.time()
        r = train_split(model_cfg, trainer_cfg, train, val, {n: (recs, {"name": "clean"}) for n, recs in tests.items()}, cache, seed)
        log.info("held out %s seed %d: %s (%.0f s)", sorted(held), seed,
                 ", ".join(f"{n} UA {m['ua']:.3f}" for n, m in r.test.items()), time.time() - t0)
        out.append({"seed": seed, "train_corpora": sorted({x.corpus for x in train}), "seconds": time.time() - t0, **_summary(r)})
    return out

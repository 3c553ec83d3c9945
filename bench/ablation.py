"""Where the head loses what the features hold: one table of ablations, RAVDESS actor folds, several seeds.

    python -m bench.ablation                      # every row below, 5 folds; 3 seeds where a recipe has a seed
    python -m bench.ablation --rows baseline moments --folds 0 1

Each row is the default recipe (tiny.en states 0-3, 1 s chunks every 0.5 s,
every corpus of ../shared/data in training, the folds of bench.accuracy)
with one thing changed; "moments" is the head that ships. The factors:

- silence in the window: statistics over all frames of all 9 chunks (the
  silent padding included), over all frames with chunks weighted by their
  voiced share, or over voiced frames only;
- per-chunk vs window statistics: the chunks' own (mean, deviation) averaged,
  or the window's mean and deviation combined from the chunks' moments;
- the optimiser: the convex L-BFGS fit, or AdamW minibatches with dropout
  and label smoothing (the previous head's training) on the same features;
- regularisation (C) and the share of augmented windows in training.

A convex fit has no seed (its result is the optimum), so L-BFGS rows run
one seed and the table says so; rows trained by AdamW run every seed.
Writes bench/results/ablation.json and .md (the table: bench.tables).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time

from bench.accuracy import add_data_args, all_records, cache_for, load_recipe, mean, sd
from bench.lib import RESULTS, write_json
from bench.tables import ablation_markdown
from contract.audio import LABELS

CLEAN = [{"name": "clean"}]
ENGLISH = {"corpus_weights": {"ravdess": 1.0, "tess": 1.0, "default": 0.0}}  # the other corpora weigh 0
ALL = {"corpus_weights": None}

# name -> (what changes, head overrides, trainer overrides, augmented variant in training, stochastic)
ROWS: dict[str, tuple[str, dict, dict, bool, bool]] = {
    "baseline": ("the previous head as shipped: attention over per-chunk all-frame statistics, AdamW, 75 % augmented, all corpora",
                 {"kind": "attention"}, {**ALL, "optimizer": "adamw", "clean_p": 0.25}, True, True),
    "attention_english": ("the previous head, English corpora only (RAVDESS + TESS)", {"kind": "attention"},
                          {**ENGLISH, "optimizer": "adamw", "clean_p": 0.25}, True, True),
    "moments_all_corpora": ("... all seven corpora in the fit (corpus_alpha 0.5)", {}, {**ALL}, True, False),
    "moments_others0.2": ("... the non-English corpora at 0.2 of their share", {},
                          {"corpus_weights": {"ravdess": 1.0, "tess": 1.0, "default": 0.2}}, True, False),
    "moments": ("**shipped**: linear (L-BFGS, C 0.05) on the window's voiced-frame mean and deviation beside the "
                "chunks' all-frame statistics averaged; English corpora, 50 % augmented", {}, {**ENGLISH}, True, False),
    "voiced_only": ("... the voiced-frame window statistics alone", {}, {**ENGLISH, "pooling": "voiced_window_moments"}, True, False),
    "all_frames_every_chunk": ("... the all-frame statistics of all 9 chunks alone (the silent padding included)", {},
                               {**ENGLISH, "pooling": "all_frames_every_chunk"}, True, False),
    "all_frames_by_share": ("... all-frame statistics alone, chunks weighted by voiced share", {}, {**ENGLISH, "pooling": "all_frames_by_share"}, True, False),
    "voiced_chunk_stats": ("... voiced frames alone, the chunks' own statistics averaged (not window statistics)", {},
                           {**ENGLISH, "pooling": "voiced_chunk_stats"}, True, False),
    "moments_adamw": ("... AdamW + dropout 0.3 + label smoothing 0.05 (1500 steps) instead of L-BFGS", {},
                      {**ENGLISH, "optimizer": "adamw"}, True, True),
    "moments_c0.02": ("... C 0.02", {}, {**ENGLISH, "c": 0.02}, True, False),
    "moments_c0.2": ("... C 0.2", {}, {**ENGLISH, "c": 0.2}, True, False),
    "moments_aug0": ("... no augmented windows", {}, {**ENGLISH, "clean_p": 1.0}, False, False),
    "moments_aug25": ("... 25 % augmented", {}, {**ENGLISH, "clean_p": 0.75}, True, False),
    "moments_aug75": ("... 75 % augmented (the previous head's share)", {}, {**ENGLISH, "clean_p": 0.25}, True, False),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    add_data_args(ap)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    from training.chunk_cv import cross_validate

    torch.set_num_threads(1)
    base_cfg = load_recipe("tiny.en", [])
    records = all_records(args.data_root)
    cache = cache_for(base_cfg, args.cache_dir)
    conditions = base_cfg["features"]["eval_conditions"]
    out_path = RESULTS / f"ablation{'-' + args.tag if args.tag else ''}.json"
    done = json.loads(out_path.read_text())["rows"] if out_path.is_file() else {}
    for name in args.rows:
        what, head, trainer, augmented, stochastic = ROWS[name]
        mc = copy.deepcopy(base_cfg)
        mc["head"].update(head)
        if not augmented:
            mc["features"]["train_variants"] = CLEAN
        tc = {**mc["head_trainer"], "clean_p": 0.5, **trainer}
        seeds = args.seeds if stochastic else args.seeds[:1]
        t0 = time.time()
        runs = cross_validate(mc, tc, records, cache, seeds, conditions, folds=args.folds)
        done[name] = {"what": what, "seeds": seeds, "folds": args.folds, "minutes": (time.time() - t0) / 60,
                      **summary(runs, list(conditions))}
        write_json(out_path, {"rows": done}, indent=1, default=float)  # after every row: resumable
        logging.info("%s: UA %.3f (%.1f min)", name, done[name]["ua"], done[name]["minutes"])
    md = ablation_markdown({"rows": done})
    out_path.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {out_path} and {out_path.with_suffix('.md')}")
    return 0


def summary(runs: list[dict], conditions: list[str]) -> dict:
    folds = sorted({r["fold"] for r in runs})
    per_fold, seed_sds = [], []
    for f in folds:
        rs = [r for r in runs if r["fold"] == f]
        per_fold.append({c: mean([r["test"][c]["ua"] for r in rs]) for c in conditions}
                        | {"recall": {lab: mean([r["test"]["clean"]["per_class"][lab]["recall"] for r in rs]) for lab in LABELS}})
        seed_sds.append(sd([r["test"]["clean"]["ua"] for r in rs]))
    recall = {lab: mean([f["recall"][lab] for f in per_fold]) for lab in LABELS}
    return {
        "ua": mean([f["clean"] for f in per_fold]), "ua_fold_sd": sd([f["clean"] for f in per_fold]),
        "ua_seed_sd": mean(seed_sds), "recall": recall, "min_recall": min(recall.values()),
        "robustness": {c: mean([f[c] for f in per_fold]) for c in conditions},
        "ece_before": mean([r["ece_uncalibrated"] for r in runs]), "ece_after": mean([r["test"]["clean"]["ece"] for r in runs]),
        "per_fold_ua": [f["clean"] for f in per_fold],
    }


if __name__ == "__main__":
    sys.exit(main())

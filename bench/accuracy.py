"""Accuracy of the default (Whisper chunk) recipe on voices and languages it never heard, several seeds each.

    python bench/accuracy.py                               # 5 RAVDESS folds x 3 seeds, robustness, calibration, LOCO
    python bench/accuracy.py --seeds 0 1 2 --folds 0 1     # a subset
    python bench/accuracy.py model.head.mix=weighted       # another recipe (any conf/model/whisper.yaml key)
    python bench/accuracy.py --no-loco --tag weighted model.head.mix=weighted

RAVDESS actor cross-validation: fold f tests 4 actors (the folds of
``ser-train split.k=5``, so the same actors as the compact model's CV in
bench/accuracy_compact.py), 2 others calibrate the temperature, and the
head trains on the rest plus every other corpus. Each (fold, seed) is a
fresh head; the tables show the mean over seeds per fold, then the mean and
spread over folds, and the spread over seeds. Robustness scores the same
test clips degraded (white noise at 20 and 10 dB SNR, reverberation RT60
0.4 s, Opus at 16 kbps). Leave-one-corpus-out scores all of nEMO (Polish)
and ASED (Amharic) with heads trained without them, and, in the same run,
the shipped compact model (RAVDESS + TESS, engine/models/compact.onnx) and
the chunk recipe trained on RAVDESS + TESS only (like for like).

Features come from the on-disk cache (training/features.py); the first run
encodes what is missing (about 12 ms of CPU per 1 s chunk). Prints tables,
writes bench/results/accuracy[-TAG].json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.audio import LABELS  # noqa: E402

NAMES = {"clean": "clean", "snr20": "white noise 20 dB SNR", "snr10": "white noise 10 dB SNR",
         "reverb": "reverb RT60 0.4 s", "opus16": "Opus 16 kbps"}
ALL_CORPORA = ("ravdess", "tess", "nemo", "ased", "turev", "emotiontts", "banglaser_ext")
LOCO = ("nemo", "ased")


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def compact_on(records: list, model_path: Path) -> dict:
    """The shipped compact model through the engine, as ser-predict scores files (clip-level)."""
    from engine import load_engine
    from engine.predict import classify_files
    from training.metrics import classification_metrics

    eng = load_engine(model_path, backend="onnxruntime")
    truth = {str(r.path): r.label_index for r in records}
    y, p = [], []
    for res in classify_files(eng, [r.path for r in records], batch=32):
        if res.error is None:
            y.append(truth[str(res.path)])
            p.append(LABELS.index(res.top))
    return classification_metrics(y, p)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--cache-dir", default="~/.cache/ser")
    ap.add_argument("--no-robust", action="store_true", help="clean test clips only")
    ap.add_argument("--no-loco", action="store_true", help="skip leave-one-corpus-out")
    ap.add_argument("--no-cv", action="store_true", help="skip the RAVDESS cross-validation (LOCO only)")
    ap.add_argument("--compact", type=Path, default=REPO / "engine" / "models" / "compact.onnx")
    ap.add_argument("--tag", default="", help="suffix of the result files (for recipe comparisons)")
    ap.add_argument("overrides", nargs="*", help="conf/model/whisper.yaml overrides, key=value (e.g. model.head.mix=weighted)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch
    import yaml
    from omegaconf import OmegaConf

    from training.chunk_cv import cross_validate, leave_corpus_out
    from training.corpora import scan_corpora
    from training.features import Chunking, FeatureCache

    torch.set_num_threads(1)  # a head trains fastest single-threaded; the feature encoder is another process
    cfg = OmegaConf.create({"model": OmegaConf.load(REPO / "conf" / "model" / "whisper.yaml")})
    for o in args.overrides:
        key, value = o.split("=", 1)
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
    mc = OmegaConf.to_container(cfg.model, resolve=True)
    trainer = dict(mc.get("head_trainer") or {})
    records, _ = scan_corpora([{"name": c, "root": str(args.data_root / c)} for c in ALL_CORPORA])
    enc = mc["encoder"]
    cache = FeatureCache(args.cache_dir, Chunking(int(float(enc["chunk_s"]) * 16000), int(float(enc["hop_s"]) * 16000)), int(enc["blocks"]))
    conditions = {k: v for k, v in mc["features"]["eval_conditions"].items() if k == "clean" or not args.no_robust}

    t0 = time.time()
    cv = [] if args.no_cv else cross_validate(mc, trainer, records, cache, args.seeds, conditions, folds=args.folds)
    loco: list[dict] = []
    compact: dict[str, dict] = {}
    if not args.no_loco:
        for corpus in LOCO:
            loco += [{**r, "recipe": "chunk, all other corpora"} for r in leave_corpus_out(mc, trainer, records, cache, corpus, args.seeds)]
            loco += [{**r, "recipe": "chunk, RAVDESS + TESS"} for r in leave_corpus_out(mc, trainer, records, cache, corpus, args.seeds, ("ravdess", "tess"))]
            if args.compact.is_file():
                compact[corpus] = compact_on([r for r in records if r.corpus == corpus], args.compact)
    report = summarise(cv, loco, compact, list(conditions))
    report.update(overrides=args.overrides, seeds=args.seeds, folds=args.folds, minutes=(time.time() - t0) / 60)
    out = REPO / "bench" / "results" / f"accuracy{'-' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": report, "cv_runs": cv, "loco_runs": loco, "compact_loco": compact}, indent=1, default=float))
    md = markdown(report)
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')} ({report['minutes']:.1f} min)")
    return 0


def summarise(cv: list[dict], loco: list[dict], compact: dict, conditions: list[str]) -> dict:
    folds = sorted({r["fold"] for r in cv})
    per_fold: list[dict] = []
    if not cv:
        return {"per_fold": [], "loco": _loco_rows(loco, compact)}
    for f in folds:
        runs = [r for r in cv if r["fold"] == f]
        clean = [r["test"]["clean"] for r in runs]
        per_fold.append({
            "fold": f, "test_speakers": runs[0]["test_speakers"], "n": clean[0]["n"], "seeds": len(runs),
            "ua": mean([m["ua"] for m in clean]), "ua_seed_sd": sd([m["ua"] for m in clean]),
            "accuracy": mean([m["accuracy"] for m in clean]), "macro_f1": mean([m["macro_f1"] for m in clean]),
            "recall": {lab: mean([m["per_class"][lab]["recall"] for m in clean]) for lab in LABELS},
            "by_condition": {c: mean([r["test"][c]["ua"] for r in runs]) for c in conditions},
        })
    clean_runs = [r["test"]["clean"] for r in cv]
    confusion = np.sum([m["confusion"] for m in clean_runs], axis=0).tolist()
    return {
        "per_fold": per_fold,
        "ua": mean([f["ua"] for f in per_fold]), "ua_fold_sd": sd([f["ua"] for f in per_fold]),
        "ua_seed_sd": mean([f["ua_seed_sd"] for f in per_fold]),
        "accuracy": mean([f["accuracy"] for f in per_fold]), "macro_f1": mean([f["macro_f1"] for f in per_fold]),
        "recall": {lab: mean([f["recall"][lab] for f in per_fold]) for lab in LABELS},
        "robustness": {c: mean([f["by_condition"][c] for f in per_fold]) for c in conditions},
        "calibration": {"temperature": mean([r["temperature"] for r in cv]),
                        "ece_before": mean([r["ece_uncalibrated"] for r in cv]),
                        "ece_after": mean([r["test"]["clean"]["ece"] for r in cv])},
        "layer_weights": [r["layer_weights"] for r in cv if r.get("layer_weights")][:1],
        "confusion": confusion,
        "loco": _loco_rows(loco, compact),
    }


def _loco_rows(loco: list[dict], compact: dict) -> list[dict]:
    loco_rows = []
    for corpus in LOCO:
        for recipe in ("chunk, all other corpora", "chunk, RAVDESS + TESS"):
            runs = [r for r in loco if r["held_out"] == corpus and r["recipe"] == recipe]
            if runs:
                ms = [r["test"]["clean"] for r in runs]
                loco_rows.append({"corpus": corpus, "recipe": recipe, "ua": mean([m["ua"] for m in ms]), "ua_seed_sd": sd([m["ua"] for m in ms]),
                                  "recall": {lab: mean([m["per_class"][lab]["recall"] for m in ms]) for lab in LABELS
                                             if ms[0]["per_class"][lab]["support"]}, "n": ms[0]["n"]})
        if corpus in compact:
            m = compact[corpus]
            loco_rows.append({"corpus": corpus, "recipe": "compact (shipped before), RAVDESS + TESS", "ua": m["ua"], "ua_seed_sd": 0.0,
                              "recall": {lab: m["per_class"][lab]["recall"] for lab in LABELS if m["per_class"][lab]["support"]}, "n": m["n"]})
    return loco_rows


def markdown(s: dict) -> str:
    if not s["per_fold"]:
        return "\n".join(_loco_markdown(s["loco"])) + "\n"
    out = ["| fold | test actors | clips | seeds | UA (mean over seeds) | seed sd | accuracy | macro F1 | " + " | ".join(LABELS) + " |",
           "|---" * (8 + len(LABELS)) + "|"]
    for f in s["per_fold"]:
        actors = ", ".join(x.split(":")[1] for x in f["test_speakers"])
        out.append(f"| {f['fold']} | {actors} | {f['n']} | {f['seeds']} | {f['ua']:.3f} | {f['ua_seed_sd']:.3f} | {f['accuracy']:.3f} | "
                   f"{f['macro_f1']:.3f} | " + " | ".join(f"{f['recall'][lab]:.2f}" for lab in LABELS) + " |")
    out.append(f"| **mean** | | | | **{s['ua']:.3f}** ± {s['ua_fold_sd']:.3f} (folds) | {s['ua_seed_sd']:.3f} | {s['accuracy']:.3f} | "
               f"{s['macro_f1']:.3f} | " + " | ".join(f"{s['recall'][lab]:.2f}" for lab in LABELS) + " |")
    out += ["", "Confusion matrix summed over folds and seeds (rows: true, columns: predicted):", "",
            "| true \\ predicted | " + " | ".join(LABELS) + " |", "|---" * (1 + len(LABELS)) + "|"]
    out += [f"| {lab} | " + " | ".join(str(v) for v in s["confusion"][i]) + " |" for i, lab in enumerate(LABELS)]
    rob = s["robustness"]
    out += ["", "Robustness (same test clips degraded before padding; UA, mean over folds and seeds):", "",
            "| condition | UA | drop |", "|---|---|---|"]
    out += [f"| {NAMES.get(c, c)} | {rob[c]:.3f} | {rob[c] - rob['clean']:+.3f} |" for c in rob]
    cal = s["calibration"]
    out += ["", f"Calibration (temperature scaling on each run's 2 validation actors; clip-level top-class ECE, 15 bins, "
            f"on the test actors): ECE {cal['ece_before']:.3f} before, {cal['ece_after']:.3f} after (mean T = {cal['temperature']:.2f})."]
    out += _loco_markdown(s["loco"])
    return "\n".join(out) + "\n"


def _loco_markdown(rows: list[dict]) -> list[str]:
    out: list[str] = []
    if rows:
        out += ["", "Leave one corpus out (all clips of the held-out corpus; UA, mean over seeds):", "",
                "| held out | clips | recipe | UA | seed sd | per-class recall |", "|---|---|---|---|---|---|"]
        out += [f"| {r['corpus']} | {r['n']} | {r['recipe']} | {r['ua']:.3f} | {r['ua_seed_sd']:.3f} | "
                + ", ".join(f"{k} {v:.2f}" for k, v in r["recall"].items()) + " |" for r in rows]
    return out


if __name__ == "__main__":
    sys.exit(main())

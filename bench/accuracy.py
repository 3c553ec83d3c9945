"""Accuracy of the chunk recipe on voices and languages it never heard: tiny.en and base side by side, one run.

    python bench/accuracy.py                                # both encoders: CV, robustness, calibration, LOCO
    python bench/accuracy.py --encoders tiny.en --no-loco   # one encoder, cross-validation only
    python bench/accuracy.py --stream --encoders tiny.en    # + live-like streams through ser-listen
    python bench/accuracy.py model.head_trainer.c=0.02      # another recipe (any conf/model/*.yaml key)

RAVDESS actor cross-validation: fold f tests 4 actors (the folds of
``ser-train split.k=5``), 2 others calibrate the temperature, and the head
trains on the rest plus every other corpus. The shipped head's fit is convex
(L-BFGS), so its result does not depend on a seed: such a recipe runs one
seed per fold, and a recipe with a stochastic optimiser runs every ``--seeds``.
Robustness scores the same test clips degraded (white noise at 20 and 10 dB
SNR, reverberation RT60 0.4 s, Opus at 16 kbps); calibration is the
clip-level ECE before and after temperature scaling. Leave-one-corpus-out
fits the recipe on its training corpora (``head_trainer.corpus_weights``)
without nEMO (Polish), ASED (Amharic) or TurEV-DB (Turkish) and scores all
of the held-out corpus's clips: a language and voices never heard.

``--stream``: for each fold, the head of the clean cross-validation is
exported to ONNX and each test actor's clips are played as one long stream
(pauses of 0.3-1.5 s, a 6 s gap every 8 clips, noise 30 dB below the
speech, a random level) through ``ser-listen --device FILE --fast --once
--jsonl`` with its shipped smoothing and VAD; every window that is mostly one
clip is scored against that clip's label (:mod:`training.stream_eval`),
beside the clip-level UA of the same heads.

Features come from the on-disk cache (training/features.py;
``bench/encode_features.py`` fills it in the background). Prints tables,
writes bench/results/accuracy[-TAG].json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.audio import LABELS  # noqa: E402

NAMES = {"clean": "clean", "snr20": "white noise 20 dB SNR", "snr10": "white noise 10 dB SNR",
         "reverb": "reverb RT60 0.4 s", "opus16": "Opus 16 kbps"}
ALL_CORPORA = ("ravdess", "tess", "nemo", "ased", "turev", "emotiontts", "banglaser_ext")
LOCO = ("nemo", "ased", "turev")
CONFIGS = {"tiny.en": "whisper.yaml", "base": "whisper-base.yaml"}


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def stochastic(trainer: dict, head: dict) -> bool:
    """Whether a recipe's result depends on its seed (the convex L-BFGS fit of the moments head does not)."""
    return head.get("kind", "moments") != "moments" or trainer.get("optimizer", "lbfgs") != "lbfgs"


def load_recipe(encoder: str, overrides: list[str]) -> dict:
    import yaml
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"model": OmegaConf.load(REPO / "conf" / "model" / CONFIGS[encoder])})
    for o in overrides:
        key, value = o.split("=", 1)
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
    return OmegaConf.to_container(cfg.model, resolve=True)


def cache_for(mc: dict, cache_dir: str):  # noqa: ANN201 (training.features.FeatureCache, imported late)
    from training.features import Chunking, FeatureCache

    enc = mc["encoder"]
    ch = Chunking(int(float(enc["chunk_s"]) * 16000), int(float(enc["hop_s"]) * 16000))
    return FeatureCache(cache_dir, ch, int(enc["blocks"]), name=str(enc.get("name", "tiny.en")))


def add_data_args(ap: argparse.ArgumentParser, folds: bool = True) -> None:
    """The options every accuracy bench shares: where the data and the feature cache are, and which folds and seeds."""
    if folds:
        ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--cache-dir", default="~/.cache/ser")


def all_records(data_root: Path) -> list:
    """Every clip of every corpus in ``data_root`` (training.corpora.Record)."""
    from training.corpora import scan_corpora

    return scan_corpora([{"name": c, "root": str(data_root / c)} for c in ALL_CORPORA])[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoders", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    add_data_args(ap)
    ap.add_argument("--no-robust", action="store_true", help="clean test clips only")
    ap.add_argument("--no-loco", action="store_true", help="skip leave-one-corpus-out")
    ap.add_argument("--no-cv", action="store_true", help="skip the RAVDESS cross-validation")
    ap.add_argument("--stream", action="store_true", help="also score live-like streams through ser-listen")
    ap.add_argument("--tag", default="", help="suffix of the result files (for recipe comparisons)")
    ap.add_argument("overrides", nargs="*", help="conf/model overrides, key=value (e.g. model.head_trainer.c=0.02)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    from training.chunk_cv import cross_validate, leave_corpus_out

    torch.set_num_threads(1)  # a head fits fastest single-threaded; the feature encoder is another process
    records = all_records(args.data_root)
    t0 = time.time()
    result: dict = {"overrides": args.overrides, "folds": args.folds, "encoders": {}}
    for encoder in args.encoders:
        mc = load_recipe(encoder, args.overrides)
        trainer = dict(mc.get("head_trainer") or {})
        seeds = args.seeds if stochastic(trainer, mc["head"]) else args.seeds[:1]
        cache = cache_for(mc, args.cache_dir)
        conditions = {k: v for k, v in mc["features"]["eval_conditions"].items() if k == "clean" or not args.no_robust}
        keep = args.stream  # the stream scorer needs the heads themselves
        cv = [] if args.no_cv else cross_validate(mc, trainer, records, cache, seeds, conditions, folds=args.folds, keep_models=keep)
        loco: list[dict] = []
        if not args.no_loco:
            for corpus in LOCO:
                loco += leave_corpus_out(mc, trainer, records, cache, corpus, seeds)
        entry = {"seeds": seeds, "summary": summarise(cv, loco, list(conditions)),
                 "cv_runs": [{k: v for k, v in r.items() if k != "model"} for r in cv], "loco_runs": loco}
        if args.stream and cv:
            entry["stream"] = stream_scores(mc, cv, records)
        result["encoders"][encoder] = entry
        del cache
    result["minutes"] = (time.time() - t0) / 60
    out = REPO / "bench" / "results" / f"accuracy{'-' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float))
    md = markdown(result)
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')} ({result['minutes']:.1f} min)")
    return 0


# ----------------------------------------------------------------------------- live-like streams


def export_head(model, mc: dict, path: Path) -> None:  # noqa: ANN001 (a WhisperChunkModel)
    """The fold's head with the pinned encoder weights, as ONNX the daemon loads (parity-checked)."""
    from engine.export_chunked import chunked_parity, export_chunked_onnx
    from engine.metadata import model_metadata

    model.load_pretrained_encoder()
    meta = model_metadata({"model": mc}, {"variant": mc.get("variant", "whisper")}, name=path.stem)
    meta.update({k: str(v) for k, v in model.chunking.items()})
    export_chunked_onnx(model, path, meta)
    diff = chunked_parity(model, path)
    if not diff < 1e-3:
        raise RuntimeError(f"{path}: exported head differs from torch by {diff:.2e}")


def stream_scores(mc: dict, cv: list[dict], records: list, seed: int = 0) -> dict:
    """Per fold: export the head, build each test actor's stream, run ser-listen on it, score its windows."""
    import soundfile as sf

    from training.audio import load_audio
    from training.stream_eval import build_stream, pool_scores, score_stream

    listen = Path(sys.executable).with_name("ser-listen")
    per_fold, all_scores = [], []
    with tempfile.TemporaryDirectory(prefix="ser-stream-") as tmp:
        for run in [r for r in cv if r["seed"] == cv[0]["seed"]]:
            onnx_path = Path(tmp) / f"fold{run['fold']}.onnx"
            export_head(run["model"], mc, onnx_path)
            fold_scores = []
            for speaker in run["test_speakers"]:
                rng = np.random.default_rng([seed, zlib.crc32(speaker.encode())])
                recs = [r for r in records if r.speaker == speaker]
                order = rng.permutation(len(recs))
                clips = [(load_audio(recs[i].path), recs[i].label) for i in order]
                audio, segments = build_stream(clips, rng)
                wav = Path(tmp) / f"{speaker.replace(':', '_')}.wav"
                sf.write(wav, audio, 16000, subtype="FLOAT")
                proc = subprocess.run([str(listen), "--device", str(wav), "--fast", "--once", "--jsonl", "--port", "0",
                                       "--model", str(onnx_path), "--backend", "onnxruntime"],
                                      capture_output=True, text=True, timeout=900, check=False)
                if proc.returncode != 0:
                    raise RuntimeError(f"ser-listen failed on {wav}: {proc.stderr[-2000:]}")
                preds = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
                s = score_stream(preds, segments)
                s["speaker"], s["seconds"] = speaker, len(audio) / 16000
                fold_scores.append(s)
                logging.info("stream fold %d %s: %d windows, %d scored", run["fold"], speaker, s["windows"], s["scored"])
            pooled = pool_scores(fold_scores)
            per_fold.append({"fold": run["fold"], "clip_ua": run["test"]["clean"]["ua"], **pooled,
                             "speakers": [{k: v for k, v in s.items() if k not in ("hits", "raw_hits", "totals")} for s in fold_scores]})
            all_scores += fold_scores
    total = pool_scores(all_scores)
    return {"per_fold": per_fold, "ua": mean([f["ua"] for f in per_fold]), "clip_ua": mean([f["clip_ua"] for f in per_fold]),
            "raw_ua": mean([f["raw_ua"] for f in per_fold]),
            "recall": {lab: mean([f["recall"][lab] for f in per_fold if lab in f["recall"]]) for lab in LABELS},
            "pause_reported_share": total["pause_reported_share"], "scored_silent_share": total["scored_silent_share"],
            "windows": total["windows"], "scored": total["scored"], "mixed": total["mixed"], "pause": total["pause"],
            "hours": sum(s["seconds"] for s in all_scores) / 3600}


# ----------------------------------------------------------------------------- tables


def summarise(cv: list[dict], loco: list[dict], conditions: list[str]) -> dict:
    out: dict = {"loco": _loco_rows(loco)}
    if not cv:
        return out | {"per_fold": []}
    per_fold: list[dict] = []
    for f in sorted({r["fold"] for r in cv}):
        runs = [r for r in cv if r["fold"] == f]
        clean = [r["test"]["clean"] for r in runs]
        per_fold.append({
            "fold": f, "test_speakers": runs[0]["test_speakers"], "n": clean[0]["n"], "seeds": len(runs),
            "ua": mean([m["ua"] for m in clean]), "ua_seed_sd": sd([m["ua"] for m in clean]),
            "accuracy": mean([m["accuracy"] for m in clean]), "macro_f1": mean([m["macro_f1"] for m in clean]),
            "recall": {lab: mean([m["per_class"][lab]["recall"] for m in clean]) for lab in LABELS},
            "by_condition": {c: mean([r["test"][c]["ua"] for r in runs]) for c in conditions},
        })
    confusion = np.sum([r["test"]["clean"]["confusion"] for r in cv], axis=0).tolist()
    return out | {
        "per_fold": per_fold,
        "ua": mean([f["ua"] for f in per_fold]), "ua_fold_sd": sd([f["ua"] for f in per_fold]),
        "ua_seed_sd": mean([f["ua_seed_sd"] for f in per_fold]),
        "accuracy": mean([f["accuracy"] for f in per_fold]), "macro_f1": mean([f["macro_f1"] for f in per_fold]),
        "recall": {lab: mean([f["recall"][lab] for f in per_fold]) for lab in LABELS},
        "robustness": {c: mean([f["by_condition"][c] for f in per_fold]) for c in conditions},
        "calibration": {"temperature": mean([r["temperature"] for r in cv]),
                        "ece_before": mean([r["ece_uncalibrated"] for r in cv]),
                        "ece_after": mean([r["test"]["clean"]["ece"] for r in cv])},
        "confusion": confusion,
    }


def _loco_rows(loco: list[dict]) -> list[dict]:
    rows = []
    for corpus in LOCO:
        runs = [r for r in loco if r["held_out"] == corpus]
        if runs:
            ms = [r["test"]["clean"] for r in runs]
            rows.append({"corpus": corpus, "ua": mean([m["ua"] for m in ms]), "ua_seed_sd": sd([m["ua"] for m in ms]), "n": ms[0]["n"],
                         "ece": mean([m["ece"] for m in ms]),
                         "recall": {lab: mean([m["per_class"][lab]["recall"] for m in ms]) for lab in LABELS if ms[0]["per_class"][lab]["support"]}})
    return rows


def markdown(result: dict) -> str:
    out: list[str] = []
    encs = result["encoders"]
    for name, e in encs.items():
        s = e["summary"]
        if not s["per_fold"]:
            continue
        out += [f"### {name}: RAVDESS cross-validation ({len(e['seeds'])} seed(s) per fold"
                + (", convex fit: the result does not depend on the seed" if len(e["seeds"]) == 1 else "") + ")", "",
                "| fold | test actors | clips | UA | seed sd | accuracy | macro F1 | " + " | ".join(LABELS) + " |",
                "|---" * (7 + len(LABELS)) + "|"]
        for f in s["per_fold"]:
            actors = ", ".join(x.split(":")[1] for x in f["test_speakers"])
            out.append(f"| {f['fold']} | {actors} | {f['n']} | {f['ua']:.3f} | {f['ua_seed_sd']:.3f} | {f['accuracy']:.3f} | "
                       f"{f['macro_f1']:.3f} | " + " | ".join(f"{f['recall'][lab]:.2f}" for lab in LABELS) + " |")
        out.append(f"| **mean** | | | **{s['ua']:.3f}** ± {s['ua_fold_sd']:.3f} | {s['ua_seed_sd']:.3f} | {s['accuracy']:.3f} | "
                   f"{s['macro_f1']:.3f} | " + " | ".join(f"{s['recall'][lab]:.2f}" for lab in LABELS) + " |")
        out += ["", "Confusion matrix summed over folds (rows: true, columns: predicted):", "",
                "| true \\ predicted | " + " | ".join(LABELS) + " |", "|---" * (1 + len(LABELS)) + "|"]
        out += [f"| {lab} | " + " | ".join(str(v) for v in s["confusion"][i]) + " |" for i, lab in enumerate(LABELS)]
        out.append("")
    with_cv = {n: e["summary"] for n, e in encs.items() if e["summary"]["per_fold"]}
    if with_cv:
        names = list(with_cv)
        out += ["Side by side (RAVDESS CV; robustness: same test clips degraded before padding):", "",
                "| | " + " | ".join(names) + " |", "|---" * (1 + len(names)) + "|"]
        out.append("| clean UA (± folds) | " + " | ".join(f"{s['ua']:.3f} ± {s['ua_fold_sd']:.3f}" for s in with_cv.values()) + " |")
        out.append("| lowest class recall | " + " | ".join(
            f"{min(s['recall'], key=s['recall'].get)} {min(s['recall'].values()):.2f}" for s in with_cv.values()) + " |")
        for c in next(iter(with_cv.values()))["robustness"]:
            if c != "clean":
                out.append(f"| {NAMES.get(c, c)} (drop) | " + " | ".join(
                    f"{s['robustness'][c]:.3f} ({s['robustness'][c] - s['robustness']['clean']:+.3f})" for s in with_cv.values()) + " |")
        out.append("| ECE before / after temperature | " + " | ".join(
            f"{s['calibration']['ece_before']:.3f} / {s['calibration']['ece_after']:.3f} (T {s['calibration']['temperature']:.2f})"
            for s in with_cv.values()) + " |")
        out.append("")
    loco = {n: {r["corpus"]: r for r in e["summary"]["loco"]} for n, e in encs.items() if e["summary"]["loco"]}
    if loco:
        names = list(loco)
        out += ["Leave one corpus out (each recipe's own training corpora without the held-out one; all of its clips scored; UA):", "",
                "| held out | clips | " + " | ".join(names) + " | per-class recall (" + names[-1] + ") |", "|---" * (3 + len(names)) + "|"]
        for corpus in LOCO:
            rows = [loco[n].get(corpus) for n in names]
            if all(rows):
                out.append(f"| {corpus} | {rows[0]['n']} | " + " | ".join(f"{r['ua']:.3f}" for r in rows) + " | "
                           + ", ".join(f"{k} {v:.2f}" for k, v in rows[-1]["recall"].items()) + " |")
        out.append("")
    for name, e in encs.items():
        st = e.get("stream")
        if st:
            out += [f"Live-like streams ({name}; {st['hours']:.2f} h of audio through ser-listen --fast --once --jsonl, shipped smoothing and VAD):", "",
                    "| fold | clip UA (same head) | stream UA | window's own UA (no smoothing, no VAD) | windows | scored | mixed | pause | "
                    "pause reported as emotion | scored but gated silent |",
                    "|---|---|---|---|---|---|---|---|---|---|"]
            for f in st["per_fold"]:
                out.append(f"| {f['fold']} | {f['clip_ua']:.3f} | {f['ua']:.3f} | {f['raw_ua']:.3f} | {f['windows']} | {f['scored']} | {f['mixed']} | {f['pause']} | "
                           f"{f['pause_reported_share']:.3f} | {f['scored_silent_share']:.3f} |")
            out.append(f"| **mean** | **{st['clip_ua']:.3f}** | **{st['ua']:.3f}** ({st['ua'] - st['clip_ua']:+.3f}) | {st['raw_ua']:.3f} | {st['windows']} | "
                       f"{st['scored']} | {st['mixed']} | {st['pause']} | {st['pause_reported_share']:.3f} | {st['scored_silent_share']:.3f} |")
            out += ["", "Stream recall per class: " + ", ".join(f"{k} {v:.2f}" for k, v in st["recall"].items()), ""]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())

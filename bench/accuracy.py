"""Accuracy of the chunk recipe on voices and languages it never heard: tiny.en and base side by side, one run.

    python -m bench.accuracy                                # both encoders: CV, robustness, calibration, LOCO
    python -m bench.accuracy --encoders tiny.en --no-loco   # one encoder, cross-validation only
    python -m bench.accuracy --stream --encoders tiny.en    # + live-like streams through ser-listen
    python -m bench.accuracy model.head_trainer.c=0.02      # another recipe (any conf/model/*.yaml key)

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
of the held-out corpus's clips: a language and voices never heard. A recipe
that weighs none of the three (the shipped ones) is fitted once per seed
without all three and scores each (:func:`leave_corpora_out`).

``--stream``: for each fold, the head of the clean cross-validation is
exported to ONNX (with ``--int8``, served through its CPU int8 copy) and each test actor's clips are played as one long stream
(pauses of 0.3-1.5 s, a 6 s gap every 8 clips, noise 30 dB below the
speech, a random level) through ``ser-listen --device FILE --fast --once
--jsonl`` with its shipped smoothing and VAD; every window that is mostly one
clip is scored against that clip's label (:mod:`training.stream_eval`),
beside the clip-level UA of the same heads. Each stream's predictions and
segments are kept under ``--stream-dir`` (``runs/stream/TAG/ENCODER/foldF/``),
so ``python -m bench.stream_post`` can score other gates and smoothing offline.

Features come from the on-disk cache (training/features.py;
``python -m bench.encode_features`` fills it in the background). Prints tables
(bench.tables), writes bench/results/accuracy[-TAG].json and .md.
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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.lib import REPO, RESULTS, write_report
from bench.tables import accuracy_markdown
from contract.audio import LABELS

ALL_CORPORA = ("ravdess", "tess", "nemo", "ased", "turev", "emotiontts", "banglaser_ext")
LOCO = ("nemo", "ased", "turev")
CONFIGS = {"tiny.en": "whisper", "base": "whisper-base"}


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def stochastic(trainer: dict, head: dict) -> bool:
    """Whether a recipe's result depends on its seed (the convex L-BFGS fit of the moments head does not)."""
    return (head["kind"] != "moments" or trainer["optimizer"] != "lbfgs"
            or float(trainer["stream_p"]) > 0)  # stream-like windows are drawn at random


def load_recipe(encoder: str, overrides: list[str]) -> dict:
    """The encoder's ``conf/model`` recipe with ``overrides`` (``model.KEY=VALUE``), complete: every key the
    recipe leaves out at its schema default (training.schema), checked, as ``ser-train`` would see it."""
    import yaml
    from omegaconf import OmegaConf

    from contract.config import load_group_file
    from training.schema import model_config

    cfg = OmegaConf.create({"model": load_group_file("model", CONFIGS[encoder])})
    for o in overrides:
        key, value = o.split("=", 1)
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
    return OmegaConf.to_container(model_config(cfg.model), resolve=True)


def cache_for(mc: dict, cache_dir: str):  # noqa: ANN201 (training.features.FeatureCache, imported late)
    from contract.geometry import ChunkGeometry
    from training.features import FeatureCache

    enc = mc["encoder"]
    ch = ChunkGeometry.from_seconds(float(enc["chunk_s"]), float(enc["hop_s"]))
    return FeatureCache(cache_dir, ch, int(enc["blocks"]), name=str(enc["name"]))


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
    ap.add_argument("--listen", nargs="+", default=[], metavar="KEY=VALUE",
                    help="daemon config overrides for the streams' ser-listen (e.g. post.smoothing_tau_s=1.5)")
    ap.add_argument("--int8", action="store_true",
                    help="--stream serves each fold's head through its CPU int8 copy, as the default is served on CPUs with VNNI")
    ap.add_argument("--int8-keep-float", nargs="+", default=[], metavar="NODE",
                    help="with --int8: leave these encoder linear layers (MatMul node names) of each copy in float32")
    ap.add_argument("--stream-dir", type=Path, default=None,
                    help="where each stream's --jsonl predictions and segments are kept (default runs/stream/TAG)")
    ap.add_argument("overrides", nargs="*", help="conf/model overrides, key=value (e.g. model.head_trainer.c=0.02)")
    args = ap.parse_args()
    if args.int8_keep_float and not (args.int8 and args.stream):
        ap.error("--int8-keep-float shapes the int8 copies the streams are served through: add --stream --int8")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    from training.chunk_cv import cross_validate

    torch.set_num_threads(1)  # a head fits fastest single-threaded; the feature encoder is another process
    records = all_records(args.data_root)
    t0 = time.time()
    result: dict = {"overrides": args.overrides, "folds": args.folds, "encoders": {}, **({"int8": True} if args.int8 else {})}
    for encoder in args.encoders:
        mc = load_recipe(encoder, args.overrides)
        trainer = dict(mc["head_trainer"])
        seeds = args.seeds if stochastic(trainer, mc["head"]) else args.seeds[:1]
        cache = cache_for(mc, args.cache_dir)
        conditions = {k: v for k, v in mc["features"]["eval_conditions"].items() if k == "clean" or not args.no_robust}
        keep = args.stream  # the stream scorer needs the heads themselves
        cv = [] if args.no_cv else cross_validate(mc, trainer, records, cache, seeds, conditions, folds=args.folds, keep_models=keep)
        loco = [] if args.no_loco else leave_corpora_out(mc, trainer, records, cache, seeds)
        entry = {"seeds": seeds, "summary": summarise(cv, loco, list(conditions)),
                 "cv_runs": [{k: v for k, v in r.items() if k != "model"} for r in cv], "loco_runs": loco}
        if args.stream and cv:
            keep = (args.stream_dir or REPO / "runs" / "stream" / (args.tag or "default")) / encoder
            per_seed = []
            for s in seeds:  # one stream score per head seed (the streams themselves are the same)
                where = keep / f"seed{s}" if len(seeds) > 1 else keep
                per_seed.append(stream_scores(mc, [r for r in cv if r["seed"] == s], records, keep=where,
                                              daemon_overrides=args.listen, int8=args.int8,
                                              int8_keep_float=args.int8_keep_float))
                per_seed[-1]["kept"] = str(where)
            entry["stream"] = per_seed[0]
            if len(per_seed) > 1:
                entry["stream_seeds"] = {"seeds": seeds, **{k: [x[k] for x in per_seed] for k in ("ua", "raw_ua", "clip_ua", "scored_silent_share")},
                                         "ua_mean": mean([x["ua"] for x in per_seed]), "ua_sd": sd([x["ua"] for x in per_seed]),
                                         "raw_ua_mean": mean([x["raw_ua"] for x in per_seed]), "raw_ua_sd": sd([x["raw_ua"] for x in per_seed]),
                                         "recall": {lab: mean([x["recall"][lab] for x in per_seed]) for lab in LABELS}}
        result["encoders"][encoder] = entry
        del cache
    result["minutes"] = (time.time() - t0) / 60
    write_report(RESULTS / f"accuracy{'-' + args.tag if args.tag else ''}.json", result, accuracy_markdown(result),
                 f" ({result['minutes']:.1f} min)", indent=1, default=float)
    return 0


def leave_corpora_out(mc: dict, trainer: dict, records: list, cache, seeds: list[int]) -> list[dict]:  # noqa: ANN001
    """Leave-one-corpus-out rows for each of ``LOCO``: one fit per seed when the recipe weighs none of them.

    A head that learns from none of the held-out corpora (the shipped recipes weigh only RAVDESS and TESS)
    has the same weights and windows whichever of them is left out, so one fit without all three scores
    each; a recipe that learns from any of them is refitted once per corpus. Each window's noise-bank draw
    is its own (``training.chunk_training.bank_draws``), so this fit is the one a per-corpus refit, or
    ``ser-train`` on the weighted corpora alone, gives (``tests/test_chunk_model.py`` checks it).
    """
    from training.chunk_cv import held_out_languages, leave_corpus_out, loco_rows
    from training.schema import corpus_factor

    if any(corpus_factor(trainer["corpus_weights"], c) > 0 for c in LOCO):
        return [row for corpus in LOCO for row in leave_corpus_out(mc, trainer, records, cache, corpus, seeds)]
    return loco_rows(held_out_languages(mc, trainer, records, cache, {c: (c,) for c in LOCO}, seeds), LOCO)


# ----------------------------------------------------------------------------- live-like streams


def export_head(model, mc: dict, path: Path) -> None:  # noqa: ANN001 (a WhisperChunkModel)
    """The fold's head with the pinned encoder weights, as ONNX the daemon loads (parity-checked)."""
    from contract.model_io import chunk_metadata
    from training.export_chunked import chunked_parity, export_chunked_onnx
    from training.metadata import model_metadata

    model.load_pretrained_encoder()
    meta = model_metadata({"model": mc}, {"variant": mc["variant"]}, name=path.stem)
    meta.update(chunk_metadata(model.geometry, model.embedding_dim))
    export_chunked_onnx(model, path, meta)
    diff = chunked_parity(model, path)
    if not diff < 1e-3:
        raise RuntimeError(f"{path}: exported head differs from torch by {diff:.2e}")


def speaker_stream(records: list, speaker: str, seed: int = 0) -> tuple[np.ndarray, list]:
    """The live-like stream of one speaker's clips (training.stream_eval.build_stream), the same for every run."""
    from contract.audio import load_audio
    from training.stream_eval import build_stream

    rng = np.random.default_rng([seed, zlib.crc32(speaker.encode())])
    recs = [r for r in records if r.speaker == speaker]
    order = rng.permutation(len(recs))
    return build_stream([(load_audio(recs[i].path), recs[i].label) for i in order], rng)


def stream_scores(mc: dict, cv: list[dict], records: list, seed: int = 0, keep: Path | None = None,
                  daemon_overrides: list[str] | None = None, int8: bool = False,
                  int8_keep_float: Sequence[str] = ()) -> dict:
    """Per fold: export the head, build each test actor's stream, run ser-listen on it, score its windows.

    With ``keep``, each stream's predictions and segments are saved under ``keep/foldF/`` (training.stream_eval.save_stream).
    """
    import soundfile as sf

    from training.stream_eval import pool_scores, save_stream, score_stream

    listen = Path(sys.executable).with_name("ser-listen")
    per_fold, all_scores = [], []
    with tempfile.TemporaryDirectory(prefix="ser-stream-") as tmp:
        for run in [r for r in cv if r["seed"] == cv[0]["seed"]]:
            onnx_path = Path(tmp) / f"fold{run['fold']}.onnx"
            export_head(run["model"], mc, onnx_path)
            if int8:
                from engine.backends.ort import int8_copy_path
                from engine.precision import quantize_int8_per_token

                quantize_int8_per_token(onnx_path, int8_copy_path(onnx_path), keep_float=int8_keep_float)
            fold_scores = []
            for speaker in run["test_speakers"]:
                audio, segments = speaker_stream(records, speaker, seed)
                wav = Path(tmp) / f"{speaker.replace(':', '_')}.wav"
                sf.write(wav, audio, 16000, subtype="FLOAT")
                proc = subprocess.run([str(listen), "--device", str(wav), "--fast", "--once", "--jsonl", "--port", "0",
                                       "--model", str(onnx_path), "--backend", "onnxruntime", f"model.int8={str(int8).lower()}",
                                       *(daemon_overrides or [])],
                                      capture_output=True, text=True, timeout=900, check=False)
                if proc.returncode != 0:
                    raise RuntimeError(f"ser-listen failed on {wav}: {proc.stderr[-2000:]}")
                preds = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
                if keep is not None:
                    save_stream(keep / f"fold{run['fold']}", speaker.replace(":", "_"), preds, segments)
                s = score_stream(preds, segments)
                s["speaker"], s["seconds"] = speaker, len(audio) / 16000
                fold_scores.append(s)
                logging.info("stream fold %d %s: %d windows, %d scored", run["fold"], speaker, s["windows"], s["scored"])
            pooled = pool_scores(fold_scores)
            per_fold.append({"fold": run["fold"], "clip_ua": run["test"]["clean"]["ua"], **pooled,
                             "speakers": [{k: v for k, v in s.items() if k not in ("hits", "raw_hits", "totals")} for s in fold_scores]})
            all_scores += fold_scores
    total = pool_scores(all_scores)
    from omegaconf import OmegaConf

    from realtime.config import load_daemon_config

    post = OmegaConf.to_container(load_daemon_config(daemon_overrides or []).post)  # what ser-listen ran with
    return {"per_fold": per_fold, "post": post, "ua": mean([f["ua"] for f in per_fold]), "clip_ua": mean([f["clip_ua"] for f in per_fold]),
            "raw_ua": mean([f["raw_ua"] for f in per_fold]),
            "recall": {lab: mean([f["recall"][lab] for f in per_fold if lab in f["recall"]]) for lab in LABELS},
            "pause_reported_share": total["pause_reported_share"], "scored_silent_share": total["scored_silent_share"],
            "windows": total["windows"], "scored": total["scored"], "mixed": total["mixed"], "pause": total["pause"],
            "hours": sum(s["seconds"] for s in all_scores) / 3600,
            "flips_per_min": total["flips"] / (sum(s["seconds"] for s in all_scores) / 60)}


# ----------------------------------------------------------------------------- summaries (rendered by bench.tables)


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
                        "ece_after": mean([r["test"]["clean"]["ece"] for r in cv]),
                        "ece_after_pooled": _pooled_ece(cv)},
        "confusion": confusion,
    }


def _pooled_ece(cv: list[dict]) -> float | None:
    """ECE of all folds' test clips as one set (per seed, then the mean over seeds): a fold's 176 clips alone
    put even a perfectly calibrated head near 0.07 (training.chunk_training.ece_noise_floor)."""
    from training.chunk_training import ece_from_bins

    if not all("ece_bins" in r["test"]["clean"] for r in cv):
        return None  # results from before the bins were kept
    seeds = sorted({r["seed"] for r in cv})
    return mean([ece_from_bins(np.sum([r["test"]["clean"]["ece_bins"] for r in cv if r["seed"] == s], axis=0)) for s in seeds])


def _loco_rows(loco: list[dict]) -> list[dict]:
    rows = []
    for corpus in LOCO:
        runs = [r for r in loco if r["held_out"] == corpus]
        if runs:
            rows.append({"corpus": corpus, **over_seeds([r["test"]["clean"] for r in runs])})
    return rows


def over_seeds(ms: list[dict]) -> dict:
    """One test set's metrics over seeds: UA's mean and seed deviation, ECE, each class's recall where it has clips."""
    return {"ua": mean([m["ua"] for m in ms]), "ua_seed_sd": sd([m["ua"] for m in ms]), "n": ms[0]["n"],
            "ece": mean([m["ece"] for m in ms]),
            "recall": {lab: mean([m["per_class"][lab]["recall"] for m in ms]) for lab in LABELS if ms[0]["per_class"][lab]["support"]}}


if __name__ == "__main__":
    sys.exit(main())

"""Recipes compared on clip CV and on the live-like streams, with the streams' chunks encoded once (no daemon run).

    python -m bench.stream_heads runs/stream/stream-baseline/tiny.en --tag baseline --seeds 0 --parity
    python -m bench.stream_heads runs/stream/stream-baseline/tiny.en --tag stream-p0.5 model.head_trainer.stream_p=0.5

``DIR`` holds the streams ``bench.accuracy --stream`` kept (foldF/SPEAKER.jsonl
and .segments.json). Each stream is rebuilt (the same seeded
``bench.accuracy.speaker_stream``) and its chunks encoded once into
``DIR/../chunks/`` (training.stream_heads). Then, for the recipe given as
overrides, every fold's head (one per seed; a recipe that draws at random
runs every ``--seeds``) is fitted as ``bench.accuracy`` fits it and scores its
test actors' streams: the window's own UA, and the stream UA under the
daemon's gate and smoother (``--gate``, ``--tau``; default the daemon
config's), with the kept lines' VAD voiced fractions. ``--parity`` checks
that the offline probabilities are the daemon's own (only for the recipe
that produced DIR). Writes bench/results/stream-heads[-TAG].{json,md}.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from bench.accuracy import (
    add_data_args,
    all_records,
    cache_for,
    load_recipe,
    mean,
    sd,
    speaker_stream,
    stochastic,
)
from bench.lib import RESULTS, table, write_report
from contract.audio import LABELS


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path, help="kept streams of one encoder (runs/stream/TAG/ENCODER)")
    ap.add_argument("--encoder", default="tiny.en")
    add_data_args(ap)
    ap.add_argument("--gate", type=float, default=None, help="post.vad_min_voiced_s (default: the daemon config's)")
    ap.add_argument("--tau", type=float, default=None, help="post.smoothing_tau_s (default: the daemon config's)")
    ap.add_argument("--parity", action="store_true", help="check the offline probabilities against the kept daemon ones")
    ap.add_argument("--tag", default="")
    ap.add_argument("overrides", nargs="*", help="conf/model overrides, key=value")
    args = ap.parse_intermixed_args()  # overrides may follow the options
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    from realtime.config import load_daemon_config
    from training.chunk_cv import cross_validate
    from training.stream_eval import load_streams, rescore
    from training.stream_heads import (
        StreamChunks,
        encode_stream,
        head_probs,
        probs_parity,
        window_ends,
        with_probs,
    )

    torch.set_num_threads(1)
    post = load_daemon_config().post
    gate = post.vad_min_voiced_s if args.gate is None else args.gate
    tau = post.smoothing_tau_s if args.tau is None else args.tau
    records = all_records(args.data_root)
    mc = load_recipe(args.encoder, args.overrides)
    trainer = dict(mc["head_trainer"])
    seeds = args.seeds if stochastic(trainer, mc["head"]) else args.seeds[:1]
    cache = cache_for(mc, args.cache_dir)
    kept = {name: (preds, segs) for name, preds, segs in load_streams(args.dir)}  # "foldF/ravdess_NN"

    chunk_dir = args.dir.parent / "chunks" / cache.dir.name  # the encoder's tag: its weights, geometry and stored format
    chunk_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    encoded: dict[str, StreamChunks] = {}
    for name, (preds, _) in sorted(kept.items()):
        speaker = Path(name).name.replace("_", ":", 1)
        path = chunk_dir / f"{Path(name).name}.npz"
        ends = window_ends(preds)
        if path.is_file():
            with np.load(path) as z:
                encoded[speaker] = StreamChunks(z["keys"], z["feats"], z["voiced"])
        else:
            audio, _ = speaker_stream(records, speaker)
            encoded[speaker] = sc = encode_stream(audio, ends, cache.ch, cache.encoder)
            np.savez(path, keys=sc.keys, feats=sc.feats, voiced=sc.voiced)
            logging.info("encoded %s: %d chunks", speaker, len(sc.keys))
    cv = cross_validate(mc, trainer, records, cache, seeds, {"clean": {"name": "clean"}}, folds=args.folds, keep_models=True)
    runs = []
    for r in cv:
        streams, parity = [], []
        for name, (preds, segs) in sorted(kept.items()):
            if not name.startswith(f"fold{r['fold']}/"):
                continue
            speaker = Path(name).name.replace("_", ":", 1)
            probs = head_probs(r["model"], encoded[speaker], window_ends(preds))
            if args.parity:
                parity.append(probs_parity(preds, probs))
            streams.append((name, with_probs(preds, probs), segs))
        s = rescore(streams, gate, tau)
        clean = r["test"]["clean"]
        runs.append({"fold": r["fold"], "seed": r["seed"], "clip_ua": clean["ua"],
                     "clip_recall": {lab: clean["per_class"][lab]["recall"] for lab in LABELS},
                     "stream_ua": s["ua"], "raw_ua": s["raw_ua"], "recall": s["recall"], "raw_recall": s["raw_recall"],
                     "scored_silent_share": s["scored_silent_share"], "pause_reported": s["pause_reported"],
                     "parity": max(parity) if parity else None})
        logging.info("fold %d seed %d: clip %.3f stream %.3f own %.3f%s", r["fold"], r["seed"], clean["ua"], s["ua"], s["raw_ua"],
                     f" parity {max(parity):.1e}" if parity else "")
    doc = {"overrides": args.overrides, "seeds": seeds, "folds": args.folds, "gate": gate, "tau": tau, "runs": runs,
           "summary": summarise(runs), "minutes": (time.time() - t0) / 60}
    write_report(RESULTS / f"stream-heads{'-' + args.tag if args.tag else ''}.json", doc, markdown(doc), indent=1, default=float)
    return 0


def summarise(runs: list[dict]) -> dict:
    """Per seed the mean over folds, then mean and sd over seeds; per-class recall averaged over folds and seeds."""
    seeds = sorted({r["seed"] for r in runs})
    per_seed = {k: [mean([r[k] for r in runs if r["seed"] == s]) for s in seeds] for k in ("clip_ua", "stream_ua", "raw_ua")}
    out = {k: {"mean": mean(v), "seed_sd": sd(v)} for k, v in per_seed.items()}
    out["clip_recall"] = {lab: mean([r["clip_recall"][lab] for r in runs]) for lab in LABELS}
    out["recall"] = {lab: mean([r["recall"][lab] for r in runs if lab in r["recall"]]) for lab in LABELS}
    out["raw_recall"] = {lab: mean([r["raw_recall"][lab] for r in runs if lab in r["raw_recall"]]) for lab in LABELS}
    out["scored_silent_share"] = mean([r["scored_silent_share"] for r in runs])
    out["parity"] = max((r["parity"] for r in runs if r["parity"] is not None), default=None)
    return out


def markdown(doc: dict) -> str:
    s = doc["summary"]
    low = min(s["clip_recall"], key=s["clip_recall"].get)
    head = ["overrides", "seeds", "clip CV UA", "lowest clip class", "stream UA", "window's own UA", "scored but gated silent",
            *(f"stream {lab}" for lab in LABELS)]
    row = [" ".join(doc["overrides"]) or "(shipped recipe)", str(len(doc["seeds"])),
           f"{s['clip_ua']['mean']:.3f} ± {s['clip_ua']['seed_sd']:.3f}", f"{low} {s['clip_recall'][low]:.2f}",
           f"{s['stream_ua']['mean']:.3f} ± {s['stream_ua']['seed_sd']:.3f}", f"{s['raw_ua']['mean']:.3f} ± {s['raw_ua']['seed_sd']:.3f}",
           f"{s['scored_silent_share']:.3f}", *(f"{s['recall'][lab]:.2f}" for lab in LABELS)]
    note = f"gate {doc['gate']:g} s, tau {doc['tau']:g} s" + (f"; offline vs daemon probabilities: max diff {s['parity']:.1e}" if s["parity"] is not None else "")
    return table(head, [row]) + f"\n\n({note}; ± is the sd over seeds of the 5-fold mean)\n"


if __name__ == "__main__":
    sys.exit(main())

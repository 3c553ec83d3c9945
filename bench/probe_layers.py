"""Which Whisper layers and what chunk length: a linear probe on frozen features, RAVDESS actor folds.

    python -m bench.probe_layers                 # 1 s chunks every 0.5 s, several layer sets
    python -m bench.probe_layers --chunk-s 0.5   # 0.5 s chunks (encodes RAVDESS once more, ~2 min)

For each RAVDESS clip, the per-layer statistics of its chunks (the feature
cache the head trains on, clip centred as served) are averaged over the
chunks that touch the clip; a logistic regression (standardised features,
C = 0.05, balanced classes) trains on the 16 training actors of each
``ser-train split.k=5`` fold (RAVDESS only, no other corpus) and is scored
on the fold's 4 test actors (UA). It is a cheap, deterministic way to
compare encoder depths and chunk lengths before training heads; it is how
the default's 3 blocks (layers 0-3) and 1 s chunks were chosen.
Writes bench/results/probe_layers.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench.lib import REPO, RESULTS, write_json

LAYER_SETS = {"last (4, through ln_post)": [4], "3": [3], "2": [2], "1": [1], "0-2": [0, 1, 2], "0-3": [0, 1, 2, 3],
              "0-4 (all)": [0, 1, 2, 3, 4], "2-4": [2, 3, 4]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunk-s", type=float, default=1.0)
    ap.add_argument("--hop-s", type=float, default=0.5)
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--cache-dir", default="~/.cache/ser")
    args = ap.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from contract.geometry import ChunkGeometry
    from training.chunk_cv import ravdess_folds
    from training.corpora import scan_corpus
    from training.features import FeatureCache

    recs = scan_corpus("ravdess", args.data_root / "ravdess").records
    fs = FeatureCache(args.cache_dir, ChunkGeometry.from_seconds(args.chunk_s, args.hop_s), 4).get(recs, {"name": "clean"})
    pos = {p: i for i, p in enumerate(fs.paths)}

    def pooled(path: str) -> np.ndarray:
        ws = np.nonzero(fs.clip == pos[path])[0]
        x = np.concatenate([fs.feats[fs.offset[w] : fs.offset[w] + fs.count[w]] for w in ws]).astype(np.float32).mean(0)
        return x[..., : x.shape[-1] // 2]  # the all-frame mean and deviation of each layer (the cache also holds voiced ones)

    feats = {str(r.path): pooled(str(r.path)) for r in recs}
    folds = ravdess_folds(recs)
    rows = {}
    print(f"linear probe, {args.chunk_s:g} s chunks every {args.hop_s:g} s, RAVDESS 5 actor folds (UA)")
    for name, layers in LAYER_SETS.items():
        uas = []
        for s in folds:
            train = [r for r in s.train + s.val if r.corpus == "ravdess"]
            x = np.stack([feats[str(r.path)][layers].reshape(-1) for r in train])
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000, class_weight="balanced"))
            clf.fit(x, [r.label_index for r in train])
            y = np.array([r.label_index for r in s.test])
            p = clf.predict(np.stack([feats[str(r.path)][layers].reshape(-1) for r in s.test]))
            uas.append(float(np.mean([np.mean(p[y == c] == c) for c in np.unique(y)])))
        rows[name] = uas
        print(f"  layers {name:<26} UA {np.mean(uas):.3f}  folds " + " ".join(f"{u:.3f}" for u in uas), flush=True)
    out = RESULTS / "probe_layers.json"
    key = f"chunk{args.chunk_s:g}_hop{args.hop_s:g}"
    doc = json.loads(out.read_text()) if out.is_file() else {}
    doc[key] = rows
    write_json(out, doc, indent=1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

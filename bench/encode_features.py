"""Fill the feature cache that bench/accuracy.py and ser-train read, for one or more encoders, in one process.

    python bench/encode_features.py                            # tiny.en, then base: clean, conditions, mixed
    python bench/encode_features.py --encoders tiny.en --variants clean

Encoding is the only expensive step of a recipe comparison (12 ms of CPU per
1 s chunk for tiny.en at 3 blocks, 19 ms for base), so it runs once, in the
background, resumable: each (encoder, variant, corpus) file is written when
it is complete, and a rerun encodes only what is missing. Order: the clean
variant of every corpus, RAVDESS under the evaluation conditions, then the
augmented training variant, first for tiny.en, then for base.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = {"tiny.en": "whisper.yaml", "base": "whisper-base.yaml"}
ALL_CORPORA = ("ravdess", "tess", "nemo", "ased", "turev", "emotiontts", "banglaser_ext")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoders", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--variants", nargs="+", default=["clean", "conditions", "mixed"], choices=["clean", "conditions", "mixed"])
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--cache-dir", default="~/.cache/ser")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch
    import yaml

    from training.corpora import scan_corpora
    from training.features import Chunking, FeatureCache

    torch.set_num_threads(max(1, torch.get_num_threads()))
    records, _ = scan_corpora([{"name": c, "root": str(args.data_root / c)} for c in ALL_CORPORA])
    ravdess = [r for r in records if r.corpus == "ravdess"]
    for name in args.encoders:
        mc = yaml.safe_load((REPO / "conf" / "model" / CONFIGS[name]).read_text())
        enc = mc["encoder"]
        cache = FeatureCache(args.cache_dir, Chunking(int(float(enc["chunk_s"]) * 16000), int(float(enc["hop_s"]) * 16000)),
                             int(enc["blocks"]), name=enc.get("name", "tiny.en"))
        cache.bank()
        for stage in args.variants:
            t0 = time.time()
            if stage == "clean":
                cache.get(records, {"name": "clean"})
            elif stage == "conditions":
                for cond, v in mc["features"]["eval_conditions"].items():
                    if cond != "clean":
                        cache.get(ravdess, v)
            else:
                for v in mc["features"]["train_variants"]:
                    if v.get("name") != "clean":
                        cache.get(records, v)
            logging.info("%s %s: done in %.1f min", name, stage, (time.time() - t0) / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())

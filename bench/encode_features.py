"""Fill the feature cache that bench.accuracy, bench.ablation and ser-train read, for one or more encoders, in one process.

    python -m bench.encode_features                            # tiny.en, then base: clean, conditions, mixed
    python -m bench.encode_features --encoders tiny.en --variants clean

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

from bench.accuracy import CONFIGS, add_data_args, all_records, cache_for, load_recipe


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoders", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--variants", nargs="+", default=["clean", "conditions", "mixed"], choices=["clean", "conditions", "mixed"])
    add_data_args(ap, folds=False)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    records = all_records(args.data_root)
    ravdess = [r for r in records if r.corpus == "ravdess"]
    for name in args.encoders:
        mc = load_recipe(name, [])
        cache = cache_for(mc, args.cache_dir)
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

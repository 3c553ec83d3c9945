"""Where the temperature should come from: the 2 validation actors alone, or also out-of-fold training actors.

    python -m bench.calibration_oof          # tiny.en English recipe, 5 RAVDESS actor folds, seed 0 (~8 min)

For ``head_trainer.temperature_folds`` 0, 4 and 8 it cross-validates the
shipped recipe and prints the test clips' ECE at the fitted temperature, per
fold, in one run (UA does not change: a temperature never moves the argmax).
The result is in bench/results/calibration-oof.txt and the README.
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

from bench.accuracy import load_recipe
from contract.geometry import ChunkGeometry
from training.chunk_cv import cross_validate
from training.corpora import scan_corpora
from training.features import FeatureCache

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--cache-dir", default="~/.cache/ser")
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 4, 8])
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    mc = load_recipe("tiny.en", [])
    records = scan_corpora([{"name": c, "root": str(args.data_root / c)} for c in ("ravdess", "tess")])[0]
    enc = mc["encoder"]
    cache = FeatureCache(str(Path(args.cache_dir).expanduser()), ChunkGeometry.from_seconds(enc["chunk_s"], enc["hop_s"]),
                         int(enc["blocks"]), name=enc["name"])
    for folds in args.folds:
        rows = cross_validate(mc, {**mc["head_trainer"], "temperature_folds": folds}, records, cache, [0],
                              {"clean": {"name": "clean"}})
        e = [r["test"]["clean"]["ece"] for r in rows]
        t = [r["temperature"] for r in rows]
        ua = statistics.fmean(r["test"]["clean"]["ua"] for r in rows)
        print(f"temperature_folds {folds}: ECE {statistics.fmean(e):.3f} per fold {[round(x, 3) for x in e]}  "
              f"T {[round(x, 2) for x in t]}  UA {ua:.3f}", flush=True)


if __name__ == "__main__":
    main()

"""Speaker-independent cross-validation on RAVDESS (TESS in training only), plus robustness.

Trains one model per fold of RAVDESS actors with ``ser-train`` (the recipe in
conf/train.yaml plus any overrides given here), scores each fold's test actors
(never seen in training or validation), then scores the same test clips with
white noise at 20 and 10 dB SNR and with small-room reverberation, and prints
a table (per fold and mean) and writes JSON. Resumable: a fold whose run
already holds its test report is not trained again; an interrupted fold
resumes from its last checkpoint.

    python -m bench.accuracy_compact                      # 5 folds, default recipe
    python -m bench.accuracy_compact --folds 5 trainer.max_epochs=30

Each fold is scored with its ``last.ckpt`` (the end of the fixed schedule), the
same rule that picks the shipped model's weights, so the figures measure the
recipe that is shipped; ``--checkpoint best`` scores the best-on-validation
checkpoint instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench.lib import RESULTS, write_json
from bench.tables import NAMES, compact_markdown
from contract.audio import LABELS

CONDITIONS = {"clean": [], "snr20": ["--snr", "20"], "snr10": ["--snr", "10"], "reverb": ["--reverb", "0.4"]}
TAGS = {"clean": "ravdess", "snr20": "ravdess_snr20", "snr10": "ravdess_snr10", "reverb": "ravdess_reverb0.4"}  # ser-eval file names


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--runs-dir", type=Path, default=Path("runs/cv"))
    ap.add_argument("--out", type=Path, default=RESULTS / "accuracy_compact.json")
    ap.add_argument("--markdown", type=Path, default=RESULTS / "accuracy_compact.md",
                    help="the same figures as Markdown tables (what the READMEs show)")
    ap.add_argument("--checkpoint", choices=("last", "best"), default="last", help="which checkpoint of each fold to score")
    ap.add_argument("--only", type=int, nargs="*", help="train only these folds (the table uses every finished one)")
    ap.add_argument("overrides", nargs="*", help="extra ser-train overrides (key=value)")
    args = ap.parse_args()
    bindir = Path(sys.executable).parent

    for fold in args.only if args.only is not None else range(args.folds):
        run_dir = args.runs_dir / f"fold{fold}"
        if not (run_dir / "checkpoints" / "best_test.json").is_file():
            run([str(bindir / "ser-train"), "data=ravdess+tess", f"split.k={args.folds}", f"split.fold={fold}", f"run.dir={run_dir}", *args.overrides])
        ckpt = run_dir / "checkpoints" / f"{args.checkpoint}.ckpt"
        robust = run_dir / f"robustness-{args.checkpoint}"
        for cond, extra in CONDITIONS.items():
            if not (robust / f"eval_{TAGS[cond]}.json").is_file():
                run([str(bindir / "ser-eval"), str(ckpt), "--data", "ravdess", "--split-of", str(run_dir), "--out", str(robust), *extra])

    rows = []
    for fold in range(args.folds):
        run_dir = args.runs_dir / f"fold{fold}"
        robust = run_dir / f"robustness-{args.checkpoint}"
        files = {c: robust / f"eval_{t}.json" for c, t in TAGS.items()}
        if not files["clean"].is_file():
            continue
        m = {c: json.loads(p.read_text()) for c, p in files.items() if p.is_file()}
        clean = m["clean"]
        speakers = json.loads((run_dir / "splits.json").read_text())["test"]
        rows.append({
            "fold": fold,
            "test_speakers": speakers,
            "n": clean["n"],
            "accuracy": clean["accuracy"],
            "ua": clean["ua"],
            "macro_f1": clean["macro_f1"],
            "recall": {lab: clean["per_class"][lab]["recall"] for lab in LABELS},
            "confusion": clean["confusion"],
            "ua_by_condition": {c: v["ua"] for c, v in m.items()},
        })
    if not rows:
        print("no finished folds")
        return 1

    def mean(xs: list[float]) -> float:
        return statistics.fmean(xs)

    def sd(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else 0.0

    print()
    done = "" if len(rows) == args.folds else f" ({len(rows)} of {args.folds} folds finished)"
    print(f"RAVDESS speaker-independent {args.folds}-fold CV{done} (TESS in training only); "
          f"clip-level, unseen actors, {args.checkpoint}.ckpt")
    print(f"{'fold':>4} {'actors':<28} {'n':>4} {'acc':>6} {'UA':>6} {'F1':>6} " + " ".join(f"{lab[:5]:>6}" for lab in LABELS))
    for r in rows:
        actors = ",".join(s.split(":")[1] for s in r["test_speakers"])
        print(f"{r['fold']:>4} {actors:<28} {r['n']:>4} {r['accuracy']:6.3f} {r['ua']:6.3f} {r['macro_f1']:6.3f} "
              + " ".join(f"{r['recall'][lab]:6.2f}" for lab in LABELS))
    summary = {k: (mean([r[k] for r in rows]), sd([r[k] for r in rows])) for k in ("accuracy", "ua", "macro_f1")}
    recall_mean = {lab: mean([r["recall"][lab] for r in rows]) for lab in LABELS}
    print(f"{'mean':>4} {'':<28} {sum(r['n'] for r in rows):>4} {summary['accuracy'][0]:6.3f} {summary['ua'][0]:6.3f} "
          f"{summary['macro_f1'][0]:6.3f} " + " ".join(f"{recall_mean[lab]:6.2f}" for lab in LABELS))
    print(f"{'sd':>4} {'':<28} {'':>4} {summary['accuracy'][1]:6.3f} {summary['ua'][1]:6.3f} {summary['macro_f1'][1]:6.3f}")

    conds = [c for c in CONDITIONS if all(c in r["ua_by_condition"] for r in rows)]
    rob = {c: mean([r["ua_by_condition"][c] for r in rows]) for c in conds}
    print()
    print("Robustness (same test clips, UA per fold and mean over folds)")
    print(f"{'condition':<22} " + " ".join(f"{'fold' + str(r['fold']):>6}" for r in rows) + f" {'UA':>6} {'drop':>7}")
    names = NAMES
    for c in conds:
        per_fold = " ".join(f"{r['ua_by_condition'][c]:6.3f}" for r in rows)
        print(f"{names[c]:<22} {per_fold} {rob[c]:6.3f} {rob[c] - rob['clean']:+7.3f}")

    result = {"checkpoint": args.checkpoint, "folds": rows, "mean": {k: v[0] for k, v in summary.items()}, "sd": {k: v[1] for k, v in summary.items()},
              "recall_mean": recall_mean, "robustness_ua": rob, "overrides": args.overrides}
    write_json(args.out, result)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(compact_markdown(result))
    print(f"\nwrote {args.out} and {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

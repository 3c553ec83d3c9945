"""Recipes compared on languages the head never hears, chosen on two of them and reported on three others.

    python -m bench.languages --encoder base --tag c-sweep \\
        --recipe shipped --recipe c0.02 model.head_trainer.c=0.02 --recipe c0.1 model.head_trainer.c=0.1

Choosing a recipe by its held-out nEMO or ASED score and then reporting that
score would tune for the test languages. This bench keeps two corpora as
*development* languages and three as *test* languages, none of them in
training:

- development: emotiontts (Korean: anger, happy, neutral, sad) and BanglaSER
  (Bengali: disgust, fear), pooled into one set whose six classes each come
  from one of them; its unweighted accuracy (UA) decides between recipes;
- test: nEMO (Polish), ASED (Amharic), TurEV-DB (Turkish), each scored alone
  as ``bench.accuracy``'s leave-one-corpus-out scores it, and read only for
  the recipe the development languages chose.

Each seed fits a head once on every other corpus (the recipes' own
``head_trainer.corpus_weights`` then decide what weighs: the shipped ones
learn from RAVDESS and TESS alone), so one fit scores all five languages.
That fit is the head ``ser-train data=ravdess+tess`` fits whichever unweighted
corpora are listed beside the weighted ones (weights and each window's
noise-bank draw depend on its own clip alone), so it is also the head
``bench.accuracy``'s leave-one-corpus-out scores. Two RAVDESS actors calibrate (fold 0's
validation actors); the temperature is fitted on them alone
(``temperature_folds`` 0), which changes a clip's top class only where its
windows' probabilities are averaged (a clip longer than one window).
Writes bench/results/languages[-TAG].{json,md}.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from bench.accuracy import CONFIGS, add_data_args, all_records, cache_for, load_recipe, over_seeds, stochastic
from bench.lib import RESULTS, table, write_report
from contract.audio import LABELS

DEV = ("emotiontts", "banglaser_ext")
TEST = ("nemo", "ased", "turev")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="base", choices=list(CONFIGS))
    add_data_args(ap, folds=False)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipe", nargs="+", action="append", metavar=("LABEL", "KEY=VALUE"),
                    help="a recipe: a label, then conf/model overrides (repeat for each; default: the shipped one)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    from training.chunk_cv import held_out_languages

    torch.set_num_threads(1)
    recipes = args.recipe or [["shipped"]]
    records = all_records(args.data_root)
    t0 = time.time()
    result: dict = {"encoder": args.encoder, "dev": list(DEV), "test": list(TEST), "recipes": {}}
    for label, *overrides in recipes:
        mc = load_recipe(args.encoder, [*overrides, "model.head_trainer.temperature_folds=0"])
        trainer = dict(mc["head_trainer"])
        seeds = args.seeds if stochastic(trainer, mc["head"]) else args.seeds[:1]
        runs = held_out_languages(mc, trainer, records, cache_for(mc, args.cache_dir), {"dev": DEV, **{c: (c,) for c in TEST}}, seeds)
        result["recipes"][label] = {"overrides": overrides, "seeds": seeds, "runs": runs, "summary": summarise(runs)}
        logging.info("%s: dev UA %.3f", label, result["recipes"][label]["summary"]["dev"]["ua"])
    result["minutes"] = (time.time() - t0) / 60
    write_report(RESULTS / f"languages{'-' + args.tag if args.tag else ''}.json", result, markdown(result),
                 f" ({result['minutes']:.1f} min)", indent=1, default=float)
    return 0


def summarise(runs: list[dict]) -> dict:
    """Per set (``dev`` and each test language): its metrics over seeds (:func:`bench.accuracy.over_seeds`)."""
    return {name: over_seeds([r["test"][name] for r in runs]) for name in runs[0]["test"]}


def markdown(result: dict, heading: str = "#") -> str:
    """The result file's tables (``heading`` opens the title: ``#####`` inside the README)."""
    names = ["dev", *TEST]
    head = ["recipe", "overrides", "seeds", "dev UA (Korean + Bengali)", *(f"{c} UA" for c in TEST), "dev lowest class"]
    rows = []
    for label, r in result["recipes"].items():
        s = r["summary"]
        low = min(s["dev"]["recall"].items(), key=lambda kv: kv[1])
        rows.append([label, " ".join(r["overrides"]) or "(as shipped)", len(r["seeds"]),
                     *(f"{s[n]['ua']:.3f} ± {s[n]['ua_seed_sd']:.3f}" for n in names), f"{low[0]} {low[1]:.2f}"])
    dev_labels = [lab for lab in LABELS if any(lab in r["summary"]["dev"]["recall"] for r in result["recipes"].values())]
    recall = [[label, *(f"{r['summary']['dev']['recall'].get(lab, float('nan')):.2f}" for lab in dev_labels)]
              for label, r in result["recipes"].items()]
    return (f"{heading} Languages never heard ({result['encoder']}): chosen on {' + '.join(DEV)}, reported on {', '.join(TEST)}\n\n"
            + table(head, rows) + "\n\nRecall per class on the development languages (mean over seeds; anger, happy, "
            "neutral and sad are Korean clips, disgust and fear Bengali ones):\n\n" + table(["recipe", *dev_labels], recall) + "\n")


if __name__ == "__main__":
    sys.exit(main())

"""Which calibrator: one temperature, a temperature and class biases, or a scale and bias per class.

    python -m bench.calibration --seeds 0 1 2     # tiny.en as it ships, 5 RAVDESS actor folds (~4 min a fold and seed)
    python -m bench.calibration --compare-only    # re-score the kept logits (runs/calibration/TAG)

Every calibrator here folds into the head's linear layer (``W x + b`` becomes
``diag(s) W x + s * b + c``), so none changes the engine contract or the
exported graph; a class bias can move the argmax, so UA is reported beside ECE.
Each (fold, seed) fits the shipped head once, keeps the window logits (T 1)
of its 2 validation actors, of the out-of-fold heads of its training actors
(``head_trainer.temperature_folds``) and of its test actors under each
evaluation condition, then every calibrator is fitted on the validation and
out-of-fold logits together (as ``ser-train`` fits its temperature) and scored
on the test clips (clip = mean of its windows' probabilities, as
``ser-predict`` averages). Writes bench/results/calibration[-TAG].{json,md}.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from bench.accuracy import add_data_args, cache_for, load_recipe
from bench.lib import RESULTS, table, write_report

REPO = Path(__file__).resolve().parents[1]
CONDITIONS = ("clean", "snr20", "snr10", "reverb")


def collect(fold: int, seed: int, mc: dict, records: list, cache, out: Path) -> Path:  # noqa: ANN001 (FeatureCache)
    """Fit the head of (fold, seed) and keep every set of window logits a calibrator needs, as one .npz."""
    from training.chunk_cv import ravdess_folds
    from training.chunk_model import WhisperChunkModel
    from training.chunk_training import (
        fit_head,
        out_of_fold_logits,
        select_windows,
        training_windows,
        window_logits,
    )

    path = out / f"fold{fold}-seed{seed}.npz"
    if path.exists():
        return path
    s = ravdess_folds(records)[fold]
    tc = mc["head_trainer"]
    bank = cache.bank()
    model = WhisperChunkModel(mc)
    fit_head(model, training_windows(mc, s.train, cache), s.train, bank, tc, seed)
    arrays = {}

    def keep(name: str, recs: list, variant: dict) -> None:
        w = select_windows(cache.get(recs, variant), recs, "zeros")
        arrays[f"{name}_logits"] = window_logits(model, w, bank)
        arrays[f"{name}_clip"] = w.clip_of
        arrays[f"{name}_labels"] = np.array([r.label_index for r in recs])

    keep("val", s.val, {"name": "clean"})
    for cond in CONDITIONS:
        keep(f"test_{cond}", s.test, mc["features"]["eval_conditions"][cond])
    oof_l, oof_y = out_of_fold_logits(mc, tc, s.train, {r.corpus for r in s.val}, cache, seed, int(tc["temperature_folds"]))
    arrays |= {"oof_logits": oof_l, "oof_window_labels": oof_y}
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def fit_calibrator(logits: np.ndarray, labels: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale, bias) per class minimising the NLL of ``logits * scale + bias``.

    ``temperature``: one shared scale (1/T), no bias (what ships);
    ``temperature_bias``: one shared scale and a bias per class;
    ``vector``: a scale and a bias per class. The bias is centred (softmax ignores a constant).
    """
    import torch
    import torch.nn.functional as F

    from training.chunk_training import temperature_from_logits

    n = logits.shape[1]
    if kind == "temperature":  # exactly what ser-train fits
        return np.full(n, 1.0 / temperature_from_logits(logits, labels)[0]), np.zeros(n)
    x = torch.from_numpy(np.asarray(logits, np.float64))
    y = torch.from_numpy(np.asarray(labels, np.int64))
    log_s = torch.zeros(n if kind == "vector" else 1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_s, b], lr=0.5, max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x * log_s.exp() + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    scale = np.broadcast_to(log_s.detach().exp().numpy(), (n,)).copy()
    bias = (b - b.mean()).detach().numpy()
    return scale, bias


def clip_scores(logits: np.ndarray, clip_of: np.ndarray, labels: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> dict:
    """UA, ECE (and its bins, to pool folds) and NLL of clips whose probabilities are the mean of their windows'
    calibrated ones; ``probs`` and ``labels`` too, for the noise floor (not written)."""
    from training.chunk_training import calibration_bins, ece_from_bins, mean_by_clip
    from training.metrics import classification_metrics

    z = logits * scale + bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    seen = np.bincount(clip_of, minlength=len(labels)) > 0
    probs, y = mean_by_clip(p, clip_of, len(labels))[seen], labels[seen]
    m = classification_metrics(y.tolist(), probs.argmax(1).tolist())
    nll = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())
    bins = calibration_bins(probs, y)
    return {"ua": m["ua"], "ece": ece_from_bins(bins), "nll": nll, "bins": bins.tolist(), "probs": probs, "labels": y}


KINDS = ("none", "temperature_val", "temperature", "temperature_bias", "vector")


def compare(paths: list[Path]) -> list[dict]:
    """Every calibrator on every kept (fold, seed): test scores per condition."""
    rows = []
    for path in paths:
        d = np.load(path)
        val_y = d["val_labels"][d["val_clip"]]
        fit_l = np.concatenate([d["val_logits"], d["oof_logits"]])
        fit_y = np.concatenate([val_y, d["oof_window_labels"]])
        for kind in KINDS:
            if kind == "none":
                scale, bias = np.ones(fit_l.shape[1]), np.zeros(fit_l.shape[1])
            elif kind == "temperature_val":
                scale, bias = fit_calibrator(d["val_logits"], val_y, "temperature")
            else:
                scale, bias = fit_calibrator(fit_l, fit_y, kind)
            row = {"file": path.name, "kind": kind, "scale": scale.round(3).tolist(), "bias": bias.round(3).tolist()}
            for cond in CONDITIONS:
                row[cond] = clip_scores(d[f"test_{cond}_logits"], d[f"test_{cond}_clip"], d[f"test_{cond}_labels"], scale, bias)
            rows.append(row)
    return rows


def seed_of(row: dict) -> str:
    return row["file"].rsplit("-seed", 1)[1].split(".")[0]


def summarise(rows: list[dict], floor_draws: int = 200) -> list[dict]:
    """Per calibrator: the mean over runs (fold x seed) of each score; for clean clips also the ECE of each seed's
    five folds pooled (880 clips), and beside both the noise floor: the ECE a perfectly calibrated head with the
    same confidences would show on that many clips (training.chunk_training.ece_noise_floor)."""
    from training.chunk_training import ece_from_bins, ece_noise_floor

    rng = np.random.default_rng(0)
    out = []
    for kind in KINDS:
        rs = [r for r in rows if r["kind"] == kind]
        s = {"kind": kind, "runs": len(rs)}
        for cond in CONDITIONS:
            for m in ("ua", "ece", "nll"):
                s[f"{cond}_{m}"] = float(np.mean([r[cond][m] for r in rs]))
        s["clean_ece_per_run"] = [round(r["clean"]["ece"], 3) for r in rs]
        s["clean_ece_floor"] = float(np.mean([ece_noise_floor(r["clean"]["probs"], rng, floor_draws) for r in rs]))
        seeds = sorted({seed_of(r) for r in rs})
        pooled = [[r["clean"] for r in rs if seed_of(r) == sd] for sd in seeds]
        s["clean_ece_pooled"] = float(np.mean([ece_from_bins(np.sum([c["bins"] for c in cs], axis=0)) for cs in pooled]))
        s["clean_ece_pooled_floor"] = float(np.mean([ece_noise_floor(np.concatenate([c["probs"] for c in cs]), rng, floor_draws)
                                                    for cs in pooled]))
        out.append(s)
    return out


def markdown(summary: list[dict], n: int) -> str:
    head = ["calibrator (fitted on validation + out-of-fold logits)"]
    for cond in CONDITIONS:
        head += [f"{cond} ECE", f"{cond} UA"]
    head += ["clean NLL", "clean ECE, folds pooled", "noise floor: per fold / pooled"]
    body = [[s["kind"], *[f"{s[f'{c}_{m}']:.3f}" for c in CONDITIONS for m in ("ece", "ua")], f"{s['clean_nll']:.3f}",
             f"{s['clean_ece_pooled']:.3f}", f"{s['clean_ece_floor']:.3f} / {s['clean_ece_pooled_floor']:.3f}"] for s in summary]
    return table(head, body) + (f"\n\n({n} runs: 5 RAVDESS actor folds x seeds; `temperature_val`: the 2 validation actors alone. "
                                "ECE columns are the mean over runs of each fold's 176 test clips; \"folds pooled\" scores each "
                                "seed's 880 test clips as one set. The noise floor is the ECE a perfectly calibrated head with "
                                "the same confidences would show on as many clips: labels drawn from its own probabilities)\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(ap)
    ap.add_argument("--tag", default="")
    ap.add_argument("--compare-only", action="store_true", help="score the logits kept in runs/calibration/TAG")
    ap.add_argument("overrides", nargs="*", help="conf/model overrides, key=value")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = REPO / "runs" / "calibration" / (args.tag or "shipped")
    if not args.compare_only:
        from bench.accuracy import all_records

        mc = load_recipe("tiny.en", args.overrides)
        records = [r for r in all_records(args.data_root) if r.corpus in ("ravdess", "tess")]
        cache = cache_for(mc, str(Path(args.cache_dir).expanduser()))
        for seed in args.seeds:
            for fold in args.folds:
                t0 = time.time()
                collect(fold, seed, mc, records, cache, out)
                logging.info("fold %d seed %d kept (%.0f s)", fold, seed, time.time() - t0)
    paths = sorted(out.glob("fold*-seed*.npz"))
    rows = compare(paths)
    summary = summarise(rows)
    md = markdown(summary, len(paths))
    print(md)
    for r in rows:  # probabilities and bins served the noise floor and the pooled ECE; the JSON keeps the scores
        for cond in CONDITIONS:
            r[cond] = {k: v for k, v in r[cond].items() if k not in ("probs", "labels", "bins")}
    write_report(RESULTS / f"calibration{'-' + args.tag if args.tag else ''}.json",
                 {"overrides": args.overrides, "runs": [p.name for p in paths], "summary": summary, "rows": rows}, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

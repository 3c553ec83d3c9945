"""What serving the default model's encoder in int8 costs on unseen speakers: cross-validated, same heads, one run.

The daemon's CPU ceiling is the encoder (README, "Daemon under load"), and
``engine.precision.quantize_int8_per_token`` makes it about twice as fast on a CPU
with VNNI (``python -m bench.int8_encoder``). It may be served only if it costs
at most 0.005 of cross-validated UA. This measures exactly that, on RAVDESS's
actor folds of ``bench/accuracy.py`` (3 seeds per fold):

- each fold's head is fitted as ``ser-train`` fits the shipped one, on features of
  the torch encoder (the feature cache);
- its test actors' clips are scored three ways, clean and under each robustness
  condition: with the torch encoder's features (the reference), with the float32
  ONNX model's encoder as onnxruntime runs it (the served float path: should not
  move), and with the int8 copy's (what the daemon would serve on CPU);
- the int8 row's change against the reference is the figure, per fold and pooled.

The ONNX models' chunk embeddings are turned back into the cache's per-layer
statistics (:class:`ServedEncoder`) and cached apart under the model file's digest,
so a rerun scores without re-encoding. Quantization speed-ups and errors depend on
the CPU (VNNI or not): the CPU is recorded.

    python -m bench.int8_accuracy                      # 5 folds x 3 seeds, clean + 4 conditions
    python -m bench.int8_accuracy --seeds 0 --no-robust
    python -m bench.int8_accuracy --keep-float /encoder/blocks.0/qkv/MatMul /encoder/blocks.0/out/MatMul
                                                       # and a copy with those layers in float32, same run
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.accuracy import add_data_args, all_records, cache_for, load_recipe, mean, sd
from bench.lib import RESULTS, cpu_isa, table, write_report
from contract.audio import LABELS
from engine.shipped import default_model_path

SERVED = ("float32", "int8")  # the served encoders, beside the torch reference
KEPT = "int8-kept"  # with --keep-float: an int8 copy leaving those linear layers in float32, in the same run


class ServedEncoder:
    """``training.features.Encoder`` backed by a chunked ONNX model's encoder half, as onnxruntime serves it.

    The served embedding holds, for each used hidden state, the voiced mean and second moment,
    then the all-frame mean and deviation, then the voicing tail (``WhisperChunkModel.chunk_moments``);
    the cache stores per state ``[mean, std, voiced mean, voiced deviation]``. This rebuilds the
    second from the first, so a head scores the served features exactly as it scores the cache's.
    """

    def __init__(self, path: Path, n_states: int, batch: int = 64) -> None:
        from engine.registry import load_engine
        from training.voicing import TAIL

        self.engine = load_engine(path, backend="onnxruntime", device="cpu", int8=False)  # this file, not a copy beside it
        self.n, self.batch, self.tail = n_states, batch, TAIL
        f4 = self.engine.embedding_dim - TAIL
        if f4 % (4 * n_states):
            raise ValueError(f"{path}: embedding of {self.engine.embedding_dim} is not 4 x {n_states} states + {TAIL}")
        self.d = f4 // (4 * n_states)

    def __call__(self, chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        emb = np.concatenate([self.engine.encode_chunks(np.ascontiguousarray(chunks[i : i + self.batch], np.float32))
                              for i in range(0, len(chunks), self.batch)]) if len(chunks) else \
            np.zeros((0, self.engine.embedding_dim), np.float32)
        n, f = len(emb), self.n * self.d
        wm, second, am, asd = (emb[:, i * f : (i + 1) * f].reshape(n, self.n, self.d) for i in range(4))
        wsd = np.sqrt(np.clip(second - wm * wm, 0.0, None))
        stats = np.concatenate([am, asd, wm, wsd], axis=-1).astype(np.float16)
        return stats, emb[:, 4 * f :].astype(np.float32)


class Routed:
    """A feature cache for ``train_split``: every set from the torch cache, but a test variant naming
    ``served_by`` from that served encoder's cache (the key is taken out before it is looked up)."""

    def __init__(self, base: Any, served: dict[str, Any]) -> None:
        self.base, self.served = base, served

    def get(self, records: Any, variant: dict) -> Any:
        by = variant.get("served_by")
        if by is None:
            return self.base.get(records, variant)
        return self.served[by].get(records, {k: v for k, v in variant.items() if k != "served_by"})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def summarise(runs: list[dict], conditions: list[str], served: tuple[str, ...] = SERVED) -> dict:
    """Per condition and encoder: UA (mean over folds and seeds), per-fold means, and the change against torch."""
    out: dict = {}
    folds = sorted({r["fold"] for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    for cond in conditions:
        row: dict = {}
        for enc in ("torch", *served):
            name = cond if enc == "torch" else f"{cond}@{enc}"
            per_fold = [mean([r["test"][name]["ua"] for r in runs if r["fold"] == f]) for f in folds]
            per_seed = [mean([r["test"][name]["ua"] for r in runs if r["seed"] == s]) for s in seeds]
            row[enc] = {"ua": mean(per_fold), "per_fold": per_fold, "seed_sd": sd(per_seed),
                        "ece": mean([r["test"][name]["ece"] for r in runs]),
                        "recall": {lab: mean([r["test"][name]["per_class"][lab]["recall"] for r in runs]) for lab in LABELS}}
            if enc != "torch":
                deltas = [a - b for a, b in zip(per_fold, row["torch"]["per_fold"], strict=True)]
                row[enc]["delta"] = row[enc]["ua"] - row["torch"]["ua"]
                row[enc]["delta_per_fold"] = deltas
                row[enc]["delta_per_run"] = [r["test"][name]["ua"] - r["test"][cond]["ua"] for r in runs]
        out[cond] = row
    return out


def markdown(doc: dict) -> str:
    s = doc["summary"]
    seeds, folds = doc["seeds"], doc["folds"]
    lines = [f"Cross-validated UA of the same heads on features of the torch encoder, the float32 ONNX model and its int8 "
             f"copy (onnxruntime CPU; {len(folds)} folds x {len(seeds)} seeds; CPU flags: {doc['cpu']['isa']}):", ""]
    rows = []
    for cond, row in s.items():
        t, f, q = row["torch"], row["float32"], row["int8"]
        rows.append([cond, f"{t['ua']:.3f}", f"{f['ua']:.3f} ({f['delta']:+.4f})", f"{q['ua']:.3f} (**{q['delta']:+.4f}**)",
                     " / ".join(f"{d:+.3f}" for d in q["delta_per_fold"]),
                     f"{min(q['delta_per_run']):+.3f} .. {max(q['delta_per_run']):+.3f}",
                     f"{t['ece']:.3f} / {q['ece']:.3f}"])
    lines.append(table(["condition", "torch (reference)", "float32 ONNX (change)", "int8 (change)", "int8 change per fold",
                        "int8 change, range over runs", "ECE torch / int8"], rows))
    if KEPT in s["clean"]:
        kept = doc["kept_model"]
        lines += ["", f"Beside the int8 copy (its linear layers all in int8), one with {', '.join(kept['keep_float'])} left in "
                  "float32 (same heads and clips):", ""]
        lines.append(table(["condition", "int8 (change)", f"{KEPT} (change)", f"{KEPT} change per fold", f"ECE {KEPT}"],
                           [[cond, f"{row['int8']['ua']:.3f} ({row['int8']['delta']:+.4f})",
                             f"{row[KEPT]['ua']:.3f} (**{row[KEPT]['delta']:+.4f}**)",
                             " / ".join(f"{d:+.3f}" for d in row[KEPT]["delta_per_fold"]), f"{row[KEPT]['ece']:.3f}"]
                            for cond, row in s.items()]))
        lines += ["", f"{KEPT} model: {kept['bytes'] / 1e6:.1f} MB, sha256 {kept['sha256'][:16]}"]
    q = s["clean"]["int8"]
    lines += ["", "Clean recall per class, int8 against torch: " + ", ".join(
        f"{lab} {q['recall'][lab]:.2f} ({q['recall'][lab] - s['clean']['torch']['recall'][lab]:+.2f})" for lab in LABELS)]
    lines += ["", f"int8 model: {doc['int8_model']['bytes'] / 1e6:.1f} MB, sha256 {doc['int8_model']['sha256'][:16]}; "
              f"target: clean change no worse than -0.005."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(ap)
    ap.add_argument("--model", type=Path, default=None, help="chunked ONNX model (default: the shipped default)")
    ap.add_argument("--no-robust", action="store_true", help="clean test clips only")
    ap.add_argument("--tag", default="", help="suffix of the result files")
    ap.add_argument("--keep-float", nargs="+", default=[], metavar="NODE",
                    help=f"also score an int8 copy leaving these linear layers (MatMul node names) in float32, as {KEPT!r}")
    ap.add_argument("overrides", nargs="*", help="conf/model overrides of the recipe the heads are fitted with")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import onnx
    import torch

    from engine.precision import float32_weights, quantize_int8_per_token
    from training.chunk_cv import cross_validate
    from training.features import FeatureCache

    torch.set_num_threads(1)
    model = args.model or default_model_path()
    mc = load_recipe("tiny.en", ["model.head_trainer.temperature_folds=0", *args.overrides])
    base = cache_for(mc, args.cache_dir)
    n_states = len(mc["head"]["layers"])
    if n_states != base.n_layers + 1:
        raise SystemExit(f"the recipe uses {n_states} hidden states; the cache holds {base.n_layers + 1}")
    records = all_records(args.data_root)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="ser-int8-") as tmp:
        served_names = (*SERVED, KEPT) if args.keep_float else SERVED
        paths = {name: Path(tmp) / f"{name}.onnx" for name in served_names}
        onnx.save(float32_weights(onnx.load(str(model))), str(paths["float32"]))
        quantize_int8_per_token(model, paths["int8"])  # as ser-build-engine --cpu-int8 writes it
        if args.keep_float:
            quantize_int8_per_token(model, paths[KEPT], keep_float=args.keep_float)
        served = {name: FeatureCache(args.cache_dir, base.ch, base.n_layers, base.name,
                                     encoder=ServedEncoder(p, n_states), tag=f"onnx-{name}-{digest(p)[:8]}")
                  for name, p in paths.items()}
        int8_info = {"bytes": paths["int8"].stat().st_size, "sha256": digest(paths["int8"])}
        kept_info = {"bytes": paths[KEPT].stat().st_size, "sha256": digest(paths[KEPT]),
                     "keep_float": args.keep_float} if args.keep_float else None
        conds = {k: v for k, v in mc["features"]["eval_conditions"].items() if k == "clean" or not args.no_robust}
        tests = dict(conds)
        for name in served_names:
            tests.update({f"{c}@{name}": {**v, "served_by": name} for c, v in conds.items()})
        runs = cross_validate(mc, dict(mc["head_trainer"]), records, Routed(base, served), args.seeds, tests, folds=args.folds)
    doc = {"model": str(model), "overrides": args.overrides, "seeds": args.seeds, "folds": args.folds,
           "cpu": {"processor": platform.processor() or platform.machine(), "isa": cpu_isa()},
           "int8_model": int8_info, **({"kept_model": kept_info} if kept_info else {}),
           "summary": summarise(runs, list(conds), served_names),
           "runs": [{k: v for k, v in r.items() if k in ("fold", "seed", "test")} for r in runs],
           "minutes": (time.time() - t0) / 60}
    write_report(RESULTS / f"int8-accuracy{'-' + args.tag if args.tag else ''}.json", doc, markdown(doc),
                 f" ({doc['minutes']:.1f} min)", indent=1, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

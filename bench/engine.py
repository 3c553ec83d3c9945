"""Engine benchmark: per-window (offline) and per-hop (streaming) cost of every backend and model variant.

Run:  python -m bench.engine [--budget 4] [--batches 1 8 32] [--variants whisper whisper-base compact seed]
      python -m bench.engine --variants compact --batches 1 8 --budget 0.5 --out /tmp/engine.json   # quick

Offline: ``infer`` on whole 5 s windows (what ser-predict does). Streaming:
what the daemon spends per stream at each 0.5 s hop: for the chunked
``whisper`` and ``whisper-base`` models one new 1 s chunk encoded plus one window classified from
cached embeddings, at b streams per batch; for whole-window models
(``compact``, ``seed``) a whole window re-scored.

All cells see the same speech-like 5 s windows. The reference is the seed
model in plain torch eager on the CPU; every other cell is reported as a
ratio to it. Random weights are fine: speed does not depend on training. Each
cell runs until its time budget is spent (at least two calls, the first
discarded as warm-up when there are three or more), so the script stays
bounded on a busy 2-core machine. Writes bench/results/engine.json.

Imports torch, onnx and onnxruntime (the train and cpu extras); TensorRT and
onnxruntime CUDA cells appear only where those are installed with a GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.lib import RESULTS, write_json
from bench.tables import engine_markdown
from contract.audio import WINDOW_SAMPLES
from engine.signals import speech_like


def time_calls(fn, x: np.ndarray, budget_s: float, max_calls: int = 50) -> list[float]:
    """Seconds per call of ``fn(x)``; at least 2 calls, until ``budget_s`` is spent."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_calls and (len(times) < 2 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return times[1:] if len(times) >= 3 else times


def make_checkpoints(tmp: Path, variants: list[str]) -> dict[str, Path]:
    from tests.engine_fixtures import make_checkpoint

    return {v: make_checkpoint(tmp / f"{v}.ckpt", v) for v in variants}


def engines(variant: str, ckpt: Path, tmp: Path, log) -> list[tuple[str, object]]:
    """(label, engine) for each backend available here."""
    from engine.interface import EngineError
    from engine.registry import load_engine
    from training.export import export_checkpoint

    out = [("torch eager cpu", load_engine(ckpt, backend="torch", device="cpu"))]
    onnx_path = tmp / f"{variant}.onnx"
    t0 = time.perf_counter()
    export_checkpoint(ckpt, onnx_path, log=lambda _m: None)
    log(f"  exported {variant} in {time.perf_counter() - t0:.0f} s")
    out.append(("onnxruntime cpu", load_engine(onnx_path, backend="onnxruntime", device="cpu")))
    for label, kwargs in (("onnxruntime cuda", {"backend": "onnxruntime", "device": "cuda"}), ("tensorrt fp16", {"backend": "tensorrt", "precision": "fp16"})):
        try:
            out.append((label, load_engine(onnx_path, **kwargs)))
        except EngineError as exc:
            log(f"  {label}: not available ({str(exc).splitlines()[0][:100]})")
    return out


def hop_step(eng):  # noqa: ANN001, ANN201 - an Engine; returns the per-hop work for a batch of streams
    """What one daemon hop costs for ``len(x)`` streams: encode each newest chunk, classify each window."""
    if not eng.chunked:
        return eng.infer
    k, d = eng.chunks_per_window, eng.embedding_dim
    cached = np.random.default_rng(0).standard_normal((1, k - 1, d)).astype(np.float32)

    def step(x: np.ndarray) -> None:
        emb = eng.encode_chunks(np.ascontiguousarray(x[:, -eng.chunk_samples :]))
        windows = np.concatenate([np.repeat(cached, len(x), axis=0), emb[:, None, :]], axis=1)
        eng.classify(windows)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["whisper", "whisper-base", "compact", "seed"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--budget", type=float, default=4.0, help="seconds per cell")
    ap.add_argument("--out", type=Path, default=RESULTS / "engine.json")
    args = ap.parse_args()
    import onnxruntime
    import torch

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    windows = speech_like(max(args.batches), WINDOW_SAMPLES, seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        ckpts = make_checkpoints(tmp, args.variants)
        for variant in args.variants:
            for label, eng in engines(variant, ckpts[variant], tmp, log):
                eng.warmup((1,))
                row = {"variant": variant, "backend": label, "device": eng.device}
                lat = time_calls(eng.infer, windows[:1], args.budget)
                row["latency_ms"] = 1000 * statistics.median(lat)
                for b in args.batches:
                    t = time_calls(eng.infer, windows[:b], args.budget)
                    row[f"throughput_b{b}"] = b / statistics.median(t)
                    t = time_calls(hop_step(eng), windows[:b], args.budget)
                    row[f"hop_ms_b{b}"] = 1000 * statistics.median(t) / b
                log(f"  {variant:8s} {label:18s} latency {row['latency_ms']:.1f} ms")
                rows.append(row)
    ref = next((r for r in rows if r["variant"] == "seed" and r["backend"] == "torch eager cpu"), None)
    for r in rows:
        if ref:
            r["speedup_latency_vs_seed_torch"] = ref["latency_ms"] / r["latency_ms"]
            for b in args.batches:
                r[f"speedup_b{b}_vs_seed_torch"] = r[f"throughput_b{b}"] / ref[f"throughput_b{b}"]
                r[f"speedup_hop_b{b}_vs_seed_torch"] = ref[f"hop_ms_b{b}"] / r[f"hop_ms_b{b}"]
    doc = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "onnxruntime": onnxruntime.__version__,
        },
        "window_samples": WINDOW_SAMPLES,
        "budget_s_per_cell": args.budget,
        "reference": "seed, torch eager cpu, batch 1" if ref else None,
        "rows": rows,
    }
    print(engine_markdown(doc))
    write_json(args.out, doc, trailing_newline=True)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

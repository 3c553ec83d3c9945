"""Would dynamic INT8 make the default model's encoder cheap enough on CPU? Speed and departure, same run.

The daemon's CPU ceiling is the Whisper encoder's cost per 1 s chunk (README,
"Daemon under load"). This quantizes the shipped chunked model's MatMul weights
with onnxruntime's ``quantize_dynamic`` (int8 and uint8 weights per tensor, and
int8 per channel; each MatMul's whole input quantized with one scale per call),
after storing its float16-exact weights as float32 (the quantizer needs float
initializers, not a Cast), and the int8 copy the daemon serves on CPU
(``engine.precision.quantize_int8_per_token``: each input row its own scale),
and measures with onnxruntime on CPU, the float32 model as the reference in the
same run:

- engine time per chunk, encoding batches of 1 and of 8 chunks (what the daemon sends);
- how far the embeddings move (mean |difference| over mean |reference|) and how often
  the top class of a 5 s window changes, on the demo clip's chunks (real speech);
- how much a chunk's embedding depends on the other chunks of its batch (the largest
  |difference| between the demo chunks encoded one by one and all in one batch): with one
  scale per call it does, which makes a daemon stream's output depend on other streams.

Its accuracy study on unseen speakers is ``python -m bench.int8_accuracy``.
Speed-ups depend on the CPU (VNNI or not); compare within a run.

    python -m bench.int8_encoder            # prints a table, writes bench/results/int8_encoder.json
    python -m bench.int8_encoder --keep-float /encoder/blocks.0/qkv/MatMul   # and a row with that layer in float32
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.lib import RESULTS, cpu_isa, write_json
from bench.tables import int8_encoder_markdown
from engine.precision import float32_weights, quantize_int8_per_token
from engine.shipped import default_model_path


def ms_per_chunk(eng, chunks: np.ndarray, batch: int, repeats: int) -> float:
    x = chunks[:batch]
    for _ in range(3):
        eng.encode_chunks(x)
    t0 = time.perf_counter()
    for _ in range(repeats):
        eng.encode_chunks(x)
    return (time.perf_counter() - t0) / repeats / batch * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(default_model_path()), help="a chunked ONNX model (default: the shipped one)")
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--out", default=str(RESULTS / "int8_encoder.json"))
    ap.add_argument("--keep-float", nargs="+", default=[], metavar="NODE",
                    help="also time a per-token int8 copy with these linear layers (MatMul node names) left in float32")
    args = ap.parse_args()
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from contract.audio import load_audio
    from engine.registry import load_engine
    from realtime.sources import demo_clip_path

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        onnx.save(float32_weights(onnx.load(args.model)), str(fp32))
        paths = {"float32": fp32}
        for qt in (QuantType.QInt8, QuantType.QUInt8):
            paths[qt.name] = Path(tmp) / f"{qt.name}.onnx"
            quantize_dynamic(str(fp32), str(paths[qt.name]), weight_type=qt, op_types_to_quantize=["MatMul"])
        paths["QInt8 per channel"] = Path(tmp) / "QInt8pc.onnx"
        quantize_dynamic(str(fp32), str(paths["QInt8 per channel"]), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])
        paths["int8 per token (served)"] = Path(tmp) / "int8.onnx"
        quantize_int8_per_token(Path(args.model), paths["int8 per token (served)"])
        if args.keep_float:
            kept = f"int8 per token, {' '.join(args.keep_float)} float32"
            paths[kept] = Path(tmp) / "int8-kept.onnx"
            quantize_int8_per_token(Path(args.model), paths[kept], keep_float=args.keep_float)
        engines = {name: load_engine(p, backend="onnxruntime", device="cpu") for name, p in paths.items()}

        ref = engines["float32"]
        if not ref.chunked:
            raise SystemExit(f"{args.model} is not a chunked model")
        audio = load_audio(demo_clip_path())
        n, hop, k = ref.chunk_samples, ref.chunk_hop_samples, ref.chunks_per_window
        chunks = np.stack([audio[i : i + n] for i in range(0, len(audio) - n + 1, hop)]).astype(np.float32)
        windows = np.arange(len(chunks) - k + 1)[:, None] + np.arange(k)[None, :]  # K consecutive chunks each
        emb_ref = np.concatenate([ref.encode_chunks(chunks[i : i + 1]) for i in range(len(chunks))])
        probs_ref = ref.classify(emb_ref[windows])

        rows = []
        for name, eng in engines.items():
            emb = np.concatenate([eng.encode_chunks(chunks[i : i + 1]) for i in range(len(chunks))])
            probs = eng.classify(emb[windows])
            rows.append({
                "model": name,
                "ms_per_chunk_b1": ms_per_chunk(eng, chunks, 1, args.repeats),
                "ms_per_chunk_b8": ms_per_chunk(eng, chunks, 8, args.repeats),
                "embedding_rel_change": float(np.abs(emb - emb_ref).mean() / np.abs(emb_ref).mean()),
                "top1_agreement": float((probs.argmax(1) == probs_ref.argmax(1)).mean()),
                "max_prob_diff": float(np.abs(probs - probs_ref).max()),
                "size_mb": paths[name].stat().st_size / 1e6,
                "batch_dependence": float(np.abs(eng.encode_chunks(chunks) - emb).max()),
            })
    base = rows[0]
    for r in rows:
        r["speedup_b8"] = base["ms_per_chunk_b8"] / r["ms_per_chunk_b8"]
    doc = {"model": args.model, "chunks": len(chunks), "windows": len(windows), "rows": rows, "cpu": cpu_isa()}
    print(f"CPU: {platform.processor() or platform.machine()}")
    print(int8_encoder_markdown(doc))
    out = write_json(args.out, doc)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

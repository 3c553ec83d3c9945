"""Would dynamic INT8 make the default model's encoder cheap enough on CPU? Speed and departure, same run.

The daemon's CPU ceiling is the Whisper encoder's cost per 1 s chunk (README,
"Daemon under load"). This quantizes the shipped chunked model's MatMul weights
with onnxruntime's ``quantize_dynamic`` (int8 and uint8 weights; activations
quantized per call), after storing its float16-exact weights as float32 (the
quantizer needs float initializers, not a Cast), and measures with onnxruntime
on CPU, the float32 model as the reference in the same run:

- engine time per chunk, encoding batches of 1 and of 8 chunks (what the daemon sends);
- how far the embeddings move (mean |difference| over mean |reference|) and how often
  the top class of a 5 s window changes, on the demo clip's chunks (real speech).

It ships nothing: the result decides whether an int8 CPU build is worth an
accuracy study. Speed-ups depend on the CPU (VNNI or not); compare within a run.

    python -m bench.int8_encoder            # prints a table, writes bench/results/int8_encoder.json
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.lib import RESULTS, write_json
from bench.tables import int8_encoder_markdown
from engine.shipped import default_model_path


def float32_weights(src: Path, dst: Path) -> None:
    """``src`` with every float16 initializer behind a Cast stored as the Cast's float32 output instead."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    keep = []
    for n in g.node:
        w = inits.get(n.input[0]) if n.op_type == "Cast" and n.input else None
        if w is not None and w.data_type == onnx.TensorProto.FLOAT16:
            g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(w).astype(np.float32), n.output[0]))
            g.initializer.remove(w)
            continue
        keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    onnx.save(m, str(dst))


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
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=str(RESULTS / "int8_encoder.json"))
    args = ap.parse_args()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from contract.audio import load_audio
    from engine.registry import load_engine
    from realtime.sources import demo_clip_path

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        float32_weights(Path(args.model), fp32)
        paths = {"float32": fp32}
        for qt in (QuantType.QInt8, QuantType.QUInt8):
            paths[qt.name] = Path(tmp) / f"{qt.name}.onnx"
            quantize_dynamic(str(fp32), str(paths[qt.name]), weight_type=qt, op_types_to_quantize=["MatMul"])
        engines = {name: load_engine(p, backend="onnxruntime", device="cpu") for name, p in paths.items()}

        ref = engines["float32"]
        if not ref.chunked:
            raise SystemExit(f"{args.model} is not a chunked model")
        audio = load_audio(demo_clip_path())
        n, hop, k = ref.chunk_samples, ref.chunk_hop_samples, ref.chunks_per_window
        chunks = np.stack([audio[i : i + n] for i in range(0, len(audio) - n + 1, hop)]).astype(np.float32)
        windows = np.arange(len(chunks) - k + 1)[:, None] + np.arange(k)[None, :]  # K consecutive chunks each
        emb_ref = ref.encode_chunks(chunks)
        probs_ref = ref.classify(emb_ref[windows])

        rows = []
        for name, eng in engines.items():
            emb = eng.encode_chunks(chunks)
            probs = eng.classify(emb[windows])
            rows.append({
                "model": name,
                "ms_per_chunk_b1": ms_per_chunk(eng, chunks, 1, args.repeats),
                "ms_per_chunk_b8": ms_per_chunk(eng, chunks, 8, args.repeats),
                "embedding_rel_change": float(np.abs(emb - emb_ref).mean() / np.abs(emb_ref).mean()),
                "top1_agreement": float((probs.argmax(1) == probs_ref.argmax(1)).mean()),
                "max_prob_diff": float(np.abs(probs - probs_ref).max()),
                "size_mb": paths[name].stat().st_size / 1e6,
            })
    base = rows[0]
    for r in rows:
        r["speedup_b8"] = base["ms_per_chunk_b8"] / r["ms_per_chunk_b8"]
    doc = {"model": args.model, "chunks": len(chunks), "windows": len(windows), "rows": rows}
    print(f"CPU: {platform.processor() or platform.machine()}")
    print(int8_encoder_markdown(doc))
    out = write_json(args.out, doc)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How much the INT8 (Q/DQ) build of a model departs from its float32 original, on real speech.

Quantizes the model exactly as ``ser-build-engine --precision int8`` does
(engine.precision.quantize_qdq, calibrated with engine.calibration on a folder
of audio), runs both graphs with onnxruntime on CPU over every clip of the
evaluation folder (windows as ser-predict cuts them), and prints the top-class
agreement and the largest probability difference; writes JSON. No GPU needed:
this measures the quantization, not TensorRT's kernels. Two builds in the same
run: every layer in int8 (the reference), and the one ser-build-engine makes,
which keeps the first convolution in float.

    python -m bench.int8                                   # shipped model; calib actor 01, eval actors 12+14
    python -m bench.int8 --calib ../shared/data/ravdess/Actor_03 --eval ../shared/data/ravdess/Actor_14
    python -m bench.int8 --per-layer --out bench/results/int8-per-layer.json   # each layer alone in int8
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.lib import REPO, RESULTS, write_json
from bench.tables import int8_markdown
from engine.shipped import default_model_path

SHARED = REPO.parent / "shared" / "data" / "ravdess"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=default_model_path().parent / "compact.onnx")
    ap.add_argument("--calib", type=Path, default=SHARED / "Actor_01", help="calibration audio folder")
    ap.add_argument("--eval", type=Path, nargs="+", default=[SHARED / "Actor_12", SHARED / "Actor_14"],
                    help="evaluation audio folder(s)")
    ap.add_argument("--out", type=Path, default=RESULTS / "int8.json")
    ap.add_argument("--per-layer", action="store_true", help="also quantize each layer alone (sensitivity)")
    args = ap.parse_args()

    import onnx

    from engine.calibration import audio_files, calibration_windows
    from engine.precision import quantizable_nodes, quantize_qdq
    from engine.predict import file_windows
    from engine.registry import load_engine

    fp32 = load_engine(args.model, backend="onnxruntime", device="cpu")
    windows = np.concatenate([file_windows(p, fp32.window_samples, fp32.sample_rate) for d in args.eval for p in audio_files(d)])
    calib = calibration_windows(args.calib)
    p32 = fp32.infer(windows)
    # Reference first: every Conv/MatMul/Gemm in int8; then the build ser-build-engine makes;
    # with --per-layer, each layer alone in int8 (all others float).
    variants: list[tuple[str, bool, list[str]]] = [("all layers int8", False, []), ("first conv float (shipped)", True, [])]
    if args.per_layer:
        layers = quantizable_nodes(onnx.load(str(args.model)))
        variants += [(f"only {name}", False, [x for x in layers if x != name]) for name in layers]
    rows = []
    for name, float_first, keep_float in variants:
        with tempfile.TemporaryDirectory() as tmp:
            int8_path = Path(tmp) / "int8.onnx"
            quantize_qdq(args.model, int8_path, calib, float_first_layer=float_first, keep_float=keep_float)
            p8 = load_engine(int8_path, backend="onnxruntime", device="cpu").infer(windows)
        rows.append({
            "variant": name,
            "float_first_layer": float_first,
            "top1_agreement": float(np.mean(p32.argmax(1) == p8.argmax(1))),
            "max_abs_diff": float(np.abs(p32 - p8).max()),
            "mean_abs_diff": float(np.abs(p32 - p8).mean()),
        })
    evals = "+".join(d.name for d in args.eval)
    print(f"{args.model.name}: int8 Q/DQ vs float32, calibration {args.calib.name}, evaluation {evals} ({len(windows)} windows)")
    result = {"model": str(args.model), "calib": str(args.calib), "eval": [str(d) for d in args.eval],
              "windows": len(windows), "variants": rows}
    print(int8_markdown(result))
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

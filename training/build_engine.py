"""Console entry point ``ser-build-engine``: a ``ser-train`` checkpoint -> the deployable ONNX (and TensorRT plan).

Training produces the engine: export (torch, onnx) lives here; the optional
TensorRT plan is built by the runtime's own builder (``engine.tensorrt_build``)
on the machine that will run it. Every expected failure (missing or corrupt
checkpoint, parity beyond tolerance, TensorRT absent) is one ``error:`` line
and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from engine.interface import EngineError
from engine.tensorrt_build import DEFAULT_MAX_BATCH, PRECISIONS


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="ONNX file to write (default: CHECKPOINT with .onnx).")
@click.option("--cpu-int8", is_flag=True, help="Also write the onnxruntime CPU int8 copy beside the ONNX (NAME.int8.onnx), served on CPUs with VNNI or dotprod.")
@click.option("--int8-keep-float", "keep_float", multiple=True, metavar="NODE",
              help="With --cpu-int8: leave this encoder linear layer (a MatMul node name) in float32; repeatable. "
                   "The first block's attention (/encoder/blocks.0/qkv/MatMul, /encoder/blocks.0/out/MatMul) is the measured choice "
                   "(README, int8): closer to float32 under noise, slower.")
@click.option("--tensorrt", is_flag=True, help="Also build (or reuse) the TensorRT plan for this GPU, cached beside the ONNX.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True, help="TensorRT plan precision.")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=DEFAULT_MAX_BATCH, show_default=True, help="Largest batch of windows the TensorRT plan accepts (profile 1..N).")
@click.option("--calibration", type=click.Path(path_type=Path), help="Folder of speech clips for int8 calibration (required with --precision int8).")
@click.option("--tolerance", type=float, default=1e-4, show_default=True, help="Largest |torch - onnxruntime| probability difference accepted by the parity check.")
@click.option("--name", help="Model name stored in the metadata (default: the output file's stem).")
@click.option("--rebuild", is_flag=True, help="Rebuild the TensorRT plan even when a cached one matches.")
def main(
    checkpoint: Path,
    output: Path | None,
    cpu_int8: bool,
    keep_float: tuple[str, ...],
    tensorrt: bool,
    precision: str,
    max_batch: int,
    calibration: Path | None,
    tolerance: float,
    name: str | None,
    rebuild: bool,
) -> None:
    """Export CHECKPOINT (from ser-train) to ONNX with the spectrogram inside, verify it, optionally build TensorRT.

    A whole-window model's ONNX takes ``waveform`` float32 [batch, samples] at
    16 kHz and returns ``probs`` [batch, 6]; a streaming (chunked) model's
    takes ``chunks`` [N, chunk_samples] and ``window_embeddings`` [B, K, D] and
    returns ``embeddings`` and ``probs`` (its two halves). After export it is
    checked with onnx.checker and compared with the torch model on
    speech-like audio; the command fails if the difference exceeds
    --tolerance. CHECKPOINT may also be an existing .onnx, to build only its
    TensorRT plan, or only its int8 copy (--cpu-int8).
    """
    if keep_float and not cpu_int8:
        _fail("--int8-keep-float names layers of the int8 copy: add --cpu-int8")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # the exporter's INFO chatter stays quiet
    logging.getLogger("engine").setLevel(logging.INFO)  # TensorRT build progress
    if precision != "fp32" and not tensorrt:
        _fail("--precision applies to the TensorRT plan: add --tensorrt")
    if tensorrt:
        from engine.tensorrt_build import tensorrt_available

        if not tensorrt_available():
            _fail("TensorRT is not installed on this machine (pip install 'ser[gpu]' on a machine with an NVIDIA GPU); "
                  "nothing was built. Drop --tensorrt to export the ONNX alone.")
        if precision == "int8" and calibration is None:
            _fail("--precision int8 needs --calibration DIR (a folder of speech clips)")
    if not checkpoint.exists():
        _fail(f"checkpoint not found: {checkpoint}")
    if checkpoint.suffix == ".onnx":
        onnx_path = checkpoint
        if not (tensorrt or cpu_int8):
            _fail(f"{checkpoint} is already ONNX; pass a .ckpt to export, or add --tensorrt or --cpu-int8 to build from it")
    else:
        onnx_path = output or checkpoint.with_suffix(".onnx")
        _export(checkpoint, onnx_path, tolerance, name)
    if cpu_int8:
        _int8_copy(onnx_path, keep_float)
    if tensorrt:
        _build_plan(onnx_path, precision, max_batch, calibration, rebuild)


def _export(checkpoint: Path, output: Path, tolerance: float, name: str | None) -> None:
    try:
        from training.checkpoint import CheckpointError
        from training.export import ExportError, export_checkpoint
    except ImportError as exc:
        _fail(f"exporting needs torch, onnx and onnxruntime (pip install 'ser[train,cpu]'): {exc}")
    try:
        report = export_checkpoint(checkpoint, output, tolerance=tolerance, name=name, log=click.echo)
    except (CheckpointError, ExportError, EngineError) as exc:
        _fail(str(exc))
    click.echo(f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, {report.metadata['variant']}, checked and parity-tested)")


def _int8_copy(onnx_path: Path, keep_float: tuple[str, ...] = ()) -> None:
    """Write ``NAME.int8.onnx`` and say how far it moves the float model's probabilities (speech-like windows)."""
    import numpy as np

    from engine.backends.ort import OrtEngine, int8_copy_path
    from engine.precision import quantize_int8_per_token
    from engine.signals import speech_like

    out = int8_copy_path(onnx_path)
    try:
        quantize_int8_per_token(onnx_path, out, keep_float=keep_float)
        ref = OrtEngine.load(onnx_path, device="cpu", int8=False)
        q = OrtEngine.load(onnx_path, device="cpu", int8=True)
    except (EngineError, OSError, ValueError) as exc:
        _fail(f"cannot write the int8 copy of {onnx_path}: {exc}")
    x = speech_like(16, ref.window_samples, seed=0)
    p, pq = ref.infer(x), q.infer(x)
    click.echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, onnxruntime CPU int8): against the float model on 16 "
               f"speech-like windows, top class agrees on {np.mean(p.argmax(1) == pq.argmax(1)):.0%}, "
               f"probabilities differ by at most {np.abs(p - pq).max():.3f} (this CPU; see bench.int8_accuracy)")


def _build_plan(onnx_path: Path, precision: str, max_batch: int, calibration: Path | None, rebuild: bool) -> None:
    from engine.backends.tensorrt_backend import TensorRTEngine

    try:
        eng = TensorRTEngine.load(onnx_path, precision=precision, max_batch=max_batch, calibration=calibration, rebuild=rebuild)
        eng.warmup((1, eng.max_batch))
    except EngineError as exc:
        _fail(str(exc))
    click.echo(f"ready: {eng.describe()}")

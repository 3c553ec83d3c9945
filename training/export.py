"""``export_checkpoint``: a ``ser-train`` checkpoint -> the served ONNX model, whole-window or chunked, checked.

Opens the checkpoint, builds its metadata (:mod:`training.metadata`), and
hands the model to the whole-window exporter (:mod:`training.export_window`)
or, for a streaming model (one with a ``geometry``), to the two-halves
exporter (:mod:`training.export_chunked`); both are checked with
``onnx.checker`` and compared with torch before the file counts as written.
Imports torch, onnx and onnxruntime (the ``train`` and ``cpu`` extras).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from contract.model_io import chunk_metadata
from engine.onnx_graph import op_counts
from training import export_chunked as ec
from training.checkpoint import open_checkpoint
from training.export_window import (
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    ExportError,
    ExportReport,
    export_onnx,
    parity,
)
from training.metadata import model_metadata

__all__ = ["ExportError", "ExportReport", "export_checkpoint"]


def export_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    tolerance: float = DEFAULT_TOLERANCE,
    name: str | None = None,
    opset: int = DEFAULT_OPSET,
    log: Callable[[str], None] = print,
) -> ExportReport:
    """Export, check with ``onnx.checker``, compare with torch; raise :class:`ExportError` beyond ``tolerance``."""
    output = Path(output)
    model, cfg, extras = open_checkpoint(checkpoint)
    meta = model_metadata(cfg, extras, name=name or output.stem)
    if hasattr(model, "geometry"):
        return _export_chunked(model, output, meta, tolerance, checkpoint, log)
    window_samples = int(round(int(meta["sample_rate"]) * float(meta["window_s"])))
    log(f"exporting {checkpoint} ({meta['variant']}, trained on {meta['data']}) -> {output} [dynamo exporter, opset {opset}]")
    proto = export_onnx(model, output, meta, window_samples, opset=opset)
    log(f"onnx.checker: ok ({len(proto.graph.node)} nodes, all TensorRT-parser ops)")
    diff, shapes = parity(model, output, window_samples)
    log(f"parity torch vs onnxruntime: max abs diff {diff:.3e} over {len(shapes)} batches {shapes} (tolerance {tolerance:g})")
    if not diff <= tolerance:  # also catches NaN
        raise ExportError(
            f"{output}: onnxruntime output differs from torch by {diff:.3e} (> tolerance {tolerance:g}); "
            "the exported graph is not faithful, so it is not fit to serve"
        )
    return ExportReport(output, diff, shapes, dict(op_counts(proto)), output.stat().st_size, meta)


def _export_chunked(model: nn.Module, output: Path, meta: dict[str, str], tolerance: float, checkpoint: str | Path,
                    log: Callable[[str], None]) -> ExportReport:
    """The streaming model's two halves in one file (:mod:`training.export_chunked`), parity-checked the same way."""
    meta = {**meta, **chunk_metadata(model.geometry, model.embedding_dim)}
    log(f"exporting {checkpoint} ({meta['variant']}, chunked: {model.geometry}, D {model.embedding_dim}) -> {output} [opset {ec.OPSET}]")
    proto = ec.export_chunked_onnx(model, output, meta)
    diff = ec.chunked_parity(model, output)
    log(f"onnx.checker: ok ({len(proto.graph.node)} nodes, all TensorRT-parser ops)")
    log(f"parity torch vs onnxruntime (both halves, windows of 1, 3 and 8): max abs diff {diff:.3e} (tolerance {tolerance:g})")
    if not diff <= tolerance:
        raise ExportError(f"{output}: onnxruntime output differs from torch by {diff:.3e} (> tolerance {tolerance:g})")
    return ExportReport(output, diff, [], dict(op_counts(proto)), output.stat().st_size, meta)

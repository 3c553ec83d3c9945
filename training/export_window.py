"""Export a whole-window model to the served ONNX graph, check it, and prove it faithful (the primitives every export uses).

The graph holds the whole inference path: waveform -> log-mel (conv1d with a
constant DFT basis, constant mel MatMul) -> network -> softmax. It is
exported with torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``,
onnxscript): it keeps the batch and sample axes symbolic through the
Transformer's reshapes, while the legacy TorchScript exporter bakes the
traced sequence length into ``MultiheadAttention``'s Reshape nodes, so its
graph fails on any other length. Opset 18 is the lowest the dynamo exporter
emits and is inside TensorRT 10's parser range (9-20); ``LayerNormalization``
(opset 17) stays one node.

Imports torch, onnx and onnxruntime (the ``train`` and ``cpu`` extras).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from contract.model_io import INPUT_NAME, OUTPUT_NAME
from engine.onnx_graph import double_tensors, unsupported_ops, uses_external_data
from engine.signals import speech_like

DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-4
# Batch sizes x lengths (in windows) the parity check runs: the served window, a short and a long clip.
PARITY_CASES: tuple[tuple[int, float], ...] = ((1, 1.0), (3, 1.0), (8, 1.0), (2, 0.6), (2, 1.47))


class ExportError(Exception):
    """The export failed or produced a graph that does not match the torch model."""


class ServingModel(nn.Module):
    """The model as served: logits -> probabilities (training never applies softmax before its loss)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(waveform), dim=-1)


@dataclass
class ExportReport:
    path: Path
    max_abs_diff: float
    cases: list[tuple[int, int]]
    ops: dict[str, int]
    size_bytes: int
    metadata: dict[str, str] = field(default_factory=dict)


def export_onnx(
    model: nn.Module,
    output: Path,
    metadata: dict[str, str],
    window_samples: int,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """Write ``model`` (logits) as ``waveform [batch, samples] -> probs [batch, labels]`` to one file."""
    serving = ServingModel(model).eval()
    example = torch.from_numpy(speech_like(2, window_samples, seed=1))
    batch = torch.export.Dim("batch", min=1, max=4096)
    samples = torch.export.Dim("samples", min=window_samples // 5, max=window_samples * 8)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter chatter (torchvision ops absent, deprecations)
            _quiet_exporter_logs()
            program = torch.onnx.export(
                serving,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"waveform": {0: batch, 1: samples}},
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed for the {metadata.get('variant')} model: {exc}") from exc
    proto = program.model_proto
    save_checked(proto, output, metadata)
    return proto


def save_checked(proto: onnx.ModelProto, output: Path, metadata: dict[str, str],
                 inputs: Sequence[str] = (INPUT_NAME,), outputs: Sequence[str] = (OUTPUT_NAME,)) -> None:
    """Set the metadata, check the contract, write ``output`` atomically (one file), run ``onnx.checker``."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    check_graph(proto, output, inputs, outputs)
    tmp = output.with_name(output.name + ".tmp")
    onnx.save_model(proto, str(tmp), save_as_external_data=False)
    os.replace(tmp, output)
    try:
        onnx.checker.check_model(str(output), full_check=True)
    except Exception as exc:
        raise ExportError(f"{output}: onnx.checker rejects the exported graph: {exc}") from exc


def check_graph(proto: onnx.ModelProto, output: Path, inputs: Sequence[str] = (INPUT_NAME,),
                outputs: Sequence[str] = (OUTPUT_NAME,)) -> None:
    """Contract (the graph's input and output names) and TensorRT-compatibility checks that need no runtime."""
    found_in = [i.name for i in proto.graph.input]
    found_out = [o.name for o in proto.graph.output]
    if found_in != list(inputs) or found_out != list(outputs):
        raise ExportError(f"{output}: graph has inputs {found_in} and outputs {found_out}, expected {list(inputs)} -> {list(outputs)}")
    bad = unsupported_ops(proto)
    if bad:
        raise ExportError(f"{output}: graph uses ops TensorRT's ONNX parser lacks: {', '.join(bad)}")
    doubles = double_tensors(proto)
    if doubles:
        raise ExportError(f"{output}: graph holds float64 constants ({', '.join(doubles[:5])}); TensorRT would clamp them")
    if uses_external_data(proto):
        raise ExportError(f"{output}: initializers were written as external data; the model must be one file")


def parity(
    model: nn.Module,
    onnx_path: Path,
    window_samples: int,
    cases: Sequence[tuple[int, float]] = PARITY_CASES,
    seed: int = 0,
) -> tuple[float, list[tuple[int, int]]]:
    """Max |torch - onnxruntime| over speech-like batches of several sizes and lengths."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    serving = ServingModel(model).eval()
    worst, shapes = 0.0, []
    for i, (b, windows) in enumerate(cases):
        n = int(round(window_samples * windows))
        x = speech_like(b, n, seed=seed + i)
        with torch.inference_mode():
            ref = serving(torch.from_numpy(x)).numpy()
        got = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        if got.shape != ref.shape:
            raise ExportError(f"{onnx_path}: onnxruntime returned shape {got.shape} for input {x.shape}, torch {ref.shape}")
        worst = max(worst, float(np.max(np.abs(got - ref))))
        shapes.append((b, n))
    return worst, shapes


def _quiet_exporter_logs() -> None:
    for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)

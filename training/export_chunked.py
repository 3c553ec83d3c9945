"""Export a chunked (streaming) model: both halves as two independent sub-graphs of one ONNX file.

``chunks [N, chunk_samples] -> embeddings [N, D]`` (log-mel, Whisper
encoder, per-layer statistics, layer mix) and ``window_embeddings [B, K, D]
-> probs [B, labels]`` (the head and a softmax) share one file, so the model
stays one portable artifact; a runtime feeds a zero-size array to the half it
does not want (onnxruntime needs every input fed, and a zero-size batch costs
nothing). Offline scoring of whole windows is the two halves in a row
(:meth:`engine.interface.Engine.infer`).

Size: float32 initializers whose values are exact in float16 (the Whisper
weights, which ship as float16) are stored as float16 behind a ``Cast``;
onnxruntime and TensorRT fold the cast when they load the model, so compute
stays float32 and nothing is rounded. Trained head weights stay float32.

Uses the TorchScript exporter (``dynamo=False``): the chunk length is fixed,
so only the batch axes are dynamic, which it traces correctly; opset 17 keeps
``LayerNormalization`` one node and is inside TensorRT 10's parser range.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from contract.model_io import CHUNKS_INPUT, EMBEDDINGS_OUTPUT, OUTPUT_NAME, WINDOW_EMBEDDINGS_INPUT
from engine.signals import speech_like
from training.export_window import ExportError, save_checked

OPSET = 17
MIN_HALF_SIZE = 4096  # smaller tensors are not worth a Cast node


class _BothHalves(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, chunks: torch.Tensor, window_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_chunks(chunks), torch.softmax(self.model.classify(window_embeddings), dim=-1)


def export_chunked_onnx(model: nn.Module, output: Path, metadata: dict[str, str]) -> onnx.ModelProto:
    """Write both halves of ``model`` (``encode_chunks`` / ``classify`` returning logits) to ``output``."""
    g = model.geometry
    both = _BothHalves(model).eval()
    chunks = torch.from_numpy(speech_like(3, g.chunk_samples, seed=1))
    emb = torch.randn(2, g.chunks_per_window, model.embedding_dim)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            torch.onnx.export(
                both, (chunks, emb), str(tmp),
                input_names=[CHUNKS_INPUT, WINDOW_EMBEDDINGS_INPUT],
                output_names=[EMBEDDINGS_OUTPUT, OUTPUT_NAME],
                dynamic_axes={CHUNKS_INPUT: {0: "chunks"}, WINDOW_EMBEDDINGS_INPUT: {0: "windows"},
                              EMBEDDINGS_OUTPUT: {0: "chunks"}, OUTPUT_NAME: {0: "windows"}},
                opset_version=OPSET, dynamo=False,
            )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed for the {metadata.get('variant')} model: {exc}") from exc
    proto = onnx.load(str(tmp))
    tmp.unlink()
    store_exact_float16(proto)
    save_checked(proto, output, metadata, (CHUNKS_INPUT, WINDOW_EMBEDDINGS_INPUT), (EMBEDDINGS_OUTPUT, OUTPUT_NAME))
    return proto


def store_exact_float16(proto: onnx.ModelProto) -> int:
    """Store float32 initializers that float16 holds exactly as float16 + Cast; returns bytes saved."""
    graph = proto.graph
    casts, kept, saved = [], [], 0
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype != np.float32 or arr.size < MIN_HALF_SIZE:
            kept.append(init)
            continue
        half = arr.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), arr):
            kept.append(init)
            continue
        stored = numpy_helper.from_array(half, init.name + "_fp16")
        kept.append(stored)
        casts.append(helper.make_node("Cast", [stored.name], [init.name], to=onnx.TensorProto.FLOAT, name=init.name + "_cast"))
        saved += arr.nbytes - half.nbytes
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return saved


def chunked_parity(model: nn.Module, onnx_path: Path, seed: int = 0) -> float:
    """Max |torch - onnxruntime| over both halves and over whole windows (encode then classify)."""
    import onnxruntime as ort

    g = model.geometry
    k, d, n = g.chunks_per_window, model.embedding_dim, g.chunk_samples
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for i, b in enumerate((1, 3, 8)):
        chunks = speech_like(b * k, n, seed=seed + i)
        with torch.inference_mode():
            ref_e = model.encode_chunks(torch.from_numpy(chunks))
            ref_p = torch.softmax(model.classify(ref_e.reshape(b, k, d)), -1).numpy()
        got_e = sess.run([EMBEDDINGS_OUTPUT], {CHUNKS_INPUT: chunks, WINDOW_EMBEDDINGS_INPUT: np.zeros((0, k, d), np.float32)})[0]
        got_p = sess.run([OUTPUT_NAME], {CHUNKS_INPUT: np.zeros((0, n), np.float32),
                                         WINDOW_EMBEDDINGS_INPUT: got_e.reshape(b, k, d)})[0]
        if got_p.shape != ref_p.shape:
            raise ExportError(f"{onnx_path}: onnxruntime returned {got_p.shape}, torch {ref_p.shape}")
        worst = max(worst, float(np.max(np.abs(got_p - ref_p))))
    return worst

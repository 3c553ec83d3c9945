"""What an ONNX model file must look like to be served, checked from its graph's inputs, outputs and metadata.

Two shapes are served: a whole-window graph (``waveform [batch, samples]``
-> ``probs``) and a chunked one (``chunks`` and ``window_embeddings`` in,
``embeddings`` and ``probs`` out, with the chunk metadata). onnxruntime
checks its session with :func:`check_graph`; TensorRT reads the file with
:func:`read_model_info` (the ``onnx`` package, no inference session built).
"""

from __future__ import annotations

from pathlib import Path

from contract.model_io import (
    CHUNKS_INPUT,
    EMBEDDINGS_OUTPUT,
    INPUT_NAME,
    OUTPUT_NAME,
    WINDOW_EMBEDDINGS_INPUT,
)
from engine.interface import BackendUnavailable, EngineError, ModelInfo


def check_graph(inputs: dict[str, int], outputs: set[str], meta: dict[str, str], path: Path) -> ModelInfo:
    """The model's info, once its inputs (name -> rank) and outputs are those of a whole-window or a chunked model."""
    if CHUNKS_INPUT in inputs:
        want_in, want_out = {CHUNKS_INPUT: 2, WINDOW_EMBEDDINGS_INPUT: 3}, (EMBEDDINGS_OUTPUT, OUTPUT_NAME)
    else:
        want_in, want_out = {INPUT_NAME: 2}, (OUTPUT_NAME,)
    if set(inputs) != set(want_in) or not set(want_out) <= outputs:
        raise EngineError(
            f"{path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r} (or inputs {CHUNKS_INPUT!r}, "
            f"{WINDOW_EMBEDDINGS_INPUT!r} and outputs {EMBEDDINGS_OUTPUT!r}, {OUTPUT_NAME!r}), "
            f"found inputs {sorted(inputs)} and outputs {sorted(outputs)}"
        )
    for name, rank in want_in.items():
        if inputs[name] != rank:
            raise EngineError(f"{path}: input {name!r} must have {rank} dimensions, has {inputs[name]}")
    info = ModelInfo.from_metadata(meta, path)
    if CHUNKS_INPUT in inputs and not info.geometry.chunked:
        raise EngineError(f"{path}: a chunked graph needs chunk_samples, chunk_hop_samples, chunks_per_window, embedding_dim metadata")
    if CHUNKS_INPUT not in inputs and info.geometry.chunked:
        raise EngineError(f"{path}: metadata describes chunks but the graph takes whole windows ({INPUT_NAME!r})")
    return info


def read_model_info(path: Path) -> ModelInfo:
    """Check an ONNX file's graph and metadata without building a session (weights stay unread)."""
    try:
        import onnx
    except ImportError as exc:
        raise BackendUnavailable("the onnx package is not installed: pip install 'ser[gpu]'") from exc
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends: all mean "not an ONNX model"
        raise EngineError(f"{path} is not a valid ONNX model: {exc}") from exc
    g = model.graph
    init = {t.name for t in g.initializer}
    inputs = {i.name: len(i.type.tensor_type.shape.dim) for i in g.input if i.name not in init}
    outputs = {o.name for o in g.output}
    return check_graph(inputs, outputs, {p.key: p.value for p in model.metadata_props}, path)

"""Read-only inspection of exported ONNX graphs: TensorRT op coverage, external data, the frontend region.

Imports ``onnx`` (present wherever a model is exported or a plan is built),
never torch or onnxruntime. The
frontend region matters twice: reduced precision (fp16, int8) must leave the
spectrogram in fp32, because ``log10`` of a clamped power of 1e-10 underflows
in fp16 and audio's dynamic range does not survive an int8 DFT.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import onnx

# ONNX ops the TensorRT 10/11 ONNX parser imports (onnx-tensorrt docs/operators.md), restricted to
# those an exported ser model can plausibly contain. Anything else fails the export early, here,
# instead of on the GPU machine hours later. STFT/DFT are deliberately absent: the frontend is conv1d.
TENSORRT_OPS: frozenset[str] = frozenset(
    """
    Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant ConstantOfShape
    Conv ConvTranspose Cos CumSum DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand Flatten Floor
    Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual
    HardSigmoid Identity InstanceNormalization LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax
    MatMul Max MaxPool Mean Min Mul Neg Not Or Pad Pow PRelu QuantizeLinear Range ReduceL1 ReduceL2
    ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
    Shape Sigmoid Sign Sin Size Slice Softmax Softplus Split Sqrt Squeeze Sub Sum Tanh Tile TopK Transpose
    Trilu Unsqueeze Where
    """.split()  # noqa: SIM905 (one readable block, as in the onnx-tensorrt table)
)


# The ops that carry a network's arithmetic: what int8 quantizes, and what "a layer" means below.
COMPUTE_OPS: tuple[str, ...] = ("Conv", "MatMul", "Gemm")


def op_counts(model: onnx.ModelProto) -> Counter[str]:
    """How often each op type occurs in the main graph."""
    return Counter(node.op_type for node in model.graph.node)


def unsupported_ops(model: onnx.ModelProto, allowed: Iterable[str] = TENSORRT_OPS) -> list[str]:
    """Op types (domain-qualified where not the default domain) TensorRT's parser would reject."""
    allowed = set(allowed)
    bad = set()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in allowed:
            bad.add(f"{node.domain}::{node.op_type}" if node.domain else node.op_type)
    return sorted(bad)


def double_tensors(model: onnx.ModelProto) -> list[str]:
    """Initializers of type double, which TensorRT can only clamp down to float."""
    return [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.DOUBLE]


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output if out}


def _initializer_ranks(model: onnx.ModelProto) -> dict[str, int]:
    return {t.name: len(t.dims) for t in model.graph.initializer}


def spectrogram_tensor(model: onnx.ModelProto) -> str:
    """Name of the tensor fed to the network's first 2-D convolution: the normalised log-mel.

    Found structurally (the first ``Conv`` with a 4-D weight), so it does not
    depend on node names, which change between exporters and torch versions.
    """
    ranks = _initializer_ranks(model)
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and ranks.get(node.input[1]) == 4:
            return node.input[0]
    raise ValueError("graph has no 2-D convolution; cannot locate the end of the spectrogram frontend")


def frontend_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of every node the spectrogram depends on (the waveform -> log-mel region)."""
    producers = _producers(model)
    seen: set[str] = set()
    stack = [spectrogram_tensor(model)]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        stack.extend(i for i in node.input if i)
    return seen


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name, so node sets (frontend, exclusions) are well defined."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def first_layer_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the network's first compute nodes: the Conv/MatMul/Gemm that read the log-mel itself.

    Int8 keeps them in float: their input is the normalised log-mel, whose range
    (silence far below speech) int8 resolves poorly, and measured on the default
    model this one layer causes nearly all of the int8 error (bench/int8.py).
    """
    spec = spectrogram_tensor(model)
    return {n.name for n in model.graph.node if n.op_type in COMPUTE_OPS and spec in n.input}

"""Reduced-precision copies of an exported ONNX graph, for TensorRT's strongly typed builds.

TensorRT 11 has no FP16/INT8 builder flags: a strongly typed network runs
each tensor in the type the ONNX says. So precision is decided here, in the
graph, on the CPU (and checked with onnxruntime before any GPU sees it):

- :func:`to_fp16`: the network's float tensors and weights become float16;
  the spectrogram frontend and the final softmax stay float32 (log10 of the
  1e-10 power floor underflows in fp16, and the mel power of a loud frame
  overflows 65504), with Casts at the borders. Graph I/O stays float32, so
  the engine contract does not change.
- :func:`quantize_qdq`: QuantizeLinear/DequantizeLinear pairs (symmetric
  int8, per-channel weights) from calibration windows, by onnxruntime's
  static Q/DQ quantizer; the frontend and the first convolution are excluded.
- :func:`quantize_int8_per_token`: the onnxruntime CPU int8 copy (the
  encoder's linear layers with int8 weights per output channel and each input
  row quantized with its own scale when it runs; no calibration). Not for
  TensorRT.

Imports onnx and numpy; onnxruntime only inside :func:`quantize_qdq`.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from contract.model_io import CHUNKS_INPUT, INPUT_NAME
from engine.onnx_graph import COMPUTE_OPS, ensure_node_names, first_layer_nodes, frontend_nodes

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
# Ops that read only the shape of their input: they take either type, so they never need a Cast.
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})


def _float_tensor_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor whose (inferred) element type is float32."""
    inferred = onnx.shape_inference.infer_shapes(model)
    names = set()
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.type.tensor_type.elem_type == FLOAT:
            names.add(vi.name)
    names.update(t.name for t in model.graph.initializer if t.data_type == FLOAT)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t.data_type == FLOAT:
            names.add(node.output[0])
    return names


def fp32_region(model: onnx.ModelProto) -> set[str]:
    """Nodes kept in float32: the frontend, and the softmax that produces the graph output."""
    keep = frontend_nodes(model)
    outputs = {o.name for o in model.graph.output}
    keep.update(n.name for n in model.graph.node if n.op_type == "Softmax" and set(n.output) & outputs)
    return keep


def to_fp16(model: onnx.ModelProto, keep_fp32: Iterable[str] | None = None) -> onnx.ModelProto:
    """A float16 copy of ``model`` with ``keep_fp32`` nodes (default :func:`fp32_region`) left in float32."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    ensure_node_names(model)
    keep = set(fp32_region(model) if keep_fp32 is None else keep_fp32)
    floats = _float_tensor_names(model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)

    half: set[str] = set()  # float tensors that are float16 in the new graph
    # Initializers read only by converted nodes become float16 in place; shared ones get a float16 twin.
    twins: dict[str, str] = {}
    for name, tensor in inits.items():
        if tensor.data_type != FLOAT:
            continue
        users = consumers.get(name, [])
        if users and all(u.name not in keep for u in users):
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), name))
            half.add(name)
        elif any(u.name not in keep for u in users):
            twin = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), name + "__fp16")
            graph.initializer.append(twin)
            twins[name] = twin.name

    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            out = f"{name}__to_{'fp16' if to == FLOAT16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"Cast_{out}"))
            casts[key] = out
        return casts[key]

    for node in graph.node:
        convert = node.name not in keep
        for idx, name in enumerate(node.input if node.op_type not in SHAPE_ONLY_OPS else ()):
            if not name or name not in floats:
                continue
            if convert and name not in half:
                node.input[idx] = twins.get(name) or cast(name, FLOAT16)
            elif not convert and name in half:
                node.input[idx] = cast(name, FLOAT)
        if convert:
            _retype_attributes(node)
            half.update(o for o in node.output if o in floats)
        new_nodes.append(node)

    # Graph outputs keep float32: rename a float16 producer's output and cast it back under the old name.
    for out in graph.output:
        if out.name in half:
            inner = out.name + "__fp16_out"
            for node in new_nodes:
                node.output[:] = [inner if o == out.name else o for o in node.output]
                node.input[:] = [inner if i == out.name else i for i in node.input]
            new_nodes.append(helper.make_node("Cast", [inner], [out.name], to=FLOAT, name=f"Cast_{out.name}_fp32"))
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model


def _retype_attributes(node: onnx.NodeProto) -> None:
    """Float32 types named by attributes (Cast targets, constant values) become float16."""
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
            attr.i = FLOAT16
        elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
            attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name))


def quantizable_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes :func:`quantize_qdq` may put in int8 (Conv, MatMul, Gemm outside the fp32 region)."""
    ensure_node_names(model)
    keep = fp32_region(model)
    return [n.name for n in model.graph.node if n.op_type in COMPUTE_OPS and n.name not in keep]


def quantize_qdq(model_path: Path, output: Path, windows: np.ndarray, batch: int = 8,
                 float_first_layer: bool = True, keep_float: Iterable[str] = ()) -> onnx.ModelProto:
    """Insert symmetric int8 Q/DQ nodes calibrated on ``windows`` ``[n, samples]``; frontend excluded.

    Symmetric scales (zero point 0) because TensorRT only takes those; weights
    are per channel. Only Conv, MatMul and Gemm are quantized: they carry the
    arithmetic, and TensorRT fuses the Q/DQ pairs around them. The first layer
    (the convolution reading the log-mel) stays float unless ``float_first_layer``
    is False: quantizing it alone costs more than all other layers together
    (on the default model top-1 agreement with float32 0.83 with it, 0.97 without;
    ``python bench/int8.py``), and it is a small share of the arithmetic.
    ``keep_float`` names more nodes to leave in float (see :func:`quantizable_nodes`).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(np.array_split(windows.astype(np.float32), max(1, len(windows) // batch)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            chunk = next(self._batches, None)
            return None if chunk is None else {INPUT_NAME: np.ascontiguousarray(chunk)}

    model = onnx.load(str(model_path))
    ensure_node_names(model)
    exclude = sorted(fp32_region(model) | (first_layer_nodes(model) if float_first_layer else set()) | set(keep_float))
    with tempfile.TemporaryDirectory() as tmp:
        named = Path(tmp) / "named.onnx"
        onnx.save(model, str(named))
        quantize_static(
            str(named),
            str(output),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=list(COMPUTE_OPS),
            nodes_to_exclude=exclude,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    quantized = onnx.load(str(output))
    for prop in model.metadata_props:
        if not any(p.key == prop.key for p in quantized.metadata_props):
            quantized.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(quantized, str(output))
    return quantized


def float32_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every float16 initializer that feeds a Cast stored as the Cast's float32 output instead.

    The exporter stores the float16-exact weights in float16 behind a Cast (half the file);
    onnxruntime's quantizer needs float initializers at the MatMuls, not a Cast.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    keep = []
    for n in g.node:
        w = inits.get(n.input[0]) if n.op_type == "Cast" and n.input else None
        if w is not None and w.data_type == FLOAT16:
            g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(w).astype(np.float32), n.output[0]))
            g.initializer.remove(w)
            continue
        keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    return m


def encoder_matmuls(model: onnx.ModelProto) -> list[str]:
    """The encoder half's linear layers: MatMul nodes the chunks input reaches whose right operand is a stored
    weight (not attention's products of activations, nor the mel filterbank, a constant on the left)."""
    ensure_node_names(model)
    weights = {i.name for i in model.graph.initializer}
    weights.update(n.output[0] for n in model.graph.node if n.op_type == "Cast" and n.input and n.input[0] in weights)
    reached = {CHUNKS_INPUT}
    names = []
    for n in model.graph.node:  # ONNX graphs are topologically sorted
        if reached.intersection(n.input):
            reached.update(n.output)
            if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in weights:
                names.append(n.name)
    return names


# Names of the shared constants of the int8 copy's graph (:func:`quantize_int8_per_token` adds them once).
_INT8_EPS, _INT8_INV127, _INT8_ZP_ROW, _INT8_ONE = "int8_eps", "int8_inv127", "int8_zp_row", "int8_one"
_INT8_ZP_U8, _INT8_ZP_S8, _INT8_AXIS1, _INT8_ZERO, _INT8_LAST = "int8_zp_u8", "int8_zp_s8", "int8_axis1", "int8_zero", "int8_last"


def _per_token_matmul(g: onnx.GraphProto, node: onnx.NodeProto, weight: np.ndarray) -> list[onnx.NodeProto]:
    """Nodes computing ``node`` (``x @ weight``) in int8: per-row symmetric scales for ``x``, per-column for ``weight``.

    ``x [..., K]`` is viewed as rows of K; each row's scale is its largest magnitude / 127, so a
    row's codes depend on that row alone (on no other chunk of the batch, nor other frames of the
    chunk). The row is coded as uint8 around 128 and ``weight`` as int8 around 0, so onnxruntime's
    ``MatMulIntegerToFloat`` runs its u8s8 kernels (VNNI) and applies the columns' scales as it
    writes; a ``Mul`` applies the rows'. The output keeps ``x``'s leading dimensions.
    """
    k, m = weight.shape
    sw = np.maximum(np.abs(weight).max(axis=0), 1e-12) / 127.0
    p = node.name.strip("/").replace("/", "_") + "_int8"
    g.initializer.extend([
        numpy_helper.from_array(np.clip(np.round(weight / sw), -127, 127).astype(np.int8), f"{p}_w"),
        numpy_helper.from_array(sw.astype(np.float32), f"{p}_w_scale"),
        numpy_helper.from_array(np.array([-1, k], np.int64), f"{p}_rows"),
        numpy_helper.from_array(np.array([m], np.int64), f"{p}_cols"),
    ])
    x, out = node.input[0], node.output[0]

    def op(kind: str, inputs: list[str], name: str, **attrs: object) -> onnx.NodeProto:
        return helper.make_node(kind, inputs, [f"{p}_{name}"], name=f"{p}_{name}", **attrs)

    nodes = [
        op("Shape", [x], "shape"),
        op("Reshape", [x, f"{p}_rows"], "x"),
        op("Abs", [f"{p}_x"], "abs"),
        op("ReduceMax", [f"{p}_abs"], "absmax", axes=[1], keepdims=0),
        op("Max", [f"{p}_absmax", _INT8_EPS], "absmax_pos"),
        op("Mul", [f"{p}_absmax_pos", _INT8_INV127], "scale"),
        op("Shape", [f"{p}_scale"], "n_rows"),
        op("Expand", [_INT8_ZP_ROW, f"{p}_n_rows"], "zp"),
        op("QuantizeLinear", [f"{p}_x", f"{p}_scale", f"{p}_zp"], "codes", axis=0),
        # onnxruntime's fused u8s8 GEMM with the columns' scales applied in its epilogue (one pass fewer than
        # MatMulInteger, Cast, Mul); then each row's own scale
        op("MatMulIntegerToFloat", [f"{p}_codes", f"{p}_w", _INT8_ONE, f"{p}_w_scale", _INT8_ZP_U8, _INT8_ZP_S8],
           "cols_scaled", domain="com.microsoft"),
        op("Unsqueeze", [f"{p}_scale", _INT8_AXIS1], "row_scale"),
        op("Mul", [f"{p}_cols_scaled", f"{p}_row_scale"], "y"),
        op("Slice", [f"{p}_shape", _INT8_ZERO, _INT8_LAST], "lead"),
        op("Concat", [f"{p}_lead", f"{p}_cols"], "out_shape", axis=0),
    ]
    nodes.append(helper.make_node("Reshape", [f"{p}_y", f"{p}_out_shape"], [out], name=f"{p}_out"))
    return nodes


# A choice of linear layers to leave in float32 in the int8 copy (:func:`first_block_attention`): the first block's
# attention projections. Their input is the convolutions' output plus the positional embedding, whose frames carry
# a few large entries, so one scale per frame codes the rest coarsely. Kept in float32 (5 folds x 3 seeds, ``python
# -m bench.int8_accuracy --keep-float ...``, README "int8"), the copy moves cross-validated UA by -0.001 clean and
# -0.005 / -0.001 at 20 / 10 dB SNR, against -0.005 and -0.010 / -0.012 with every layer in int8, but the daemon
# no longer holds 96 streams on two cores (`bench.daemon`), so the shipped copy quantizes every layer.
FIRST_BLOCK_ATTENTION = re.compile(r"/blocks\.0/(qkv|out)/")


def first_block_attention(model: onnx.ModelProto) -> list[str]:
    """The :func:`encoder_matmuls` of the first block's attention (:data:`FIRST_BLOCK_ATTENTION`)."""
    return [n for n in encoder_matmuls(model) if FIRST_BLOCK_ATTENTION.search(n)]


def quantize_int8_per_token(model_path: Path, output: Path, keep_float: Iterable[str] = ()) -> onnx.ModelProto:
    """The CPU int8 copy of ``model_path``: the encoder's linear layers in int8, each input row scaled on its own.

    Each of :func:`encoder_matmuls` becomes :func:`_per_token_matmul`: weights int8 per output
    channel, and each frame's input quantized symmetrically with its own scale when it runs.
    onnxruntime's own dynamic quantizer scales a MatMul's whole input at once, so a chunk's codes
    depended on whatever other chunks shared its batch: in the daemon, one stream's probabilities
    moved with the other streams' audio. Per row, a chunk's embedding is what it is alone, to float
    rounding (``python -m bench.int8_encoder``'s batch-dependence column). On an x86 CPU with VNNI
    it encodes a chunk 1.6-2x as fast as float32 in batches of 8 (``python -m bench.int8_encoder``);
    ``python -m bench.int8_accuracy`` measures what it costs in cross-validated UA (-0.005). The log-mel
    front end, the convolutions, attention's products of activations, the moments and the classify
    half stay float32; the metadata is carried over.

    ``keep_float`` names linear layers (of :func:`encoder_matmuls`) to leave in float32: a layer
    whose input rows hold a few large outliers loses the small entries to the row's one scale.
    :func:`first_block_attention` is the measured choice (:data:`FIRST_BLOCK_ATTENTION`); the shipped
    copy keeps none. A name that is not one of them is a ValueError naming those that are.
    """
    model = float32_weights(onnx.load(str(model_path)))
    ensure_node_names(model)
    g = model.graph
    linear = encoder_matmuls(model)
    if not linear:
        raise ValueError(f"{model_path} has no encoder linear layers behind a {CHUNKS_INPUT!r} input to quantize "
                         "(the int8 copy is for chunked models)")
    keep = set(keep_float)
    if unknown := sorted(keep - set(linear)):
        raise ValueError(f"keep_float names {', '.join(unknown)}, not linear layers of {model_path}'s encoder "
                         f"(those are: {', '.join(linear)})")
    targets = set(linear) - keep
    if not targets:
        raise ValueError(f"keep_float keeps every linear layer of {model_path}'s encoder in float32: nothing to quantize")
    weights = {i.name: i for i in g.initializer}  # float32 (float32_weights took the Casts out)
    g.initializer.extend([
        numpy_helper.from_array(np.array(1e-12, np.float32), _INT8_EPS),
        numpy_helper.from_array(np.array(1 / 127, np.float32), _INT8_INV127),
        numpy_helper.from_array(np.array(1.0, np.float32), _INT8_ONE),
        numpy_helper.from_array(np.array([128], np.uint8), _INT8_ZP_ROW),
        numpy_helper.from_array(np.array(128, np.uint8), _INT8_ZP_U8),
        numpy_helper.from_array(np.array(0, np.int8), _INT8_ZP_S8),
        numpy_helper.from_array(np.array([1], np.int64), _INT8_AXIS1),
        numpy_helper.from_array(np.array([0], np.int64), _INT8_ZERO),
        numpy_helper.from_array(np.array([-1], np.int64), _INT8_LAST),
    ])
    nodes: list[onnx.NodeProto] = []
    for n in g.node:
        if n.name in targets:
            nodes += _per_token_matmul(g, n, numpy_helper.to_array(weights[n.input[1]]).astype(np.float32))
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    used = {i for n in g.node for i in n.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, str(output))
    return model

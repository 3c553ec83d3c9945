"""Build TensorRT plans from the served ONNX and cache them beside it, keyed by GPU and TensorRT version.

A plan is only valid for the GPU model, compute capability and TensorRT
version that built it, so the key holds all three (plus precision, batch
range, window length and the ONNX content hash); a plan whose key differs is
never loaded, a new one is built next to it (``model.<key>.plan`` + a JSON
sidecar holding the key and the model metadata).

Precision by TensorRT major version (:func:`build_strategy`):

- TensorRT 10: weakly typed network, ``BuilderFlag.FP16`` / ``BuilderFlag.INT8``
  with an entropy calibrator; the frontend layers are pinned to fp32 with
  ``OBEY_PRECISION_CONSTRAINTS``.
- TensorRT 11: the flags and calibrators are gone and every network is
  strongly typed, so precision is written into the ONNX first
  (:mod:`engine.precision`: an fp16 copy, or a Q/DQ copy from calibration audio)
  and the network is created with ``STRONGLY_TYPED``.

Imports tensorrt and cuda-python lazily: this module imports (and its pure
functions run) on machines without either.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.audio import SAMPLE_RATE
from contract.checksums import sha256_of
from contract.model_io import CHUNKS_INPUT, INPUT_NAME, WINDOW_EMBEDDINGS_INPUT
from engine.interface import BackendUnavailable, EngineError, ModelInfo

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_MAX_BATCH = 32
WORKSPACE_BYTES = 2 << 30
CALIBRATION_BATCH = 8


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or BackendUnavailable saying it is not installed."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(
            "TensorRT is not installed: install it with pip install 'ser[gpu]' on a machine with an NVIDIA GPU "
            "(or use --backend onnxruntime)"
        ) from exc
    return trt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except EngineError:
        return False
    return True


def trt_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError as exc:
        raise EngineError(f"cannot read the TensorRT version {version!r}") from exc


def build_strategy(trt_version: str, precision: str) -> str:
    """``"builder-flags"`` (TensorRT <= 10: weak typing, flags, calibrator) or ``"strongly-typed"`` (>= 11)."""
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    major = trt_major(trt_version)
    if major < 10:
        raise EngineError(f"TensorRT {trt_version} is too old; ser needs TensorRT 10 or newer")
    return "strongly-typed" if major >= 11 else "builder-flags"


@dataclass(frozen=True)
class PlanKey:
    """Everything a plan depends on; any difference means a different plan file."""

    gpu_name: str
    compute_capability: str
    trt_version: str
    precision: str
    max_batch: int
    samples: int
    onnx_sha256: str
    calibration: str = ""

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def plan_paths(onnx_path: Path, key: PlanKey) -> tuple[Path, Path]:
    """``(model.<digest>.plan, model.<digest>.json)`` beside the ONNX."""
    base = f"{onnx_path.with_suffix('').name}.{key.digest()}"
    return onnx_path.with_name(base + ".plan"), onnx_path.with_name(base + ".json")


def cached_plan(onnx_path: Path, key: PlanKey) -> Path | None:
    """The cached plan for ``key``, if both files exist and the sidecar records exactly this key."""
    plan, sidecar = plan_paths(onnx_path, key)
    if not (plan.is_file() and sidecar.is_file()):
        return None
    try:
        recorded = json.loads(sidecar.read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return plan if recorded == asdict(key) else None


def write_sidecar(sidecar: Path, key: PlanKey, metadata: dict[str, str], strategy: str, seconds: float) -> None:
    doc = {"key": asdict(key), "strategy": strategy, "build_seconds": round(seconds, 1), "metadata": metadata}
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, sidecar)


def read_sidecar(plan: Path) -> dict[str, Any]:
    sidecar = plan.with_name(plan.name[: -len(plan.suffix)] + ".json")
    try:
        return json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise EngineError(f"{plan}: its sidecar {sidecar.name} is missing or unreadable ({exc}); rebuild the plan") from exc


def plan_key(onnx_path: Path, precision: str, max_batch: int, samples: int, trt_version: str, calibration: str = "") -> PlanKey:
    from engine.cuda_memory import current_gpu

    gpu = current_gpu()
    return PlanKey(gpu.name, gpu.compute_capability, trt_version, precision, int(max_batch), int(samples), sha256_of(onnx_path), calibration)


def ensure_plan(
    onnx_path: Path,
    metadata: dict[str, str],
    samples: int,
    precision: str = "fp32",
    max_batch: int = DEFAULT_MAX_BATCH,
    calibration_dir: str | Path | None = None,
    rebuild: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """The cached plan for this GPU/TensorRT/precision, building it first when missing or stale."""
    trt = import_tensorrt()
    if max_batch < 1:
        raise EngineError(f"max batch must be at least 1, got {max_batch}")
    strategy = build_strategy(trt.__version__, precision)
    windows = None
    calib = ""
    if precision == "int8":
        if calibration_dir is None:
            raise EngineError("int8 needs calibration audio: pass --calibration DIR (a folder of speech clips)")
        from engine.calibration import calibration_windows, fingerprint

        windows = calibration_windows(calibration_dir, window_samples=samples, sample_rate=int(metadata.get("sample_rate", SAMPLE_RATE)))
        calib = fingerprint(windows)
    key = plan_key(onnx_path, precision, max_batch, samples, trt.__version__, calib)
    plan, sidecar = plan_paths(onnx_path, key)
    if not rebuild and cached_plan(onnx_path, key) is not None:
        log(f"tensorrt: using cached plan {plan.name} ({key.gpu_name}, sm {key.compute_capability}, TensorRT {key.trt_version}, {precision})")
        return plan
    log(f"tensorrt: building {precision} plan for {key.gpu_name} (sm {key.compute_capability}) with TensorRT {key.trt_version} [{strategy}] ...")
    start = time.perf_counter()
    source = onnx_path
    if strategy == "strongly-typed" and precision != "fp32":
        source = typed_onnx(onnx_path, precision, windows)
    blob = build_serialized(trt, source, precision, strategy, max_batch, samples, windows, log)
    tmp = plan.with_name(plan.name + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, plan)
    write_sidecar(sidecar, key, metadata, strategy, time.perf_counter() - start)
    log(f"tensorrt: wrote {plan} ({plan.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.0f} s")
    return plan


def typed_onnx(onnx_path: Path, precision: str, windows: np.ndarray | None) -> Path:
    """Write the fp16 or Q/DQ copy of the ONNX that a strongly typed build consumes."""
    try:
        import onnx

        from engine import precision as prec
    except ImportError as exc:
        raise EngineError("building fp16/int8 plans on TensorRT 11 needs the onnx package: pip install onnx") from exc
    out = onnx_path.with_name(f"{onnx_path.with_suffix('').name}.{precision}.onnx")
    if precision == "fp16":
        onnx.save(prec.to_fp16(onnx.load(str(onnx_path))), str(out))
    else:
        assert windows is not None
        prec.quantize_qdq(onnx_path, out, windows)
    return out


def parse_onnx(trt: Any, builder: Any, onnx_path: Path, strongly_typed: bool) -> Any:
    flags = 0
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed and flag is not None:  # TensorRT 11 accepts and ignores it: typing is always strong there
        flags |= 1 << int(flag)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt.Logger(trt.Logger.WARNING))
    ok = parser.parse_from_file(str(onnx_path))
    if not ok:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT's ONNX parser rejects {onnx_path}: {errors}")
    return network, parser


def pin_frontend_fp32(trt: Any, network: Any, onnx_path: Path, first_layer: bool = False) -> int:
    """Constrain the layers that came from frontend nodes to fp32 (weakly typed builds only).

    With ``first_layer`` (int8 builds) the first convolution is pinned too, as
    :func:`engine.precision.quantize_qdq` keeps it float in the strongly typed
    route: in int8 it causes nearly all of the quantization error.
    TensorRT names a parsed layer after its ONNX node (sometimes with a
    suffix) and, from 10.x on, records the node in ``layer.metadata``; both
    are matched. Returns how many layers were pinned.
    """
    import onnx

    from engine.onnx_graph import first_layer_nodes
    from engine.precision import fp32_region

    model = onnx.load(str(onnx_path), load_external_data=False)
    region = fp32_region(model) | (first_layer_nodes(model) if first_layer else set())
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        label = f"{layer.name} {getattr(layer, 'metadata', '') or ''}"
        if not any(node and node in label for node in region):
            continue
        if layer.type in (trt.LayerType.SHAPE, trt.LayerType.CONSTANT) or not _float_outputs(trt, layer):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype == trt.float32:
                layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def _float_outputs(trt: Any, layer: Any) -> bool:
    return any(layer.get_output(j).dtype in (trt.float32, trt.float16) for j in range(layer.num_outputs))


def build_serialized(
    trt: Any,
    onnx_path: Path,
    precision: str,
    strategy: str,
    max_batch: int,
    samples: int,
    windows: np.ndarray | None,
    log: Callable[[str], None],
) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = strategy == "strongly-typed"
    network, _parser = parse_onnx(trt, builder, onnx_path, strongly_typed)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    for name, shapes in profile_shapes(network, samples, max_batch, onnx_path).items():
        profile.set_shape(name, *shapes)
    config.add_optimization_profile(profile)
    calibrator = None
    if not strongly_typed and precision != "fp32":
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.INT8)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.FP16)  # layers int8 cannot take fall back to fp16, not fp32
            assert windows is not None
            if network.get_input(0).name != INPUT_NAME or network.num_inputs != 1:
                raise EngineError(f"{onnx_path}: the TensorRT 10 int8 calibrator feeds whole windows; a chunked model needs TensorRT 11 (Q/DQ)")
            calib_profile = builder.create_optimization_profile()
            calib_profile.set_shape(INPUT_NAME, *[(CALIBRATION_BATCH, samples)] * 3)
            config.set_calibration_profile(calib_profile)
            calibrator = make_calibrator(trt, windows, onnx_path.with_suffix(".int8-calibration.cache"))
            config.int8_calibrator = calibrator
        pinned = pin_frontend_fp32(trt, network, onnx_path, first_layer=precision == "int8")
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        log(f"tensorrt: {pinned} frontend{' and first-conv' if precision == 'int8' else ''} layers pinned to fp32")
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise EngineError(f"TensorRT failed to build a {precision} plan from {onnx_path} (see the TensorRT log above)")
    return bytes(blob)


def profile_shapes(network: Any, samples: int, max_batch: int, onnx_path: Path) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shape of every network input.

    A whole-window model: windows are always exactly ``samples`` long (5 s);
    only the batch varies, 1..max_batch. A chunked model has two independent
    inputs in one profile, each batch from 0 (TensorRT runs empty tensors, so
    one half runs while the other input is empty): up to ``max_batch * K``
    chunks and ``max_batch`` windows of K embeddings.
    """
    opt = min(max_batch, 8)
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if CHUNKS_INPUT not in names:
        return {INPUT_NAME: ((1, samples), (opt, samples), (max_batch, samples))}
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    info = ModelInfo.from_metadata(meta, onnx_path)
    k, c, d = info.geometry.chunks_per_window, info.geometry.chunk_samples, info.embedding_dim
    return {
        CHUNKS_INPUT: ((0, c), (opt, c), (max_batch * k, c)),
        WINDOW_EMBEDDINGS_INPUT: ((0, k, d), (opt, k, d), (max_batch, k, d)),
    }


def make_calibrator(trt: Any, windows: np.ndarray, cache_path: Path) -> Any:
    """A TensorRT 10 ``IInt8EntropyCalibrator2`` feeding calibration windows in batches of CALIBRATION_BATCH."""
    from engine.cuda_memory import HostDeviceBuffer, Stream

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            usable = len(windows) - len(windows) % CALIBRATION_BATCH or len(windows)
            self.batches = [windows[i : i + CALIBRATION_BATCH] for i in range(0, usable, CALIBRATION_BATCH)]
            self.buffer = HostDeviceBuffer(CALIBRATION_BATCH * windows.shape[1])
            self.stream = Stream()

        def get_batch_size(self) -> int:
            return CALIBRATION_BATCH

        def get_batch(self, names: list[str]) -> list[int] | None:
            if not self.batches:
                return None
            chunk = self.batches.pop(0)
            if len(chunk) < CALIBRATION_BATCH:  # pad a short final batch by repetition
                chunk = np.resize(chunk, (CALIBRATION_BATCH, chunk.shape[1]))
            self.buffer.to_device(np.ascontiguousarray(chunk, dtype=np.float32), self.stream)
            self.stream.synchronize()
            return [self.buffer.device]

        def read_calibration_cache(self) -> bytes | None:
            return None  # the plan cache already keys on the calibration data; always calibrate afresh

        def write_calibration_cache(self, cache: bytes) -> None:
            cache_path.write_bytes(bytes(cache))

    return Calibrator()

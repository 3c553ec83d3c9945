"""TensorRT backend: runs the cached plan of an ONNX model (building it when missing) on a CUDA stream.

Device and page-locked host buffers are allocated once (for a few windows,
growing by doubling up to the plan's max batch, never shrinking) and reused
by every call; tensors are bound by name and run with ``execute_async_v3``
(TensorRT 10 and 11). Buffers come from cuda-python (see
:mod:`engine.cuda_memory` for why not torch or pycuda). One engine object is
driven by one thread (the daemon's inference thread).

Imports tensorrt and cuda-python lazily; without them ``load`` raises
EngineError("TensorRT is not installed ...").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from engine.base import INPUT_NAME, OUTPUT_NAME, Engine, EngineError, ModelInfo
from engine.tensorrt_build import DEFAULT_MAX_BATCH, ensure_plan, import_tensorrt, read_sidecar

log = logging.getLogger(__name__)


class TensorRTEngine(Engine):
    name = "tensorrt"
    device = "cuda"

    def __init__(self, path: Path, info: ModelInfo, plan: Path, trt: Any, engine: Any, precision: str) -> None:
        from engine.cuda_memory import HostDeviceBuffer, Stream

        super().__init__(path, info)
        self.plan = plan
        self.precision = precision
        self._trt = trt
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise EngineError(f"{plan}: TensorRT could not create an execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        if INPUT_NAME not in names or OUTPUT_NAME not in names:
            raise EngineError(f"{plan}: plan has tensors {names}, expected {INPUT_NAME!r} and {OUTPUT_NAME!r}")
        for name in (INPUT_NAME, OUTPUT_NAME):
            if engine.get_tensor_dtype(name) != trt.float32:
                raise EngineError(f"{plan}: tensor {name!r} is {engine.get_tensor_dtype(name)}, expected float32")
        lo, _opt, hi = engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self.samples = int(hi[1])
        if int(lo[1]) != self.samples:
            raise EngineError(f"{plan}: plan takes {lo[1]}..{hi[1]} samples; ser plans take one window length")
        self.max_batch = int(hi[0])
        self.classes = len(info.labels)
        self._stream = Stream()
        start = min(self.max_batch, 8)
        self._input = HostDeviceBuffer(start * self.samples)
        self._output = HostDeviceBuffer(start * self.classes)
        self._bind()

    @classmethod
    def load(
        cls,
        path: Path,
        device: str = "auto",
        precision: str = "fp32",
        max_batch: int = DEFAULT_MAX_BATCH,
        calibration: str | Path | None = None,
        rebuild: bool = False,
        **_: Any,
    ) -> TensorRTEngine:
        """Load ``model.onnx`` (via its cached plan) or a ``.plan`` with its JSON sidecar."""
        if device == "cpu":
            raise EngineError("TensorRT runs on NVIDIA GPUs only; device 'cpu' asked for")
        trt = import_tensorrt()
        path = Path(path)
        if path.suffix == ".plan":
            plan = path
            sidecar = read_sidecar(plan)
            metadata = dict(sidecar.get("metadata") or {})
            precision = str(sidecar.get("key", {}).get("precision", precision))
        else:
            from engine.backends.ort import read_model_info

            info = read_model_info(path)  # validates inputs, outputs and metadata before any GPU work
            metadata = _info_to_metadata(info)
            plan = ensure_plan(path, metadata, info.window_samples, precision, max_batch, calibration, rebuild, log=log.info)
        info = ModelInfo.from_metadata(metadata, path)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        try:
            engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        except OSError as exc:
            raise EngineError(f"cannot read TensorRT plan {plan}: {exc}") from exc
        if engine is None:
            raise EngineError(f"{plan}: TensorRT cannot deserialize this plan (built for another GPU or TensorRT version?)")
        return cls(path, info, plan, trt, engine, precision)

    def _bind(self) -> None:
        self._context.set_tensor_address(INPUT_NAME, self._input.device)
        self._context.set_tensor_address(OUTPUT_NAME, self._output.device)

    def _run(self, waveforms: np.ndarray) -> np.ndarray:
        batch, samples = waveforms.shape
        if samples != self.samples:
            raise ValueError(f"this TensorRT plan takes windows of {self.samples} samples, got {samples}")
        if batch > self.max_batch:
            return np.concatenate([self._run(waveforms[i : i + self.max_batch]) for i in range(0, batch, self.max_batch)])
        grow = max(batch, 1 << (batch - 1).bit_length())  # double, so a growing batch reallocates rarely
        moved = self._input.ensure(min(grow, self.max_batch) * self.samples)
        moved |= self._output.ensure(min(grow, self.max_batch) * self.classes)
        if moved:
            self._bind()
        self._input.to_device(waveforms, self._stream)
        if not self._context.set_input_shape(INPUT_NAME, (batch, samples)):
            raise EngineError(f"{self.plan}: TensorRT rejects input shape {(batch, samples)}")
        if not self._context.execute_async_v3(self._stream.ptr):
            raise EngineError(f"{self.plan}: TensorRT execution failed")
        self._output.to_host(batch * self.classes, self._stream)
        self._stream.synchronize()
        return self._output.host[: batch * self.classes].reshape(batch, self.classes).copy()

    def describe(self) -> str:
        return f"tensorrt {self.precision} on cuda ({self.plan.name}, {self.info.variant}, batch 1..{self.max_batch})"

    def close(self) -> None:
        self._input.free()
        self._output.free()
        self._stream.close()


def _info_to_metadata(info: ModelInfo) -> dict[str, str]:
    import json

    meta = {k: str(v) for k, v in info.extra.items()}
    meta.update(
        labels=json.dumps(list(info.labels)),
        sample_rate=str(info.sample_rate),
        window_s=repr(info.window_s),
        variant=info.variant,
        name=info.name,
    )
    return meta

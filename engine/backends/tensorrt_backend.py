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

from contract.model_io import (
    CHUNKS_INPUT,
    EMBEDDINGS_OUTPUT,
    INPUT_NAME,
    OUTPUT_NAME,
    WINDOW_EMBEDDINGS_INPUT,
)
from engine.interface import BackendUnavailable, Engine, EngineError, ModelInfo
from engine.model_file import read_model_info
from engine.tensorrt_build import DEFAULT_MAX_BATCH, ensure_plan, import_tensorrt, read_sidecar

log = logging.getLogger(__name__)


class TensorRTEngine(Engine):
    """One plan, one execution context; whole-window plans bind waveform/probs, chunked plans all four tensors.

    A chunked plan holds both halves in one profile whose batch dimensions
    start at 0: to run one half, the other input is given shape 0 (empty
    tensors are legal in TensorRT) and its output is left unread.
    """

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
        want = (CHUNKS_INPUT, EMBEDDINGS_OUTPUT, WINDOW_EMBEDDINGS_INPUT, OUTPUT_NAME) if self.chunked else (INPUT_NAME, OUTPUT_NAME)
        if sorted(names) != sorted(want):
            raise EngineError(f"{plan}: plan has tensors {names}, expected {list(want)}")
        for name in want:
            if engine.get_tensor_dtype(name) != trt.float32:
                raise EngineError(f"{plan}: tensor {name!r} is {engine.get_tensor_dtype(name)}, expected float32")
        g = self.geometry
        # Elements per batch row of every tensor, and the batch row limits from the plan's profile.
        self._row = {OUTPUT_NAME: len(info.labels)}
        if self.chunked:
            self._row.update({CHUNKS_INPUT: g.chunk_samples, EMBEDDINGS_OUTPUT: self.embedding_dim,
                              WINDOW_EMBEDDINGS_INPUT: g.chunks_per_window * self.embedding_dim})
            self._check_profile(CHUNKS_INPUT, (g.chunk_samples,))
            self._check_profile(WINDOW_EMBEDDINGS_INPUT, (g.chunks_per_window, self.embedding_dim))
            self.max_batch = int(engine.get_tensor_profile_shape(WINDOW_EMBEDDINGS_INPUT, 0)[2][0])
            self._max_rows = {CHUNKS_INPUT: int(engine.get_tensor_profile_shape(CHUNKS_INPUT, 0)[2][0]),
                              WINDOW_EMBEDDINGS_INPUT: self.max_batch}
        else:
            self._row[INPUT_NAME] = info.window_samples
            self._check_profile(INPUT_NAME, (info.window_samples,))
            self.max_batch = int(engine.get_tensor_profile_shape(INPUT_NAME, 0)[2][0])
            self._max_rows = {INPUT_NAME: self.max_batch}
        self.samples = info.window_samples
        self.classes = len(info.labels)
        self._stream = Stream()
        start = min(self.max_batch, 8)
        self._buffers = {name: HostDeviceBuffer(max(1, start * row)) for name, row in self._row.items()}
        self._bind()

    def _check_profile(self, name: str, row_shape: tuple[int, ...]) -> None:
        lo, _opt, hi = self._engine.get_tensor_profile_shape(name, 0)
        if tuple(int(x) for x in lo[1:]) != row_shape or tuple(int(x) for x in hi[1:]) != row_shape:
            raise EngineError(f"{self.plan}: plan takes {name!r} of {tuple(lo)}..{tuple(hi)}; this model needs rows of {row_shape}")

    @classmethod
    def load(
        cls,
        path: Path,
        device: str = "auto",
        precision: str = "fp32",
        max_batch: int = DEFAULT_MAX_BATCH,
        calibration: str | Path | None = None,
        rebuild: bool = False,
    ) -> TensorRTEngine:
        """Load ``model.onnx`` (via its cached plan) or a ``.plan`` with its JSON sidecar."""
        if device == "cpu":
            raise BackendUnavailable("TensorRT runs on NVIDIA GPUs only; device 'cpu' asked for")
        trt = import_tensorrt()
        path = Path(path)
        if path.suffix == ".plan":
            plan = path
            sidecar = read_sidecar(plan)
            metadata = dict(sidecar.get("metadata") or {})
            precision = str(sidecar.get("key", {}).get("precision", precision))
        else:
            info = read_model_info(path)  # validates inputs, outputs and metadata before any GPU work
            metadata = info.metadata()
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
        for name, buf in self._buffers.items():
            self._context.set_tensor_address(name, buf.device)

    def _execute(self, feeds: dict[str, np.ndarray], output: str, rows_out: int) -> np.ndarray:
        """Copy ``feeds`` in (every input of the plan; empty ones have 0 rows), run, copy ``output`` back."""
        grow = max(1, 1 << (max(rows_out, 1) - 1).bit_length())  # double, so a growing batch reallocates rarely
        moved = False
        for name, x in feeds.items():
            moved |= self._buffers[name].ensure(max(1, max(len(x), grow) * self._row[name]))
        moved |= self._buffers[output].ensure(max(1, grow * self._row[output]))
        if moved:
            self._bind()
        for name, x in feeds.items():
            if len(x):
                self._buffers[name].to_device(x, self._stream)
            if not self._context.set_input_shape(name, x.shape):
                raise EngineError(f"{self.plan}: TensorRT rejects input {name!r} of shape {x.shape}")
        if not self._context.execute_async_v3(self._stream.ptr):
            raise EngineError(f"{self.plan}: TensorRT execution failed")
        n = rows_out * self._row[output]
        self._buffers[output].to_host(n, self._stream)
        self._stream.synchronize()
        return self._buffers[output].host[:n].reshape(rows_out, self._row[output]).copy()

    def _split(self, fn: Any, x: np.ndarray, limit: int) -> np.ndarray | None:
        """Run ``fn`` in pieces of at most ``limit`` rows when ``x`` is larger than the plan allows."""
        if len(x) <= limit:
            return None
        return np.concatenate([fn(x[i : i + limit]) for i in range(0, len(x), limit)])

    def _run(self, waveforms: np.ndarray) -> np.ndarray:
        batch, samples = waveforms.shape
        if samples != self.samples:
            raise ValueError(f"this TensorRT plan takes windows of {self.samples} samples, got {samples}")
        split = self._split(self._run, waveforms, self.max_batch)
        if split is not None:
            return split
        return self._execute({INPUT_NAME: waveforms}, OUTPUT_NAME, batch)

    def _encode(self, chunks: np.ndarray) -> np.ndarray:
        split = self._split(self._encode, chunks, self._max_rows[CHUNKS_INPUT])
        if split is not None:
            return split
        g = self.geometry
        empty = np.zeros((0, g.chunks_per_window, self.embedding_dim), np.float32)
        return self._execute({CHUNKS_INPUT: chunks, WINDOW_EMBEDDINGS_INPUT: empty}, EMBEDDINGS_OUTPUT, len(chunks))

    def _classify(self, window_embeddings: np.ndarray) -> np.ndarray:
        split = self._split(self._classify, window_embeddings, self.max_batch)
        if split is not None:
            return split
        empty = np.zeros((0, self.chunk_samples), np.float32)
        feeds = {CHUNKS_INPUT: empty, WINDOW_EMBEDDINGS_INPUT: window_embeddings}
        return self._execute(feeds, OUTPUT_NAME, len(window_embeddings))

    def describe(self) -> str:
        return f"tensorrt {self.precision} on cuda ({self.plan.name}, {self.info.variant}, batch 1..{self.max_batch})"

    def close(self) -> None:
        for buf in self._buffers.values():
            buf.free()
        self._stream.close()


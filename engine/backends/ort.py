"""onnxruntime backend: CPU provider with tuned threads, CUDA provider with I/O binding where present."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.base import INPUT_NAME, OUTPUT_NAME, Engine, EngineError, ModelInfo


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise EngineError("onnxruntime is not installed: pip install 'ser[cpu]' (or 'ser[gpu]' for CUDA)") from exc
    return ort


def read_model_info(path: Path) -> ModelInfo:
    """Metadata of an ONNX file without building an inference session."""
    ort = _import_ort()
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise EngineError(f"{path} is not a valid ONNX model: {exc}") from exc
    return _check_session(sess, path)


def _check_session(sess: Any, path: Path) -> ModelInfo:
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = {o.name: o for o in sess.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise EngineError(
            f"{path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
            f"found inputs {sorted(inputs)} and outputs {sorted(outputs)}"
        )
    if len(inputs[INPUT_NAME].shape) != 2:
        raise EngineError(f"{path}: input {INPUT_NAME!r} must be [batch, samples], is {inputs[INPUT_NAME].shape}")
    meta = sess.get_modelmeta().custom_metadata_map
    return ModelInfo.from_metadata(dict(meta), path)


class OrtEngine(Engine):
    """onnxruntime session; on CUDA, input and output are bound so each moves across PCIe once."""

    name = "onnxruntime"

    def __init__(self, path: Path, info: ModelInfo, session: Any, device: str) -> None:
        super().__init__(path, info)
        self.session = session
        self.device = device
        self._ort = _import_ort()

    @classmethod
    def load(cls, path: Path, device: str = "auto", threads: int | None = None, **_: Any) -> OrtEngine:
        ort = _import_ort()
        available = ort.get_available_providers()
        want_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
        if device == "cuda" and not want_cuda:
            raise EngineError("device 'cuda' asked for, but this onnxruntime has no CUDAExecutionProvider (install ser[gpu])")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One inference thread in the daemon owns the session; intra-op threads use the cores.
        opts.intra_op_num_threads = threads or int(os.environ.get("SER_ORT_THREADS", "0")) or (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle intra-op threads sleep instead of spinning: the daemon calls the engine in bursts, and
        # spinning workers burned ~40% of a 2-core CPU between batches that other streams' I/O needed.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[Any] = ["CPUExecutionProvider"]
        if want_cuda:
            providers = [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "EXHAUSTIVE"}), "CPUExecutionProvider"]
        try:
            sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:
            raise EngineError(f"{path} is not a valid ONNX model: {exc}") from exc
        info = _check_session(sess, path)
        on_cuda = "CUDAExecutionProvider" in sess.get_providers()
        return cls(path, info, sess, "cuda" if on_cuda else "cpu")

    def _run(self, waveforms: np.ndarray) -> np.ndarray:
        if self.device == "cuda":
            binding = self.session.io_binding()
            binding.bind_cpu_input(INPUT_NAME, waveforms)
            binding.bind_output(OUTPUT_NAME, "cpu")
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: waveforms})[0]

"""onnxruntime backend: CPU provider with tuned threads, CUDA provider with I/O binding where present.

Runs both model kinds: whole-window (``waveform -> probs``) and chunked (two
independent sub-graphs in one graph, ``chunks -> embeddings`` and
``window_embeddings -> probs``). onnxruntime wants every graph input fed on
every run, so one half runs with a zero-size array for the other's input and
only its own output requested (measured to cost nothing).
"""

from __future__ import annotations

import os
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
from engine.model_file import check_graph


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailable("onnxruntime is not installed: pip install 'ser[cpu]' (or 'ser[gpu]' for CUDA)") from exc
    return ort


def _check_session(sess: Any, path: Path) -> ModelInfo:
    inputs = {i.name: len(i.shape) for i in sess.get_inputs()}
    outputs = {o.name for o in sess.get_outputs()}
    return check_graph(inputs, outputs, dict(sess.get_modelmeta().custom_metadata_map), path)


class OrtEngine(Engine):
    """onnxruntime session; on CUDA, input and output are bound so each moves across PCIe once."""

    name = "onnxruntime"

    def __init__(self, path: Path, info: ModelInfo, session: Any, device: str) -> None:
        super().__init__(path, info)
        self.session = session
        self.device = device
        self._ort = _import_ort()

    @classmethod
    def load(cls, path: Path, device: str = "auto", threads: int | None = None) -> OrtEngine:
        """A session on CUDA when asked for or available (``auto``), else the CPU; ``threads`` intra-op threads."""
        ort = _import_ort()
        available = ort.get_available_providers()
        want_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
        if device == "cuda" and not want_cuda:
            raise BackendUnavailable("device 'cuda' asked for, but this onnxruntime has no CUDAExecutionProvider (install ser[gpu])")
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
        return self._session_run(OUTPUT_NAME, {INPUT_NAME: waveforms})

    def _encode(self, chunks: np.ndarray) -> np.ndarray:
        empty = np.zeros((0, self.chunks_per_window, self.embedding_dim), dtype=np.float32)
        return self._session_run(EMBEDDINGS_OUTPUT, {CHUNKS_INPUT: chunks, WINDOW_EMBEDDINGS_INPUT: empty})

    def _classify(self, window_embeddings: np.ndarray) -> np.ndarray:
        empty = np.zeros((0, self.chunk_samples), dtype=np.float32)
        return self._session_run(OUTPUT_NAME, {CHUNKS_INPUT: empty, WINDOW_EMBEDDINGS_INPUT: window_embeddings})

    def _session_run(self, output: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One output for these feeds; on CUDA through I/O binding, so each array crosses PCIe once."""
        if self.device == "cuda":
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            binding.bind_output(output, "cpu")
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        return self.session.run([output], feeds)[0]

"""onnxruntime backend: CPU provider with tuned threads, CUDA provider with I/O binding where present.

Runs both model kinds: whole-window (``waveform -> probs``) and chunked (two
independent sub-graphs in one graph, ``chunks -> embeddings`` and
``window_embeddings -> probs``). onnxruntime wants every graph input fed on
every run, so one half runs with a zero-size array for the other's input and
only its own output requested (measured to cost nothing).

On CPU it serves a model's int8 copy (``NAME.int8.onnx`` beside it, written by
``ser-build-engine --cpu-int8``: the encoder's linear layers with int8 weights per
channel, each input row quantized with its own scale as it runs;
``engine.precision.quantize_int8_per_token``) where that pays: by default when the
copy exists and the CPU has int8 dot-product instructions (x86 VNNI, Arm dotprod),
where it encodes a chunk 1.6-1.8x as fast (``python -m bench.int8_encoder``) for a
measured change of cross-validated UA of -0.002 (``python -m bench.int8_accuracy``).
Without them onnxruntime's int8 kernels gain less and may saturate, so the float
model is served. ``int8=True`` / ``False`` decide instead.
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

INT8_SUFFIX = ".int8.onnx"
# /proc/cpuinfo flags of instructions that multiply-accumulate int8 in one step (onnxruntime's fast int8 GEMMs)
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})


def int8_copy_path(path: Path) -> Path:
    """Where a model's CPU int8 copy lives: beside it, ``NAME.int8.onnx``."""
    return path.with_name(path.stem + INT8_SUFFIX)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``) from ``cpuinfo``; empty where it cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def cpu_has_int8_dot(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies int8 with dot-product instructions (False where that cannot be read)."""
    return bool(INT8_DOT_FLAGS & cpu_flags(cpuinfo))


def _pick_file(path: Path, int8: bool | None, on_cuda: bool) -> Path:
    """The file to run: ``path`` or its int8 copy (``int8``: None decides by the CPU; see the module docstring)."""
    copy = int8_copy_path(path)
    if int8 is True:
        if on_cuda:
            raise EngineError("int8=true serves the int8 copy on onnxruntime's CPU provider; this session is on CUDA "
                              "(use device cpu, or TensorRT with --precision int8 on a GPU)")
        if not copy.is_file():
            raise EngineError(f"int8=true, but {path} has no int8 copy at {copy}: "
                              f"write it with ser-build-engine {path} --cpu-int8")
        return copy
    if int8 is None and not on_cuda and copy.is_file() and cpu_has_int8_dot():
        return copy
    return path


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
    def load(cls, path: Path, device: str = "auto", threads: int | None = None, int8: bool | None = None) -> OrtEngine:
        """A session on CUDA when asked for or available (``auto``), else the CPU; ``threads`` intra-op threads;
        ``int8``: serve the model's int8 copy on CPU (None: where it pays, see the module docstring)."""
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
        path = _pick_file(Path(path), int8, want_cuda)
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

    @property
    def precision(self) -> str:  # type: ignore[override] - a class attribute on Engine, known per file here
        return "int8" if self.path.name.endswith(INT8_SUFFIX) else "fp32"

    def describe(self) -> str:
        kind = ", int8 copy" if self.precision == "int8" else ""
        return f"{self.name} on {self.device} ({self.path.name}, {self.info.variant}{kind})"

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

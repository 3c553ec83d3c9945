"""Shared fixtures: generated audio and a small real ONNX model that honours the engine contract."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.audio import LABELS, SAMPLE_RATE, WINDOW_S

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def tone(freq: float = 220.0, seconds: float = 1.0, sr: int = SAMPLE_RATE, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, sr)
    return path


def save_test_model(graph: Any, path: Path, name: str, extra_meta: dict[str, str] | None = None) -> Path:
    """A test graph as a checked ONNX model with the engine contract's metadata (opset 18, IR 8)."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    meta = {"labels": json.dumps(list(LABELS)), "sample_rate": str(SAMPLE_RATE), "window_s": str(WINDOW_S),
            "variant": name, "name": name, **(extra_meta or {})}
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_energy_onnx(path: Path) -> Path:
    """A tiny but real ONNX classifier (two energy features, a linear layer, softmax).

    It follows the engine contract exactly (``waveform [batch, samples]`` in,
    ``probs [batch, 6]`` out, metadata) so realtime and engine tests can run
    before or without a trained model; louder input shifts the probabilities.
    """
    from onnx import TensorProto, helper

    w = np.array([[4.0, -1.0, 0.5, 2.0, -2.0, -3.0], [2.0, 0.0, 1.0, 1.0, -1.0, -2.0]], dtype=np.float32)
    b = np.array([0.0, 0.1, 0.2, 0.3, 1.0, 0.4], dtype=np.float32)
    nodes = [
        helper.make_node("Mul", ["waveform", "waveform"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "axes"], ["power"], keepdims=1),
        helper.make_node("Abs", ["waveform"], ["absx"]),
        helper.make_node("ReduceMean", ["absx", "axes"], ["mag"], keepdims=1),
        helper.make_node("Concat", ["power", "mag"], ["feat"], axis=1),
        helper.make_node("Sqrt", ["feat"], ["feat_s"]),
        helper.make_node("MatMul", ["feat_s", "W"], ["lin"]),
        helper.make_node("Add", ["lin", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "energy",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", len(LABELS)])],
        initializer=[
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
            helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.flatten()),
            helper.make_tensor("B", TensorProto.FLOAT, b.shape, b),
        ],
    )
    return save_test_model(graph, path, "energy-test")


CHUNK_SAMPLES = SAMPLE_RATE  # the toy chunked model's geometry, as the Whisper model's: 1 s chunks ...
CHUNK_HOP_SAMPLES = SAMPLE_RATE // 2  # ... 0.5 s apart ...
CHUNKS_PER_WINDOW = 9  # ... 9 of them tile the 5 s window
CHUNK_EMBEDDING_DIM = 4


def make_chunked_onnx(path: Path) -> Path:
    """A tiny but real *chunked* ONNX model: two independent sub-graphs, as the Whisper model exports.

    ``chunks [N, 16000]`` -> ``embeddings [N, 4]`` (log energy, mean magnitude,
    zero-crossing rate, DC offset of each chunk) and ``window_embeddings [B, 9, 4]``
    -> ``probs [B, 6]`` (mean over the 9 chunks, a linear layer, softmax), with
    the chunk metadata. The features are order-sensitive enough that a chunk
    encoded from the wrong samples changes the probabilities.
    """
    from onnx import TensorProto, helper

    d = CHUNK_EMBEDDING_DIM
    w = np.array(
        [[0.8, -0.2, 0.1, 0.5, -0.4, -0.6], [3.0, 0.0, 1.0, 1.0, -1.0, -2.0], [-2.0, 4.0, 1.0, -3.0, 0.5, 2.0], [5.0, -5.0, 2.0, 0.0, 1.0, -1.0]],
        dtype=np.float32,
    )
    b = np.array([0.0, 0.1, 0.2, 0.3, 1.0, 0.4], dtype=np.float32)
    n = CHUNK_SAMPLES
    nodes = [
        # encoder: per-chunk features
        helper.make_node("Mul", ["chunks", "chunks"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "ax1"], ["power"], keepdims=1),
        helper.make_node("Add", ["power", "eps"], ["power_e"]),
        helper.make_node("Log", ["power_e"], ["logpow"]),
        helper.make_node("Abs", ["chunks"], ["absx"]),
        helper.make_node("ReduceMean", ["absx", "ax1"], ["mag"], keepdims=1),
        helper.make_node("Slice", ["chunks", "s0", "e0", "ax1"], ["head"]),
        helper.make_node("Slice", ["chunks", "s1", "e1", "ax1"], ["tail"]),
        helper.make_node("Mul", ["head", "tail"], ["prod"]),
        helper.make_node("Less", ["prod", "zero"], ["crosses"]),
        helper.make_node("Cast", ["crosses"], ["crosses_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["crosses_f", "ax1"], ["zcr"], keepdims=1),
        helper.make_node("ReduceMean", ["chunks", "ax1"], ["dc"], keepdims=1),
        helper.make_node("Concat", ["logpow", "mag", "zcr", "dc"], ["embeddings"], axis=1),
        # head: pool the window's chunks, linear, softmax
        helper.make_node("ReduceMean", ["window_embeddings", "ax1"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["lin"]),
        helper.make_node("Add", ["lin", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "chunked-energy",
        [
            helper.make_tensor_value_info("chunks", TensorProto.FLOAT, ["n", n]),
            helper.make_tensor_value_info("window_embeddings", TensorProto.FLOAT, ["batch", CHUNKS_PER_WINDOW, d]),
        ],
        [
            helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["n", d]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", len(LABELS)]),
        ],
        initializer=[
            helper.make_tensor("ax1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("s0", TensorProto.INT64, [1], [0]),
            helper.make_tensor("e0", TensorProto.INT64, [1], [n - 1]),
            helper.make_tensor("s1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("e1", TensorProto.INT64, [1], [n]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-6]),
            helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.flatten()),
            helper.make_tensor("B", TensorProto.FLOAT, b.shape, b),
        ],
    )
    extra = {
        "chunk_samples": str(CHUNK_SAMPLES),
        "chunk_hop_samples": str(CHUNK_HOP_SAMPLES),
        "chunks_per_window": str(CHUNKS_PER_WINDOW),
        "embedding_dim": str(d),
    }
    return save_test_model(graph, path, "chunked-test", extra)


def make_nan_onnx(path: Path) -> Path:
    """A real whole-window model whose output is NaN for windows with a negative mean (a sqrt of it).

    Stands for a model that goes non-finite on some inputs; windows with a
    mean >= 0 get ordinary probabilities.
    """
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("ReduceMean", ["waveform", "axes"], ["mean"], keepdims=1),
        helper.make_node("Sqrt", ["mean"], ["root"]),
        helper.make_node("Mul", ["root", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "nan-on-negative-mean",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", len(LABELS)])],
        initializer=[
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
            helper.make_tensor("W", TensorProto.FLOAT, [1, len(LABELS)], [1.0, 2.0, 3.0, 0.0, -1.0, 0.5]),
        ],
    )
    return save_test_model(graph, path, "nan-test")


@pytest.fixture(scope="session")
def chunked_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx", reason="onnx is needed to build the test model (pip install 'ser[train]')")
    return make_chunked_onnx(tmp_path_factory.mktemp("models") / "chunked.onnx")


@pytest.fixture(scope="session")
def nan_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx", reason="onnx is needed to build the test model (pip install 'ser[train]')")
    return make_nan_onnx(tmp_path_factory.mktemp("models") / "nan.onnx")


@pytest.fixture(scope="session")
def energy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx", reason="onnx is needed to build the test model (pip install 'ser[train]')")
    return make_energy_onnx(tmp_path_factory.mktemp("models") / "energy.onnx")


@pytest.fixture(scope="session")
def engine(energy_model: Path) -> Any:
    """The energy model on onnxruntime, warmed up: what the daemon's own tests run on."""
    from engine.registry import load_engine

    eng = load_engine(energy_model, backend="onnxruntime")
    eng.warmup()
    return eng


class ResultCollector:
    """A scheduler's ``on_results``: every call kept in order (one per batch), and their results together."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []
        self.results: list[Any] = []
        self.lock = threading.Lock()

    def __call__(self, results: list[Any]) -> None:
        with self.lock:
            self.calls.append(list(results))
            self.results.extend(results)

    def _wait(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.results) >= n:
                    return
            time.sleep(0.01)
        raise AssertionError(f"only {len(self.results)} of {n} results in {timeout} s")

    def wait(self, n: int, timeout: float = 10.0) -> list[Any]:
        """The results, once at least ``n`` have come."""
        self._wait(n, timeout)
        with self.lock:
            return list(self.results)

    def wait_calls(self, n: int, timeout: float = 20.0) -> list[list[Any]]:
        """The calls (batches), once at least ``n`` results have come."""
        self._wait(n, timeout)
        with self.lock:
            return list(self.calls)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (a fresh clone has no shared corpora)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    return exe

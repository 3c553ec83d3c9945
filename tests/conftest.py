"""Shared fixtures: generated audio and a small real ONNX model that honours the engine contract."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from training.audio import LABELS, SAMPLE_RATE, WINDOW_S

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


def make_energy_onnx(path: Path) -> Path:
    """A tiny but real ONNX classifier (two energy features, a linear layer, softmax).

    It follows the engine contract exactly (``waveform [batch, samples]`` in,
    ``probs [batch, 6]`` out, metadata) so realtime and engine tests can run
    before or without a trained model; louder input shifts the probabilities.
    """
    import onnx
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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    meta = {
        "labels": json.dumps(list(LABELS)),
        "sample_rate": str(SAMPLE_RATE),
        "window_s": str(WINDOW_S),
        "variant": "energy-test",
        "name": "energy-test",
    }
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def energy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx", reason="onnx is needed to build the test model (pip install 'ser[train]')")
    return make_energy_onnx(tmp_path_factory.mktemp("models") / "energy.onnx")


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

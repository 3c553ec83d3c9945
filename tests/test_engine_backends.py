"""Backend selection and its errors: auto order, onnxruntime, torch, and clear messages for bad model files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from engine.base import EngineError, load_engine
from engine.signals import speech_like
from engine.tensorrt_build import tensorrt_available
from training.audio import LABELS, WINDOW_SAMPLES

pytest.importorskip("onnxruntime")


def test_auto_picks_onnxruntime_cpu_and_logs_it(energy_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    if tensorrt_available():
        pytest.skip("TensorRT is installed: auto would pick it")
    with caplog.at_level(logging.INFO, logger="engine.base"):
        eng = load_engine(energy_model)
    assert eng.name == "onnxruntime"
    import onnxruntime as ort

    want = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    assert eng.device == want and eng.session.get_providers()[0] == ("CUDAExecutionProvider" if want == "cuda" else "CPUExecutionProvider")
    assert "onnxruntime" in caplog.text
    assert eng.labels == LABELS and eng.sample_rate == 16_000 and eng.window_samples == WINDOW_SAMPLES
    eng.warmup((1, 4))
    probs = eng.infer(speech_like(3, WINDOW_SAMPLES))
    assert probs.shape == (3, 6) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_single_waveform_is_a_batch_of_one(energy_model: Path) -> None:
    eng = load_engine(energy_model, backend="onnxruntime", device="cpu")
    assert eng.infer(np.zeros(WINDOW_SAMPLES, np.float32)).shape == (1, 6)
    with pytest.raises(ValueError, match="batch, samples"):
        eng.infer(np.zeros((1, 2, 3), np.float32))


def test_missing_model_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="not found.*nope.onnx"):
        load_engine(tmp_path / "nope.onnx")


def test_truncated_onnx_names_the_file(energy_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(energy_model.read_bytes()[: energy_model.stat().st_size // 2])
    with pytest.raises(EngineError, match="truncated.onnx is not a valid ONNX model"):
        load_engine(bad)


def test_wrong_input_name_is_rejected(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["audio"], ["probs"])],
        "wrong",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["b", 6])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["b", 6])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path = tmp_path / "wrong.onnx"
    onnx.save(model, str(path))
    with pytest.raises(EngineError, match="wrong.onnx: expected input 'waveform'"):
        load_engine(path)


def test_missing_metadata_is_rejected(energy_model: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(energy_model))
    del model.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(model, str(path))
    with pytest.raises(EngineError, match="bare.onnx: model metadata lacks 'labels'"):
        load_engine(path, backend="onnxruntime")


def test_unknown_backend(energy_model: Path) -> None:
    with pytest.raises(EngineError, match="unknown backend 'cuda'"):
        load_engine(energy_model, backend="cuda")


def test_tensorrt_backend_without_tensorrt(energy_model: Path) -> None:
    if tensorrt_available():
        pytest.skip("TensorRT is installed here")
    with pytest.raises(EngineError, match="TensorRT is not installed"):
        load_engine(energy_model, backend="tensorrt")


def test_checkpoint_needs_torch_backend(tmp_path: Path) -> None:
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"not really")
    with pytest.raises(EngineError, match="m.ckpt is a training checkpoint; backend 'onnxruntime' needs an ONNX"):
        load_engine(ckpt, backend="onnxruntime")


# --- torch backend -------------------------------------------------------------------------------


def test_torch_backend_rejects_onnx(energy_model: Path) -> None:
    pytest.importorskip("torch")
    with pytest.raises(EngineError, match="energy.onnx is an ONNX model; the torch backend runs"):
        load_engine(energy_model, backend="torch")


def test_corrupt_checkpoint_names_the_file(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(b"PK\x03\x04 this is not a zip" * 20)
    with pytest.raises(EngineError, match="corrupt.ckpt is corrupt or not a torch file"):
        load_engine(bad)


def test_foreign_checkpoint_names_the_file(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(EngineError, match="foreign.ckpt is not a ser-train checkpoint"):
        load_engine(path, backend="torch")


def test_torch_backend_matches_exported_onnx(tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("torch")
    from tests.engine_fixtures import exported_compact

    onnx_path = exported_compact(tmp_path_factory.getbasetemp())
    torch_eng = load_engine(onnx_path.with_suffix(".ckpt"))  # auto + .ckpt -> torch
    ort_eng = load_engine(onnx_path, backend="onnxruntime", device="cpu")
    assert torch_eng.name == "torch" and torch_eng.device == "cpu"
    assert torch_eng.info.variant == ort_eng.info.variant == "compact"
    assert torch_eng.labels == ort_eng.labels and torch_eng.window_samples == ort_eng.window_samples
    x = speech_like(5, WINDOW_SAMPLES, seed=11)
    np.testing.assert_allclose(torch_eng.infer(x), ort_eng.infer(x), atol=1e-4)

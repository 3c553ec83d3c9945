"""Backend selection and its errors: auto order, onnxruntime, torch, and clear messages for bad model files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from contract.audio import LABELS, WINDOW_SAMPLES
from engine.interface import EngineError
from engine.registry import load_engine
from engine.signals import speech_like
from engine.tensorrt_build import tensorrt_available

pytest.importorskip("onnxruntime")


def test_auto_picks_onnxruntime_cpu_and_logs_it(energy_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    if tensorrt_available():
        pytest.skip("TensorRT is installed: auto would pick it")
    with caplog.at_level(logging.INFO, logger="engine.registry"):
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


@pytest.mark.slow
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


# --- the streaming interface: encode_chunks + classify, for both model kinds -----------------------


def _windows(n: int, seed: int = 3) -> np.ndarray:
    return speech_like(n, WINDOW_SAMPLES, seed=seed)


def test_chunked_model_describes_its_geometry(chunked_model: Path) -> None:
    eng = load_engine(chunked_model, backend="onnxruntime", device="cpu")
    assert eng.chunked
    assert (eng.chunk_samples, eng.chunk_hop_samples, eng.chunks_per_window, eng.embedding_dim) == (16_000, 8_000, 9, 4)
    assert (eng.chunks_per_window - 1) * eng.chunk_hop_samples + eng.chunk_samples == eng.window_samples


def test_chunked_infer_is_encode_then_classify_by_hand(chunked_model: Path) -> None:
    eng = load_engine(chunked_model, backend="onnxruntime", device="cpu")
    eng.warmup((1, 3))
    x = _windows(3)
    chunks = np.stack([w[i * 8000 : i * 8000 + 16000] for w in x for i in range(9)])
    emb = eng.encode_chunks(chunks)
    assert emb.shape == (27, 4) and emb.dtype == np.float32
    probs = eng.classify(emb.reshape(3, 9, 4))
    assert probs.shape == (3, 6) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(eng.infer(x), probs, atol=1e-6)
    # each chunk is encoded on its own: encoding them one by one gives the same embeddings
    np.testing.assert_allclose(np.concatenate([eng.encode_chunks(c[None]) for c in chunks]), emb, atol=1e-5)
    # and the head depends on which chunks it gets: a window of shifted chunks scores differently
    assert np.abs(eng.classify(np.roll(emb, 4, axis=0).reshape(3, 9, 4)) - probs).max() > 1e-4


def test_whole_window_model_is_the_k1_case(energy_model: Path) -> None:
    eng = load_engine(energy_model, backend="onnxruntime", device="cpu")
    assert not eng.chunked
    assert (eng.chunk_samples, eng.chunk_hop_samples, eng.chunks_per_window, eng.embedding_dim) == (WINDOW_SAMPLES, 0, 1, 6)
    x = _windows(2)
    emb = eng.encode_chunks(x)  # a chunk is the window, its embedding the probabilities
    np.testing.assert_allclose(emb, eng.infer(x), atol=1e-7)
    np.testing.assert_allclose(eng.classify(emb[:, None, :]), emb)


@pytest.mark.parametrize("model", ["energy_model", "chunked_model"])
def test_streaming_calls_check_their_inputs(model: str, request: pytest.FixtureRequest) -> None:
    eng = load_engine(request.getfixturevalue(model), backend="onnxruntime", device="cpu")
    assert eng.encode_chunks(np.zeros((0, eng.chunk_samples), np.float32)).shape == (0, eng.embedding_dim)
    assert eng.classify(np.zeros((0, eng.chunks_per_window, eng.embedding_dim), np.float32)).shape == (0, 6)
    with pytest.raises(ValueError, match="chunks of shape"):
        eng.encode_chunks(np.zeros((2, eng.chunk_samples + 1), np.float32))
    with pytest.raises(ValueError, match="window embeddings of shape"):
        eng.classify(np.zeros((2, eng.chunks_per_window + 1, eng.embedding_dim), np.float32))


def test_non_finite_output_is_an_engine_error_naming_the_rows(nan_model: Path) -> None:
    """Finding 5: a NaN output is caught in the engine, for the rows that hold it, not passed on."""
    from engine.interface import NonFiniteOutput

    eng = load_engine(nan_model, backend="onnxruntime", device="cpu")
    good, bad = np.full(WINDOW_SAMPLES, 0.1, np.float32), np.full(WINDOW_SAMPLES, -0.1, np.float32)
    assert np.isfinite(eng.infer(np.stack([good, good]))).all()
    for call in (eng.infer, eng.encode_chunks):
        with pytest.raises(NonFiniteOutput, match="NaN/inf in 2 of 3 rows") as exc:
            call(np.stack([bad, good, bad]))
        assert exc.value.rows == [0, 2] and np.isfinite(exc.value.output[1]).all()
        assert isinstance(exc.value, EngineError)
    with pytest.raises(NonFiniteOutput):
        eng.classify(np.full((1, 1, 6), np.nan, np.float32))


def test_wrong_output_shape_is_an_engine_error(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from tests.conftest import make_energy_onnx

    model = onnx.load(str(make_energy_onnx(tmp_path / "e.onnx")))
    model.graph.node.append(helper.make_node("Slice", ["probs_full", "s", "e", "ax"], ["probs"]))
    for node in model.graph.node:
        if node.op_type == "Softmax":
            node.output[0] = "probs_full"
    model.graph.initializer.extend([helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("s", 0), ("e", 5), ("ax", 1))])
    path = tmp_path / "five.onnx"
    onnx.save(model, str(path))
    eng = load_engine(path, backend="onnxruntime", device="cpu")
    with pytest.raises(EngineError, match=r"five.onnx: infer returned shape \(2, 5\), expected \(2, 6\)"):
        eng.infer(_windows(2))


@pytest.mark.parametrize(
    ("change", "words"),
    [({"chunks_per_window": "8"}, "do not tile a window"), ({"embedding_dim": None}, "lacks 'embedding_dim'"),
     ({"chunk_hop_samples": "x"}, "malformed")],
)
def test_bad_chunk_metadata_is_rejected_at_load(chunked_model: Path, tmp_path: Path, change: dict, words: str) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(chunked_model))
    meta = {p.key: p.value for p in model.metadata_props}
    for k, v in change.items():
        meta.pop(k) if v is None else meta.__setitem__(k, v)
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    path = tmp_path / "bad-chunks.onnx"
    onnx.save(model, str(path))
    with pytest.raises(EngineError, match=words):
        load_engine(path, backend="onnxruntime")


def test_torch_backend_runs_a_chunked_module_like_onnxruntime(chunked_model: Path) -> None:
    """The torch backend's two halves, on a module with the lead's interface (chunking, encode_chunks,
    classify returning logits), computing what the toy ONNX computes."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from contract.geometry import ChunkGeometry
    from training.torch_backend import TorchEngine

    graph = onnx.load(str(chunked_model)).graph
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}

    class Chunked(torch.nn.Module):
        geometry, embedding_dim = ChunkGeometry(80000, 16000, 8000), 4

        def encode_chunks(self, x):
            logpow = torch.log((x * x).mean(1, keepdim=True) + 1e-6)
            zcr = ((x[:, :-1] * x[:, 1:]) < 0).float().mean(1, keepdim=True)
            return torch.cat([logpow, x.abs().mean(1, keepdim=True), zcr, x.mean(1, keepdim=True)], 1)

        def classify(self, e):
            return e.mean(1) @ weights["W"] + weights["B"]

    ort_eng = load_engine(chunked_model, backend="onnxruntime", device="cpu")
    eng = TorchEngine(chunked_model, ort_eng.info, Chunked(), "cpu", False)
    assert eng.chunked and eng.chunks_per_window == 9
    x = _windows(2, seed=8)
    np.testing.assert_allclose(eng.infer(x), ort_eng.infer(x), atol=1e-5)
    chunks = x[:, :16000]
    np.testing.assert_allclose(eng.encode_chunks(chunks), ort_eng.encode_chunks(chunks), atol=1e-4)


def test_backend_options_are_checked_against_each_load_signature(energy_model: Path) -> None:
    """No **kwargs swallows a typo: an option no backend declares, or one the asked backend lacks, is an error."""
    from engine.registry import registered

    assert "threads" in registered()["onnxruntime"].options()
    assert load_engine(energy_model, backend="onnxruntime", device="cpu", threads=1).name == "onnxruntime"
    with pytest.raises(EngineError, match="no backend takes the option 'thread'"):
        load_engine(energy_model, device="cpu", thread=1)
    with pytest.raises(EngineError, match="backend 'onnxruntime' takes no option 'precision'"):
        load_engine(energy_model, backend="onnxruntime", device="cpu", precision="fp16")
    # auto hands each backend only what it declares: TensorRT's precision does not reach onnxruntime.
    assert load_engine(energy_model, device="cpu", precision="fp16").name == "onnxruntime"


def test_auto_skips_an_unavailable_backend_but_not_a_broken_file(tmp_path: Path, energy_model: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import registry
    from engine.interface import BackendUnavailable

    class Absent(registry.Backend):
        def engine_class(self):
            raise BackendUnavailable("not installed here")

    monkeypatch.setattr(registry, "BUILTIN", (Absent("ghost", "nowhere:Nothing", (".onnx",)), *registry.BUILTIN))
    assert load_engine(energy_model, device="cpu").name == "onnxruntime"  # ghost skipped with its reason
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(EngineError, match="not a valid ONNX model"):
        load_engine(bad, device="cpu")
    with pytest.raises(EngineError, match="unknown backend 'cuda'"):
        load_engine(energy_model, backend="cuda")

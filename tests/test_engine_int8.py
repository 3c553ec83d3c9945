"""The CPU int8 copy of a model: how it is written (engine.precision, ser-build-engine --cpu-int8), which file
onnxruntime serves (engine.backends.ort: the copy where the CPU has int8 dot products, or as asked), and the
copy of the default model shipped in the package.

No figure here depends on the CPU: how far int8 moves the probabilities does (VNNI or not), so it is
measured by ``python -m bench.int8_accuracy`` and ``bench.int8_encoder``, not asserted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from contract.audio import LABELS, WINDOW_SAMPLES
from engine.interface import EngineError
from engine.shipped import default_model_path, shipped_models
from engine.signals import speech_like

ort_backend = pytest.importorskip("engine.backends.ort")
pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx", reason="onnx writes the int8 copy (pip install 'ser[train]')")

from engine.backends.ort import OrtEngine, cpu_has_int8_dot, int8_copy_path  # noqa: E402
from engine.precision import encoder_matmuls, first_block_attention, quantize_int8_per_token  # noqa: E402

SHIPPED_COPY = int8_copy_path(default_model_path())


@pytest.fixture(scope="module")
def model_and_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped default model, copied, with its int8 copy written beside it by the function ser-build-engine uses."""
    d = tmp_path_factory.mktemp("int8")
    path = d / "model.onnx"
    shutil.copy(default_model_path(), path)
    quantize_int8_per_token(path, int8_copy_path(path))
    return path


def test_the_copy_quantizes_only_the_encoders_matmuls_and_keeps_the_metadata(model_and_copy: Path) -> None:
    src, copy = onnx.load(str(model_and_copy)), onnx.load(str(int8_copy_path(model_and_copy)))
    ops = [n.op_type for n in copy.graph.node]
    assert ops.count("MatMulIntegerToFloat") == len(encoder_matmuls(src)) > 0
    assert "MatMul" not in [n.op_type for n in copy.graph.node if n.name in set(encoder_matmuls(src))]
    assert {(p.key, p.value) for p in src.metadata_props} <= {(p.key, p.value) for p in copy.metadata_props}
    assert int8_copy_path(model_and_copy).stat().st_size < model_and_copy.stat().st_size


def test_layers_kept_in_float_stay_matmuls_and_an_unknown_name_is_refused(model_and_copy: Path, tmp_path: Path) -> None:
    src = onnx.load(str(model_and_copy))
    linear = encoder_matmuls(src)
    keep = first_block_attention(src)
    assert keep == ["/encoder/blocks.0/qkv/MatMul", "/encoder/blocks.0/out/MatMul"]
    out = tmp_path / "kept.onnx"
    copy = quantize_int8_per_token(model_and_copy, out, keep_float=keep)
    assert [n.op_type for n in copy.graph.node].count("MatMulIntegerToFloat") == len(linear) - len(keep)
    assert [n.op_type for n in copy.graph.node if n.name in set(keep)] == ["MatMul"] * len(keep)
    assert OrtEngine.load(out, device="cpu", int8=False).encode_chunks(
        speech_like(2, 16000, seed=3).astype(np.float32)).shape[0] == 2
    with pytest.raises(ValueError, match=r"not linear layers.*those are: /encoder"):
        quantize_int8_per_token(model_and_copy, tmp_path / "x.onnx", keep_float=["/encoder/blocks.9/qkv/MatMul"])
    with pytest.raises(ValueError, match="nothing to quantize"):
        quantize_int8_per_token(model_and_copy, tmp_path / "y.onnx", keep_float=linear)


def test_a_chunks_int8_embedding_does_not_depend_on_the_chunks_batched_with_it(model_and_copy: Path) -> None:
    """Each frame is quantized with its own scale: a chunk encodes alike alone or beside loud chunks.

    onnxruntime's own dynamic quantizer takes one scale per call, so a chunk's embedding moved with its batch
    (a daemon stream's output with other streams' audio; ``python -m bench.int8_encoder``, batch dependence);
    per frame it moves by float rounding only.
    """
    from contract.audio import load_audio
    from realtime.sources import demo_clip_path

    q = OrtEngine.load(model_and_copy, device="cpu", int8=True)
    audio = load_audio(demo_clip_path())
    n, hop, k = q.chunk_samples, q.chunk_hop_samples, q.chunks_per_window
    chunks = np.stack([audio[i : i + n] for i in range(0, len(audio) - n + 1, hop)]).astype(np.float32)
    windows = np.arange(len(chunks) - k + 1)[:, None] + np.arange(k)[None, :]
    alone = np.concatenate([q.encode_chunks(chunks[i : i + 1]) for i in range(len(chunks))])
    loud = (speech_like(7, n, seed=1) * 8).astype(np.float32)
    beside = np.concatenate([q.encode_chunks(np.concatenate([chunks[i : i + 1], loud]))[:1] for i in range(len(chunks))])
    np.testing.assert_allclose(q.classify(beside[windows]), q.classify(alone[windows]), atol=5e-3)
    np.testing.assert_allclose(q.classify(q.encode_chunks(chunks)[windows]), q.classify(alone[windows]), atol=5e-3)


def test_onnxruntime_serves_the_copy_as_asked_and_keeps_the_contract(model_and_copy: Path) -> None:
    f = OrtEngine.load(model_and_copy, device="cpu", int8=False)
    q = OrtEngine.load(model_and_copy, device="cpu", int8=True)
    assert f.path == model_and_copy and q.path == int8_copy_path(model_and_copy)
    assert "int8 copy" in q.describe() and "int8" not in f.describe()
    assert (q.precision, f.precision) == ("int8", "fp32")
    assert (q.info.variant, q.chunks_per_window, q.embedding_dim) == (f.info.variant, f.chunks_per_window, f.embedding_dim)
    x = speech_like(3, WINDOW_SAMPLES, seed=4)
    p = q.infer(x)
    assert p.shape == (3, len(LABELS)) and np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-4)
    emb = q.encode_chunks(x[:, : q.chunk_samples])
    assert emb.shape == (3, q.embedding_dim) and np.all(np.isfinite(emb))


@pytest.mark.parametrize("has_dot", [True, False])
def test_by_default_the_copy_is_served_only_where_the_cpu_has_int8_dot_products(
    model_and_copy: Path, monkeypatch: pytest.MonkeyPatch, has_dot: bool
) -> None:
    monkeypatch.setattr(ort_backend, "cpu_has_int8_dot", lambda: has_dot)
    eng = OrtEngine.load(model_and_copy, device="cpu")
    assert eng.path == (int8_copy_path(model_and_copy) if has_dot else model_and_copy)


def test_without_a_copy_the_float_model_is_served_and_asking_for_int8_names_the_command(tmp_path: Path,
                                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "alone.onnx"
    shutil.copy(default_model_path(), path)
    monkeypatch.setattr(ort_backend, "cpu_has_int8_dot", lambda: True)
    assert OrtEngine.load(path, device="cpu").path == path
    with pytest.raises(EngineError, match=r"no int8 copy .*ser-build-engine .* --cpu-int8"):
        OrtEngine.load(path, device="cpu", int8=True)


@pytest.mark.parametrize(("flags", "expected"), [
    ("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n", True),
    ("flags\t\t: fpu sse2 avx2 fma\n", False),  # AVX2 alone: onnxruntime's int8 kernels gain less and may saturate
    ("Features\t: fp asimd asimddp\n", True),  # Arm with dot products
    ("", False),
])
def test_int8_dot_products_are_read_from_cpuinfo(tmp_path: Path, flags: str, expected: bool) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\n" + flags)
    assert cpu_has_int8_dot(info) is expected
    assert cpu_has_int8_dot(tmp_path / "absent") is False


def test_ser_build_engine_writes_the_copy_of_an_existing_onnx(tmp_path: Path) -> None:
    from training.build_engine import main as build_main

    path = tmp_path / "m.onnx"
    shutil.copy(default_model_path(), path)
    result = CliRunner().invoke(build_main, [str(path), "--cpu-int8"])
    assert result.exit_code == 0, result.output
    assert int8_copy_path(path).is_file() and "top class agrees on" in result.output
    assert OrtEngine.load(path, device="cpu", int8=True).path == int8_copy_path(path)
    result = CliRunner().invoke(build_main, [str(path)])
    assert result.exit_code != 0 and "--cpu-int8" in result.output
    keep = ["--int8-keep-float", "/encoder/blocks.0/qkv/MatMul", "--int8-keep-float", "/encoder/blocks.0/out/MatMul"]
    result = CliRunner().invoke(build_main, [str(path), "--cpu-int8", *keep])
    assert result.exit_code == 0, result.output
    assert [n.op_type for n in onnx.load(str(int8_copy_path(path))).graph.node].count("MatMulIntegerToFloat") == 10
    result = CliRunner().invoke(build_main, [str(path), "--cpu-int8", "--int8-keep-float", "/encoder/blocks.7/qkv/MatMul"])
    assert result.exit_code != 0 and "not linear layers" in result.output
    result = CliRunner().invoke(build_main, [str(path), *keep])
    assert result.exit_code != 0 and "add --cpu-int8" in result.output


def test_a_whole_window_model_gets_no_int8_copy(tmp_path: Path) -> None:
    """The compact model has no chunk encoder: a copy would be the float model under an int8 name."""
    from training.build_engine import main as build_main

    path = tmp_path / "compact.onnx"
    shutil.copy(default_model_path().with_name("compact.onnx"), path)
    with pytest.raises(ValueError, match="chunked models"):
        quantize_int8_per_token(path, int8_copy_path(path))
    result = CliRunner().invoke(build_main, [str(path), "--cpu-int8"])
    assert result.exit_code != 0 and "chunked models" in result.output and not int8_copy_path(path).exists()


def test_the_default_models_int8_copy_is_shipped_and_is_no_model_of_its_own() -> None:
    assert SHIPPED_COPY.is_file(), f"{SHIPPED_COPY} is not shipped (ser-build-engine {default_model_path()} --cpu-int8)"
    assert SHIPPED_COPY.stat().st_size <= 25 << 20
    names = shipped_models()
    assert "default" in names and not any(n.endswith(".int8") for n in names)
    src, copy = onnx.load(str(default_model_path())), onnx.load(str(SHIPPED_COPY))
    assert {(p.key, p.value) for p in src.metadata_props} <= {(p.key, p.value) for p in copy.metadata_props}
    assert sum(n.op_type == "MatMulIntegerToFloat" for n in copy.graph.node) == len(encoder_matmuls(src))

"""Export of a ser-train checkpoint: parity with torch, metadata, TensorRT-safe graph, ser-build-engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from contract.audio import LABELS, WINDOW_SAMPLES  # noqa: E402
from engine.model_file import read_model_info  # noqa: E402
from engine.onnx_graph import TENSORRT_OPS, frontend_nodes, unsupported_ops, uses_external_data  # noqa: E402
from engine.signals import speech_like  # noqa: E402
from engine.tensorrt_build import tensorrt_available  # noqa: E402
from tests.engine_fixtures import exported_compact, make_checkpoint  # noqa: E402
from training.build_engine import main as build_main  # noqa: E402
from training.checkpoint import open_checkpoint  # noqa: E402
from training.export import ExportError, export_checkpoint  # noqa: E402
from training.export_window import ServingModel, parity  # noqa: E402
from training.metadata import model_metadata  # noqa: E402
from training.model import load_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def compact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    onnx_path = exported_compact(tmp_path_factory.getbasetemp())
    return onnx_path.with_suffix(".ckpt"), onnx_path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("batch", "samples"),
    [(1, WINDOW_SAMPLES), (4, WINDOW_SAMPLES), (16, WINDOW_SAMPLES), (2, 20_000), (3, 123_457)],
)
def test_onnxruntime_matches_torch(compact: tuple[Path, Path], batch: int, samples: int) -> None:
    ckpt, onnx_path = compact
    model, _ = load_checkpoint(ckpt)
    x = speech_like(batch, samples, seed=batch * 7 + samples % 11)
    with torch.inference_mode():
        ref = ServingModel(model)(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(["probs"], {"waveform": x})[0]
    assert got.shape == (batch, len(LABELS))
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    assert np.max(np.abs(got - ref)) < 1e-4


@pytest.mark.slow
def test_parity_helper_reports_small_difference(compact: tuple[Path, Path]) -> None:
    ckpt, onnx_path = compact
    model, _ = load_checkpoint(ckpt)
    diff, shapes = parity(model, onnx_path, WINDOW_SAMPLES, cases=((2, 1.0), (1, 0.5)))
    assert diff < 1e-4
    assert shapes == [(2, WINDOW_SAMPLES), (1, WINDOW_SAMPLES // 2)]


@pytest.mark.slow
def test_metadata_round_trip(compact: tuple[Path, Path]) -> None:
    _, onnx_path = compact
    info = read_model_info(onnx_path)
    assert info.labels == LABELS
    assert info.sample_rate == 16_000 and info.window_s == 5.0 and info.window_samples == WINDOW_SAMPLES
    assert info.variant == "compact" and info.name == "compact"
    assert info.extra["data"] == "ravdess+tess"
    assert json.loads(info.extra["val_metrics"]) == {"val/acc": 0.44, "val/uar": 0.41}
    assert info.extra["version"] and info.extra["export_date"].startswith("20")
    assert json.loads(info.extra["frontend"])["n_mels"] == 64


@pytest.mark.slow
def test_graph_is_single_file_dynamic_and_tensorrt_safe(compact: tuple[Path, Path]) -> None:
    _, onnx_path = compact
    model = onnx.load(str(onnx_path))
    assert not uses_external_data(model)
    assert onnx_path.stat().st_size < 10e6
    assert unsupported_ops(model) == []
    ops = {n.op_type for n in model.graph.node}
    assert ops <= TENSORRT_OPS and "STFT" not in ops and "DFT" not in ops
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_param  # batch and samples symbolic
    assert {o.name for o in model.graph.output} == {"probs"}
    front = frontend_nodes(model)
    assert any(n.op_type == "Conv" and n.name in front for n in model.graph.node)  # the DFT conv1d
    assert not any(n.op_type == "Softmax" and n.name in front for n in model.graph.node)


def test_checkpoint_without_ser_block_has_metadata(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "old.ckpt", with_extras=False)
    _model, cfg, extras = open_checkpoint(ckpt)
    meta = model_metadata(cfg, extras, name="old")
    assert extras == {}
    assert meta["data"] == "ravdess+tess"  # from cfg["choices"]["data"]
    assert meta["variant"] == "compact" and json.loads(meta["val_metrics"]) == {}


@pytest.mark.slow
def test_export_fails_beyond_tolerance(compact: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, _ = compact
    with pytest.raises(ExportError, match="differs from torch"):
        export_checkpoint(ckpt, tmp_path / "strict.onnx", tolerance=1e-12, log=lambda _m: None)


@pytest.mark.slow
def test_build_engine_cli_exports_and_reports_parity(compact: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, _ = compact
    out = tmp_path / "cli.onnx"
    result = CliRunner().invoke(build_main, [str(ckpt), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "max abs diff" in result.output and out.is_file()


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "checkpoint not found"), (b"\x00garbage" * 10, "corrupt or not a torch file")],
)
def test_build_engine_cli_bad_checkpoint(tmp_path: Path, content: bytes | None, message: str) -> None:
    ckpt = tmp_path / "bad.ckpt"
    if content is not None:
        ckpt.write_bytes(content)
    result = CliRunner().invoke(build_main, [str(ckpt), "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code != 0
    assert message in result.output and "bad.ckpt" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_build_engine_cli_without_tensorrt_says_so(compact: tuple[Path, Path]) -> None:
    if tensorrt_available():
        pytest.skip("TensorRT is installed here")
    _, onnx_path = compact
    result = CliRunner().invoke(build_main, [str(onnx_path), "--tensorrt"])
    assert result.exit_code != 0
    assert "TensorRT is not installed" in result.output

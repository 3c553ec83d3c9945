"""The live-like stream scorer (bench/accuracy.py --stream): how streams are built, which windows count, and
one small synthetic stream through the real daemon path (ser-listen --fast --once --jsonl)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from contract.audio import SAMPLE_RATE
from training.stream_eval import Segment, build_stream, pool_scores, score_stream, window_truth


def tone(seconds: float, hz: float, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (level * np.sin(2 * np.pi * hz * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def test_stream_lays_clips_out_with_pauses_gaps_and_noise() -> None:
    clips = [(tone(2.0, 200), "anger"), (tone(3.0, 300), "sad"), (tone(1.5, 250), "happy")]
    audio, segs = build_stream(clips, np.random.default_rng(0), gap_every=2, gap_s=6.0, snr_db=30.0)
    assert [s.label for s in segs] == ["anger", "sad", "happy"]
    assert all(abs((s.end - s.start) - len(c) / SAMPLE_RATE) < 1e-6 for s, (c, _) in zip(segs, clips, strict=True))
    gaps = [b.start - a.end for a, b in zip(segs, segs[1:], strict=False)]
    assert 0.3 <= gaps[0] <= 1.5 and gaps[1] == pytest.approx(6.0, abs=1e-3)  # a long gap after every 2nd clip
    assert np.max(np.abs(audio)) <= 1.0
    pause = audio[int((segs[1].end + 1) * SAMPLE_RATE) : int((segs[1].end + 5) * SAMPLE_RATE)]
    speech = audio[int(segs[1].start * SAMPLE_RATE) : int(segs[1].end * SAMPLE_RATE)]
    snr = 10 * np.log10(np.mean(speech**2) / np.mean(pause**2))
    assert 25 < snr < 36  # noise under the pauses too, about 30 dB below the speech


def test_clips_lose_their_silent_ends_in_the_stream() -> None:
    from training.stream_eval import trim

    clip = np.concatenate([np.zeros(16000, np.float32), tone(1.0, 220), 1e-5 * np.ones(8000, np.float32)])
    out = trim(clip)
    assert 1.0 <= len(out) / SAMPLE_RATE <= 1.11  # the tone and a 50 ms margin each side, no lead-in or tail


def test_which_windows_count_and_for_which_label() -> None:
    segs = [Segment(1.0, 4.0, "anger"), Segment(4.5, 6.0, "sad"), Segment(14.0, 15.0, "fear")]
    assert window_truth(0.0, 5.0, segs) == "anger"  # 3 s of anger, 0.5 s of sad
    assert window_truth(2.5, 7.5, segs) is None  # 1.5 s each: mixed
    assert window_truth(7.0, 12.0, segs) == "pause"
    assert window_truth(11.0, 16.0, segs) == "fear"  # a 1 s clip alone in its window
    preds = [{"t_start": 0.0, "t_end": 5.0, "top": "anger"}, {"t_start": 2.5, "t_end": 7.5, "top": "sad"},
             {"t_start": 7.0, "t_end": 12.0, "top": "happy"}, {"t_start": 8.0, "t_end": 13.0, "top": None},
             {"t_start": 11.0, "t_end": 16.0, "top": None}, {"type": "hello"}]
    s = score_stream(preds, segs)
    assert (s["windows"], s["scored"], s["mixed"], s["pause"], s["pause_reported"], s["scored_silent"]) == (5, 2, 1, 2, 1, 1)
    pooled = pool_scores([s, s])
    assert pooled["recall"] == {"anger": 1.0, "fear": 0.0} and pooled["ua"] == 0.5
    assert pooled["pause_reported_share"] == 0.5 and pooled["scored_silent_share"] == 0.5


@pytest.mark.slow
def test_a_small_synthetic_stream_through_the_daemon(tmp_path: Path) -> None:
    """Espeak-free: tones stand in for speech. Every prediction of the daemon lands in one of the buckets."""
    pytest.importorskip("onnxruntime")
    sf = pytest.importorskip("soundfile")
    clips = [(tone(2.5, 180 + 40 * i), lab) for i, lab in enumerate(["anger", "sad", "happy", "fear"])]
    audio, segs = build_stream(clips, np.random.default_rng(1), gap_every=2, gap_s=6.0)
    wav = tmp_path / "stream.wav"
    sf.write(wav, audio, SAMPLE_RATE, subtype="FLOAT")
    listen = Path(sys.executable).with_name("ser-listen")
    proc = subprocess.run([str(listen), "--device", str(wav), "--fast", "--once", "--jsonl", "--port", "0"],
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    preds = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    duration = len(audio) / SAMPLE_RATE
    assert len(preds) >= int((duration - 5.0) / 0.5)  # a window every hop, nothing lost
    s = score_stream(preds, segs)
    assert s["windows"] == len(preds) == s["scored"] + s["mixed"] + s["pause"]
    assert s["scored"] > 0 and s["pause"] > 0  # the 6 s gaps give windows without speech
    assert 0.0 <= pool_scores([s])["ua"] <= 1.0

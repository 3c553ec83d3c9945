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


def prediction(seq: int, t_end: float, probs: list[float], fraction: float, window_s: float = 5.0) -> dict:
    from contract.audio import LABELS

    return {"type": "prediction", "seq": seq, "t_start": max(0.0, t_end - window_s), "t_end": t_end,
            "probs": dict(zip(LABELS, probs, strict=True)), "voiced_fraction": fraction, "top": "anger"}


def test_repost_applies_the_daemons_gate_and_smoother() -> None:
    from realtime.postprocess import Smoother
    from training.stream_eval import repost, voiced_seconds

    a, b = [0.7, 0.1, 0.05, 0.05, 0.05, 0.05], [0.1, 0.1, 0.1, 0.1, 0.1, 0.5]
    preds = [prediction(2, 6.0, b, 0.3), prediction(0, 5.0, a, 0.3), prediction(1, 5.5, a, 0.05),
             prediction(3, 2.0, a, 0.3, window_s=2.0), {"type": "hello"}]
    assert voiced_seconds(preds[0]) == pytest.approx(1.5) and voiced_seconds(preds[3]) == pytest.approx(0.6)
    out = repost(preds, min_voiced_s=0.5, tau_s=1.0)
    assert [p["seq"] for p in out] == [0, 1, 2, 3]  # in window order, other messages dropped
    assert [p["voiced"] for p in out] == [True, False, True, True]  # 1.5 s, 0.25 s, 1.5 s, 0.6 s of a 2 s window
    assert out[1]["top"] is None and out[0]["top"] == "anger"
    sm = Smoother(6, 1.0)
    want = [sm.update(np.array(a), 5.0, True), sm.update(np.array(a), 5.5, False), sm.update(np.array(b), 6.0, True)]
    for p, w in zip(out, want, strict=False):
        np.testing.assert_allclose(list(p["smoothed"].values()), w)
    raw = repost(preds, min_voiced_s=0.0, tau_s=0.0)  # no gate, no smoothing: each window's own leader
    assert [p["top"] for p in raw] == ["anger", "anger", "sad", "anger"]
    assert preds[0]["top"] == "anger"  # the input is left as it was


def test_kept_streams_rescore_under_another_gate_and_smoothing(tmp_path: Path) -> None:
    from training.stream_eval import load_streams, rescore, save_stream

    segs = [Segment(0.0, 4.0, "anger"), Segment(5.0, 9.0, "sad"), Segment(30.0, 31.0, "fear")]
    anger, sad = [0.9, 0.02, 0.02, 0.02, 0.02, 0.02], [0.02, 0.02, 0.02, 0.02, 0.02, 0.9]
    preds = [prediction(i, 5.0 + 0.5 * i, anger if 5.0 + 0.5 * i < 8.0 else sad, 0.15) for i in range(12)]
    preds += [prediction(12 + i, 20.0 + 0.5 * i, anger, 0.0) for i in range(4)]  # a pause: nothing voiced
    for fold in (0, 1):
        save_stream(tmp_path / f"fold{fold}", "ravdess_01", preds, segs)
    streams = load_streams(tmp_path)
    assert [name for name, _, _ in streams] == ["fold0/ravdess_01", "fold1/ravdess_01"]
    assert streams[0][1] == preds and streams[0][2] == segs
    strict, loose = rescore(streams, 1.0, 0.0, group=1), rescore(streams, 0.5, 0.0, group=1)
    assert strict["scored_silent_share"] == 1.0 and strict["ua"] == 0.0  # 0.75 s voiced per window: all gated at 1 s
    assert loose["scored_silent_share"] == 0.0 and loose["pause_reported"] == 0
    assert set(loose["groups"]) == {"fold0", "fold1"} and loose["ua"] == pytest.approx(loose["groups"]["fold0"]["ua"])
    slow = rescore(streams, 0.5, 10.0)
    assert slow["recall"]["sad"] < loose["recall"]["sad"]  # a long time constant lags the change of emotion
    assert loose["flips"] == 2 and slow["flips"] == 0  # one change each per stream; the slow display never shows it


@pytest.mark.slow
def test_stream_windows_scored_offline_are_what_the_model_computes_on_the_stream() -> None:
    """training.stream_heads: chunks encoded once (the cache's format), any head's window probabilities from
    them, equal to the model on each window's audio (zeros before the stream's start, as the daemon reads it)."""
    torch = pytest.importorskip("torch")
    from contract.geometry import ChunkGeometry
    from training.chunk_model import WhisperChunkModel
    from training.features import ChunkEncoder
    from training.stream_heads import encode_stream, head_probs, probs_parity, window_ends, with_probs

    cfg = {"encoder": {"name": "tiny.en", "blocks": 2, "chunk_s": 1.0, "hop_s": 0.5},
           "head": {"kind": "moments", "layers": [0, 1, 2]}}
    torch.manual_seed(0)
    model = WhisperChunkModel(cfg).eval()
    with torch.no_grad():
        model.head.linear.weight.mul_(0.05)
    enc = ChunkEncoder.__new__(ChunkEncoder)  # the cache's encoder around this model's (random) weights
    enc.torch, enc.frontend, enc.encoder, enc.d, enc.batch = torch, model.frontend, model.encoder, model.d, 64
    audio, _ = build_stream([(tone(2.0, 220), "anger"), (tone(1.5, 330), "sad")], np.random.default_rng(0), gap_every=0)
    ch = ChunkGeometry()
    preds = [prediction(i, t, [1 / 6] * 6, 0.5) for i, t in enumerate(np.arange(1.0, len(audio) / SAMPLE_RATE, 0.5))]
    ends = window_ends(preds)
    sc = encode_stream(audio, ends, ch, enc)
    assert len(sc.keys) == len(set(sc.keys)) < 9 * len(ends)  # each chunk once
    probs = head_probs(model, sc, ends)
    for e, p in zip(ends, probs, strict=True):
        window = np.zeros(ch.window_samples, np.float32)
        part = audio[max(0, e - ch.window_samples) : e]
        window[ch.window_samples - len(part) :] = part
        with torch.inference_mode():
            want = torch.softmax(model(torch.from_numpy(window)[None]), -1)[0].numpy()
        np.testing.assert_allclose(p, want, atol=3e-3)  # float16 chunk statistics, as the cache stores them
    swapped = with_probs(preds, probs)
    assert probs_parity(swapped, probs) < 1e-6 and probs_parity(preds, probs) > 0.0


def test_gap_breakdown_sorts_scored_windows_by_what_they_hold() -> None:
    from bench.stream_post import gap_breakdown
    from contract.audio import LABELS

    segs = [Segment(0.0, 2.0, "anger"), Segment(2.5, 3.5, "sad"), Segment(10.0, 12.0, "happy")]

    def pred(t0: float, top: str) -> dict:
        return {"type": "prediction", "t_start": t0, "t_end": t0 + 5.0, "probs": {lab: float(lab == top) for lab in LABELS}}

    streams = [("s", [pred(-1.0, "anger"),  # anger whole and 2/3 of the speech, sad the rest: right
                      pred(8.0, "sad"),  # happy alone and whole: wrong
                      pred(9.0, "happy"),  # happy alone and whole: right
                      pred(11.0, "happy")], segs)]  # half of happy: right
    rows = {r["windows"]: r for r in gap_breakdown(streams)}
    assert rows["all scored"]["n"] == 4
    assert rows["speech 67-85 % (the rest another clip's)"]["n"] == 1 and rows["speech 67-85 % (the rest another clip's)"]["ua"] == 1.0
    assert rows["only that clip's speech, all of it"]["n"] == 2 and rows["only that clip's speech, all of it"]["ua"] == 0.5
    assert rows["clip heard: under 70 %"]["n"] == 1
    assert rows["all scored"]["ua"] == pytest.approx((1.0 + 2 / 3) / 2)

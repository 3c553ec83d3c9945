"""realtime.prediction: the per-stream post-processor and the Prediction's JSON, byte for byte what the daemon sent before."""

from __future__ import annotations

import json

import numpy as np

from contract.audio import LABELS, SAMPLE_RATE, WINDOW_SAMPLES, load_audio
from realtime import protocol
from realtime.config import load_daemon_config
from realtime.postprocess import Smoother, window_is_voiced
from realtime.prediction import PostProcessor, Prediction
from realtime.sources import demo_clip_path
from realtime.stream import Stream, StreamSettings, Window

SR = SAMPLE_RATE


def old_text(stream: Stream, smoother: Smoother, w: Window, probs: np.ndarray, now: float) -> str:
    """The daemon's ``_prediction_text`` before the Prediction dataclass (the voice gate in voiced seconds)."""
    fraction = stream.voiced_fraction(w)
    voiced = window_is_voiced(stream.voiced_seconds(w), stream.settings.post.vad_min_voiced_s)
    smoothed = smoother.update(probs, w.t_end(), voiced)
    latency = now - w.due
    msg = protocol.prediction(stream.id, w.seq, w.t_start(), w.t_end(), LABELS, probs, smoothed, voiced, fraction, latency * 1000.0)
    return protocol.dumps(msg)


def test_predictions_are_the_json_the_daemon_sent_before_voiced_and_not():
    settings = StreamSettings.from_config(load_daemon_config(["post.smoothing_tau_s=1.0"]), WINDOW_SAMPLES)
    windows: list[Window] = []
    stream = Stream("remote-7", "remote", settings, SR, 1, windows.append, LABELS)
    speech = load_audio(demo_clip_path())[: 6 * SR]
    stream.push(np.concatenate([speech, np.zeros(4 * SR, np.float32)]))  # speech, then silence: voiced and unvoiced windows
    post = PostProcessor(stream, LABELS)
    golden = Smoother(len(LABELS), 1.0)
    rng = np.random.default_rng(3)
    seen_voiced = set()
    for w in windows:
        probs = rng.dirichlet(np.ones(len(LABELS))).astype(np.float32)
        now = w.due + 0.0123 * (w.seq + 1)
        p = post(w, probs, now)
        assert isinstance(p, Prediction) and p.stream == "remote-7" and p.seq == w.seq
        want = old_text(stream, golden, w, probs, now)
        assert p.to_json() == want
        assert p.message() == json.loads(want)
        seen_voiced.add(p.voiced)
    assert seen_voiced == {True, False}


def test_a_prediction_is_turned_into_the_protocol_message_as_documented():
    p = Prediction("s", 3, 1.5, 6.5, ("a", "b"), np.array([0.25, 0.75]), np.array([0.4, 0.6]), True, 0.51234, 0.0421)
    assert p.message() == {
        "type": "prediction", "stream": "s", "seq": 3, "t_start": 1.5, "t_end": 6.5,
        "probs": {"a": 0.25, "b": 0.75}, "top": "b", "smoothed": {"a": 0.4, "b": 0.6},
        "voiced": True, "voiced_fraction": 0.512, "latency_ms": 42.1,
    }
    quiet = Prediction("s", 4, 2.0, 7.0, ("a", "b"), np.array([0.9, 0.1]), np.array([0.5, 0.5]), False, 0.0, 0.01)
    assert quiet.message()["top"] is None
    assert quiet.to_json() == protocol.dumps(quiet.message())

"""What the stream, scheduler and daemon tests share: ``StreamSettings`` from the daemon config with
``KEY=VALUE`` overrides, for the default 5 s window or for a loaded engine's chunk geometry; and
``expected_window``, the window offline scoring feeds the engine, which the daemon's results are checked
against (test_realtime_scheduling.py, test_realtime_cli.py)."""

from __future__ import annotations

import numpy as np

from contract.audio import WINDOW_SAMPLES, pad_or_crop
from realtime.config import load_daemon_config
from realtime.stream import StreamSettings


def settings(**over) -> StreamSettings:
    cfg = load_daemon_config([f"{k}={v}" for k, v in over.items()])
    return StreamSettings.from_config(cfg, WINDOW_SAMPLES)


def engine_settings(eng, **over) -> StreamSettings:
    cfg = load_daemon_config([f"{k}={v}" for k, v in over.items()])
    return StreamSettings.from_config(cfg, eng.geometry)


def expected_window(audio: np.ndarray, end: int, chunked: bool) -> np.ndarray:
    """What offline scoring feeds the engine for the window ending at ``end``: samples before the start are
    zeros (left) for a chunked model; a whole-window model pads a short window centred, as in training."""
    if end >= WINDOW_SAMPLES:
        return audio[end - WINDOW_SAMPLES : end]
    if chunked:
        return np.concatenate([np.zeros(WINDOW_SAMPLES - end, np.float32), audio[:end]])
    return pad_or_crop(audio[:end], WINDOW_SAMPLES)

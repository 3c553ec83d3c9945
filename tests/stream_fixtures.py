"""What the stream, scheduler and daemon tests share: ``StreamSettings`` from the daemon config with
``KEY=VALUE`` overrides, for the default 5 s window or for a loaded engine's chunk geometry."""

from __future__ import annotations

from contract.audio import WINDOW_SAMPLES
from realtime.config import load_daemon_config
from realtime.stream import StreamSettings


def settings(**over) -> StreamSettings:
    cfg = load_daemon_config([f"{k}={v}" for k, v in over.items()])
    return StreamSettings.from_config(cfg, WINDOW_SAMPLES)


def engine_settings(eng, **over) -> StreamSettings:
    cfg = load_daemon_config([f"{k}={v}" for k, v in over.items()])
    return StreamSettings.from_config(cfg, eng.geometry)

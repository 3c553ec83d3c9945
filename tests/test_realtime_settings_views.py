"""ServerSettings, StreamSettings and Limits are views of the typed daemon config (realtime.config), not copies."""

from __future__ import annotations

import dataclasses

from omegaconf import OmegaConf

from contract.audio import WINDOW_SAMPLES
from realtime.config import AudioConfig, PostConfig, ServerConfig, load_daemon_config
from realtime.protocol import Limits
from realtime.server import ServerSettings
from realtime.stream import StreamSettings


def test_server_settings_read_every_key_through_from_the_config():
    cfg = load_daemon_config(["server.port=0", "server.max_clients=7", "server.token=s3", "server.drain_timeout_s=0.25",
                              "server.allowed_origins=[https://a.example/]"])
    s = ServerSettings.from_config(cfg.server)
    assert not dataclasses.is_dataclass(s)  # no field list of its own to keep in step
    assert isinstance(s.config, ServerConfig)
    for f in dataclasses.fields(ServerConfig):
        if f.name not in ("token", "allowed_origins"):
            assert getattr(s, f.name) == cfg.server[f.name], f.name
    assert s.token == "s3" and s.allowed_origins == ("https://a.example",)
    assert ServerSettings.from_config(load_daemon_config().server).token is None
    assert s.limits() == Limits.from_server(cfg.server)


def test_limits_are_server_keys_with_the_configs_types():
    server = {f.name: f.type for f in dataclasses.fields(ServerConfig)}
    for f in dataclasses.fields(Limits):
        assert f.name in server, f"Limits.{f.name} is not a server.* key"
        assert str(server[f.name]) == str(f.type), f.name


def test_stream_settings_hold_the_configs_sections_and_derive_the_sizes():
    cfg = load_daemon_config(["audio.hop_s=1.0", "post.vad_min_voiced_s=0.5", "audio.resample_quality=MQ"])
    s = StreamSettings.from_config(cfg, WINDOW_SAMPLES)
    assert isinstance(s.audio, AudioConfig) and isinstance(s.post, PostConfig)
    assert dataclasses.asdict(s.audio) == OmegaConf.to_container(cfg.audio)
    assert dataclasses.asdict(s.post) == OmegaConf.to_container(cfg.post)
    assert s.post.vad_min_voiced_s == 0.5 and s.audio.resample_quality == "MQ"
    assert (s.hop_samples, s.window_samples, s.min_audio_samples) == (16_000, WINDOW_SAMPLES, 16_000)
    names = {f.name for f in dataclasses.fields(StreamSettings)}
    copied = names & ({f.name for f in dataclasses.fields(AudioConfig)} | {f.name for f in dataclasses.fields(PostConfig)})
    assert not copied, f"copied from the config: {copied}"

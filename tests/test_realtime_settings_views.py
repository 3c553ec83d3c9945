"""ServerSettings, StreamSettings and Limits are views of the typed daemon config (realtime.config), not copies;
`hello` advertises the same limits as before Limits became one."""

from __future__ import annotations

import dataclasses
import json

import pytest
from omegaconf import OmegaConf

from contract.audio import WINDOW_SAMPLES
from realtime.config import AudioConfig, PostConfig, ServerConfig, load_daemon_config, section
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


def test_limits_are_a_view_of_server_keys():
    assert not dataclasses.is_dataclass(Limits)  # no field list of its own to keep in step
    server = {f.name for f in dataclasses.fields(ServerConfig)}
    assert set(Limits.KEYS) <= server, set(Limits.KEYS) - server
    cfg = section(load_daemon_config(["server.max_start_burst=9"]).server, ServerConfig)
    lim = Limits(cfg)
    assert lim.max_start_burst == 9 and lim.max_audio_burst_s == cfg.max_audio_burst_s
    cfg.max_start_burst = 2  # read through, not copied
    assert lim.max_start_burst == 2 and lim.advertised()["max_start_burst"] == 2
    with pytest.raises(AttributeError):
        lim.port  # noqa: B018 - a server key, but not a connection's budget
    with pytest.raises(TypeError):
        Limits(object())


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


# What `hello` advertised before Limits became a view of the config: the same keys, order, values and JSON types.
SHIPPED_HELLO_LIMITS = (
    '{"max_message_bytes": 1048576, "max_messages_per_s": 200.0, "max_text_bytes_per_s": 65536.0, '
    '"max_starts_per_s": 1.0, "max_start_burst": 4, "max_audio_realtime_factor": 1.5, "max_audio_burst_s": 10.0}'
)


def test_hello_advertises_the_same_limits_json():
    shipped = ServerSettings.from_config(load_daemon_config().server).limits()
    assert json.dumps(shipped.advertised()) == SHIPPED_HELLO_LIMITS
    cfg = load_daemon_config(["server.max_starts_per_s=3", "server.max_message_bytes=4096"])
    adv = ServerSettings.from_config(cfg.server).limits().advertised()
    assert adv == {**json.loads(SHIPPED_HELLO_LIMITS), "max_starts_per_s": 3.0, "max_message_bytes": 4096}


def test_the_servers_hello_limits_add_max_clients(engine):
    from realtime.daemon import Daemon

    cfg = load_daemon_config(["server.port=0", "server.max_clients=3"])
    d = Daemon(cfg, engine, announce=lambda line: None)
    assert json.dumps(d.server._limits()) == SHIPPED_HELLO_LIMITS[:-1] + ', "max_clients": 3}'

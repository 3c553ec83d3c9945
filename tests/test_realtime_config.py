"""realtime/config.py: the typed daemon config, its documented YAML (--show-config) read back as the
same config, and every refusal naming its key."""

from __future__ import annotations

import pytest

from realtime.config import load_daemon_config


def test_show_config_documents_every_key_and_reads_back_as_the_same_config(tmp_path):
    import dataclasses

    from omegaconf import OmegaConf

    from realtime.config import DaemonConfig, load_daemon_config, render_yaml

    for section in dataclasses.fields(DaemonConfig):
        for f in dataclasses.fields(section.default_factory):
            assert f.metadata.get("help"), f"{section.name}.{f.name} has no documentation"
    cfg = load_daemon_config(["server.port=9001", "post.smoothing_tau_s=3", "model.threads=1", "server.token='0123'"])
    text = render_yaml(cfg)
    assert "  port: 9001  # 0 picks a free port" in text and "  token: '0123'  #" in text
    path = tmp_path / "ser.yaml"
    path.write_text(text)
    again = load_daemon_config([], path)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)
    assert OmegaConf.to_container(load_daemon_config()) == OmegaConf.to_container(OmegaConf.structured(DaemonConfig))
    later = load_daemon_config(["server.port=9002"], path)  # overrides win over the file
    assert later.server.port == 9002 and later.post.smoothing_tau_s == 3


@pytest.mark.parametrize(("content", "words"), [
    ("server: [1, 2]", "server"), ("- 1", "mapping"), ("server:\n  prot: 1", "prot"), ("a: [", "not YAML"),
])
def test_a_bad_config_file_is_refused_naming_the_key(tmp_path, content, words):
    from contract.config import ConfigError
    from realtime.config import load_daemon_config

    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=words):
        load_daemon_config([], path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_daemon_config([], tmp_path / "absent.yaml")


def test_a_daemon_built_in_python_refuses_a_public_host_without_a_token():
    from contract.config import ConfigError
    from realtime.config import load_daemon_config

    with pytest.raises(ConfigError, match="server.host 0.0.0.0 exposes"):
        load_daemon_config(["server.host=0.0.0.0"])
    assert load_daemon_config(["server.host=0.0.0.0", "server.token=s"]).server.token == "s"
    assert load_daemon_config(["server.host=0.0.0.0", "server.insecure=true"]).server.insecure
    assert load_daemon_config(["server.host=::1"]).server.host == "::1"


def test_a_daemon_given_a_typed_config_validates_it_too(engine):
    """A DaemonConfig built from the schema in Python, never through load_daemon_config, is validated by Daemon."""
    from omegaconf import OmegaConf

    from contract.config import ConfigError
    from realtime.config import DaemonConfig
    from realtime.daemon import Daemon

    cfg = OmegaConf.structured(DaemonConfig)
    cfg.server.host = "0.0.0.0"
    with pytest.raises(ConfigError, match="server.host 0.0.0.0 exposes"):
        Daemon(cfg, engine, announce=lambda line: None)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("server.port=abc", "'server.port'"),
        ("audio.hop_s=[1]", "'audio.hop_s'"),
        ("audio.hop_s=-1", "audio.hop_s must be > 0"),
        ("server.port=70000", "server.port must be 0..65535"),
        ("model.backend=cuda", "model.backend must be one of"),
        ("post.vad_frame_ms=25", "post.vad_frame_ms"),
        ("scheduler.max_batch_cpu=0", "scheduler.max_batch_cpu"),
        ("source.reconnect_min_s=20", "source.reconnect_min_s"),
        ("no.such.key=1", "unknown config key"),
    ],
)
def test_daemon_config_rejects_bad_values_naming_the_key(override, words):
    from contract.config import ConfigError

    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("(", r"\(")):
        load_daemon_config([override])


def test_daemon_config_is_typed_once():
    cfg = load_daemon_config(["audio.hop_s=1", "server.token='0123'", "scheduler.max_batch_cpu=null"])
    assert cfg.audio.hop_s == 1.0 and isinstance(cfg.audio.hop_s, float)
    assert cfg.server.token == "0123" and cfg.scheduler.max_batch_cpu is None

"""The daemon's one typed config schema: conf/daemon.yaml as dataclasses, validated once.

Owns what a ``ser-listen`` setting may be. The YAML (with ``key=value``
overrides, composed by :func:`training.config.compose`) is merged into
:class:`DaemonConfig` as an OmegaConf structured config, which rejects unknown
keys and wrong types; :func:`validate` then checks ranges and choices, naming
the key. Every module reads the result (``cfg.audio.hop_s`` is a float, not
something to cast), so there is no second copy of these rules in the server,
the stream or the CLI. Imports omegaconf, ``training.config`` and ``engine.base`` (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from engine.base import BACKENDS
from training.config import ConfigError, compose

DEVICES = ("auto", "cpu", "cuda")
RESAMPLE_QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")

# OmegaConf structured configs need typing.Optional / typing.List, not PEP 604 unions, at runtime.


@dataclass
class ModelConfig:
    path: Optional[str] = None  # noqa: UP045 - OmegaConf reads the annotation at runtime
    backend: str = "auto"
    device: str = "auto"
    threads: Optional[int] = None  # noqa: UP045
    warmup_batches: list[int] = field(default_factory=lambda: [1])


@dataclass
class SourceConfig:
    device: str = "none"
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 10.0
    stall_timeout_s: float = 2.0
    xrun_log_interval_s: float = 1.0


@dataclass
class AudioConfig:
    hop_s: float = 0.5
    min_audio_s: float = 1.0
    buffer_s: float = 10.0
    block_s: float = 0.02
    capture_buffer_s: float = 2.0
    max_channels: int = 2
    file_chunk_s: float = 0.05
    resample_quality: str = "HQ"


@dataclass
class SchedulerConfig:
    max_batch: int = 32
    max_batch_cpu: Optional[int] = 8  # noqa: UP045
    max_wait_ms: float = 5.0
    stale_after_s: float = 1.0
    max_queue: int = 256


@dataclass
class OutputConfig:
    jsonl_queue_lines: int = 4096
    jsonl_flush_timeout_s: float = 0.5


@dataclass
class PostConfig:
    smoothing_tau_s: float = 1.5
    vad_aggressiveness: int = 2
    vad_frame_ms: int = 30
    vad_noise_window_s: float = 3.0
    vad_margin_db: float = 6.0
    vad_min_dbfs: float = -60.0
    vad_min_voiced_fraction: float = 0.2


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: Optional[str] = None  # noqa: UP045
    insecure: bool = False
    allowed_origins: list[str] = field(default_factory=list)
    max_clients: int = 64
    max_message_bytes: int = 1 << 20
    hard_max_message_factor: int = 4
    max_remote_streams: int = 32
    max_messages_per_s: float = 200.0
    max_text_bytes_per_s: float = 65536.0
    max_starts_per_s: float = 1.0
    max_start_burst: int = 4
    client_queue: int = 64
    send_buffer_bytes: int = 65536
    max_audio_realtime_factor: float = 1.5
    max_audio_burst_s: float = 10.0
    ping_interval_s: float = 20.0
    close_timeout_s: float = 1.0
    drain_timeout_s: float = 0.5
    flush_timeout_s: float = 1.0
    shutdown_timeout_s: float = 1.8


@dataclass
class DaemonConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    post: PostConfig = field(default_factory=PostConfig)
    server: ServerConfig = field(default_factory=ServerConfig)


def load_daemon_config(overrides: Sequence[str] = ()) -> DictConfig:
    """conf/daemon.yaml with ``key=value`` overrides, typed by :class:`DaemonConfig` and validated (ConfigError)."""
    raw = compose("daemon", list(overrides))
    return typed(raw)


def typed(raw: Any) -> DictConfig:
    """Merge a plain daemon config into the schema: unknown keys and wrong types are a ConfigError."""
    data = OmegaConf.to_container(raw, resolve=True) if OmegaConf.is_config(raw) else dict(raw)
    data.pop("choices", None)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(DaemonConfig), data)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"config key {key!r}: {msg}" if key else f"bad daemon config: {msg}") from exc
    assert isinstance(cfg, DictConfig)
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def validate(cfg: Any) -> None:
    """Ranges and choices the daemon cannot run without, each naming its key (ConfigError)."""
    m, src, a, sch, out, post, srv = cfg.model, cfg.source, cfg.audio, cfg.scheduler, cfg.output, cfg.post, cfg.server
    rules = [
        (m.backend in BACKENDS, f"model.backend must be one of {', '.join(BACKENDS)}"),
        (m.device in DEVICES, f"model.device must be one of {', '.join(DEVICES)}"),
        (m.threads is None or m.threads >= 1, "model.threads must be >= 1 or null"),
        (len(m.warmup_batches) >= 1 and all(b >= 1 for b in m.warmup_batches), "model.warmup_batches must be batch sizes >= 1"),
        (0 < src.reconnect_min_s <= src.reconnect_max_s, "source.reconnect_min_s must be > 0 and <= source.reconnect_max_s"),
        (src.stall_timeout_s > 0 and src.xrun_log_interval_s > 0, "source.stall_timeout_s and xrun_log_interval_s must be > 0"),
        (a.hop_s > 0, "audio.hop_s must be > 0"),
        (a.min_audio_s > 0, "audio.min_audio_s must be > 0"),
        (a.buffer_s > 0, "audio.buffer_s must be > 0"),
        (a.block_s > 0 and a.file_chunk_s > 0 and a.capture_buffer_s > a.block_s, "audio block/chunk/capture sizes must be > 0"),
        (1 <= a.max_channels <= 32, "audio.max_channels must be 1..32"),
        (a.resample_quality in RESAMPLE_QUALITIES, "audio.resample_quality must be QQ, LQ, MQ, HQ or VHQ"),
        (sch.max_batch >= 1, "scheduler.max_batch must be >= 1"),
        (sch.max_batch_cpu is None or sch.max_batch_cpu >= 1, "scheduler.max_batch_cpu must be >= 1 or null"),
        (sch.max_wait_ms >= 0 and sch.stale_after_s > 0 and sch.max_queue >= 1, "scheduler waits and queue must be positive"),
        (out.jsonl_queue_lines >= 1 and out.jsonl_flush_timeout_s >= 0, "output.jsonl_queue_lines must be >= 1"),
        (post.smoothing_tau_s >= 0, "post.smoothing_tau_s must be >= 0"),
        (post.vad_aggressiveness in (0, 1, 2, 3), "post.vad_aggressiveness must be 0..3"),
        (post.vad_frame_ms in (10, 20, 30), "post.vad_frame_ms must be 10, 20 or 30"),
        (post.vad_noise_window_s > 0, "post.vad_noise_window_s must be > 0"),
        (0 <= post.vad_min_voiced_fraction <= 1, "post.vad_min_voiced_fraction must be within 0..1"),
        (0 <= srv.port <= 65535, "server.port must be 0..65535"),
        (srv.max_clients >= 1, "server.max_clients must be >= 1"),
        (srv.max_remote_streams >= 0, "server.max_remote_streams must be >= 0"),
        (srv.max_message_bytes >= 1024, "server.max_message_bytes must be >= 1024"),
        (srv.hard_max_message_factor >= 1, "server.hard_max_message_factor must be >= 1"),
        (srv.max_messages_per_s >= 1 and srv.client_queue >= 1, "server rate and queue limits must be >= 1"),
        (srv.max_text_bytes_per_s > 0, "server.max_text_bytes_per_s must be > 0"),
        (srv.max_starts_per_s > 0 and srv.max_start_burst >= 1, "server.max_starts_per_s must be > 0, max_start_burst >= 1"),
        (srv.send_buffer_bytes >= 0, "server.send_buffer_bytes must be >= 0"),
        (srv.max_audio_realtime_factor >= 1 and srv.max_audio_burst_s >= 0, "server.max_audio_realtime_factor must be >= 1"),
        (min(srv.ping_interval_s, srv.close_timeout_s, srv.drain_timeout_s, srv.flush_timeout_s) > 0,
         "server ping/close/drain/flush timeouts must be > 0"),
        (srv.shutdown_timeout_s > 0, "server.shutdown_timeout_s must be > 0"),
    ]
    for ok, message in rules:
        if not ok:
            raise ConfigError(message)

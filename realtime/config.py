"""The daemon's one typed config schema: dataclasses that are the keys, types, defaults and their documentation.

Owns what a ``ser-listen`` setting may be and what it means. The dataclasses
below are the only place a default is written: ``ser-listen --show-config``
prints them (with the overrides applied) as commented YAML, which is also
what ``--config FILE`` reads back. Overrides (``key=value``, and the flags
that map onto keys) are applied by :func:`contract.config.apply_overrides`
into an OmegaConf structured config, which rejects unknown keys and wrong
types; :func:`validate` then checks ranges, choices and the rules between
keys (a non-loopback host needs a token), each error naming its key. Every
module reads the result (``cfg.audio.hop_s`` is a float, not something to
cast). Imports omegaconf, yaml, ``contract.config`` and ``engine.registry`` (no torch).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from contract.config import ConfigError, apply_overrides
from engine.registry import backend_names

_S = TypeVar("_S")
DEVICES = ("auto", "cpu", "cuda")
RESAMPLE_QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def setting(default: Any, help: str) -> Any:
    """A config field: its default (a callable for a list) and the one line that says what it does."""
    if callable(default):
        return field(default_factory=default, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def is_loopback_host(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# OmegaConf structured configs need typing.Optional / typing.List, not PEP 604 unions, at runtime.


@dataclass
class ModelConfig:
    path: Optional[str] = setting(None, 'null: the model shipped in the package (engine/models/default.onnx)')  # noqa: UP045 - OmegaConf reads the annotation at runtime
    backend: str = setting("auto", 'auto | tensorrt | onnxruntime | torch')
    device: str = setting("auto", 'auto | cpu | cuda')
    threads: Optional[int] = setting(None, 'onnxruntime intra-op threads; null: all cores (on a small shared CPU, 1 halves CPU use)')  # noqa: UP045
    int8: Optional[bool] = setting(None, "onnxruntime on CPU serves the model's int8 copy (NAME.int8.onnx); null: when it exists and the CPU has VNNI/dotprod")  # noqa: UP045
    warmup_batches: list[int] = setting(lambda: [1], 'batch sizes run once on silence before serving')


@dataclass
class SourceConfig:
    device: str = setting("none", 'none (remote streams only) | mic | demo | a device name substring or index | a file path')
    reconnect_min_s: float = setting(0.5, '--reconnect: first retry delay, doubled up to reconnect_max_s')
    reconnect_max_s: float = setting(10.0, '--reconnect: longest retry delay')
    stall_timeout_s: float = setting(2.0, 'a device that delivers nothing this long is treated as gone')
    xrun_log_interval_s: float = setting(1.0, 'capture overruns are logged at most this often')


@dataclass
class AudioConfig:
    hop_s: float = setting(0.5, 'a window is scored every hop')
    min_audio_s: float = setting(1.0, 'a stream is first scored after this much audio (padded as in training)')
    buffer_s: float = setting(10.0, 'ring buffer length per stream (>= window + hop)')
    block_s: float = setting(0.02, 'capture block length (PortAudio callback period)')
    capture_buffer_s: float = setting(2.0, 'native-rate ring between the capture callback and the resampler')
    max_channels: int = setting(2, "capture at most this many of a device's channels (then downmix)")
    file_chunk_s: float = setting(0.05, 'file sources are read in chunks of this length')
    resample_quality: str = setting("HQ", 'soxr quality: QQ | LQ | MQ | HQ | VHQ')


@dataclass
class SchedulerConfig:
    max_batch: int = setting(32, 'windows per engine call at most, and chunks encoded per call at most (GPU engines batch well)')
    max_batch_cpu: Optional[int] = setting(8, '... and at most this on a CPU engine, where a big batch costs as much per window and holds every window in it for the whole batch (bench/daemon.py); null: no extra cap')  # noqa: UP045
    max_wait_ms: float = setting(5.0, 'after the first due window, wait this long for others to join its batch')
    stale_after_s: float = setting(1.0, 'a due window older than this when its turn comes is dropped (overload)')
    max_queue: int = setting(256, 'due windows waiting at most; beyond, the oldest is dropped')


@dataclass
class OutputConfig:
    jsonl_queue_lines: int = setting(4096, '--jsonl lines waiting for a slow stdout reader; beyond, lines are dropped (counted)')
    jsonl_flush_timeout_s: float = setting(0.5, 'on exit, time given to queued --jsonl lines')


@dataclass
class PostConfig:
    # One hop: a 5 s window already averages 10 hops of audio; more smoothing only lags each change of emotion
    # (live-like streams, README: 1.5 s cost 0.04 UA).
    smoothing_tau_s: float = setting(0.5, 'exponential smoothing time constant over stream time')
    vad_aggressiveness: int = setting(2, 'webrtcvad mode 0-3 (3 rejects most non-speech)')
    vad_frame_ms: int = setting(30, 'webrtcvad frame: 10, 20 or 30 ms')
    vad_noise_window_s: float = setting(3.0, 'adaptive noise floor: minimum frame level over this span')
    vad_margin_db: float = setting(6.0, 'a voiced frame stands this far above the floor')
    vad_min_dbfs: float = setting(-60.0, 'frames quieter than this are never voiced')
    # A quarter of the least speech a scored stream window holds (1 s; the VAD flags a median 0.8 of it, less for
    # quiet speech): twice what a pause gets (at most 0.12 s flagged); steady noise to -35 dBFS gets none (tests).
    # Against 0.5 s on the shipped heads' streams: stream UA 0.670 vs 0.651, neutral 0.52 vs 0.45; what no gate
    # level stops (music, clicks, noise that changes level) is in bench/vad_gate.py (README, the gate).
    vad_min_voiced_s: float = setting(0.25, 'a window is voiced when its VAD frames hold this many seconds of voice')


@dataclass
class ServerConfig:
    host: str = setting("127.0.0.1", '0.0.0.0 (beyond loopback) requires a token unless --insecure')
    port: int = setting(8765, '0 picks a free port (printed on start)')
    token: Optional[str] = setting(None, 'clients send ?token=... or Authorization: Bearer ...')  # noqa: UP045
    insecure: bool = setting(False, 'allow a non-loopback host without a token')
    allowed_origins: list[str] = setting(list, 'browser origins allowed besides the served page\'s own, e.g. ["https://example.org"]')
    max_clients: int = setting(64, 'WebSocket connections at most; beyond, server_busy and a close (1013)')
    max_message_bytes: int = setting(1 << 20, 'larger messages earn message_too_large and a close (1009)')
    hard_max_message_factor: int = setting(4, 'above max_message_bytes x this, websockets closes at once (1009)')
    max_remote_streams: int = setting(32, 'remote PCM streams (start) at most, all clients together; beyond, server_busy')
    max_messages_per_s: float = setting(200.0, 'per client (one-second burst); beyond, rate_limited and a close (1008)')
    max_text_bytes_per_s: float = setting(65536.0, 'per client, JSON text in UTF-8 bytes (one-second burst); beyond, rate_limited (1008)')
    max_starts_per_s: float = setting(1.0, 'per client, stream starts ...')
    max_start_burst: int = setting(4, '... beyond a burst of this many (start/stop cycling); rate_limited (1008)')
    client_queue: int = setting(64, 'messages queued per client; a slow client loses its oldest predictions')
    send_buffer_bytes: int = setting(65536, 'kernel send buffer per client (0: the OS autotunes it); keeps slow clients from hoarding')
    max_audio_realtime_factor: float = setting(1.5, 'a connection may not send audio faster than this x real time, all its streams together ...')
    max_audio_burst_s: float = setting(10.0, '... beyond a burst of this many seconds (rate_limited and a close)')
    ping_interval_s: float = setting(20.0, 'keepalive ping period; a client that misses its pong is closed')
    close_timeout_s: float = setting(1.0, 'time a closing handshake may take before the socket is dropped')
    drain_timeout_s: float = setting(0.5, "on close, time given to a client's queued messages")
    flush_timeout_s: float = setting(1.0, 'on shutdown, time given to in-flight windows')
    shutdown_timeout_s: float = setting(1.8, 'SIGINT/SIGTERM: the whole shutdown (flush, closes, --jsonl) within this')


@dataclass
class DaemonConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    post: PostConfig = field(default_factory=PostConfig)
    server: ServerConfig = field(default_factory=ServerConfig)


# Section name -> its schema, in the order --show-config prints them.
_SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(DaemonConfig)}  # type: ignore[misc]


def load_daemon_config(overrides: Sequence[str] = (), config_file: str | Path | None = None) -> DictConfig:
    """The schema's defaults, then ``config_file`` (YAML, as --show-config prints it), then ``key=value`` overrides.

    Typed and validated: a ConfigError names the key for anything unknown, mistyped or out of range.
    """
    cfg = OmegaConf.structured(DaemonConfig)
    if config_file is not None:
        cfg = _merge(cfg, _read_file(Path(config_file)))
    return typed(apply_overrides(cfg, list(overrides)))


def _read_file(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not YAML: {exc}") from exc
    return _sections(data, f"config file {path}")


def _sections(data: Any, where: str) -> dict:
    """``data`` checked to be a mapping of known sections, each a mapping of keys (ConfigError naming ``where``)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of sections (model:, audio:, ...)")
    for section, keys in data.items():
        if section not in _SECTIONS:
            raise ConfigError(f"{where}: unknown section {section!r} (sections: {', '.join(_SECTIONS)})")
        if not isinstance(keys, dict):
            raise ConfigError(f"{where}: section {section!r} must be a mapping of keys, got {keys!r}")
    return data


def daemon_config_from_mapping(data: Any, where: str = "daemon config") -> DictConfig:
    """The schema's defaults under ``data`` (sections as --show-config prints them): how an embedding app
    (the Ray Serve ingress, whose Serve config carries them as ``args``) configures the daemon it runs."""
    return typed(_merge(OmegaConf.structured(DaemonConfig), _sections(data, where)))


def _merge(cfg: DictConfig, data: Any) -> DictConfig:
    try:
        merged = OmegaConf.merge(cfg, data)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"config key {key!r}: {msg}" if key else f"bad daemon config: {msg}") from exc
    assert isinstance(merged, DictConfig)
    return merged


def typed(raw: Any) -> DictConfig:
    """Merge a plain daemon config into the schema (unknown keys and wrong types: ConfigError), validate, freeze."""
    data = OmegaConf.to_container(raw, resolve=True) if OmegaConf.is_config(raw) else dict(raw)
    data.pop("choices", None)
    cfg = _merge(OmegaConf.structured(DaemonConfig), data)
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def section(value: Any, schema: type[_S]) -> _S:
    """A config section as an instance of its schema's dataclass (``section(cfg.audio, AudioConfig)``): the typed
    config itself, with plain attributes for the modules that read it often (no OmegaConf lookup per access)."""
    if isinstance(value, schema):
        return value
    obj = OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
    if isinstance(obj, schema):
        return obj
    return schema(**dict(obj))


def render_yaml(cfg: Any) -> str:
    """``cfg`` as YAML with each key's documentation as a comment: what --show-config prints and --config reads."""
    lines = ["# ser-listen configuration (ser-listen --show-config). Read back with --config FILE;",
             "# any key can also be given as key=value on the command line, e.g. server.port=9000."]
    for name, schema in _SECTIONS.items():
        lines.append(f"{name}:")
        values = OmegaConf.to_container(cfg[name], resolve=True)
        for f in dataclasses.fields(schema):
            value = values[f.name]
            text = yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip()
            if text.endswith("\n..."):
                text = text[: -len("\n...")]
            lines.append(f"  {f.name}: {text}  # {f.metadata['help']}")
    return "\n".join(lines) + "\n"


def validate(cfg: Any) -> None:
    """Ranges, choices and the rules between keys that the daemon cannot run without, each naming its key (ConfigError)."""
    m, src, a, sch, out, post, srv = cfg.model, cfg.source, cfg.audio, cfg.scheduler, cfg.output, cfg.post, cfg.server
    rules = [
        (m.backend in backend_names(), f"model.backend must be one of {', '.join(backend_names())}"),
        (m.device in DEVICES, f"model.device must be one of {', '.join(DEVICES)}"),
        (m.threads is None or m.threads >= 1, "model.threads must be >= 1 or null"),
        (len(m.warmup_batches) >= 1 and all(b >= 1 for b in m.warmup_batches), "model.warmup_batches must be batch sizes >= 1"),
        (src.reconnect_min_s > 0, "source.reconnect_min_s must be > 0"),
        (src.reconnect_min_s <= src.reconnect_max_s, "source.reconnect_min_s must be <= source.reconnect_max_s"),
        (src.stall_timeout_s > 0, "source.stall_timeout_s must be > 0"),
        (src.xrun_log_interval_s > 0, "source.xrun_log_interval_s must be > 0"),
        (a.hop_s > 0, "audio.hop_s must be > 0"),
        (a.min_audio_s > 0, "audio.min_audio_s must be > 0"),
        (a.buffer_s > 0, "audio.buffer_s must be > 0"),
        (a.block_s > 0, "audio.block_s must be > 0"),
        (a.file_chunk_s > 0, "audio.file_chunk_s must be > 0"),
        (a.capture_buffer_s > a.block_s, "audio.capture_buffer_s must be longer than audio.block_s"),
        (1 <= a.max_channels <= 32, "audio.max_channels must be 1..32"),
        (a.resample_quality in RESAMPLE_QUALITIES, "audio.resample_quality must be QQ, LQ, MQ, HQ or VHQ"),
        (sch.max_batch >= 1, "scheduler.max_batch must be >= 1"),
        (sch.max_batch_cpu is None or sch.max_batch_cpu >= 1, "scheduler.max_batch_cpu must be >= 1 or null"),
        (sch.max_wait_ms >= 0, "scheduler.max_wait_ms must be >= 0"),
        (sch.stale_after_s > 0, "scheduler.stale_after_s must be > 0"),
        (sch.max_queue >= 1, "scheduler.max_queue must be >= 1"),
        (out.jsonl_queue_lines >= 1, "output.jsonl_queue_lines must be >= 1"),
        (out.jsonl_flush_timeout_s >= 0, "output.jsonl_flush_timeout_s must be >= 0"),
        (post.smoothing_tau_s >= 0, "post.smoothing_tau_s must be >= 0"),
        (post.vad_aggressiveness in (0, 1, 2, 3), "post.vad_aggressiveness must be 0..3"),
        (post.vad_frame_ms in (10, 20, 30), "post.vad_frame_ms must be 10, 20 or 30"),
        (post.vad_noise_window_s > 0, "post.vad_noise_window_s must be > 0"),
        (post.vad_min_dbfs < 0, "post.vad_min_dbfs must be < 0 (dBFS)"),
        (post.vad_min_voiced_s >= 0, "post.vad_min_voiced_s must be >= 0 (seconds)"),
        (0 <= srv.port <= 65535, "server.port must be 0..65535"),
        (srv.max_clients >= 1, "server.max_clients must be >= 1"),
        (srv.max_remote_streams >= 0, "server.max_remote_streams must be >= 0"),
        (srv.max_message_bytes >= 1024, "server.max_message_bytes must be >= 1024"),
        (srv.hard_max_message_factor >= 1, "server.hard_max_message_factor must be >= 1"),
        (srv.max_messages_per_s >= 1, "server.max_messages_per_s must be >= 1"),
        (srv.client_queue >= 1, "server.client_queue must be >= 1"),
        (srv.max_text_bytes_per_s > 0, "server.max_text_bytes_per_s must be > 0"),
        (srv.max_starts_per_s > 0, "server.max_starts_per_s must be > 0"),
        (srv.max_start_burst >= 1, "server.max_start_burst must be >= 1"),
        (srv.send_buffer_bytes >= 0, "server.send_buffer_bytes must be >= 0"),
        (srv.max_audio_realtime_factor >= 1, "server.max_audio_realtime_factor must be >= 1"),
        (srv.max_audio_burst_s >= 0, "server.max_audio_burst_s must be >= 0"),
        *((getattr(srv, k) > 0, f"server.{k} must be > 0")
          for k in ("ping_interval_s", "close_timeout_s", "drain_timeout_s", "flush_timeout_s")),
        (srv.shutdown_timeout_s > 0, "server.shutdown_timeout_s must be > 0"),
        (is_loopback_host(str(srv.host)) or bool(srv.token) or srv.insecure,
         f"server.host {srv.host} exposes the daemon beyond this machine: give server.token (--token SECRET; clients "
         "send ?token=SECRET or Authorization: Bearer SECRET), or server.insecure=true (--insecure) to allow anyone"),
    ]
    for ok, message in rules:
        if not ok:
            raise ConfigError(message)


"""WebSocket protocol version 1, as data: message schemas, error codes, PCM decoding.

Owns the edge between the network and the daemon. Every client message is
parsed and validated here, against the schemas below, before any other module
sees it; what comes out is plain, well-typed data or a :class:`ProtocolError`
carrying one of the error codes of ARCHITECTURE.md. Server messages are built
here too, so their field names live in one place. Imports numpy only.

Client → server: ``subscribe`` {streams: list | "*"}, ``start`` {sample_rate,
encoding, channels} followed by binary PCM frames, ``stop``.
Server → client: ``hello``, ``subscribed``, ``started``, ``stopped``,
``streams`` (the stream list changed), ``prediction``, ``error`` {code, message}.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1

ERROR_CODES = (
    "bad_message",
    "config_invalid",
    "invalid_audio_frame",
    "message_too_large",
    "rate_limited",
    "server_busy",
    "unauthorized",
)

# encoding -> (numpy dtype, bytes per sample, scale to [-1, 1])
ENCODINGS: dict[str, tuple[np.dtype, int, float]] = {
    "pcm_s16le": (np.dtype("<i2"), 2, 1.0 / 32768.0),
    "pcm_f32le": (np.dtype("<f4"), 4, 1.0),
}
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 96_000
MAX_CHANNELS = 2
MAX_STREAM_ID_CHARS = 64
MAX_SUBSCRIBE_IDS = 256


class ProtocolError(Exception):
    """A client message the daemon cannot act on; ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str) -> None:
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------- schemas (data)


def _integral(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v):
            raise ValueError(f"must be an integer, got {v!r}")
        if not lo <= int(v) <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {int(v)}")
        return int(v)

    return check


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {v!r}")
        return v

    return check


def _stream_selection(v: Any) -> list[str] | str:
    if v == "*":
        return "*"
    if not isinstance(v, list) or len(v) > MAX_SUBSCRIBE_IDS:
        raise ValueError(f'must be "*" or a list of at most {MAX_SUBSCRIBE_IDS} stream ids')
    if not all(isinstance(s, str) and 0 < len(s) <= MAX_STREAM_ID_CHARS for s in v):
        raise ValueError(f"stream ids must be non-empty strings of at most {MAX_STREAM_ID_CHARS} characters")
    return list(dict.fromkeys(v))


@dataclass(frozen=True)
class Field:
    check: Callable[[Any], Any]
    required: bool = True
    default: Any = None


@dataclass(frozen=True)
class Schema:
    """A client message type: its fields, and the error code a field that fails its check earns."""

    fields: dict[str, Field]
    error_code: str = "bad_message"


CLIENT_MESSAGES: dict[str, Schema] = {
    "subscribe": Schema({"streams": Field(_stream_selection)}),
    "start": Schema(
        {
            "sample_rate": Field(_integral(MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)),
            "encoding": Field(_one_of(tuple(ENCODINGS))),
            "channels": Field(_integral(1, MAX_CHANNELS), required=False, default=1),
        },
        error_code="config_invalid",
    ),
    "stop": Schema({}),
}


def parse_client_message(text: str) -> dict[str, Any]:
    """Validate one JSON text message; returns ``{"type": ..., field: value, ...}`` with checked values.

    Unknown extra fields are ignored (so newer clients can talk to this
    server); unknown types, non-objects and broken JSON are ``bad_message``;
    a bad field earns its schema's code (``config_invalid`` for ``start``).
    """
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_message", f"not valid JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_message", "a message must be a JSON object with a 'type' field")
    kind = msg.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_MESSAGES:
        known = ", ".join(CLIENT_MESSAGES)
        raise ProtocolError("bad_message", f"unknown message type {kind!r}; this server understands: {known}")
    schema = CLIENT_MESSAGES[kind]
    out: dict[str, Any] = {"type": kind}
    for name, field in schema.fields.items():
        if name not in msg:
            if field.required:
                raise ProtocolError(schema.error_code, f"{kind}: missing field {name!r}")
            out[name] = field.default
            continue
        try:
            out[name] = field.check(msg[name])
        except ValueError as exc:
            raise ProtocolError(schema.error_code, f"{kind}: {name} {exc}") from None
    return out


def decode_pcm(frame: bytes, encoding: str, channels: int) -> np.ndarray:
    """Binary PCM frame -> float32 ``[frames, channels]`` in [-1, 1]; ``invalid_audio_frame`` if malformed."""
    dtype, width, scale = ENCODINGS[encoding]
    step = width * channels
    if len(frame) == 0:
        raise ProtocolError("invalid_audio_frame", "empty audio frame")
    if len(frame) % step:
        raise ProtocolError(
            "invalid_audio_frame",
            f"{len(frame)} bytes is not a whole number of {encoding} frames of {channels} channel(s) ({step} bytes each)",
        )
    samples = np.frombuffer(frame, dtype=dtype).astype(np.float32)
    if scale != 1.0:
        samples *= scale
    elif not np.isfinite(samples).all():
        raise ProtocolError("invalid_audio_frame", "pcm_f32le frame holds NaN or infinite samples")
    else:
        np.clip(samples, -1.0, 1.0, out=samples)
    return samples.reshape(-1, channels)


# ---------------------------------------------------------------- server messages


def dumps(msg: dict[str, Any]) -> str:
    """Compact JSON, the one serialisation of every server message (WebSocket and --jsonl alike)."""
    return json.dumps(msg, separators=(",", ":"), allow_nan=False)


def hello(model: dict[str, Any], streams: list[dict[str, Any]], limits: dict[str, Any]) -> dict[str, Any]:
    return {"type": "hello", "protocol": PROTOCOL_VERSION, "model": model, "streams": streams, "limits": limits}


def error(code: str, message: str) -> dict[str, Any]:
    assert code in ERROR_CODES, code
    return {"type": "error", "code": code, "message": message}


def started(stream: str) -> dict[str, Any]:
    return {"type": "started", "stream": stream}


def stopped(stream: str) -> dict[str, Any]:
    return {"type": "stopped", "stream": stream}


def subscribed(streams: list[str] | str) -> dict[str, Any]:
    return {"type": "subscribed", "streams": streams}


def streams_changed(streams: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "streams", "streams": streams}


def prediction(
    stream: str,
    seq: int,
    t_start: float,
    t_end: float,
    labels: tuple[str, ...],
    probs: np.ndarray,
    smoothed: np.ndarray,
    voiced: bool,
    voiced_fraction: float,
    latency_ms: float,
) -> dict[str, Any]:
    """A ``prediction``; ``top`` is the smoothed leader when voiced and null when not (no emotion in silence)."""
    top = labels[int(np.argmax(smoothed))] if voiced else None
    return {
        "type": "prediction",
        "stream": stream,
        "seq": seq,
        "t_start": round(t_start, 6),
        "t_end": round(t_end, 6),
        "probs": {lab: round(float(p), 6) for lab, p in zip(labels, probs, strict=True)},
        "top": top,
        "smoothed": {lab: round(float(p), 6) for lab, p in zip(labels, smoothed, strict=True)},
        "voiced": bool(voiced),
        "voiced_fraction": round(float(voiced_fraction), 3),
        "latency_ms": round(float(latency_ms), 2),
    }

"""WebSocket protocol version 1, as data and as a state machine without I/O: schemas, error codes, budgets.

Owns the edge between the network and the daemon. Every client message is
parsed and validated here, against the schemas below, before any other module
sees it; what comes out is plain, well-typed data or a :class:`ProtocolError`
carrying one of the error codes listed in the README's protocol section. Server messages are built
here too, so their field names live in one place. Imports numpy only.

:class:`Session` is one client connection as python-websockets' sans-I/O
protocols are: the server feeds it each message with a clock reading and gets
back an :class:`Outcome` (replies to queue, a close to perform, a stream to
start or stop, decoded audio to push). Every rule a client can break lives
here and is unit-tested without sockets: message size in bytes, messages per
second, text bytes per second, stream starts per second, and audio seconds
per connection (all its streams together, so start/stop cycling cannot reset
it). The server is only the I/O shell around it.

Client → server: ``subscribe`` {streams: list | "*"}, ``start`` {sample_rate,
encoding, channels} followed by binary PCM frames, ``stop``.
Server → client: ``hello``, ``subscribed``, ``started``, ``stopped``,
``streams`` (the stream list changed), ``prediction``, ``error`` {code, message}.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
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

# WebSocket close codes the daemon uses (RFC 6455 section 7.4.1).
CLOSE_GOING_AWAY = 1001  # the daemon is shutting down
CLOSE_POLICY = 1008  # unauthorized, rate_limited, or a client that never reads its messages
CLOSE_TOO_BIG = 1009  # message_too_large
CLOSE_TRY_AGAIN = 1013  # server_busy: too many clients

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


def hello(
    model: dict[str, Any], streams: list[dict[str, Any]], limits: dict[str, Any], server: dict[str, str] | None = None
) -> dict[str, Any]:
    """The first message; ``server`` names who answers where several do (a Ray Serve replica), else it is absent."""
    msg = {"type": "hello", "protocol": PROTOCOL_VERSION, "model": model, "streams": streams, "limits": limits}
    if server:
        msg["server"] = dict(server)
    return msg


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


# ---------------------------------------------------------------- the session (no I/O)


class Limits:
    """A connection's budgets: a view of the daemon config's ``server`` section, read through, not a copy.

    ``realtime.config.ServerConfig`` owns each budget's type, default, range and
    documentation; this class only names which of its keys are a connection's
    budgets (:data:`KEYS`, in the order ``hello`` advertises them). It takes the
    section (or anything with these attributes: the tests' variations), so this
    module still imports no config code.
    """

    KEYS = (
        "max_message_bytes",
        "max_messages_per_s",
        "max_text_bytes_per_s",
        "max_starts_per_s",
        "max_start_burst",
        "max_audio_realtime_factor",
        "max_audio_burst_s",
    )
    __slots__ = ("_server",)

    def __init__(self, server: Any) -> None:
        missing = [k for k in self.KEYS if not hasattr(server, k)]
        if missing:
            raise TypeError(f"not a server config section: no {', '.join(missing)}")
        self._server = server

    @classmethod
    def from_server(cls, server: Any) -> Limits:
        """The budgets of a ``server`` config section (or anything with these attributes)."""
        return cls(server)

    def __getattr__(self, name: str) -> Any:  # each budget, as the section has it
        if name in Limits.KEYS:
            return getattr(self._server, name)
        raise AttributeError(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Limits) and self.advertised() == other.advertised()

    __hash__ = None  # type: ignore[assignment]  # a view of a mutable section: equal by value, not hashable

    def __repr__(self) -> str:
        return f"Limits({', '.join(f'{k}={v!r}' for k, v in self.advertised().items())})"

    def advertised(self) -> dict[str, Any]:
        """What a client needs to stay within the budgets (``ser-client --fast`` paces itself by these)."""
        return {k: getattr(self._server, k) for k in self.KEYS}


class TokenBucket:
    """``rate`` per second with a burst of ``burst``; starts full. Time comes from the caller (testable)."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = now

    def take(self, amount: float, now: float) -> bool:
        """Spend ``amount`` if the bucket holds it; a refused take spends nothing."""
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
        if amount > self.tokens:
            return False
        self.tokens -= amount
        return True


@dataclass(frozen=True)
class Close:
    """Close the connection with this code and reason (after the replies before it have gone out)."""

    code: int
    reason: str


@dataclass(frozen=True)
class StartRequest:
    """A validated ``start``: the server asks the daemon for a stream, then calls ``stream_opened`` or ``start_refused``."""

    sample_rate: int
    encoding: str
    channels: int


@dataclass
class Outcome:
    """What the server must do after one input: queue ``replies``, then start / stop / push audio, then close."""

    replies: list[dict[str, Any]] = dc_field(default_factory=list)
    close: Close | None = None
    start: StartRequest | None = None
    stop: str | None = None  # id of this connection's stream to stop
    audio: np.ndarray | None = None  # decoded frames [n, channels] for this connection's stream


def refusal(code: str, message: str) -> Outcome:
    """An ``error`` and the close its code implies, for a connection turned away before its session starts."""
    close_code = {"unauthorized": CLOSE_POLICY, "server_busy": CLOSE_TRY_AGAIN}[code]
    return Outcome([error(code, message)], Close(close_code, message[:120]))


NOT_READING = Close(CLOSE_POLICY, "client does not read its messages")
SHUTTING_DOWN = Close(CLOSE_GOING_AWAY, "ser-listen is shutting down")


def utf8_length(text: str) -> int:
    """Bytes of ``text`` on the wire (the budgets count bytes, not characters)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class Session:
    """One client connection's protocol state: subscriptions, its stream, its budgets. Never raises on input.

    Feed every message to :meth:`receive` with ``now`` (seconds, monotonic); act on
    the :class:`Outcome`. After a start outcome, report the daemon's answer with
    :meth:`stream_opened` or :meth:`start_refused`. Once an outcome carried a
    close, the session is closed and ignores further input.
    """

    RECENT_STREAMS = 4  # stopped streams whose final predictions still count as this client's own

    def __init__(self, limits: Limits, now: float) -> None:
        self.limits = limits
        self.subscriptions: set[str] | None = set()  # None: every stream
        self.stream_id: str | None = None
        self.encoding = ""
        self.channels = 1
        self.sample_rate = 0
        self.pending_start: StartRequest | None = None
        self.closed: Close | None = None
        self._recent: deque[str] = deque(maxlen=self.RECENT_STREAMS)
        self._messages = TokenBucket(limits.max_messages_per_s, limits.max_messages_per_s, now)
        self._text_bytes = TokenBucket(limits.max_text_bytes_per_s, limits.max_text_bytes_per_s, now)
        self._starts = TokenBucket(limits.max_starts_per_s, limits.max_start_burst, now)
        # One audio budget for the whole connection: a new start does not refill it.
        self._audio = TokenBucket(limits.max_audio_realtime_factor, limits.max_audio_burst_s, now)

    # ------------------------------------------------------------ queries

    def owns(self, stream_id: str) -> bool:
        """This connection's stream, or one it stopped recently (its final predictions are on their way)."""
        return stream_id == self.stream_id or stream_id in self._recent

    def wants(self, stream_id: str) -> bool:
        return self.owns(stream_id) or self.subscriptions is None or stream_id in self.subscriptions

    # ------------------------------------------------------------ input

    def receive(self, message: str | bytes, now: float) -> Outcome:
        """One text or binary message -> what to do. Every rule a client can break is checked here."""
        if self.closed is not None:
            return Outcome()
        is_text = isinstance(message, str)
        size = utf8_length(message) if is_text else len(message)  # type: ignore[arg-type]
        lim = self.limits
        if size > lim.max_message_bytes:
            return self._close("message_too_large", f"{size} bytes exceeds the limit of {lim.max_message_bytes}",
                               CLOSE_TOO_BIG, "message too large")
        if not self._messages.take(1, now):
            return self._close("rate_limited", f"more than {lim.max_messages_per_s:g} messages per second",
                               CLOSE_POLICY, "rate limit exceeded")
        if is_text and not self._text_bytes.take(size, now):
            return self._close("rate_limited", f"more than {lim.max_text_bytes_per_s:g} bytes of text per second",
                               CLOSE_POLICY, "rate limit exceeded")
        try:
            if is_text:
                return self._on_text(parse_client_message(message), now)  # type: ignore[arg-type]
            return self._on_audio(message, now)  # type: ignore[arg-type]
        except ProtocolError as exc:
            return Outcome([error(exc.code, exc.message)])

    def _on_text(self, msg: dict[str, Any], now: float) -> Outcome:
        kind = msg["type"]
        if kind == "subscribe":
            sel = msg["streams"]
            self.subscriptions = None if sel == "*" else set(sel)
            return Outcome([subscribed(sel)])
        if kind == "start":
            if self.stream_id is not None or self.pending_start is not None:
                raise ProtocolError("config_invalid", f"stream {self.stream_id} is already started; send stop first")
            if not self._starts.take(1, now):
                lim = self.limits
                return self._close(
                    "rate_limited",
                    f"more than {lim.max_starts_per_s:g} stream starts per second (after a burst of {lim.max_start_burst})",
                    CLOSE_POLICY,
                    "too many stream starts",
                )
            req = StartRequest(msg["sample_rate"], msg["encoding"], msg["channels"])
            self.pending_start = req
            return Outcome(start=req)
        # stop
        if self.stream_id is None:
            raise ProtocolError("bad_message", "stop: no stream is started on this connection")
        sid, self.stream_id = self.stream_id, None
        self._recent.append(sid)
        return Outcome([stopped(sid)], stop=sid)

    def _on_audio(self, frame: bytes, now: float) -> Outcome:
        if self.stream_id is None:
            raise ProtocolError("invalid_audio_frame", "binary audio before start: send a start message first")
        frames = decode_pcm(frame, self.encoding, self.channels)
        if not self._audio.take(len(frames) / self.sample_rate, now):
            lim = self.limits
            return self._close(
                "rate_limited",
                f"audio arrives faster than {lim.max_audio_realtime_factor:g}x real time "
                f"(after a {lim.max_audio_burst_s:g} s burst; the budget is per connection)",
                CLOSE_POLICY,
                "audio faster than real time",
            )
        return Outcome(audio=frames)

    # ------------------------------------------------------------ the daemon's answer to a start

    def stream_opened(self, stream_id: str) -> Outcome:
        req = self.pending_start
        if req is None or self.closed is not None:
            return Outcome()
        self.pending_start = None
        self.stream_id = stream_id
        self.sample_rate, self.encoding, self.channels = req.sample_rate, req.encoding, req.channels
        return Outcome([started(stream_id)])

    def start_refused(self, exc: ProtocolError) -> Outcome:
        """The daemon could not open a stream (``server_busy``): an error, and the connection goes on."""
        self.pending_start = None
        if self.closed is not None:
            return Outcome()
        return Outcome([error(exc.code, exc.message)])

    def _close(self, code: str, message: str, close_code: int, reason: str) -> Outcome:
        self.closed = Close(close_code, reason)
        return Outcome([error(code, message)], self.closed)

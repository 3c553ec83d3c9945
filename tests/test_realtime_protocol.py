"""realtime/protocol.py without sockets: the Session state machine, every budget and error code, fed
messages and clock readings (no sleeping), and hypothesis properties over arbitrary message sequences.

The server tests (test_realtime_server.py) prove the same rules hold through real connections.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime import protocol
from realtime.config import ServerConfig, load_daemon_config, section
from realtime.protocol import (
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    ERROR_CODES,
    Limits,
    Outcome,
    ProtocolError,
    Session,
    TokenBucket,
)

START = json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le"})
STOP = json.dumps({"type": "stop"})


@functools.cache
def shipped_server() -> ServerConfig:
    return section(load_daemon_config().server, ServerConfig)


def limits(**over: float) -> Limits:
    """The shipped budgets (realtime.config defaults), with ``over`` changed: a view of such a server section."""
    return Limits(dataclasses.replace(shipped_server(), **over))


def s16(seconds: float, rate: int = 16000) -> bytes:
    return np.zeros(int(seconds * rate), dtype="<i2").tobytes()


def opened(session: Session, now: float, sid: str = "remote-1") -> Outcome:
    out = session.receive(START, now)
    assert out.start is not None and not out.replies and out.close is None
    done = session.stream_opened(sid)
    assert done.replies == [protocol.started(sid)]
    return done


def codes(out: Outcome) -> list[str]:
    return [m["code"] for m in out.replies if m["type"] == "error"]


# ------------------------------------------------------------------ messages and replies


def test_subscribe_start_audio_stop():
    s = Session(limits(), now=0.0)
    out = s.receive(json.dumps({"type": "subscribe", "streams": ["demo", "demo"]}), 0.0)
    assert out.replies == [protocol.subscribed(["demo"])]
    assert s.wants("demo") and not s.wants("remote-9")
    opened(s, 0.1)
    assert s.owns("remote-1") and s.wants("remote-1")
    out = s.receive(s16(0.1), 0.2)
    assert out.audio is not None and out.audio.shape == (1600, 1) and out.audio.dtype == np.float32
    out = s.receive(STOP, 0.3)
    assert out.stop == "remote-1" and out.replies == [protocol.stopped("remote-1")]
    assert s.owns("remote-1")  # its final predictions are still this client's own
    assert s.receive(json.dumps({"type": "subscribe", "streams": "*"}), 0.4).replies[0]["streams"] == "*"
    assert s.wants("anything")


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{not json", "bad_message"),
        ("[1, 2]", "bad_message"),
        (json.dumps({"type": "teleport"}), "bad_message"),
        (json.dumps({"type": "subscribe", "streams": 5}), "bad_message"),
        (STOP, "bad_message"),  # no stream
        (json.dumps({"type": "start", "sample_rate": 1000, "encoding": "pcm_s16le"}), "config_invalid"),
        (json.dumps({"type": "start", "sample_rate": 16000, "encoding": "mp3"}), "config_invalid"),
        (json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_f32le", "channels": 3}), "config_invalid"),
        (b"\x00\x01", "invalid_audio_frame"),  # audio before start
    ],
)
def test_bad_input_earns_its_code_and_the_connection_goes_on(message, code):
    s = Session(limits(), now=0.0)
    out = s.receive(message, 0.0)
    assert codes(out) == [code] and out.close is None and s.closed is None
    assert s.receive(json.dumps({"type": "subscribe", "streams": "*"}), 0.1).replies[0]["type"] == "subscribed"


def test_bad_frames_after_start_are_dropped_with_an_error():
    s = Session(limits(), now=0.0)
    opened(s, 0.0)
    assert codes(s.receive(b"\x00\x01\x02", 0.1)) == ["invalid_audio_frame"]  # odd-length s16
    assert codes(s.receive(b"", 0.1)) == ["invalid_audio_frame"]
    assert codes(s.receive(START, 0.2)) == ["config_invalid"]  # a second start
    f32 = Session(limits(), now=0.0)
    f32.receive(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_f32le", "channels": 2}), 0.0)
    f32.stream_opened("remote-2")
    assert codes(f32.receive(np.array([0.1, np.nan], dtype="<f4").tobytes(), 0.1)) == ["invalid_audio_frame"]
    assert f32.receive(np.array([0.1, 0.2], dtype="<f4").tobytes(), 0.1).audio.shape == (1, 2)


def test_a_refused_start_leaves_the_session_usable():
    s = Session(limits(), now=0.0)
    assert s.receive(START, 0.0).start is not None
    out = s.start_refused(ProtocolError("server_busy", "too many remote streams"))
    assert codes(out) == ["server_busy"] and out.close is None
    assert s.stream_id is None and s.pending_start is None
    opened(s, 0.1, "remote-7")


def test_refusals_carry_their_close_codes():
    out = protocol.refusal("server_busy", "too many clients")
    assert codes(out) == ["server_busy"] and out.close.code == 1013
    out = protocol.refusal("unauthorized", "token")
    assert codes(out) == ["unauthorized"] and out.close.code == CLOSE_POLICY


# ------------------------------------------------------------------ budgets


def test_message_size_is_counted_in_bytes_not_characters():
    """Finding 10: 40,000 'é' are 80,000 bytes on the wire, over a 65,536-byte limit."""
    s = Session(limits(max_message_bytes=65536, max_text_bytes_per_s=1e9), now=0.0)
    text = json.dumps({"type": "subscribe", "streams": "*", "pad": "é" * 40_000}, ensure_ascii=False)
    assert len(text) < 65536 < len(text.encode())
    out = s.receive(text, 0.0)
    assert codes(out) == ["message_too_large"] and out.close.code == CLOSE_TOO_BIG
    assert s.receive(START, 0.1) == Outcome()  # closed: further input is ignored


def test_messages_per_second():
    s = Session(limits(max_messages_per_s=10), now=0.0)
    sub = json.dumps({"type": "subscribe", "streams": "*"})
    for i in range(10):
        assert s.receive(sub, 0.0).close is None, i
    out = s.receive(sub, 0.0)
    assert codes(out) == ["rate_limited"] and out.close.code == CLOSE_POLICY
    t = Session(limits(max_messages_per_s=10), now=0.0)
    for i in range(100):  # ten a second for ten seconds is within the rate
        assert t.receive(sub, i * 0.1).close is None


def test_text_bytes_per_second():
    s = Session(limits(max_text_bytes_per_s=4096, max_messages_per_s=1000), now=0.0)
    msg = json.dumps({"type": "subscribe", "streams": "*", "pad": "x" * 1000})
    sent = 0
    while s.closed is None and sent < 100:
        out = s.receive(msg, 0.0)
        sent += 1
    assert 3 * len(msg) <= 4096 < 4 * len(msg)
    assert sent == 4 and codes(out) == ["rate_limited"] and "bytes of text" in out.replies[0]["message"]
    t = Session(limits(max_text_bytes_per_s=4096, max_messages_per_s=1000), now=0.0)
    for i in range(40):  # ~2 KB a second: fine
        assert t.receive(msg, i * 0.5).close is None


def test_the_audio_budget_belongs_to_the_connection_not_the_stream():
    """Finding 1: start/stop cycling used to reset the budget and let 99x real time through."""
    lim = limits(max_audio_realtime_factor=1.5, max_audio_burst_s=2.0, max_starts_per_s=100, max_start_burst=100)
    s = Session(lim, now=0.0)
    now, pushed, closed = 0.0, 0.0, None
    for cycle in range(20):
        opened(s, now, f"remote-{cycle}")
        out = s.receive(s16(1.0), now)
        if out.close is not None:
            closed = out
            break
        pushed += 1.0
        s.receive(STOP, now)
        now += 0.1
    assert closed is not None and codes(closed) == ["rate_limited"] and closed.close.code == CLOSE_POLICY
    assert pushed <= 2.0 + 1.5 * now + 1e-9  # never more than the burst plus 1.5x the elapsed time


def test_real_time_audio_is_never_limited_and_idle_time_does_not_bank_a_flood():
    lim = limits(max_audio_realtime_factor=1.5, max_audio_burst_s=2.0)
    s = Session(lim, now=0.0)
    opened(s, 0.0)
    for k in range(600):  # a minute at real-time pace, 100 ms frames
        assert s.receive(s16(0.1), k * 0.1).close is None
    idle = Session(lim, now=0.0)
    opened(idle, 0.0)
    now = 600.0  # ten minutes of silence earn no more than the burst
    sent = 0
    while idle.closed is None and sent < 100:
        idle.receive(s16(0.1), now)
        sent += 1
    assert sent <= 21


def test_stream_starts_per_second():
    lim = limits(max_starts_per_s=1.0, max_start_burst=4)
    s = Session(lim, now=0.0)
    for i in range(4):
        opened(s, 0.0, f"remote-{i}")
        assert s.receive(STOP, 0.0).stop == f"remote-{i}"
    out = s.receive(START, 0.0)
    assert out.start is None and codes(out) == ["rate_limited"] and out.close.code == CLOSE_POLICY
    t = Session(lim, now=0.0)
    for i in range(20):  # one start a second, forever, is fine
        opened(t, float(i), f"remote-{i}")
        t.receive(STOP, float(i) + 0.5)


def test_recent_streams_are_bounded():
    s = Session(limits(max_starts_per_s=1000, max_start_burst=1000), now=0.0)
    for i in range(50):
        opened(s, 0.0, f"remote-{i}")
        s.receive(STOP, 0.0)
    assert s.owns("remote-49") and not s.owns("remote-0")
    assert len(s._recent) == Session.RECENT_STREAMS


def test_token_bucket():
    b = TokenBucket(rate=2.0, burst=3.0, now=10.0)
    assert b.take(3, 10.0) and not b.take(0.5, 10.0)
    assert b.take(1, 10.5) and not b.take(0.1, 10.5)
    assert not b.take(1, 9.0)  # a clock that goes backwards earns nothing
    assert b.take(3, 100.0) and not b.take(0.1, 100.0)


# ------------------------------------------------------------------ properties

DOCUMENTED_CLOSES = {"message_too_large": CLOSE_TOO_BIG, "rate_limited": CLOSE_POLICY}
REPLY_TYPES = {"error", "subscribed", "started", "stopped"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
typed_messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["subscribe", "start", "stop", "hello", "prediction", ""])},
    optional={
        "streams": st.one_of(st.just("*"), st.lists(st.text(max_size=70), max_size=5), json_values),
        "sample_rate": st.one_of(st.sampled_from([8000, 16000, 44100, 96000, 7999, 96001]), json_values),
        "encoding": st.one_of(st.sampled_from(["pcm_s16le", "pcm_f32le", "mp3"]), json_values),
        "channels": st.one_of(st.integers(-1, 4), json_values),
    },
).map(json.dumps)
texts = st.one_of(typed_messages, st.text(max_size=200), json_values.map(json.dumps))
frames = st.one_of(
    st.binary(max_size=64),
    st.integers(0, 400).map(lambda n: s16(n / 16000)),
    st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=16).map(
        lambda xs: np.array(xs, dtype="<f4").tobytes()
    ),
)
events = st.lists(
    st.tuples(
        st.one_of(texts, frames),
        st.floats(0, 0.5),  # clock advance
        st.booleans(),  # does the daemon accept a start?
    ),
    max_size=60,
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(
    events=events,
    limits=st.builds(
        ServerConfig,
        max_message_bytes=st.integers(16, 4096),
        max_messages_per_s=st.floats(1, 50),
        max_text_bytes_per_s=st.floats(16, 4096),
        max_starts_per_s=st.floats(0.1, 5),
        max_start_burst=st.integers(1, 4),
        max_audio_realtime_factor=st.floats(0.5, 3),
        max_audio_burst_s=st.floats(0.001, 2),
    ).map(Limits),  # a view of a server section with these budgets
)
def test_any_sequence_yields_documented_replies_or_closes_never_an_exception(events, limits):
    now = 0.0
    s = Session(limits, now)
    closed = False
    serial = 0
    for message, dt, accept in events:
        now += dt
        out = s.receive(message, now)
        if out.start is not None:
            assert not closed and s.pending_start == out.start
            serial += 1
            follow = s.stream_opened(f"remote-{serial}") if accept else s.start_refused(
                ProtocolError("server_busy", "too many remote streams")
            )
            assert s.pending_start is None
            assert [m["type"] for m in follow.replies] == (["started"] if accept else ["error"])
            out.replies += follow.replies
        for m in out.replies:
            assert m["type"] in REPLY_TYPES, m
            protocol.dumps(m)  # every reply serialises (no NaN, no numpy types)
            if m["type"] == "error":
                assert m["code"] in ERROR_CODES and m["message"]
        if closed:
            assert out == Outcome(), "a closed session answers nothing"
        elif out.close is not None:
            assert len(out.replies) == 1 and out.replies[0]["type"] == "error"
            assert DOCUMENTED_CLOSES[out.replies[0]["code"]] == out.close.code
            assert out.start is None and out.audio is None and out.stop is None
            closed = True
        if out.audio is not None:
            assert isinstance(message, bytes) and s.stream_id is not None
            assert out.audio.dtype == np.float32 and np.isfinite(out.audio).all()
            assert np.abs(out.audio).max(initial=0) <= 1.0
        if out.stop is not None:
            assert out.replies == [protocol.stopped(out.stop)] and s.stream_id is None
    assert closed == (s.closed is not None)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", "bad_message"),
        ("[1, 2]", "bad_message"),
        ('{"type": "dance"}', "bad_message"),
        ('{"streams": "*"}', "bad_message"),
        ('{"type": "subscribe", "streams": 5}', "bad_message"),
        ('{"type": "start", "sample_rate": 4000, "encoding": "pcm_s16le"}', "config_invalid"),
        ('{"type": "start", "sample_rate": 16000, "encoding": "mp3"}', "config_invalid"),
        ('{"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 3}', "config_invalid"),
        ('{"type": "start", "sample_rate": 16000.5, "encoding": "pcm_s16le"}', "config_invalid"),
        ('{"type": "start", "encoding": "pcm_s16le"}', "config_invalid"),
    ],
)
def test_protocol_rejects_bad_messages_with_their_codes(text, code):
    with pytest.raises(ProtocolError) as exc:
        protocol.parse_client_message(text)
    assert exc.value.code == code


def test_protocol_accepts_good_messages():
    assert protocol.parse_client_message('{"type": "subscribe", "streams": ["a", "a", "b"], "x": 1}') == {
        "type": "subscribe",
        "streams": ["a", "b"],
    }
    assert protocol.parse_client_message('{"type": "start", "sample_rate": 44100, "encoding": "pcm_f32le"}')["channels"] == 1


def test_decode_pcm():
    pcm = np.array([[0, 16384], [-32768, 32767]], dtype="<i2").tobytes()
    np.testing.assert_allclose(protocol.decode_pcm(pcm, "pcm_s16le", 2), [[0, 0.5], [-1, 32767 / 32768]])
    for frame, enc, ch in [(b"\x00" * 3, "pcm_s16le", 1), (b"\x00" * 6, "pcm_f32le", 1), (b"\x00" * 6, "pcm_s16le", 2), (b"", "pcm_s16le", 1)]:
        with pytest.raises(ProtocolError) as exc:
            protocol.decode_pcm(frame, enc, ch)
        assert exc.value.code == "invalid_audio_frame"
    with pytest.raises(ProtocolError):
        protocol.decode_pcm(np.array([np.nan], dtype="<f4").tobytes(), "pcm_f32le", 1)

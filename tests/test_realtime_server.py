"""The daemon's server with real websockets clients on 127.0.0.1: protocol round trips, remote PCM
streams, every error code provoked by real bad input, limits, token and Origin checks, slow clients.

The daemon runs in-process (its own event loop in a thread, port 0) with the tiny ONNX model from
conftest, so each test takes a second or two; test_realtime_cli.py runs it as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager, suppress

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from bench.harness import script
from bench.lib import Metrics
from contract.audio import LABELS, load_audio
from realtime.config import load_daemon_config
from realtime.daemon import Daemon
from realtime.sources import demo_clip_path
from tests.conftest import write_wav

SR = 16_000


class Running:
    """A Daemon serving on a free loopback port from a background thread."""

    def __init__(self, engine, overrides=(), device="none", fast=False):
        self.overrides = list(overrides)
        cfg = load_daemon_config(["server.port=0", "server.drain_timeout_s=0.2", *overrides])
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.daemon = Daemon(cfg, engine, device=device, fast=fast, announce=self._announce)
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _announce(self, line: str) -> None:
        self.lines.append(line)
        self.ready.set()

    def _run(self) -> None:
        self.code = asyncio.run(self.daemon.run())

    def __enter__(self) -> Running:
        self.thread.start()
        assert self.ready.wait(15), "daemon did not start"
        self.port = self.daemon.server.port
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.http = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.daemon.loop.call_soon_threadsafe(self.daemon.stop_event.set)
        self.thread.join(10)
        assert not self.thread.is_alive(), "daemon did not stop"

    def metric(self, name: str, **labels: str) -> float:
        tokens = [o.split("=", 1)[1] for o in self.overrides if o.startswith("server.token=")]
        query = f"?token={tokens[-1]}" if tokens else ""
        text = urllib.request.urlopen(self.http + "/metrics" + query, timeout=5).read().decode()
        return Metrics.parse(text).sum(name, **labels)


@contextmanager
def client(url: str, **kw):
    kw.setdefault("close_timeout", 2)
    with connect(url, open_timeout=5, **kw) as ws:
        hello = json.loads(ws.recv(timeout=5))
        assert hello["type"] == "hello", hello
        ws.hello = hello  # type: ignore[attr-defined]
        yield ws


def recv_json(ws, timeout: float = 5.0, skip: tuple[str, ...] = ("streams",)) -> dict:
    """The next message, skipping stream-list updates (which any client may get at any time)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if msg.get("type") not in skip:
            return msg


def recv_until(ws, cond, timeout: float = 10.0) -> list[dict]:
    """Messages up to and including the first that satisfies ``cond``; bounded in time."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = recv_json(ws, max(0.05, deadline - time.monotonic()))
        got.append(msg)
        if cond(msg):
            return got
    raise AssertionError(f"condition not met in {timeout} s; last: {got[-3:]}")


def expect_error_and_close(ws, code: str, close_code: int) -> dict:
    err = recv_until(ws, lambda m: m["type"] == "error")[-1]
    assert err["code"] == code, err
    with pytest.raises(ConnectionClosed) as exc:
        for _ in range(100):
            ws.recv(timeout=5)
    assert exc.value.rcvd is not None and exc.value.rcvd.code == close_code, exc.value
    return err


def s16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


# ------------------------------------------------------------------ round trips


def test_http_routes(engine):
    with Running(engine) as d:
        health = json.loads(urllib.request.urlopen(d.http + "/healthz", timeout=5).read())
        assert health["status"] == "ok" and health["model"] == "energy-test" and health["backend"] == "onnxruntime"
        assert health["streams"] == [] and "uptime_s" in health
        with urllib.request.urlopen(d.http + "/", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/html")
            assert b"<html" in r.read().lower()
        metrics = urllib.request.urlopen(d.http + "/metrics", timeout=5)
        assert metrics.headers["Content-Type"].startswith("text/plain")
        body = metrics.read().decode()
        for name in ("ser_windows_scored_total", "ser_batch_size_bucket", "ser_inference_seconds_bucket",
                     "ser_end_to_end_latency_seconds_bucket", "ser_windows_dropped_total", "ser_xruns_total", "ser_clients"):
            assert name in body, name
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(d.http + "/../pyproject.toml", timeout=5)
        assert exc.value.code == 404
        req = urllib.request.Request(d.http + "/healthz", headers={"Host": f"attacker.example:{d.port}"})
        with pytest.raises(urllib.error.HTTPError) as exc:  # DNS rebinding: a loopback daemon answers loopback names only
            urllib.request.urlopen(req, timeout=5)
        assert exc.value.code == 403


def test_dashboard_files_are_served_with_their_types(engine):
    from realtime.server import dashboard_dir

    files = {p.name: p for p in dashboard_dir().iterdir()}
    want = {"index.html": "text/html", "app.mjs": "text/javascript", "protocol.mjs": "text/javascript",
            "mic-worklet.js": "text/javascript", "style.css": "text/css"}
    assert set(want) <= set(files), sorted(files)
    with Running(engine) as d:
        for name, ctype in want.items():
            with urllib.request.urlopen(f"{d.http}/{name}", timeout=5) as r:
                assert r.headers["Content-Type"].startswith(ctype)
                assert r.read() == files[name].read_bytes()


def test_remote_stream_44k1_stereo_round_trip(engine):
    """PCM at 44.1 kHz stereo in 100 ms frames: predictions on the hop grid, right times, right numbers."""
    rate = 44_100
    speech = load_audio(demo_clip_path())[: 7 * SR]
    import soxr

    up = soxr.resample(speech, SR, rate)[: 7 * rate]
    stereo = np.stack([up, 0.5 * up], axis=1)
    with Running(engine) as d, client(d.url) as ws:
        assert ws.hello["protocol"] == 1 and ws.hello["model"]["labels"] == list(LABELS)
        assert ws.hello["model"]["hop_s"] == 0.5 and ws.hello["model"]["window_s"] == 5.0
        ws.send(json.dumps({"type": "start", "sample_rate": rate, "encoding": "pcm_s16le", "channels": 2}))
        started = recv_until(ws, lambda m: m["type"] == "started")[-1]
        sid = started["stream"]
        step = rate // 10
        for i in range(0, len(stereo), step):
            ws.send(s16(stereo[i : i + step]))
        ws.send(json.dumps({"type": "stop"}))
        msgs = recv_until(ws, lambda m: m["type"] == "prediction" and m["t_end"] >= 7.0 - 1e-6, timeout=15)
        preds = [m for m in msgs if m["type"] == "prediction"]
        assert any(m["type"] == "stopped" and m["stream"] == sid for m in msgs)
    assert all(p["stream"] == sid for p in preds)
    assert [p["seq"] for p in preds] == list(range(len(preds)))
    assert [p["t_end"] for p in preds] == pytest.approx([1.0 + 0.5 * k for k in range(13)], abs=1e-6)
    assert [p["t_start"] for p in preds] == pytest.approx([max(0.0, 0.5 * k - 4.0) for k in range(13)], abs=1e-6)
    mono16 = soxr.resample(stereo.astype(np.float32).mean(axis=1), rate, SR)  # what the daemon should have heard
    last = preds[-1]
    want = engine.infer(mono16[None, 2 * SR : 7 * SR])[0]
    got = np.array([last["probs"][lab] for lab in LABELS])
    np.testing.assert_allclose(got, want, atol=2e-3)
    for p in preds:
        assert set(p["probs"]) == set(LABELS) == set(p["smoothed"])
        assert abs(sum(p["smoothed"].values()) - 1) < 1e-4
        assert p["voiced"] is True and p["top"] in LABELS and p["latency_ms"] >= 0


@pytest.mark.slow
def test_subscribers_get_local_source_predictions_and_silence_is_unvoiced(engine, tmp_path):
    # Real-time pace, not --fast: the silent windows end 5-7 s after the start, so the subscription is in place
    # before them even on a busy machine (with --fast they were published before it arrived, and none was seen).
    clip = np.concatenate([np.zeros(7 * SR, dtype=np.float32), load_audio(demo_clip_path())[: 6 * SR]])
    path = write_wav(tmp_path / "quiet_then_speech.wav", clip)
    with Running(engine, device=str(path)) as d, client(d.url) as ws:
        ws.send(json.dumps({"type": "subscribe", "streams": ["file"]}))
        msgs = recv_until(ws, lambda m: m["type"] == "prediction" and m["t_end"] >= 12.0, timeout=30)
    preds = {round(m["t_end"], 3): m for m in msgs if m["type"] == "prediction"}
    silent = [p for t, p in preds.items() if t <= 7.0]
    assert silent and all(not p["voiced"] and p["top"] is None for p in silent)
    assert max(max(p["smoothed"].values()) for p in silent) < 0.2  # no confident emotion in silence
    assert preds[12.0]["voiced"] and preds[12.0]["top"] in LABELS


def test_subscription_filters_streams(engine):
    with Running(engine) as d, client(d.url) as a, client(d.url) as b:
        b.send(json.dumps({"type": "subscribe", "streams": ["nothing-here"]}))
        assert recv_json(b)["type"] == "subscribed"
        a.send(json.dumps({"type": "start", "sample_rate": SR, "encoding": "pcm_f32le"}))
        sid = recv_until(a, lambda m: m["type"] == "started")[-1]["stream"]
        a.send(np.full(2 * SR, 0.1, dtype="<f4").tobytes())
        recv_until(a, lambda m: m["type"] == "prediction" and m["stream"] == sid)  # the owner gets its stream
        with pytest.raises(TimeoutError):
            while True:  # b sees the stream list change but no prediction
                assert recv_json(b, 0.5)["type"] != "prediction"


# ------------------------------------------------------------------ errors and limits


class GoodClient(threading.Thread):
    """Streams speech at real-time pace on its own stream and records what comes back."""

    def __init__(self, url: str, seconds: float) -> None:
        super().__init__(daemon=True)
        self._stack = ExitStack()
        self.ws = self._stack.enter_context(connect(url, open_timeout=5))
        assert json.loads(self.ws.recv(timeout=5))["type"] == "hello"
        self.ws.send(json.dumps({"type": "start", "sample_rate": SR, "encoding": "pcm_s16le", "channels": 1}))
        self.stream = recv_until(self.ws, lambda m: m["type"] == "started")[-1]["stream"]
        self.audio = load_audio(demo_clip_path())[: int(seconds * SR)]
        self.messages: list[dict] = []
        self.reader = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        try:
            for raw in self.ws:
                self.messages.append(json.loads(raw))
        except ConnectionClosed:
            pass

    def run(self) -> None:
        self.reader.start()
        t0 = time.monotonic()
        step = SR // 10
        for k, i in enumerate(range(0, len(self.audio), step)):
            self.ws.send(s16(self.audio[i : i + step]))
            time.sleep(max(0.0, t0 + (k + 1) * 0.1 - time.monotonic()))

    def finish(self) -> list[dict]:
        self.join(30)
        self.ws.send(json.dumps({"type": "stop"}))
        deadline = time.monotonic() + 10
        end = len(self.audio) / SR
        while time.monotonic() < deadline and not any(
            m["type"] == "prediction" and m["t_end"] >= end - 1e-6 for m in self.messages
        ):
            time.sleep(0.05)
        self._stack.close()
        self.reader.join(5)
        return self.messages


@pytest.mark.slow
def test_every_error_code_while_a_good_client_keeps_streaming(engine):
    overrides = [
        "server.max_clients=3",
        "server.max_message_bytes=65536",
        "server.max_messages_per_s=50",
        "server.max_remote_streams=2",
    ]
    with Running(engine, overrides) as d:
        good = GoodClient(d.url, seconds=5.0)
        good.start()
        with client(d.url) as bad:
            bad.send("{this is not json")
            assert recv_json(bad)["code"] == "bad_message"
            bad.send(json.dumps({"type": "teleport"}))
            err = recv_json(bad)
            assert err["code"] == "bad_message" and "teleport" in err["message"]
            bad.send(b"\x00\x01\x02")  # audio before start
            assert recv_json(bad)["code"] == "invalid_audio_frame"
            bad.send(json.dumps({"type": "start", "sample_rate": 1000, "encoding": "pcm_s16le"}))
            assert recv_json(bad)["code"] == "config_invalid"
            bad.send(json.dumps({"type": "start", "sample_rate": 22050, "encoding": "pcm_s16le", "channels": 1}))
            assert recv_json(bad)["type"] == "started"
            bad.send(b"\x00\x01\x02")  # odd-length s16 frame
            err = recv_json(bad)
            assert err["code"] == "invalid_audio_frame" and "3 bytes" in err["message"]
            bad.send(s16(np.zeros(2205)))  # a good frame after a bad one is accepted
            with client(d.url) as third:  # third client; its remote stream is one too many
                third.send(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_f32le"}))
                assert recv_until(third, lambda m: m["type"] == "error")[-1]["code"] == "server_busy"
                with connect(d.url, open_timeout=5) as fourth:  # one client too many
                    expect_error_and_close(fourth, "server_busy", 1013)
            bad.send(json.dumps({"type": "subscribe", "streams": "*"}))  # still served after all that
            assert recv_until(bad, lambda m: m["type"] == "subscribed")
            bad.send("x" * 70_000)  # oversized message
            expect_error_and_close(bad, "message_too_large", 1009)
        with client(d.url) as flood:
            with suppress(ConnectionClosed):  # the close may come while we still send
                for _ in range(120):
                    flood.send(json.dumps({"type": "subscribe", "streams": "*"}))
            msgs = []
            with pytest.raises(ConnectionClosed) as exc:
                for _ in range(500):
                    msgs.append(recv_json(flood))
            assert "rate_limited" in [m.get("code") for m in msgs]
            assert exc.value.rcvd.code == 1008
        with connect(d.url, open_timeout=5, origin="http://evil.example") as foreign:
            err = expect_error_and_close(foreign, "unauthorized", 1008)
            assert "origin" in err["message"]
        messages = good.finish()
        errors_total = d.metric("ser_protocol_errors_total")
    assert not [m for m in messages if m["type"] == "error"]
    preds = [m for m in messages if m["type"] == "prediction" and m["stream"] == good.stream]
    assert [p["seq"] for p in preds] == list(range(9)), "the good client lost predictions"  # 1.0 .. 5.0 s
    assert errors_total >= 10


def test_token_and_origin(engine):
    with Running(engine, ["server.token=s3cret", "server.allowed_origins=[https://app.example]"]) as d:
        with connect(d.url, open_timeout=5) as ws:
            expect_error_and_close(ws, "unauthorized", 1008)
        with connect(d.url + "?token=wrong", open_timeout=5) as ws:
            expect_error_and_close(ws, "unauthorized", 1008)
        with client(d.url + "?token=s3cret"):
            pass
        with client(d.url, additional_headers={"Authorization": "Bearer s3cret"}):
            pass
        with client(d.url + "?token=s3cret", origin=f"http://127.0.0.1:{d.port}"):  # the served page itself
            pass
        with client(d.url + "?token=s3cret", origin="https://app.example"):  # allow-listed
            pass
        with connect(d.url + "?token=s3cret", open_timeout=5, origin="https://evil.example") as ws:
            expect_error_and_close(ws, "unauthorized", 1008)
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(d.http + "/metrics", timeout=5)
        assert exc.value.code == 401
        assert urllib.request.urlopen(d.http + "/metrics?token=s3cret", timeout=5).status == 200
    with pytest.raises((OSError, InvalidStatus)):
        connect(f"ws://127.0.0.1:{d.port}/ws", open_timeout=2)  # stopped means stopped


@pytest.mark.slow
def test_slow_client_loses_its_oldest_predictions_not_others(engine, tmp_path):
    path = write_wav(tmp_path / "speech.wav", load_audio(demo_clip_path()))
    overrides = ["server.client_queue=16"]
    with Running(engine, overrides, device=str(path), fast=True) as d:
        slow = connect(d.url, open_timeout=5, max_queue=2, close_timeout=0.5).__enter__()
        assert json.loads(slow.recv(timeout=5))["type"] == "hello"
        slow.send(json.dumps({"type": "subscribe", "streams": "*"}))
        with client(d.url) as fast:
            fast.send(json.dumps({"type": "subscribe", "streams": "*"}))
            deadline = time.monotonic() + 40  # bounded; ends as soon as both are seen (a busy CPU is slower)
            count = dropped = 0
            while time.monotonic() < deadline and (count < 300 or dropped == 0):
                if recv_json(fast)["type"] == "prediction":
                    count += 1
                    if count % 50 == 0:
                        dropped = d.metric("ser_client_messages_dropped_total")
            assert count >= 300  # the fast reader keeps being served while the slow one is stuck
            assert dropped > 0, (count, dropped)
            health = json.loads(urllib.request.urlopen(d.http + "/healthz", timeout=5).read())
            assert health["clients"] == 2
        slow.close()


def test_audio_much_faster_than_real_time_is_rate_limited(engine):
    with Running(engine, ["server.max_audio_burst_s=2"]) as d, client(d.url) as ws:
        ws.send(json.dumps({"type": "start", "sample_rate": SR, "encoding": "pcm_s16le"}))
        recv_until(ws, lambda m: m["type"] == "started")
        with suppress(ConnectionClosed):
            for _ in range(40):  # 4 s of audio in a few milliseconds
                ws.send(s16(np.zeros(SR // 10)))
        err = expect_error_and_close(ws, "rate_limited", 1008)
        assert "real time" in err["message"]
        with client(d.url):  # the daemon is fine
            pass


def test_batch_cap_on_a_cpu_engine(engine):
    with Running(engine) as d:
        assert json.loads(urllib.request.urlopen(d.http + "/healthz", timeout=5).read())["max_batch"] == 8
    with Running(engine, ["scheduler.max_batch_cpu=null"]) as d:
        assert json.loads(urllib.request.urlopen(d.http + "/healthz", timeout=5).read())["max_batch"] == 32


# ------------------------------------------------------------------ hostile clients (issue 11)


def in_loop(d: Running, fn):
    """Run ``fn()`` on the daemon's event loop (where its state lives) and return the result."""

    async def call():
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), d.daemon.loop).result(5)


def cycle(ws, times: int, audio_s: float = 0.0) -> tuple[list[dict], int | None]:
    """start, (audio_s of audio in 100 ms frames), stop, ``times`` times: the messages seen and the close code."""
    seen: list[dict] = []
    try:
        for _ in range(times):
            ws.send(json.dumps({"type": "start", "sample_rate": SR, "encoding": "pcm_s16le"}))
            seen += recv_until(ws, lambda m: m["type"] in ("started", "error"))
            for _ in range(int(round(audio_s * 10))):
                ws.send(s16(np.zeros(SR // 10)))
            ws.send(json.dumps({"type": "stop"}))
            seen += recv_until(ws, lambda m: m["type"] in ("stopped", "error"))
        return seen, None
    except ConnectionClosed as exc:
        while True:  # what was queued before the close
            try:
                seen.append(json.loads(ws.recv(timeout=1)))
            except (ConnectionClosed, TimeoutError):
                break
        return seen, exc.rcvd.code if exc.rcvd is not None else None


def test_start_stop_cycling_cannot_reset_the_audio_budget(engine):
    """Finding 1: each start used to reset the audio budget, so cycling pushed audio at 99x real time."""
    overrides = ["server.max_audio_burst_s=2", "server.max_starts_per_s=100", "server.max_start_burst=100"]
    with Running(engine, overrides) as d, client(d.url) as ws:
        seen, close = cycle(ws, times=8, audio_s=1.0)  # 8 s of audio in well under a second, 1 s per stream
        errors = [m for m in seen if m["type"] == "error"]
        assert close == 1008 and [e["code"] for e in errors] == ["rate_limited"], seen
        assert "per connection" in errors[0]["message"]


def test_start_stop_cycling_is_rate_limited(engine):
    """Finding 1: ten starts a second were accepted; now a burst of max_start_burst, then max_starts_per_s."""
    with Running(engine) as d, client(d.url) as ws:
        assert ws.hello["limits"]["max_start_burst"] == 4
        seen, close = cycle(ws, times=10)
        errors = [m for m in seen if m["type"] == "error"]
        assert close == 1008 and [e["code"] for e in errors] == ["rate_limited"], seen
        assert "stream starts" in errors[0]["message"]
        assert sum(m["type"] == "started" for m in seen) == 4
        with client(d.url) as other:  # the daemon is fine, and the next client may start
            assert cycle(other, times=1)[1] is None


def test_a_client_that_never_reads_keeps_a_bounded_outbox_with_the_latest_stream_list(engine):
    """Finding 2: every stream change queued a `streams` message for a non-reader, past any cap."""
    cap = 16
    overrides = [f"server.client_queue={cap}", "server.send_buffer_bytes=4096",
                 "server.max_starts_per_s=1000", "server.max_start_burst=1000", "server.max_messages_per_s=5000"]
    with Running(engine, overrides) as d, ExitStack() as stack:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small TCP window
        sock.connect(("127.0.0.1", d.port))
        lazy = stack.enter_context(connect(d.url, sock=sock, open_timeout=5, max_queue=1, close_timeout=0.2))
        holders = [stack.enter_context(client(d.url, close_timeout=0.2)) for _ in range(10)]
        for h in holders:  # ten streams make each stream list about a kilobyte
            h.send(json.dumps({"type": "start", "sample_rate": SR, "encoding": "pcm_s16le"}))
        with client(d.url) as cycler:
            worst = 0
            for _ in range(15):
                seen, close = cycle(cycler, times=10)  # 300 stream-list changes in all
                assert close is None, seen[-3:]
                worst = max(worst, in_loop(d, lambda: max(len(c.outbox) for c in d.daemon.server.clients.values())))
            assert worst <= cap, worst
        want = in_loop(d, lambda: [s["id"] for s in d.daemon.stream_list()])
        assert len(want) == 10
        last = None  # the non-reader was not closed, and the list it ends up with is the latest
        with suppress(TimeoutError):
            for _ in range(1000):
                msg = json.loads(lazy.recv(timeout=2))
                if msg["type"] == "streams":
                    last = [s["id"] for s in msg["streams"]]
                    if last == want:
                        break
        assert last == want


def raw_http(port: int, lines: list[str]) -> tuple[int, bytes]:
    """Send a hand-written request (headers a proper client would never send); status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        with suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


UPGRADE = ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
           "Sec-WebSocket-Version: 13"]


@pytest.mark.parametrize(
    "lines",
    [
        ["GET /healthz HTTP/1.1", "Host: 127.0.0.1", "Host: 127.0.0.1"],
        ["GET /ws HTTP/1.1", "Host: 127.0.0.1", "Host: evil.example", *UPGRADE],
        ["GET /ws HTTP/1.1", "Host: 127.0.0.1", "Authorization: Bearer s3cret", "Authorization: Bearer x", *UPGRADE],
        ["GET /metrics HTTP/1.1", "Host: 127.0.0.1", "Authorization: Bearer s3cret", "Authorization: Bearer s3cret"],
        ["GET /healthz HTTP/1.1", "Host: [::1"],
        ["GET /ws HTTP/1.1", "Host: [::1", *UPGRADE],
        ["GET /ws?token=s3cret HTTP/1.1", "Host: localhost", "Origin: http://localhost", "Origin: http://evil.example",
         *UPGRADE],
        ["GET //[::1/ HTTP/1.1", "Host: localhost"],
    ],
    ids=["dup-host", "dup-host-ws", "dup-auth-ws", "dup-auth-metrics", "bracket-host", "bracket-host-ws",
         "dup-origin-ws", "bad-target"],
)
def test_malformed_headers_get_400_not_500_or_a_traceback(engine, caplog, lines):
    """Finding 8: these gave HTTP 500 or close 1011 with an ERROR traceback, before any authentication."""
    with Running(engine, ["server.token=s3cret"]) as d:
        caplog.clear()
        status, body = raw_http(d.port, lines)
        assert status == 400, (status, body)
        assert b"bad request" in body
        with client(d.url + "?token=s3cret"):  # still serving
            pass
        assert d.metric("ser_connections_refused_total", reason="bad_request") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text


def test_healthz_needs_the_token_and_names_no_file_or_device(engine, tmp_path):
    """Finding 9: /healthz answered without the token and listed file paths and device names."""
    secret_dir = tmp_path / "private-recordings"
    path = write_wav(secret_dir / "board-meeting.wav", load_audio(demo_clip_path())[: 3 * SR])
    with Running(engine, ["server.token=s3cret"], device=str(path)) as d:
        for url, headers in ((d.http + "/healthz", {}), (d.http + "/healthz?token=wrong", {}),
                             (d.http + "/healthz", {"Authorization": "Bearer wrong"})):
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5)
            assert exc.value.code == 401
        deadline = time.monotonic() + 10
        while True:
            req = urllib.request.Request(d.http + "/healthz", headers={"Authorization": "Bearer s3cret"})
            body = urllib.request.urlopen(req, timeout=5).read().decode()
            health = json.loads(body)
            if health["streams"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert [s["id"] for s in health["streams"]] == ["file"]
        assert health["streams"][0]["kind"] == "file"
        for secret in ("board-meeting", "private-recordings", str(tmp_path)):
            assert secret not in body, body
        assert json.loads(urllib.request.urlopen(d.http + "/healthz?token=s3cret", timeout=5).read())["model"]


def test_text_is_measured_in_bytes_not_characters(engine):
    """Finding 10: 40,000 two-byte characters (80 kB) passed a 64 kB limit counted in characters."""
    overrides = ["server.max_message_bytes=65536", "server.max_text_bytes_per_s=1000000"]
    with Running(engine, overrides) as d, client(d.url) as ws:
        ws.send(json.dumps({"type": "subscribe", "streams": "*", "pad": "é" * 40_000}, ensure_ascii=False))
        err = expect_error_and_close(ws, "message_too_large", 1009)
        assert "80" in err["message"]


@pytest.mark.slow
def test_ser_client_fast_on_a_long_file_paces_itself_and_finishes(engine, tmp_path):
    """Finding 10: `ser-client --fast` on a file over the audio burst was closed as rate_limited, then waited 30 s."""
    speech = load_audio(demo_clip_path())
    path = write_wav(tmp_path / "long.wav", np.tile(speech, 3)[: 9 * SR])
    with Running(engine, ["server.max_audio_burst_s=2"]) as d:
        p = subprocess.run([*script("ser-client"), d.url, "--device", str(path), "--fast", "--json"],
                           capture_output=True, text=True, timeout=40)
    assert p.returncode == 0, p.stderr
    assert "rate_limited" not in p.stderr and "closed" not in p.stderr
    preds = [json.loads(line) for line in p.stdout.splitlines()]
    assert preds and preds[-1]["t_end"] == pytest.approx(9.0, abs=1e-3)


@pytest.mark.slow
def test_ser_client_waits_for_a_stream_slot_or_gives_up_in_one_line(engine, tmp_path):
    """Found by bench/hostile.py (a client joining mid-attack): with every stream slot taken, ser-client
    streamed anyway, each frame was refused as invalid_audio_frame, and it waited 30 s for a last
    prediction. Now it sends no audio before `started`, asks again while the daemon is busy, and gives up
    after --wait with one line."""
    speech = load_audio(demo_clip_path())
    path = write_wav(tmp_path / "short.wav", speech[: 2 * SR])
    start = {"type": "start", "sample_rate": SR, "encoding": "pcm_s16le"}
    with Running(engine, ["server.max_remote_streams=1"]) as d, client(d.url) as holder:
        cmd = [*script("ser-client"), d.url, "--json", "--device", str(path)]
        holder.send(json.dumps(start))
        assert recv_json(holder)["type"] == "started"  # the one slot is taken
        p = subprocess.run([*cmd, "--wait", "1"], capture_output=True, text=True, timeout=30)
        assert p.returncode == 1, p.stderr
        assert "busy" in p.stderr and "gave up after 1 s" in p.stderr and "Traceback" not in p.stderr
        assert "invalid_audio_frame" not in p.stderr and p.stdout == ""
        waiting = subprocess.Popen([*cmd, "--wait", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.5)  # it is asking again meanwhile
            holder.send(json.dumps({"type": "stop"}))
            out, err = waiting.communicate(timeout=40)
        finally:
            waiting.kill()
    assert waiting.returncode == 0, err
    assert "asking again" in err and "invalid_audio_frame" not in err
    preds = [json.loads(line) for line in out.splitlines()]
    assert preds and preds[-1]["t_end"] == pytest.approx(2.0, abs=1e-3)


def test_public_health_keeps_state_and_drops_names():
    from realtime.server import public_health

    state = {
        "status": "degraded",
        "device": "cpu",
        "source": {"kind": "device", "state": "reconnecting", "device_name": "Blue Yeti"},
        "streams": [{"id": "file", "kind": "file", "sample_rate": 44100, "channels": 2, "source": "/home/me/x.wav"}],
    }
    out = public_health(state)
    assert out["status"] == "degraded" and out["device"] == "cpu"
    assert out["source"] == {"kind": "device", "state": "reconnecting"}
    assert out["streams"] == [{"id": "file", "kind": "file", "sample_rate": 44100, "channels": 2}]
    assert "Blue Yeti" not in json.dumps(out) and "x.wav" not in json.dumps(out)


def test_stream_churn_sends_each_client_a_few_stream_lists_not_one_per_change(engine):
    """Found by bench/hostile.py: each start/stop cost one `streams` message per connected client."""
    from realtime.server import STREAMS_UPDATE_INTERVAL_S

    overrides = ["server.max_starts_per_s=1000", "server.max_start_burst=1000", "server.max_messages_per_s=5000"]
    with Running(engine, overrides) as d, client(d.url) as watcher, client(d.url) as cycler:
        t0 = time.monotonic()
        assert cycle(cycler, times=40)[1] is None  # 80 changes of the stream list
        lists = []
        deadline = time.monotonic() + 2 * STREAMS_UPDATE_INTERVAL_S + 1.0
        with suppress(TimeoutError):
            while time.monotonic() < deadline:
                msg = json.loads(watcher.recv(timeout=max(0.01, deadline - time.monotonic())))
                if msg["type"] == "streams":
                    lists.append([s["id"] for s in msg["streams"]])
        elapsed = time.monotonic() - t0
    assert lists and lists[-1] == []  # the latest list arrives: every cycled stream is gone
    assert len(lists) <= elapsed / STREAMS_UPDATE_INTERVAL_S + 2, (len(lists), elapsed)


def test_shutdown_closes_a_client_that_keeps_sending_with_1001(engine):
    """Found by bench/hostile.py: a message arriving during the shutdown drain ended the handler, and
    websockets closed that client with 1000 (normal) before the daemon's 1001 and its last messages."""
    d = Running(engine).__enter__()
    ws = connect(d.url, open_timeout=5, close_timeout=2).__enter__()
    json.loads(ws.recv(timeout=5))
    ws.send(json.dumps({"type": "start", "sample_rate": SR, "encoding": "pcm_s16le"}))
    recv_until(ws, lambda m: m["type"] == "started")
    stop = threading.Event()

    def feed() -> None:
        with suppress(ConnectionClosed):
            while not stop.is_set():
                ws.send(s16(np.zeros(SR // 100)))  # 10 ms frames, 100 a second: within every budget
                time.sleep(0.01)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    time.sleep(0.5)
    d.__exit__(None, None, None)
    stop.set()
    feeder.join(5)
    with pytest.raises(ConnectionClosed) as exc:
        for _ in range(1000):
            ws.recv(timeout=5)
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 1001, exc.value


def test_a_client_that_floods_and_never_reads_is_closed_and_forgotten(engine):
    """Its errors fill its queue (they cannot be dropped): it is closed as not reading, within a bound,
    though its full buffers keep even the close frame from reaching it (found by bench/hostile.py)."""
    overrides = ["server.client_queue=16", "server.send_buffer_bytes=4096", "server.max_messages_per_s=100000",
                 "server.max_text_bytes_per_s=100000000"]
    with Running(engine, overrides) as d, ExitStack() as stack:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", d.port))
        ws = stack.enter_context(connect(d.url, sock=sock, open_timeout=5, max_queue=1, close_timeout=0.2))
        with suppress(ConnectionClosed, OSError):
            for _ in range(3000):  # 3000 errors of ~100 bytes: far past 16 queued plus the socket buffers
                ws.send("{not json")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and in_loop(d, lambda: len(d.daemon.server.clients)):
            time.sleep(0.05)
        assert in_loop(d, lambda: len(d.daemon.server.clients)) == 0
        assert d.metric("ser_clients_closed_total", reason="not_reading") == 1

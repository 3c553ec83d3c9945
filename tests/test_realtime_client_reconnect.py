"""``ser-client --reconnect``: the reconnect policy alone (no network), the loop that applies it with a fake
connection (no network), and a client that outlives a killed and restarted ``ser-listen`` (slow).

The daemon's port is picked here (a free loopback port) rather than by the daemon, because the restarted
daemon must come back on the same one. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.frames import Close
from websockets.http11 import Response
from websockets.sync.client import connect

from bench.harness import ListenProcess, script
from contract.audio import load_audio
from realtime import client as client_mod
from realtime.client import (
    RECONNECT_JITTER,
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    RETRY_CLOSE_CODES,
    ClientError,
    ReconnectPolicy,
    describe_failure,
)
from realtime.sources import demo_clip_path
from tests.conftest import write_wav

REPO = Path(__file__).resolve().parents[1]
SR = 16_000


def closed(code: int | None, reason: str = "") -> ConnectionClosed:
    """What websockets raises when the daemon closes with ``code`` (None: no close frame, the daemon died)."""
    return ConnectionClosed(None if code is None else Close(code, reason), None)


def http(status: int) -> InvalidStatus:
    return InvalidStatus(Response(status, "", Headers()))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ the policy, no network


@pytest.mark.parametrize("code", [1001, 1011, 1012, 1013])
def test_going_away_failing_restarting_and_busy_closes_are_retried(code):
    assert ReconnectPolicy.retries(closed(code, "bye"))


def test_a_connection_that_ended_without_a_close_frame_counts_as_1006_and_is_retried():
    exc = closed(None)
    assert client_mod.close_code(exc) == 1006 and ReconnectPolicy.retries(exc)
    assert describe_failure(exc) == "connection lost (code 1006)"
    assert sorted(RETRY_CLOSE_CODES) == [1001, 1006, 1011, 1012, 1013]


@pytest.mark.parametrize("code, reason", [(1008, "unauthorized"), (1008, "rate limit exceeded"), (1003, ""),
                                          (1007, ""), (1009, "message too large"), (1000, "")])
def test_client_faults_and_a_deliberate_close_are_not_retried(code, reason):
    assert not ReconnectPolicy.retries(closed(code, reason))


@pytest.mark.parametrize("exc", [ConnectionRefusedError(111, "Connect call failed"), ConnectionResetError(),
                                 TimeoutError("timed out during opening handshake"),
                                 OSError("Multiple exceptions: [Errno 111] ..., [Errno 111] ..."),
                                 InvalidMessage("did not receive a valid HTTP response"),
                                 http(502), http(503), http(504)])
def test_a_daemon_that_is_down_or_behind_a_proxy_without_a_replica_is_retried(exc):
    assert ReconnectPolicy.retries(exc)


@pytest.mark.parametrize("exc", [http(400), http(401), http(403), http(404), ClientError("refused"), ValueError()])
def test_a_refused_handshake_or_a_client_error_is_not_retried(exc):
    assert not ReconnectPolicy.retries(exc)


def test_backoff_doubles_from_the_minimum_up_to_the_cap():
    clock = FakeClock()
    policy = ReconnectPolicy(for_s=1000, clock=clock, rand=lambda: 0.0)  # no jitter drawn: the nominal waits
    delays = []
    for _ in range(8):
        delays.append(policy.next_delay())
        clock.now += delays[-1]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert (RECONNECT_MIN_S, RECONNECT_MAX_S) == (0.5, 8.0) and policy.attempt == 8


def test_jitter_shortens_each_wait_by_at_most_its_share_and_spreads_clients():
    rng = random.Random(7)
    for attempt in range(1, 8):
        nominal = min(RECONNECT_MAX_S, RECONNECT_MIN_S * 2 ** (attempt - 1))
        draws = []
        for _ in range(200):
            policy = ReconnectPolicy(for_s=1000, clock=FakeClock(), rand=rng.random)
            policy.attempt = attempt - 1
            draws.append(policy.next_delay())
        assert all(nominal * (1 - RECONNECT_JITTER) <= d <= nominal for d in draws), (attempt, min(draws), max(draws))
        assert max(draws) - min(draws) > 0.3 * RECONNECT_JITTER * nominal  # spread, not one instant
    edge = ReconnectPolicy(for_s=1000, clock=FakeClock(), rand=lambda: 0.999999)
    assert edge.next_delay() == pytest.approx(RECONNECT_MIN_S * (1 - RECONNECT_JITTER), abs=1e-5)


def test_gives_up_once_failing_for_the_deadline_and_the_last_wait_ends_on_it():
    clock = FakeClock()
    policy = ReconnectPolicy(for_s=10, clock=clock, rand=lambda: 0.0)
    waited = []
    for _ in range(100):  # bounded: far more than the 5 attempts 10 s allow
        delay = policy.next_delay()
        if delay is None:
            break
        waited.append(delay)
        clock.now += delay + 0.05  # each attempt itself takes a little time
    assert waited[:4] == [0.5, 1.0, 2.0, 4.0]
    assert len(waited) == 5 and 0 < waited[-1] < 8.0  # cut short to end at the deadline ...
    assert clock.now - 100.0 >= 10  # ... and given up only once 10 s have passed
    assert policy.next_delay() is None


def test_a_working_connection_starts_the_backoff_and_the_deadline_over():
    clock = FakeClock()
    policy = ReconnectPolicy(for_s=5, clock=clock, rand=lambda: 0.0)
    assert not policy.was_connected
    policy.connected()
    for _ in range(3):
        clock.now += policy.next_delay()
    clock.now += 1.0
    policy.connected()
    clock.now += 100.0  # a long healthy connection: the next loss has its own full deadline
    assert policy.was_connected and policy.next_delay() == 0.5 and policy.attempt == 1


def test_zero_seconds_to_reconnect_gives_up_at_the_first_loss():
    assert ReconnectPolicy(for_s=0, clock=FakeClock()).next_delay() is None


@pytest.mark.parametrize("kw", [{"min_s": 0}, {"min_s": 2, "max_s": 1}, {"jitter": 1.0}, {"jitter": -0.1},
                                {"for_s": -1}])
def test_a_nonsensical_policy_is_refused(kw):
    with pytest.raises(ValueError):
        ReconnectPolicy(**kw)


def test_failures_are_described_in_a_few_words():
    assert describe_failure(closed(1012, "service restart")) == "connection lost (code 1012: service restart)"
    assert describe_failure(ConnectionRefusedError(111, "x")) == "cannot connect (connection refused)"
    assert describe_failure(TimeoutError()) == "cannot connect (timed out)"
    assert describe_failure(http(503)) == "cannot connect (HTTP 503)"


# ------------------------------------------------------------------ the loop that applies it, fake connections


class FakeConnect:
    """Stands for websockets' ``connect``: each call takes the next outcome, an exception or a connection."""

    def __init__(self, outcomes: list[BaseException | None]) -> None:
        self.outcomes = outcomes
        self.calls = 0

    def __call__(self, url: str, **kw: Any) -> FakeConnect:
        return self

    async def __aenter__(self) -> object:
        outcome = self.outcomes[self.calls]
        self.calls += 1
        if outcome is not None:
            raise outcome
        return object()

    async def __aexit__(self, *exc: object) -> None:
        return None


class FakeSession:
    """Opens fine each time; ``run`` raises the next of ``losses`` (None: finishes with 0)."""

    def __init__(self, losses: list[BaseException | None]) -> None:
        self.losses = losses
        self.opened = 0

    async def open(self, ws: Any) -> str:
        self.opened += 1
        return f"streaming as remote-{self.opened}"

    async def run(self, ws: Any) -> int:
        loss = self.losses.pop(0)
        if loss is not None:
            raise loss
        return 0

    def resumable(self) -> bool:
        return True


def serve(monkeypatch, connects: list, losses: list, policy: ReconnectPolicy | None) -> tuple[FakeSession, int]:
    monkeypatch.setattr(client_mod, "connect", FakeConnect(connects))
    session = FakeSession(losses)
    return session, asyncio.run(asyncio.wait_for(client_mod._serve("ws://fake/ws", session, policy), 10))


def fast_policy(**kw: Any) -> ReconnectPolicy:
    return ReconnectPolicy(min_s=0.001, max_s=0.004, **kw)


def test_a_lost_connection_is_resumed_after_refusals_with_one_line_each(monkeypatch, capsys):
    refused = ConnectionRefusedError(111, "Connect call failed")
    session, code = serve(monkeypatch, [None, refused, refused, None], [closed(None), None], fast_policy())
    assert code == 0 and session.opened == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4, err
    assert re.fullmatch(r"ser-client: connection lost \(code 1006\); reconnecting in 0\.0 s \(attempt 1\)", err[0])
    assert "cannot connect (connection refused)" in err[1] and "(attempt 2)" in err[1] and "(attempt 3)" in err[2]
    assert err[3] == "ser-client: reconnected; streaming as remote-2"


def test_without_a_policy_or_for_a_client_fault_the_loss_propagates(monkeypatch, capsys):
    with pytest.raises(ConnectionClosed):
        serve(monkeypatch, [None], [closed(None)], None)
    with pytest.raises(ConnectionClosed) as exc:
        serve(monkeypatch, [None], [closed(1008, "unauthorized")], fast_policy())
    assert exc.value.rcvd.code == 1008
    assert capsys.readouterr().err == ""


def test_a_first_connection_waits_for_a_daemon_that_is_down_but_not_for_a_wrong_host(monkeypatch, capsys):
    import socket

    refused = ConnectionRefusedError(111, "x")
    session, code = serve(monkeypatch, [refused, refused, None], [None], fast_policy())  # started before its daemon
    assert code == 0 and session.opened == 1
    assert "cannot connect (connection refused)" in capsys.readouterr().err
    with pytest.raises(socket.gaierror):  # a host name that does not resolve: said at once
        serve(monkeypatch, [socket.gaierror(-2, "Name or service not known")], [], fast_policy())
    with pytest.raises(ConnectionRefusedError):  # without --reconnect nothing is retried
        serve(monkeypatch, [refused], [], None)


@pytest.mark.parametrize(("exc", "first"), [
    (ConnectionRefusedError(111, "x"), True),
    (ConnectionResetError(104, "x"), False),
    (OSError(113, "No route to host"), False),
])
def test_only_a_refused_first_connection_is_retried_among_socket_errors(exc, first):
    assert ReconnectPolicy.retries_first(exc) is first


def test_gives_up_with_a_client_error_after_reconnect_for(monkeypatch, capsys):
    refused = ConnectionRefusedError(111, "x")
    with pytest.raises(ClientError, match=r"gave up reconnecting after 0\.05 s \(--reconnect-for\)"):
        serve(monkeypatch, [None] + [refused] * 1000, [closed(1012)], fast_policy(for_s=0.05))
    assert "connection lost (code 1012)" in capsys.readouterr().err


# ------------------------------------------------------------------ a real daemon killed under the client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def daemons():
    made: list[ListenProcess] = []
    yield lambda args: made.append(ListenProcess(args, cwd=REPO)) or made[-1]
    for p in made:
        p.stop()


def take_one_stream_id(url: str) -> None:
    """Start and drop a stream, so the client's is remote-2 here while a restarted daemon counts from remote-1."""
    with connect(url, open_timeout=10, close_timeout=2) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        ws.send(json.dumps({"type": "start", "sample_rate": SR, "encoding": "pcm_s16le"}))
        for _ in range(20):
            if json.loads(ws.recv(timeout=10))["type"] == "started":
                return
        raise AssertionError("no started")


def collect(stream, lines: list[str]) -> threading.Thread:
    def read() -> None:
        for line in stream:
            lines.append(line)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


@pytest.mark.slow
def test_client_outlives_a_killed_daemon_and_finishes_the_file_on_the_restarted_one(energy_model, daemons, tmp_path):
    file_s = 12.0
    clip = write_wav(tmp_path / "talk.wav", load_audio(demo_clip_path())[: int(file_s * SR)], sr=SR)
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    listen = [*script("ser-listen"), "--device", "none", "--model", str(energy_model), "--port", str(port)]
    first = daemons(listen)
    assert first.wait_url(30) == port
    take_one_stream_id(url)

    t0 = time.monotonic()
    client = subprocess.Popen([*script("ser-client"), url, "--device", str(clip), "--reconnect", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    out: list[str] = []
    err: list[str] = []
    readers = [collect(client.stdout, out), collect(client.stderr, err)]
    try:
        while len(out) < 3:  # a few predictions of the first stream
            assert time.monotonic() - t0 < 30 and client.poll() is None, "".join(err)
            time.sleep(0.05)
        first.p.kill()  # SIGKILL: no close frame, the client sees 1006
        first.p.wait(10)
        before = len(out)
        time.sleep(1.0)
        second = daemons(listen)
        assert second.wait_url(30) == port
        code = client.wait(timeout=max(1.0, 60 - (time.monotonic() - t0)))
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)
        for r in readers:
            r.join(10)
    stderr = "".join(err)
    assert code == 0, stderr
    assert "connection lost (code 1006); reconnecting in" in stderr and "Traceback" not in stderr
    m = re.search(r"reconnected; streaming as (remote-\d+) from (\d+\.\d+) s of the file", stderr)
    assert m, stderr
    preds = [json.loads(line) for line in out]
    ids = [p["stream"] for p in preds]
    assert m.group(1) == "remote-1" and ids[0] == "remote-2" and before >= 3
    k = ids.index("remote-1")
    assert k >= 3 and ids == ["remote-2"] * k + ["remote-1"] * (len(ids) - k), ids  # the first stream, then the second
    resumed = preds[k:]
    assert len(resumed) >= 3 and [p["t_end"] for p in resumed] == sorted(p["t_end"] for p in resumed)
    # the second stream carried on from the first frame not sent: what it scored ends at the file's end
    assert float(m.group(2)) + resumed[-1]["t_end"] == pytest.approx(file_s, abs=0.02)
    assert float(m.group(2)) < file_s - 3  # resumed mid-file, not at the end

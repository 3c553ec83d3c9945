"""``ser-client``: an example client of protocol v1 that streams a microphone or a file and prints predictions.

Owns nothing the daemon needs; it is the reference for writing a client. With
``--device`` it sends ``start`` and binary PCM (s16le for files at their own
rate, f32le for a microphone at its native rate), then ``stop`` at the end of
a file, and prints every prediction for its stream. It sends audio only after
``started``; while the daemon answers ``server_busy`` (every stream slot taken)
it asks again with backoff for up to ``--wait`` seconds. Without ``--device``
it subscribes to every stream of the daemon and prints what arrives.

``--fast`` sends a file as fast as the daemon allows, not faster: ``hello``
advertises the connection's audio budget (``max_audio_realtime_factor`` after a
``max_audio_burst_s`` burst), and the client paces itself just inside it, so a
long file is never closed as ``rate_limited``. If the daemon closes the
connection anyway, the client reports why and exits at once.

``--reconnect`` is for a daemon that can go away under a client: a ``ser-listen``
restarted, or the Ray Serve ingress replica a connection was pinned to dying.
When the connection is lost for a reason worth another try (no close frame at
all, or the daemon going away, failing, restarting or busy), the client
connects again with jittered exponential backoff, starts a new stream (a new
stream id, named on stderr) and carries on where the audio was; a close for
something the client did wrong (a bad token, a rate limit, a message too large)
still ends the run. :class:`ReconnectPolicy` holds every decision of that, so
the three modes (a file, a device, watching) share it and it is tested without
a network.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

import click
import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidHandshake, InvalidStatus

FRAME_S = 0.1  # seconds of audio per binary frame
START_ANSWER_S = 10.0  # the daemon answers a start with started or an error within this
BUSY_RETRY_MIN_S = 0.5  # while the daemon is busy (every stream slot taken), ask again after this ...
BUSY_RETRY_MAX_S = 4.0  # ... doubling up to this
FAST_BURST_SHARE = 0.5  # --fast: use this share of the advertised audio burst up front ...
FAST_RATE_SHARE = 0.9  # ... then send at this share of the advertised real-time factor
LAST_PREDICTION_S = 30.0  # after a file's stop, wait this long for its last prediction
MAX_MESSAGE_BYTES = 2**22  # the largest message the client accepts from the daemon
RECONNECT_MIN_S = 0.5  # --reconnect: the first wait after a lost connection ...
RECONNECT_MAX_S = 8.0  # ... doubling up to this ...
RECONNECT_JITTER = 0.5  # ... each drawn from [1 - this, 1] x that, so clients dropped together come back spread out
RECONNECT_FOR_S = 60.0  # give up after this long without a working connection (--reconnect-for)
# Closes worth another connection: going away (shutdown, replica drained), abnormal (no close frame: the daemon
# or the network died), internal error, service restart, try again later (every client slot taken). Any other
# code (1008 policy: unauthorized or rate_limited; 1003; 1007; 1009 message too large; 1000 a deliberate end)
# is the client's to fix or the daemon's decision, and ends the run.
RETRY_CLOSE_CODES = frozenset({1001, 1006, 1011, 1012, 1013})
RETRY_HTTP_STATUSES = frozenset({502, 503, 504})  # a proxy in front (Ray Serve's) while no replica answers


def format_prediction(msg: dict[str, Any]) -> str:
    """One readable line: stream, window, smoothed leader (or silence), latency."""
    smoothed = msg.get("smoothed") or {}
    if msg.get("voiced") and smoothed:
        top = max(smoothed, key=smoothed.get)
        what = f"{top:<8} {smoothed[top]:.2f}  voice "
    else:
        what = "-" * 8 + "  ---   silent"
    return f"{msg['stream']:<10} {msg['t_start']:7.2f}-{msg['t_end']:7.2f} s  {what}  latency {msg['latency_ms']:.0f} ms"


def with_token(url: str, token: str | None) -> str:
    if not token:
        return url
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode({"token": token})) if q)
    return urlunsplit(parts._replace(query=query))


class Printer:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def __call__(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "prediction":
            click.echo(json.dumps(msg, separators=(",", ":")) if self.as_json else format_prediction(msg))
        elif msg["type"] == "error":
            click.echo(f"ser-client: daemon error {msg['code']}: {msg['message']}", err=True)



class ClientError(Exception):
    """The daemon would not give this client a stream (or never answered): one line for the user."""


async def open_stream(ws: Any, start: dict[str, Any], wait_s: float,
                      on_busy: Callable[[str, float], None] | None = None) -> str:
    """Send ``start`` and return the stream id once ``started`` arrives.

    Nothing is sent before that: audio ahead of ``started`` would be refused frame by
    frame (``invalid_audio_frame``). While the daemon answers ``server_busy`` (every
    stream slot is taken, e.g. by other clients under load) it asks again with
    backoff for up to ``wait_s`` seconds, telling ``on_busy`` (message, seconds
    left) once; any other refusal, or giving up, is a :class:`ClientError`.
    """
    deadline = time.monotonic() + wait_s
    pause = BUSY_RETRY_MIN_S
    told = False
    while True:
        await ws.send(json.dumps(start))
        msg = await _answer_to_start(ws)
        if msg["type"] == "started":
            return str(msg["stream"])
        if msg.get("code") != "server_busy":
            raise ClientError(f"the daemon refused the stream: {msg.get('code')}: {msg.get('message')}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise ClientError(f"the daemon is busy ({msg.get('message')}); gave up after {wait_s:g} s (--wait)")
        if on_busy is not None and not told:
            on_busy(str(msg.get("message")), left)
            told = True
        await asyncio.sleep(min(pause, left))
        pause = min(BUSY_RETRY_MAX_S, 2 * pause)


async def _answer_to_start(ws: Any) -> dict[str, Any]:
    """The next ``started`` or ``error``; stream lists and other clients' news that arrive first are skipped."""
    deadline = time.monotonic() + START_ANSWER_S
    while True:
        left = deadline - time.monotonic()
        try:
            raw = await asyncio.wait_for(ws.recv(), max(0.0, left))
        except asyncio.TimeoutError:
            raise ClientError(f"the daemon did not answer the start within {START_ANSWER_S:g} s") from None
        if isinstance(raw, str):
            msg = json.loads(raw)
            if msg.get("type") in ("started", "error"):
                return msg


def _tell_busy(message: str, left: float) -> None:
    click.echo(f"ser-client: the daemon is busy ({message}); asking again for up to {left:.0f} s", err=True)


class Pacer:
    """When the ``sent``-th second of audio may go: real time, or ``--fast`` within the daemon's audio budget.

    The daemon allows ``factor`` x real time after a burst of ``burst_s`` seconds (``hello.limits``);
    ``--fast`` spends half the burst at once, then sends at 90% of the factor, so the budget never runs
    out however long the file. Without advertised limits (an older daemon) ``--fast`` does not wait.
    """

    def __init__(self, fast: bool, limits: dict[str, Any], t0: float) -> None:
        self.t0 = t0
        factor = limits.get("max_audio_realtime_factor")
        burst = limits.get("max_audio_burst_s")
        if not fast:
            self.ahead_s, self.speed = 0.0, 1.0
        elif isinstance(factor, (int, float)) and isinstance(burst, (int, float)) and factor > 0:
            self.ahead_s, self.speed = FAST_BURST_SHARE * float(burst), FAST_RATE_SHARE * float(factor)
        else:
            self.ahead_s, self.speed = float("inf"), 1.0

    def due(self, sent_s: float) -> float:
        """Monotonic time at which audio up to ``sent_s`` seconds may have been sent."""
        if sent_s <= self.ahead_s:
            return self.t0
        return self.t0 + (sent_s - self.ahead_s) / self.speed




class ReconnectPolicy:
    """``--reconnect``'s decisions in one place: which failures are worth another connection, how long to
    wait before each, and when to give up. No I/O: the clock and the random draw are injected, so it is
    tested without a network.

    Waits double from ``min_s`` up to ``max_s``, each shortened by a random share of up to ``jitter`` so
    that the clients one dead daemon dropped together do not all knock on the restarted one at the same
    instant. ``for_s`` bounds a run of failures (from the first loss to the last attempt), not a whole run
    of the client: :meth:`connected` starts the count over. Before the first working connection only a
    daemon that is down or starting is waited for (:meth:`retries_first`: a client started before its
    daemon, or during a rolling update); a wrong host, URL or token is said at once.
    """

    def __init__(self, for_s: float = RECONNECT_FOR_S, min_s: float = RECONNECT_MIN_S, max_s: float = RECONNECT_MAX_S,
                 jitter: float = RECONNECT_JITTER, clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random) -> None:
        if not (0 < min_s <= max_s) or not (0 <= jitter < 1) or for_s < 0:
            raise ValueError(f"bad reconnect policy: min_s={min_s}, max_s={max_s}, jitter={jitter}, for_s={for_s}")
        self.for_s, self.min_s, self.max_s, self.jitter = for_s, min_s, max_s, jitter
        self._clock, self._rand = clock, rand
        self.attempt = 0  # reconnects tried since the last working connection
        self.failing_since: float | None = None  # when the current run of failures began
        self.was_connected = False

    @staticmethod
    def retries(exc: BaseException) -> bool:
        """Whether this failure is the daemon's or the network's (worth another connection), not the client's."""
        if isinstance(exc, ConnectionClosed):
            return close_code(exc) in RETRY_CLOSE_CODES
        if isinstance(exc, InvalidStatus):
            return exc.response.status_code in RETRY_HTTP_STATUSES
        # refused, reset, unreachable, a timed-out handshake, a connection cut during the handshake: the daemon
        # is down or on its way up (the host name resolved once already, so a lookup failure is passing too)
        return isinstance(exc, (OSError, InvalidHandshake))

    @staticmethod
    def retries_first(exc: BaseException) -> bool:
        """Whether a failed *first* connection is worth another: only a daemon that is down or on its way up
        (refused, 502/503/504 from a proxy in front of it, 1012/1013), not a wrong host name, URL or token."""
        if isinstance(exc, ConnectionClosed):
            return close_code(exc) in (1012, 1013)
        if isinstance(exc, InvalidStatus):
            return exc.response.status_code in RETRY_HTTP_STATUSES
        return isinstance(exc, ConnectionRefusedError)

    def nominal_s(self, attempt: int) -> float:
        """The wait before reconnect number ``attempt`` (1, 2, ...) without jitter: doubling, capped."""
        return min(self.max_s, self.min_s * 2.0 ** min(max(0, attempt - 1), 60))  # no float overflow, ever

    def next_delay(self) -> float | None:
        """Count one more failure; the seconds to wait before the next attempt, or None: give up.

        The last wait is cut short to end at the deadline, so the last attempt is made right there.
        """
        now = self._clock()
        if self.failing_since is None:
            self.failing_since = now
        left = self.failing_since + self.for_s - now
        if left <= 0:
            return None
        self.attempt += 1
        return min(left, self.nominal_s(self.attempt) * (1.0 - self.jitter * self._rand()))

    def connected(self) -> None:
        """A connection works (the stream started again): the backoff and the deadline start over."""
        self.attempt = 0
        self.failing_since = None
        self.was_connected = True


def close_code(exc: ConnectionClosed) -> int:
    """The code the daemon closed with; 1006 (abnormal) when no close frame came: the daemon or the network died."""
    return exc.rcvd.code if exc.rcvd is not None else 1006


def describe_failure(exc: BaseException) -> str:
    """A connection's end or a failed attempt, in a few words for the stderr line."""
    if isinstance(exc, ConnectionClosed):
        reason = exc.rcvd.reason if exc.rcvd is not None else ""
        return f"connection lost (code {close_code(exc)}{': ' + reason if reason else ''})"
    if isinstance(exc, InvalidStatus):
        return f"cannot connect (HTTP {exc.response.status_code})"
    if isinstance(exc, ConnectionRefusedError):
        return "cannot connect (connection refused)"
    if isinstance(exc, TimeoutError):
        return "cannot connect (timed out)"
    return f"cannot connect ({exc})"


class _Session(Protocol):
    """What one mode does on each connection: ``open`` gets it going (hello, then start or subscribe) and says
    what it is doing in a few words; ``run`` is the rest, and raises ConnectionClosed if the connection ends
    under it. State that must survive a lost connection (where a file is) lives on the session."""

    async def open(self, ws: Any) -> str: ...

    async def run(self, ws: Any) -> int: ...

    def resumable(self) -> bool: ...


async def _serve(url: str, session: _Session, reconnect: ReconnectPolicy | None) -> int:
    """Run ``session`` on a connection to ``url``; with a policy, again on a new one each time one is lost.

    Without a policy any failure propagates, as it did before ``--reconnect`` existed. With one, a failure
    the policy retries, of a session that was going and still has something to do, is one stderr line and
    a wait; a working connection again is another line, naming the new stream.
    """
    lost: BaseException | None = None  # why the previous connection ended; None on the first
    while True:
        try:
            async with connect(url, max_size=MAX_MESSAGE_BYTES) as ws:
                what = await session.open(ws)
                if lost is not None:
                    click.echo(f"ser-client: reconnected; {what}", err=True)
                if reconnect is not None:
                    reconnect.connected()
                return await session.run(ws)
        except (OSError, ConnectionClosed, InvalidHandshake) as exc:
            if reconnect is None or not session.resumable():
                raise
            if not (reconnect.retries(exc) if reconnect.was_connected else reconnect.retries_first(exc)):
                raise
            delay = reconnect.next_delay()
            if delay is None:
                raise ClientError(f"{describe_failure(exc)}; gave up reconnecting after "
                                  f"{reconnect.for_s:g} s (--reconnect-for)") from exc
            click.echo(f"ser-client: {describe_failure(exc)}; reconnecting in {delay:.1f} s "
                       f"(attempt {reconnect.attempt})", err=True)
            lost = exc
            await asyncio.sleep(delay)


async def _hello(ws: Any, on_message: Any) -> dict[str, Any]:
    """The daemon's ``hello``. A refusal instead (``unauthorized``, ``server_busy``) is shown, and the close
    that follows it is raised, so its code decides what happens (1008 ends the run, 1013 may be retried)."""
    msg = json.loads(await ws.recv())
    if msg.get("type") == "hello":
        return msg
    if msg.get("type") == "error":
        on_message(msg)
    deadline = time.monotonic() + START_ANSWER_S
    while (left := deadline - time.monotonic()) > 0:
        try:
            await asyncio.wait_for(ws.recv(), left)  # raises ConnectionClosed with the refusal's code
        except asyncio.TimeoutError:
            break
    raise ClientError(f"the daemon did not say hello: {msg.get('type')}: {msg.get('message', '')}")


async def _receive(ws: Any, on_message: Any, stream: str, done: asyncio.Event, end_s: float | None) -> None:
    """Print this stream's predictions and the daemon's errors.

    Returns once the prediction ending at ``end_s`` (the audio's last sample) arrived, setting ``done``;
    raises ConnectionClosed if the connection ends first.
    """
    while True:
        raw = await ws.recv()
        if not isinstance(raw, str):
            continue
        msg = json.loads(raw)
        if msg["type"] == "prediction" and msg["stream"] == stream:
            on_message(msg)
            if end_s is not None and msg["t_end"] >= end_s - 0.01:  # the last sample is in
                done.set()
                return
        elif msg["type"] == "error":
            on_message(msg)


def _raise_if_lost(receiver: asyncio.Task[None], lost: BaseException | None) -> None:
    """Stop the receiver and raise why the connection ended, if it did: the receiver's reason first (it read
    the close), else the sender's. Reading the receiver's exception also keeps asyncio from warning of it."""
    if receiver.done():
        exc = receiver.exception()
        if exc is not None:
            raise exc
    else:
        receiver.cancel()
    if lost is not None:
        raise lost


def _tell_closed(exc: ConnectionClosed, note: str = "") -> int:
    """The one line for a stream the daemon ended and that is not resumed; the exit code (1)."""
    reason = exc.rcvd.reason if exc.rcvd is not None else ""
    click.echo(f"ser-client: the daemon closed the connection ({close_code(exc)} {reason}){note}", err=True)
    return 1


class _FileStream:
    """A file streamed over one connection or, resumed, several; where it is in the file outlives each."""

    def __init__(self, path: Path, fast: bool, on_message: Any, wait_s: float) -> None:
        import soundfile as sf

        info = sf.info(str(path))
        self.path, self.fast, self.on_message, self.wait_s = path, fast, on_message, wait_s
        self.rate, self.channels, self.frames = int(info.samplerate), min(int(info.channels), 2), int(info.frames)
        self.sent = 0  # frames handed to a connection so far: the next connection resumes here
        self.stream: str | None = None
        self.limits: dict[str, Any] = {}

    def resumable(self) -> bool:
        return self.sent < self.frames  # once all was sent, a new stream would have nothing to score

    async def open(self, ws: Any) -> str:
        self.limits = (await _hello(ws, self.on_message)).get("limits") or {}
        start = {"type": "start", "sample_rate": self.rate, "encoding": "pcm_s16le", "channels": self.channels}
        self.stream = await open_stream(ws, start, self.wait_s, _tell_busy)
        return f"streaming as {self.stream} from {self.sent / self.rate:.2f} s of the file"

    async def run(self, ws: Any) -> int:
        import soundfile as sf

        assert self.stream is not None
        first = self.sent
        done = asyncio.Event()
        # the stream's own clock starts at 0 where this connection took over; the end is known up front,
        # because the last window may beat our own stop
        end_s = (self.frames - first) / self.rate
        receiver = asyncio.create_task(_receive(ws, self.on_message, self.stream, done, end_s))
        step = max(1, int(self.rate * FRAME_S))
        pacer = Pacer(self.fast, self.limits, time.monotonic())  # a new clock per connection: no catch-up burst
        lost: ConnectionClosed | None = None
        try:
            with sf.SoundFile(str(self.path)) as f:
                f.seek(first)
                for block in f.blocks(blocksize=step, dtype="int16", always_2d=True):
                    await ws.send(np.ascontiguousarray(block[:, : self.channels]).astype("<i2").tobytes())
                    self.sent += len(block)
                    await asyncio.sleep(max(0.0, pacer.due((self.sent - first) / self.rate) - time.monotonic()))
            await ws.send(json.dumps({"type": "stop"}))
            await asyncio.wait({receiver}, timeout=LAST_PREDICTION_S)
        except ConnectionClosed as exc:
            lost = exc
        except BaseException:
            receiver.cancel()
            raise
        if done.is_set():
            return 0
        _raise_if_lost(receiver, lost)
        click.echo(f"ser-client: the last prediction did not arrive within {LAST_PREDICTION_S:g} s", err=True)
        return 1


async def stream_file(url: str, path: Path, fast: bool, on_message: Any, wait_s: float = 30.0,
                      reconnect: ReconnectPolicy | None = None) -> int:
    """Stream an audio file as s16le at its own rate (real-time pace, or ``fast``) and print its predictions.

    Returns 0 once the prediction ending at the file's last sample arrived. With ``reconnect``, a lost
    connection is resumed on a new one: a new ``start`` (same rate, encoding and channels), a new stream id,
    and audio from the first frame not yet sent, paced afresh. Frames that were sent but whose predictions
    never came are not sent again: the daemon that had them is gone, so those predictions are lost, and the
    new stream's times start at 0 where it resumed (the stderr line says where in the file that is).
    """
    session = _FileStream(path, fast, on_message, wait_s)
    try:
        return await _serve(url, session, reconnect)
    except ConnectionClosed as exc:
        if session.stream is None:
            raise  # never had a stream: the daemon cannot be talked to
        done = "; the whole file was sent, so there is nothing to resume" if reconnect and not session.resumable() else ""
        return _tell_closed(exc, done)


class _DeviceStream:
    """A live input streamed over one connection or, resumed, several; the device stays open throughout."""

    def __init__(self, dev: Any, channels: int, frames: asyncio.Queue[bytes], on_message: Any, wait_s: float) -> None:
        self.dev, self.channels, self.frames, self.on_message, self.wait_s = dev, channels, frames, on_message, wait_s
        self.stream: str | None = None

    def resumable(self) -> bool:
        return True

    async def open(self, ws: Any) -> str:
        await _hello(ws, self.on_message)
        start = {"type": "start", "sample_rate": self.dev.sample_rate, "encoding": "pcm_f32le", "channels": self.channels}
        first = self.stream is None
        self.stream = await open_stream(ws, start, self.wait_s, _tell_busy)
        while not self.frames.empty():  # heard before this stream (while no connection was up) would come late
            self.frames.get_nowait()
        if first:
            click.echo(f"ser-client: streaming {self.dev.name!r} at {self.dev.sample_rate} Hz; Ctrl-C to stop", err=True)
        return f"streaming as {self.stream}"

    async def run(self, ws: Any) -> int:
        assert self.stream is not None
        receiver = asyncio.create_task(_receive(ws, self.on_message, self.stream, asyncio.Event(), None))
        lost: ConnectionClosed | None = None
        try:
            while not receiver.done():
                await ws.send(await self.frames.get())
        except ConnectionClosed as exc:
            lost = exc
        except BaseException:
            receiver.cancel()
            raise
        _raise_if_lost(receiver, lost)
        return 0


async def stream_device(url: str, device: str, on_message: Any, wait_s: float = 30.0,
                        reconnect: ReconnectPolicy | None = None) -> int:
    """Stream a live input (f32le at its native rate) until Ctrl-C and print its predictions.

    With ``reconnect``, a lost connection is resumed on a new one with a new ``start`` and stream id. The
    device stays open meanwhile, but what it heard while no connection was up is dropped, not sent late:
    the predictions are meant to be live, and a backlog would arrive as a burst the daemon may refuse.
    """
    import sounddevice as sd

    from realtime.sources import resolve_device

    dev = resolve_device(device)
    channels = min(dev.channels, 2)
    loop = asyncio.get_running_loop()
    frames: asyncio.Queue[bytes] = asyncio.Queue(maxsize=50)

    def callback(indata: np.ndarray, n: int, t: Any, status: Any) -> None:
        data = indata.astype("<f4").tobytes()
        loop.call_soon_threadsafe(lambda: frames.full() or frames.put_nowait(data))

    session = _DeviceStream(dev, channels, frames, on_message, wait_s)
    with sd.InputStream(device=dev.index, channels=channels, samplerate=dev.sample_rate, dtype="float32",
                        blocksize=int(dev.sample_rate * FRAME_S), callback=callback):
        try:
            return await _serve(url, session, reconnect)
        except ConnectionClosed as exc:
            if session.stream is None:
                raise
            return _tell_closed(exc)


class _Watch:
    """Every stream of the daemon, subscribed again on each new connection."""

    def __init__(self, on_message: Any) -> None:
        self.on_message = on_message
        self.watching = False

    def resumable(self) -> bool:
        return True

    async def open(self, ws: Any) -> str:
        hello = await _hello(ws, self.on_message)
        names = ", ".join(s.get("id", "?") for s in hello.get("streams", [])) or "none yet"
        if not self.watching:
            click.echo(f"ser-client: connected to {hello['model']['name']} ({hello['model']['backend']}); streams: {names}", err=True)
        await ws.send(json.dumps({"type": "subscribe", "streams": "*"}))
        self.watching = True
        return f"watching every stream (streams: {names})"

    async def run(self, ws: Any) -> int:
        while True:
            raw = await ws.recv()
            msg = json.loads(raw)
            if msg["type"] in ("prediction", "error"):
                self.on_message(msg)


async def watch(url: str, on_message: Any, reconnect: ReconnectPolicy | None = None) -> int:
    """Subscribe to every stream of the daemon and print what arrives, until the daemon closes normally.

    With ``reconnect``, a lost connection (a 1001 shutdown included) is followed by a new one, subscribed
    again; predictions of the streams that were lost with the old daemon do not come back.
    """
    session = _Watch(on_message)
    try:
        return await _serve(url, session, reconnect)
    except ConnectionClosedOK:
        if not session.watching:
            raise
        return 0  # the daemon closed normally (1000, or 1001 without --reconnect): the watch is over


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("url", default="ws://127.0.0.1:8765/ws")
@click.option("--device", "-d", default=None, help="mic, a device name/index, or an audio file; omit to watch every stream.")
@click.option("--token", default=None, envvar="SER_TOKEN", help="The daemon's token (also $SER_TOKEN).")
@click.option("--json", "as_json", is_flag=True, help="Print predictions as JSON lines.")
@click.option("--fast", is_flag=True, help="Send a file as fast as possible instead of at real-time pace.")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds to keep asking for a stream while the daemon is busy (every stream slot taken).")
@click.option("--reconnect", is_flag=True,
              help="When the connection is lost (the daemon restarted or went away), connect again with backoff "
                   "and resume where the audio was.")
@click.option("--reconnect-for", "reconnect_for_s", type=click.FloatRange(min=0), default=RECONNECT_FOR_S,
              show_default=True, help="With --reconnect: give up after this many seconds without a connection.")
def main(url: str, device: str | None, token: str | None, as_json: bool, fast: bool, wait_s: float,
         reconnect: bool, reconnect_for_s: float) -> None:
    """Stream audio to a ser-listen daemon (or watch its streams) and print the predictions."""
    url = with_token(url, token)
    printer = Printer(as_json)
    policy = ReconnectPolicy(for_s=reconnect_for_s) if reconnect else None
    try:
        if device is None:
            code = asyncio.run(watch(url, printer, policy))
        elif Path(device).expanduser().is_file():
            code = asyncio.run(stream_file(url, Path(device).expanduser(), fast, printer, wait_s, policy))
        else:
            code = asyncio.run(stream_device(url, device, printer, wait_s, policy))
    except KeyboardInterrupt:
        code = 0
    except (OSError, ConnectionClosed) as exc:
        click.echo(f"ser-client: error: cannot talk to {url}: {exc}", err=True)
        code = 1
    except Exception as exc:  # SourceError, bad file, gave up reconnecting: one line, no traceback
        click.echo(f"ser-client: error: {exc}", err=True)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()

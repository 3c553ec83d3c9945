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
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import click
import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

FRAME_S = 0.1  # seconds of audio per binary frame
START_ANSWER_S = 10.0  # the daemon answers a start with started or an error within this
BUSY_RETRY_MIN_S = 0.5  # while the daemon is busy (every stream slot taken), ask again after this ...
BUSY_RETRY_MAX_S = 4.0  # ... doubling up to this
FAST_BURST_SHARE = 0.5  # --fast: use this share of the advertised audio burst up front ...
FAST_RATE_SHARE = 0.9  # ... then send at this share of the advertised real-time factor


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


async def _receive(ws: Any, on_message: Any, stream: list[str | None], done: asyncio.Event, end_s: list[float | None]) -> None:
    """Print this client's predictions and errors; returns when the last one arrived or the connection ended."""
    try:
        async for raw in ws:
            if not isinstance(raw, str):
                continue
            msg = json.loads(raw)
            if msg["type"] == "started":
                stream[0] = msg["stream"]
            elif msg["type"] == "prediction" and (stream[0] is None or msg["stream"] == stream[0]):
                on_message(msg)
                if end_s[0] is not None and msg["t_end"] >= end_s[0] - 0.01:  # the file's last sample is in
                    done.set()
                    return
            elif msg["type"] == "error":
                on_message(msg)
    except ConnectionClosed:
        pass


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


async def stream_file(url: str, path: Path, fast: bool, on_message: Any, wait_s: float = 30.0) -> int:
    import soundfile as sf

    info = sf.info(str(path))
    rate, channels = int(info.samplerate), min(int(info.channels), 2)
    async with connect(url, max_size=2**22) as ws:
        hello = json.loads(await ws.recv())
        start = {"type": "start", "sample_rate": rate, "encoding": "pcm_s16le", "channels": channels}
        stream: list[str | None] = [await open_stream(ws, start, wait_s, _tell_busy)]
        end_s: list[float | None] = [info.frames / rate]  # known up front: the last window may beat our own stop
        done = asyncio.Event()
        receiver = asyncio.create_task(_receive(ws, on_message, stream, done, end_s))
        step = max(1, int(rate * FRAME_S))
        pacer = Pacer(fast, hello.get("limits") or {}, time.monotonic())
        sent = 0
        try:
            with sf.SoundFile(str(path)) as f:
                for block in f.blocks(blocksize=step, dtype="int16", always_2d=True):
                    await ws.send(np.ascontiguousarray(block[:, :channels]).astype("<i2").tobytes())
                    sent += len(block)
                    await asyncio.sleep(max(0.0, pacer.due(sent / rate) - time.monotonic()))
            await ws.send(json.dumps({"type": "stop"}))
            finished = asyncio.ensure_future(done.wait())
            await asyncio.wait({finished, receiver}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            finished.cancel()
        except ConnectionClosed:
            pass
        finally:
            receiver.cancel()
        if done.is_set():
            return 0
        if ws.close_code is not None:
            click.echo(f"ser-client: the daemon closed the connection ({ws.close_code} {ws.close_reason})", err=True)
        else:
            click.echo("ser-client: the last prediction did not arrive within 30 s", err=True)
        return 1


async def stream_device(url: str, device: str, on_message: Any, wait_s: float = 30.0) -> int:
    import sounddevice as sd

    from realtime.sources import resolve_device

    dev = resolve_device(device)
    channels = min(dev.channels, 2)
    loop = asyncio.get_running_loop()
    frames: asyncio.Queue[bytes] = asyncio.Queue(maxsize=50)

    def callback(indata: np.ndarray, n: int, t: Any, status: Any) -> None:
        data = indata.astype("<f4").tobytes()
        loop.call_soon_threadsafe(lambda: frames.full() or frames.put_nowait(data))

    async with connect(url, max_size=2**22) as ws:
        json.loads(await ws.recv())
        start = {"type": "start", "sample_rate": dev.sample_rate, "encoding": "pcm_f32le", "channels": channels}
        sid = await open_stream(ws, start, wait_s, _tell_busy)
        click.echo(f"ser-client: streaming {dev.name!r} at {dev.sample_rate} Hz; Ctrl-C to stop", err=True)
        receiver = asyncio.create_task(_receive(ws, on_message, [sid], asyncio.Event(), [None]))
        with sd.InputStream(device=dev.index, channels=channels, samplerate=dev.sample_rate, dtype="float32",
                            blocksize=int(dev.sample_rate * FRAME_S), callback=callback):
            try:
                while not receiver.done():
                    await ws.send(await frames.get())
            finally:
                receiver.cancel()
    return 0


async def watch(url: str, on_message: Any) -> int:
    async with connect(url, max_size=2**22) as ws:
        hello = json.loads(await ws.recv())
        names = ", ".join(s.get("id", "?") for s in hello.get("streams", [])) or "none yet"
        click.echo(f"ser-client: connected to {hello['model']['name']} ({hello['model']['backend']}); streams: {names}", err=True)
        await ws.send(json.dumps({"type": "subscribe", "streams": "*"}))
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] in ("prediction", "error"):
                on_message(msg)
    return 0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("url", default="ws://127.0.0.1:8765/ws")
@click.option("--device", "-d", default=None, help="mic, a device name/index, or an audio file; omit to watch every stream.")
@click.option("--token", default=None, envvar="SER_TOKEN", help="The daemon's token (also $SER_TOKEN).")
@click.option("--json", "as_json", is_flag=True, help="Print predictions as JSON lines.")
@click.option("--fast", is_flag=True, help="Send a file as fast as possible instead of at real-time pace.")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds to keep asking for a stream while the daemon is busy (every stream slot taken).")
def main(url: str, device: str | None, token: str | None, as_json: bool, fast: bool, wait_s: float) -> None:
    """Stream audio to a ser-listen daemon (or watch its streams) and print the predictions."""
    url = with_token(url, token)
    printer = Printer(as_json)
    try:
        if device is None:
            code = asyncio.run(watch(url, printer))
        elif Path(device).expanduser().is_file():
            code = asyncio.run(stream_file(url, Path(device).expanduser(), fast, printer, wait_s))
        else:
            code = asyncio.run(stream_device(url, device, printer, wait_s))
    except KeyboardInterrupt:
        code = 0
    except (OSError, ConnectionClosed) as exc:
        click.echo(f"ser-client: error: cannot talk to {url}: {exc}", err=True)
        code = 1
    except Exception as exc:  # SourceError, bad file: one line, no traceback
        click.echo(f"ser-client: error: {exc}", err=True)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()

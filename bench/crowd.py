"""The hostile crowd: six kinds of misbehaving WebSocket clients, run together in their own process.

- ``garbage``: floods of broken JSON, unknown types, bad frames, oversized messages, never reading;
- ``fast_audio``: audio at about 25x real time;
- ``cycler``: start/stop ten times a second with audio in between;
- ``non_reader``: subscribes to every stream, then never reads (tiny TCP window);
- ``vanisher``: streams for a moment, then drops the TCP connection without a close;
- ``burst``: bursts of connections opened and dropped together.

Each client reconnects when the daemon closes it, until the end time; every loop is also
bounded in count (:func:`until`). :func:`hostile_process` is the entry point of the crowd's
process (``multiprocessing``, spawn): it runs :func:`hostile_crowd` and puts each kind's
:class:`Tally` (sessions, refusals, close codes, errors, messages and bytes sent) on a queue.
Used by ``python -m bench.hostile``; loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np

from bench.lib import demo_pcm
from bench.streams import FRAME_S
from contract.audio import SAMPLE_RATE

KINDS = {"garbage": 20, "fast_audio": 15, "cycler": 15, "non_reader": 30, "vanisher": 20, "burst": 40}  # clients of each kind
BURST_EVERY_S = 2.0
BURST_HOLD_S = 0.5
MAX_LOOPS = 100_000  # any one loop's bound in count, beside its end time


def until(t_end: float, limit: int = MAX_LOOPS) -> Iterator[int]:
    """0, 1, 2, ... while ``time.monotonic() < t_end``, at most ``limit`` times."""
    for k in range(limit):
        if time.monotonic() >= t_end:
            return
        yield k


class Tally:
    """What one kind of hostile client experienced."""

    def __init__(self) -> None:
        self.sessions = 0
        self.refused = 0  # handshake refused or connection failed
        self.closes: Counter[str] = Counter()  # close codes the daemon sent
        self.errors: Counter[str] = Counter()  # error codes received (where the client reads)
        self.open_now = 0
        self.max_open = 0
        self.sent = 0  # messages sent
        self.sent_bytes = 0

    def opened(self) -> None:
        self.sessions += 1
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)

    def closed(self, ws: object) -> None:
        self.open_now -= 1
        code = getattr(ws, "close_code", None)
        self.closes[str(code) if code is not None else "none"] += 1

    def as_dict(self) -> dict:
        return {"sessions": self.sessions, "refused": self.refused, "max_open": self.max_open, "sent": self.sent,
                "sent_bytes": self.sent_bytes, "closes": dict(self.closes), "errors": dict(self.errors)}

    async def send(self, ws, msg: str | bytes) -> None:
        await ws.send(msg)
        self.sent += 1
        self.sent_bytes += len(msg) if isinstance(msg, bytes) else len(msg.encode())


async def _reader(ws, tally: Tally) -> None:
    from websockets.exceptions import ConnectionClosed

    try:
        async for raw in ws:
            if isinstance(raw, str) and '"error"' in raw[:20]:
                tally.errors[json.loads(raw).get("code", "?")] += 1
    except ConnectionClosed:
        pass


async def _session(url: str, tally: Tally, body, *, reader: bool = True, **kw) -> None:
    """One connection: ``body(ws)`` until it returns or the daemon closes the connection."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    try:
        ws = await connect(url, open_timeout=5, close_timeout=0.5, max_size=2**22, compression=None, **kw)
    except (OSError, InvalidHandshake, asyncio.TimeoutError):
        tally.refused += 1
        return
    tally.opened()
    rx = asyncio.create_task(_reader(ws, tally)) if reader else None
    try:
        await ws.recv()  # hello (or the refusal's error)
        await body(ws)
    except ConnectionClosed:
        pass
    finally:
        if rx is not None:
            rx.cancel()
        if ws.close_code is None:
            ws.transport.abort()
            await asyncio.sleep(0)
        tally.closed(ws)


async def garbage(url: str, t_end: float, rng: np.random.Generator, tally: Tally) -> None:
    """Junk as fast as it goes, never reading; every other session ends on an oversized message."""
    junk = [
        b"\x00\x01\x02",
        "{this is not json",
        json.dumps({"type": "teleport"}),
        json.dumps({"type": "start", "sample_rate": 1, "encoding": "mp3"}),
        json.dumps({"type": "subscribe", "streams": 42}),
        json.dumps({"type": "stop"}),
        "[" * 5000,
        bytes(rng.integers(0, 256, 999, dtype=np.uint8)),
    ]
    finales = ["é" * 300_000, b"\x00" * ((1 << 20) + 2)]  # 600 kB of text (the byte budget); 1 MiB + 2 (too large)
    session = 0

    async def body(ws) -> None:
        for k in range(1000):
            if k == 50 and session % 2 == 0:
                await tally.send(ws, finales[(session // 2) % 2])
            else:
                await tally.send(ws, junk[int(rng.integers(len(junk)))])
            if k % 25 == 0:
                await asyncio.sleep(0.005)
        # It never reads, so its library never sees the daemon's close: give it a second, then hang up.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ws.wait_closed(), 1.0)

    for _ in until(t_end):
        session += 1
        await _session(url, tally, body, reader=False)
        await asyncio.sleep(float(rng.uniform(0.2, 0.6)))


async def fast_audio(url: str, t_end: float, rng: np.random.Generator, tally: Tally, pcm: np.ndarray) -> None:
    """Audio at about 25x real time (a quarter second every 10 ms) until the daemon closes it."""
    start = json.dumps({"type": "start", "sample_rate": SAMPLE_RATE, "encoding": "pcm_s16le"})
    n = SAMPLE_RATE // 4

    async def body(ws) -> None:
        await tally.send(ws, start)
        for k in until(t_end):
            i = (k * n) % (len(pcm) - n)
            await tally.send(ws, pcm[i : i + n].tobytes())
            await asyncio.sleep(0.01)

    for _ in until(t_end):
        await _session(url, tally, body)
        await asyncio.sleep(float(rng.uniform(0.2, 1.0)))


async def cycler(url: str, t_end: float, rng: np.random.Generator, tally: Tally, pcm: np.ndarray) -> None:
    start = json.dumps({"type": "start", "sample_rate": SAMPLE_RATE, "encoding": "pcm_s16le"})
    stop = json.dumps({"type": "stop"})
    chunk = pcm[: int(0.2 * SAMPLE_RATE)].tobytes()

    async def body(ws) -> None:
        for _ in until(t_end):
            await tally.send(ws, start)
            await tally.send(ws, chunk)
            await tally.send(ws, stop)
            await asyncio.sleep(0.1)

    for _ in until(t_end):
        await _session(url, tally, body)
        await asyncio.sleep(float(rng.uniform(0.3, 1.0)))


async def non_reader(url: str, t_end: float, rng: np.random.Generator, tally: Tally) -> None:
    async def body(ws) -> None:
        await tally.send(ws, json.dumps({"type": "subscribe", "streams": "*"}))
        for _ in until(t_end):  # never read: the client library stops reading at max_queue
            await asyncio.sleep(0.25)

    for _ in until(t_end):
        host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        except OSError:
            tally.refused += 1
            sock.close()
            await asyncio.sleep(0.5)
            continue
        await _session(url, tally, body, reader=False, sock=sock, max_queue=1)
        await asyncio.sleep(float(rng.uniform(0.2, 0.6)))


async def vanisher(url: str, t_end: float, rng: np.random.Generator, tally: Tally, pcm: np.ndarray) -> None:
    start = json.dumps({"type": "start", "sample_rate": SAMPLE_RATE, "encoding": "pcm_s16le"})
    frame = int(FRAME_S * SAMPLE_RATE)

    async def body(ws) -> None:
        await tally.send(ws, start)
        for k in range(int(rng.integers(5, 30))):
            i = (k * frame) % (len(pcm) - frame)
            await tally.send(ws, pcm[i : i + frame].tobytes())
            await asyncio.sleep(FRAME_S)
        ws.transport.abort()  # gone mid-stream: no stop, no close frame

    for _ in until(t_end):
        await _session(url, tally, body)
        await asyncio.sleep(float(rng.uniform(0.1, 0.5)))


async def burst(url: str, t_end: float, rng: np.random.Generator, tally: Tally, n: int) -> None:
    async def body(ws) -> None:
        await asyncio.sleep(BURST_HOLD_S)

    for _ in until(t_end):
        await asyncio.gather(*(_session(url, tally, body) for _ in range(n)))
        await asyncio.sleep(BURST_EVERY_S - BURST_HOLD_S)


CLIENTS = {"garbage": garbage, "fast_audio": fast_audio, "cycler": cycler, "non_reader": non_reader,
           "vanisher": vanisher, "burst": burst}


async def hostile_crowd(url: str, t_start: float, t_end: float, kinds: dict[str, int]) -> dict:
    pcm = demo_pcm()
    tallies = {k: Tally() for k in kinds}
    await asyncio.sleep(max(0.0, t_start - time.monotonic()))
    tasks = []
    for kind, n in kinds.items():
        if kind == "burst":
            tasks.append(burst(url, t_end, np.random.default_rng(0), tallies[kind], n))
            continue
        for i in range(n):
            rng = np.random.default_rng(sum(map(ord, kind)) * 1000 + i)
            args = (url, t_end, rng, tallies[kind])
            if kind in ("fast_audio", "cycler", "vanisher"):
                args += (pcm,)
            tasks.append(CLIENTS[kind](*args))
    await asyncio.gather(*tasks, return_exceptions=True)
    return {k: t.as_dict() for k, t in tallies.items()}


def hostile_process(url: str, t_start: float, t_end: float, kinds: dict[str, int], out: mp.Queue, nice: int) -> None:
    # On a real network the crowd runs on other machines; here it shares the cores, so by default it
    # yields them to the daemon under test (--crowd-nice 0 to let it compete).
    os.nice(nice)
    out.put(asyncio.run(hostile_crowd(url, t_start, t_end, kinds)))

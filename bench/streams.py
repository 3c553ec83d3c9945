"""A well-behaved remote stream at real-time pace, and what its predictions measure.

:func:`realtime_stream` is one WebSocket client as ``ser-client`` behaves: it reads ``hello``,
asks for a stream (``start``, 16 kHz ``pcm_s16le`` mono; while every slot is taken it asks again,
as :func:`realtime.client.open_stream` does), sends nothing before ``started``, then sends audio
in frames at real-time pace from its begin time to its stop time, and records when each frame
went out, how late it went (the generator's lag), and each prediction of its stream as it
arrives. :func:`window_latencies_ms` is the latency definition every bench here uses: from
sending the frame that holds a window's last sample to receiving that window's prediction.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from contract.audio import SAMPLE_RATE

FRAME_S = 0.1  # audio per WebSocket frame
MAX_FRAMES = 36_000  # an hour of 100 ms frames: the send loop's bound, whatever its times say


def start_message() -> dict:
    return {"type": "start", "sample_rate": SAMPLE_RATE, "encoding": "pcm_s16le", "channels": 1}


async def realtime_stream(url: str, pcm: np.ndarray, times: tuple[float, float] | Awaitable[tuple[float, float]],
                          out: dict, *, frame_samples: int = int(FRAME_S * SAMPLE_RATE), start_wait_s: float | None = None,
                          tail_s: float = 3.0, on_ready: Callable[[], object] | None = None,
                          open_timeout: float = 30.0) -> dict:
    """Stream ``pcm`` (s16le samples, looped) to ``url`` in real time; fill and return ``out``.

    ``times`` is ``(t_begin, t_stop)`` in ``time.monotonic()`` seconds, or an awaitable of them,
    awaited once the stream is open (``on_ready`` is called just before: a barrier for many
    streams). Audio starts at ``t_begin`` (or as soon as the stream is open, if later) and no
    frame due after ``t_stop`` is sent. Then it waits up to ``tail_s`` for the receiver to end
    (the daemon closing) before hanging up. ``out`` gets ``sends`` and ``lags`` (seconds, per
    frame), ``preds`` ((seq, t_end, received, daemon latency ms) per prediction), ``errors``
    (error messages), ``stream``, ``slot_wait_s``, ``busy`` (the ``server_busy`` message, if any)
    and ``close`` (the close code the receiver saw; None if it was still open when we hung up).
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from realtime.client import ClientError, open_stream

    sends: list[float] = []
    lags: list[float] = []
    preds: list[tuple[int, float, float, float]] = []
    errors: list[dict] = []
    out.update(sends=sends, lags=lags, preds=preds, errors=errors, close=None)
    async with connect(url, max_size=2**22, compression=None, open_timeout=open_timeout, close_timeout=1) as ws:
        json.loads(await ws.recv())  # hello
        t_ask = time.monotonic()
        if start_wait_s is None:
            t_stop_hint = times[1] if isinstance(times, tuple) else t_ask + 30.0
            start_wait_s = max(0.0, t_stop_hint - 5.0 - t_ask)
        try:
            out["stream"] = await open_stream(ws, start_message(), start_wait_s, lambda msg, left: out.update(busy=msg))
        except ClientError as exc:
            errors.append({"code": "gave_up", "message": str(exc)})
            if asyncio.iscoroutine(times):
                times.close()  # never to be awaited: no stream
            if on_ready is not None:
                on_ready()
            return out
        out["slot_wait_s"] = time.monotonic() - t_ask

        async def receive() -> None:
            try:
                async for raw in ws:
                    msg = json.loads(raw)
                    if msg["type"] == "prediction" and msg["stream"] == out.get("stream"):
                        preds.append((msg["seq"], msg["t_end"], time.monotonic(), msg["latency_ms"]))
                    elif msg["type"] == "started":
                        out["stream"] = msg["stream"]
                    elif msg["type"] == "error":
                        errors.append(msg)
            except ConnectionClosed:
                pass
            out["close"] = ws.close_code

        rx = asyncio.create_task(receive())
        if on_ready is not None:
            on_ready()
        t_begin, t_stop = times if isinstance(times, tuple) else await times
        t_begin = max(t_begin, time.monotonic())
        await asyncio.sleep(max(0.0, t_begin - time.monotonic()))
        t0 = time.monotonic()
        try:
            for k in range(MAX_FRAMES):
                due = t0 + k * frame_samples / SAMPLE_RATE
                if due > t_stop:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                lags.append(time.monotonic() - due)
                i = (k * frame_samples) % (len(pcm) - frame_samples)
                await ws.send(pcm[i : i + frame_samples].tobytes())
                sends.append(time.monotonic())
        except ConnectionClosed:
            pass
        await asyncio.wait({rx}, timeout=tail_s)  # the last windows' predictions (or the daemon's close)
        rx.cancel()
    return out


def frame_of(t_end: float, frame_samples: int) -> int:
    """Index of the frame that carried the sample ending at ``t_end`` seconds of stream audio."""
    return -(-int(round(t_end * SAMPLE_RATE)) // frame_samples) - 1


def window_latencies_ms(o: dict, frame_samples: int, t_from: float = -math.inf,
                        t_to: float = math.inf) -> tuple[list[float], list[float]]:
    """Per prediction received in ``[t_from, t_to]``: (end-to-end ms, ms outside the daemon).

    End to end: from sending the frame holding the window's last sample to receiving its
    prediction. Outside the daemon: that minus the daemon's own ``latency_ms`` (window due ->
    prediction published), i.e. sockets and event loops.
    """
    lat: list[float] = []
    outside: list[float] = []
    sends = o.get("sends", [])
    for _seq, t_end, received, daemon_ms in o.get("preds", []):
        if not t_from <= received <= t_to:
            continue
        idx = frame_of(t_end, frame_samples)
        if 0 <= idx < len(sends):
            lat.append((received - sends[idx]) * 1000)
            outside.append(lat[-1] - daemon_ms)
    return lat, outside


def seq_gaps(seqs: Sequence[int], first: int | None = 0) -> int:
    """Windows missing among sequence numbers ``first`` .. max(seqs) (``first=None``: from min(seqs))."""
    if not seqs:
        return 0
    lo = min(seqs) if first is None else first
    return max(seqs) - lo + 1 - len(set(seqs))

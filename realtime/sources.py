"""Local audio sources: a sound device through PortAudio, an audio file, the bundled demo clip.

Owns capture. A device is opened through ``sounddevice`` at its native rate
and channel count (capped at ``audio.max_channels``); its callback only copies
into a preallocated ring buffer and counts overflows — no allocation, no lock,
no logging. A pump thread takes what the callback wrote every ``block_s``,
hands it to the stream (which downmixes and resamples outside the callback),
counts and logs xruns at most once a second, notices a device that stops
delivering, and, with ``--reconnect``, reopens it with backoff.

A file is read in chunks at real-time pace, or with ``--fast`` as fast as the
engine takes it (the reader waits while the stream has ``max_batch`` windows
unscored). Files and the demo loop unless ``--once``.

``sounddevice`` is imported lazily: ``PortAudio`` enumerates devices when it
is loaded, and file sources and tests must not need an audio stack.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from realtime.ringbuffer import RingBuffer
from realtime.stream import Stream

log = logging.getLogger("ser-listen")


class SourceError(Exception):
    """A source that cannot be opened or that failed; the message says which and why."""


def demo_clip_path() -> Path:
    """The clip shipped in the package for ``--device demo`` (licence in LICENSE.txt beside it)."""
    return Path(str(resources.files("realtime") / "demo" / "demo.flac"))


# ---------------------------------------------------------------- devices


def _sd() -> Any:
    try:
        import sounddevice as sd
    except OSError as exc:  # PortAudio library missing
        raise SourceError(f"PortAudio is not available ({exc}); install libportaudio2") from exc
    return sd


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    hostapi: str
    channels: int
    sample_rate: int
    is_default: bool


def list_input_devices() -> list[DeviceInfo]:
    """Every device with input channels, with its native rate and channel count."""
    sd = _sd()
    try:
        devices = sd.query_devices()
        apis = sd.query_hostapis()
        default_in = sd.default.device[0]
    except Exception as exc:
        raise SourceError(f"cannot list audio devices: {exc}") from exc
    out = []
    for i, d in enumerate(devices):
        if d["max_input_channels"] > 0:
            out.append(
                DeviceInfo(
                    index=i,
                    name=d["name"],
                    hostapi=apis[d["hostapi"]]["name"],
                    channels=int(d["max_input_channels"]),
                    sample_rate=int(d["default_samplerate"]),
                    is_default=(i == default_in),
                )
            )
    return out


def format_device_table(devices: list[DeviceInfo]) -> str:
    """The ``--list-devices`` table; ``*`` marks the system default input (``--device mic``)."""
    if not devices:
        return "no input devices found (is a microphone connected, or PulseAudio/PipeWire running?)"
    rows = [("", "index", "name", "host API", "channels", "rate (Hz)")]
    rows += [("*" if d.is_default else "", str(d.index), d.name, d.hostapi, str(d.channels), str(d.sample_rate)) for d in devices]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def resolve_device(spec: str) -> DeviceInfo:
    """``mic`` (the default input), an index, or a case-insensitive name substring -> one input device."""
    devices = list_input_devices()
    if not devices:
        raise SourceError(
            f"--device {spec}: no audio input devices found; use --device demo or --device FILE, or connect a microphone"
        )
    if spec == "mic":
        for d in devices:
            if d.is_default:
                return d
        return devices[0]
    if spec.isdigit():
        idx = int(spec)
        for d in devices:
            if d.index == idx:
                return d
        raise SourceError(f"no input device with index {idx}; inputs are: " + ", ".join(f"{d.index} {d.name!r}" for d in devices))
    exact = [d for d in devices if d.name.lower() == spec.lower()]
    matches = exact or [d for d in devices if spec.lower() in d.name.lower()]
    if not matches:
        raise SourceError(
            f"no input device matches {spec!r}; inputs are: " + ", ".join(f"{d.index} {d.name!r}" for d in devices)
            + " (ser-listen --list-devices shows more)"
        )
    if len(matches) > 1:
        log.info("device %r matches %s; using %r", spec, [m.name for m in matches], matches[0].name)
    return matches[0]


def _rescan_devices() -> None:
    """PortAudio lists devices once at start-up; a device plugged back in needs a re-initialisation."""
    sd = _sd()
    try:
        sd._terminate()
        sd._initialize()
    except Exception as exc:  # best effort; the next open reports the real problem
        log.debug("PortAudio re-initialisation failed: %s", exc)


# ---------------------------------------------------------------- source base


class Source:
    """A thread that feeds one stream; ``failed`` holds the error that ended it, ``state`` what it does now."""

    kind = "source"

    def __init__(self, name: str, on_finished: Callable[[Source], None] | None = None) -> None:
        self.name = name
        self._on_finished = on_finished  # the daemon's: a source that ends (file done, device failed) tells it here
        self.stop_event = threading.Event()
        self.failed: Exception | None = None
        self.finished = threading.Event()
        self.state = "starting"
        self._thread = threading.Thread(target=self._main, name=f"ser-source-{name}", daemon=True)

    def health(self) -> dict[str, Any]:
        """What /healthz says about the source: its kind and state, never its name or path."""
        return {"kind": self.kind, "state": self.state}

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self.stop_event.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _main(self) -> None:
        try:
            self.run()
            self.state = "finished"
        except Exception as exc:
            self.failed = exc
            self.state = "failed"
            log.error("%s", exc)
        finally:
            self.finished.set()
            if self._on_finished is not None:
                self._on_finished(self)

    def run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class FileSource(Source):
    """An audio file streamed at real-time pace (or as fast as the engine goes), looped unless ``once``."""

    kind = "file"

    def __init__(
        self,
        path: Path,
        make_stream: Callable[[int, int], Stream],
        realtime: bool = True,
        loop: bool = True,
        chunk_s: float = 0.05,
        fast_ahead_windows: int = 32,
        output_ready: Callable[[], bool] | None = None,
        on_finished: Callable[[Source], None] | None = None,
    ) -> None:
        super().__init__(path.name, on_finished)
        self.output_ready = output_ready  # --fast: also wait while the output (--jsonl) is behind
        import soundfile as sf

        try:
            info = sf.info(str(path))
        except Exception as exc:
            raise SourceError(f"cannot read audio file {path}: {exc}") from exc
        if info.frames == 0:
            raise SourceError(f"audio file {path} holds no samples")
        self.path = path
        self.rate = int(info.samplerate)
        self.channels = int(info.channels)
        self.stream = make_stream(self.rate, self.channels)
        self.realtime = realtime
        self.loop = loop
        self.chunk = max(1, int(self.rate * chunk_s))
        self.fast_ahead_windows = max(1, fast_ahead_windows)

    def run(self) -> None:
        import soundfile as sf

        t0 = time.monotonic()
        pushed = 0
        self.state = "running"
        with sf.SoundFile(str(self.path)) as f:
            while not self.stop_event.is_set():
                data = f.read(self.chunk, dtype="float32", always_2d=True)
                if len(data) == 0:
                    if not self.loop:
                        break
                    f.seek(0)
                    continue
                self.stream.push(data)
                pushed += len(data)
                if self.realtime:
                    delay = t0 + pushed / self.rate - time.monotonic()
                    if delay > 0:
                        self.stop_event.wait(delay)
                else:
                    while not self.stop_event.is_set():
                        if self.stream.wait_outstanding_below(self.fast_ahead_windows, timeout=0.1) and (
                            self.output_ready is None or self.output_ready()
                        ):
                            break
                        if self.output_ready is not None and not self.output_ready():
                            self.stop_event.wait(0.01)
        if not self.stop_event.is_set():
            self.stream.finish()


class DeviceSource(Source):
    """A PortAudio input device at its native rate; callback -> ring buffer -> pump thread -> stream."""

    kind = "device"

    def __init__(
        self,
        spec: str,
        make_stream: Callable[[int, int], Stream],
        on_xruns: Callable[[int], None],
        max_channels: int = 2,
        block_s: float = 0.02,
        capture_buffer_s: float = 2.0,
        reconnect: bool = False,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 10.0,
        stall_timeout_s: float = 2.0,
        xrun_log_interval_s: float = 1.0,
        on_finished: Callable[[Source], None] | None = None,
    ) -> None:
        super().__init__(spec, on_finished)
        self.spec = spec
        self.max_channels = max_channels
        self.block_s = block_s
        self.capture_buffer_s = capture_buffer_s
        self.reconnect = reconnect
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.stall_timeout_s = stall_timeout_s
        self.xrun_log_interval_s = xrun_log_interval_s
        self.on_xruns = on_xruns
        self._make_stream = make_stream
        self.stream: Stream | None = None
        self.device: DeviceInfo | None = None
        self.opened = threading.Event()
        self.xruns = 0
        # Opening once here makes a bad --device fail at start-up with its message, not later.
        try:
            self.device = resolve_device(spec)
        except SourceError:
            if not reconnect:
                raise
            log.warning("input device %r is not available yet; retrying (--reconnect)", spec)

    def run(self) -> None:
        backoff = self.reconnect_min_s
        while not self.stop_event.is_set():
            try:
                if self.device is None:
                    _rescan_devices()
                    self.device = resolve_device(self.spec)
                self._capture(self.device)
                backoff = self.reconnect_min_s
                if self.stop_event.is_set():
                    return
                raise SourceError(f"input device {self.device.name!r} stopped delivering audio (unplugged?)")
            except SourceError as exc:
                if not self.reconnect:
                    raise
                self.state = "reconnecting"
                log.warning("%s; reconnecting in %.1f s", exc, backoff)
                self.device = None
                if self.stop_event.wait(backoff):
                    return
                backoff = min(self.reconnect_max_s, backoff * 2)

    def _capture(self, dev: DeviceInfo) -> None:
        """Capture until stopped or the device fails; returns when it stops delivering."""
        sd = _sd()
        channels = max(1, min(dev.channels, self.max_channels))
        rate = dev.sample_rate
        ring = RingBuffer(max(1, int(rate * self.capture_buffer_s)), channels)
        counts = [0]  # callback-side overflow count (a list: no allocation in the callback)

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            if status.input_overflow:
                counts[0] += 1
            ring.write(indata)

        try:
            stream_in = sd.InputStream(
                device=dev.index,
                channels=channels,
                samplerate=rate,
                dtype="float32",
                blocksize=max(1, int(rate * self.block_s)),
                callback=callback,
            )
        except Exception as exc:
            raise SourceError(f"cannot open input device {dev.index} {dev.name!r} at {rate} Hz, {channels} ch: {exc}") from exc
        try:
            stream_in.start()  # a device can open yet fail here (busy, suspended, gone)
        except Exception as exc:  # opened but cannot start: as retryable as a device that cannot open
            with contextlib.suppress(Exception):
                stream_in.close(ignore_errors=True)
            raise SourceError(f"input device {dev.index} {dev.name!r} opened but failed to start: {exc}") from exc
        if self.stream is None:
            self.stream = self._make_stream(rate, channels)
        else:
            self.stream.set_input(rate, channels)
        self.stream.info.update({"device": dev.name})
        log.info("capturing from %r (%s) at %d Hz, %d channel(s)", dev.name, dev.hostapi, rate, channels)
        self.state = "running"
        read_pos = 0
        last_data = time.monotonic()
        last_log = 0.0
        logged_xruns = 0
        with stream_in:  # started above; leaving the block stops and closes it
            self.opened.set()
            while not self.stop_event.wait(self.block_s):
                written = ring.written
                if written - read_pos > ring.capacity:  # the pump fell behind the callback
                    counts[0] += 1
                    read_pos = ring.oldest
                if written > read_pos:
                    chunk = ring.read(read_pos, written)
                    if chunk is None:
                        counts[0] += 1
                        read_pos = ring.oldest
                    else:
                        self.stream.push(chunk)
                        read_pos = written
                    last_data = time.monotonic()
                xruns = counts[0]
                if xruns != self.xruns:
                    self.on_xruns(xruns - self.xruns)
                    self.xruns = xruns
                now = time.monotonic()
                if self.xruns != logged_xruns and now - last_log >= self.xrun_log_interval_s:
                    log.warning("input overflow: %d xrun(s) so far on %r", self.xruns, dev.name)
                    logged_xruns, last_log = self.xruns, now
                if not stream_in.active or now - last_data > self.stall_timeout_s:
                    return

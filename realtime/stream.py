"""One audio stream: its ring buffer of 16 kHz audio, its window clock and its lifecycle.

Owns the stream clock. Whatever feeds a stream (a capture thread, a file
reader, the intake worker for a WebSocket client) hands it native-rate frames;
its :class:`~realtime.frontend.Frontend` downmixes, resamples (one
``soxr.ResampleStream`` for the input's life, so frames join without seams) and
analyses them for voice; the stream writes the result to its ring buffer and
then emits a :class:`Window` each time a window falls due: first after
``min_audio_s`` of audio (scored padded, as in training), then every ``hop_s``.
``finish()`` flushes the resampler and emits a last window flush with the end,
so no audio is left unscored.

Owns the stream's lifecycle too, and nothing else does, with one count: the
windows it cut (``seq``) and those the scheduler finished (scored or dropped,
their result handed on: ``window_done``); the difference is ``outstanding``. A
stream is *ended* when its input is finished, and *retired* once it has ended
and nothing is outstanding; ``on_retired`` fires once, from whichever side
finishes last. (The scheduler hands a result on before it counts the window
done, so a daemon that carries both to its event loop in order publishes a
stream's last prediction before it retires the stream.)

Streaming engines encode each chunk of a stream once: the stream names the
chunks a window needs (``chunk_keys``, by their end sample) and reads them
(samples before the stream's start are zeros); their embeddings are kept by the
scheduler's :class:`~realtime.chunkstore.ChunkStore`. A whole-window model is
the case of one chunk, the window itself.

One thread feeds a stream at a time; the scheduler's worker reads windows from
its ring concurrently, without locks (see ringbuffer.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contract.audio import SAMPLE_RATE, pad_or_crop
from contract.geometry import ChunkGeometry
from realtime.config import AudioConfig, PostConfig, section
from realtime.frontend import Frontend
from realtime.ringbuffer import RingBuffer


@dataclass(frozen=True)
class StreamSettings:
    """A stream's view of the typed daemon config: its ``audio`` and ``post`` sections as the schema's own
    objects (``realtime.config`` owns every key, default and check), and the sizes in samples derived from
    them and the engine's geometry by ``from_config``."""

    audio: AudioConfig
    post: PostConfig
    window_samples: int
    hop_samples: int
    min_audio_samples: int
    buffer_samples: int
    sample_rate: int = SAMPLE_RATE
    geometry: ChunkGeometry = field(default_factory=ChunkGeometry.whole_window)  # the engine's

    @classmethod
    def from_config(
        cls, cfg: Any, geometry: ChunkGeometry | int, extra_buffer_windows: int = 0
    ) -> StreamSettings:
        """Build from the daemon config and the engine's geometry; ``extra_buffer_windows`` widens the ring (--fast).

        ``geometry`` may be a window length alone (a whole-window model). The
        hop must be a whole number of chunk hops, or no chunk could be reused
        by the next window (ValueError).
        """
        if isinstance(geometry, int):
            geometry = ChunkGeometry.whole_window(geometry)
        audio, post = section(cfg.audio, AudioConfig), section(cfg.post, PostConfig)  # typed and validated
        sr = SAMPLE_RATE
        hop = int(round(audio.hop_s * sr))
        chunk_hop = geometry.hop_samples
        if chunk_hop and hop % chunk_hop:
            raise ValueError(
                f"audio.hop_s={audio.hop_s:g} is not a multiple of the model's chunk hop "
                f"({chunk_hop / sr:g} s): use a hop of {chunk_hop / sr:g} s or a multiple of it"
            )
        window_samples = geometry.window_samples
        buffer = max(int(round(audio.buffer_s * sr)), window_samples + hop * (extra_buffer_windows + 2))
        return cls(
            audio=audio,
            post=post,
            geometry=geometry,
            window_samples=window_samples,
            hop_samples=hop,
            min_audio_samples=min(window_samples, max(1, int(round(audio.min_audio_s * sr)))),
            buffer_samples=buffer,
        )


@dataclass
class Window:
    """A due window: samples ``[end - window, end)`` of its stream (fewer at the start, padded)."""

    stream: Stream
    seq: int
    end: int
    due: float  # time.monotonic() when its last sample arrived
    droppable: bool = True

    @property
    def start(self) -> int:
        return max(0, self.end - self.stream.settings.window_samples)

    def t_start(self) -> float:
        return self.start / self.stream.settings.sample_rate

    def t_end(self) -> float:
        return self.end / self.stream.settings.sample_rate


class Stream:
    """A source of 16 kHz audio: its front end (downmix, resampler, VAD), ring buffer, window clock and lifecycle."""

    def __init__(
        self,
        stream_id: str,
        kind: str,
        settings: StreamSettings,
        input_rate: int,
        channels: int,
        on_window: Callable[[Window], None],
        labels: tuple[str, ...],
        droppable: bool = True,
        info: dict[str, Any] | None = None,
        on_retired: Callable[[Stream], None] | None = None,
        group: str | None = None,
    ) -> None:
        self.id = stream_id
        self.group = group or stream_id  # who the scheduler shares the engine fairly among (a client, a source)
        self.kind = kind
        self.settings = settings
        self.droppable = droppable
        self.info = dict(info or {})
        self._on_window = on_window
        self.ring = RingBuffer(settings.buffer_samples)
        # downmix, resampling, VAD (its flags kept as long as the ring keeps the audio)
        self.frontend = Frontend(settings.audio, settings.post, settings.sample_rate, settings.buffer_samples, input_rate, channels)
        self.labels = tuple(labels)  # what its windows' probabilities name (the model's labels)
        self.next_end = settings.min_audio_samples
        self.last_end = 0
        self.seq = 0
        self.ended = False
        self.retired = False
        self.created = time.monotonic()
        self._on_retired = on_retired
        self._done = 0  # windows the scheduler finished (scored or dropped); seq - _done are outstanding
        self._cond = threading.Condition()

    # ------------------------------------------------------------ feeding

    @property
    def input_rate(self) -> int:
        return self.frontend.input_rate

    @property
    def channels(self) -> int:
        return self.frontend.channels

    def set_input(self, input_rate: int, channels: int) -> None:
        """(Re)declare the native format; a device reopened at another rate gets a fresh resampler."""
        self._append(self.frontend.set_input(input_rate, channels))

    def push(self, frames: np.ndarray) -> None:
        """Native-rate float32 frames ``[n]`` or ``[n, channels]``: through the front end, into the ring, due windows cut."""
        self._append(self.frontend.process(frames))

    def finish(self) -> None:
        """End of input: flush the resampler and emit a final window ending at the last sample.

        A stream that ends exactly on the hop grid has no final window, and one
        whose windows were all delivered already retires here, not never.
        """
        if self.ended:
            return
        self._append(self.frontend.flush())
        end = self.ring.written
        if end > self.last_end:
            self._emit(end)
        with self._cond:
            self.ended = True
        self._maybe_retire()

    # ------------------------------------------------------------ lifecycle

    def window_done(self) -> None:
        """The scheduler finished (scored or dropped) one of this stream's windows, after handing on its result."""
        with self._cond:
            self._done += 1
            self._cond.notify_all()
        self._maybe_retire()

    def _maybe_retire(self) -> None:
        with self._cond:
            if self.retired or not self.ended or self._done < self.seq:
                return
            self.retired = True
        if self._on_retired is not None:
            self._on_retired(self)

    def _append(self, audio: np.ndarray) -> None:
        if len(audio) == 0:
            return
        self.ring.write(audio)
        while self.ring.written >= self.next_end:
            self._emit(self.next_end)
            self.next_end += self.settings.hop_samples

    def _emit(self, end: int) -> None:
        window = Window(self, self.seq, end, time.monotonic(), self.droppable)
        with self._cond:
            self.seq += 1
        self.last_end = end
        self._on_window(window)

    # ------------------------------------------------------------ reading (scheduler thread)

    def read_window(self, window: Window, out: np.ndarray) -> bool:
        """Fill ``out`` (window_samples long) with the window's audio, zero-padded centred if short.

        False when the ring no longer holds it (the stream ran too far ahead of the engine).
        """
        start = window.end - self.settings.window_samples
        if start >= 0:
            return self.ring.read_into(out, start)
        audio = self.ring.read(0, window.end)
        if audio is None:
            return False
        out[:] = pad_or_crop(audio, self.settings.window_samples)
        return True

    def chunk_keys(self, window: Window) -> list[int]:
        """The end samples of the K chunks ``window`` needs, oldest first (one key: the window's end, K = 1).

        Every chunk that ends at or before the stream's first sample is all
        zeros, so they share the key 0 and are encoded once.
        """
        return self.settings.geometry.chunk_keys(window.end)

    def read_chunk(self, key: int, out: np.ndarray) -> bool:
        """Fill ``out`` with the chunk ending at sample ``key`` (zeros before the stream's start); False if overwritten.

        For a whole-window model the chunk is the window, padded centred as in training (``read_window``).
        """
        g = self.settings.geometry
        if not g.chunked:
            return self.read_window(Window(self, -1, key, 0.0), out)
        n = g.chunk_samples
        if key >= n:
            return self.ring.read_into(out, key - n)
        audio = self.ring.read(0, key) if key > 0 else np.zeros(0, np.float32)
        if audio is None:
            return False
        out[: n - key] = 0.0
        out[n - key :] = audio
        return True

    def voiced_fraction(self, window: Window) -> float:
        return self.frontend.voiced_fraction(window.start, window.end)

    def voiced_seconds(self, window: Window) -> float:
        return self.frontend.voiced_seconds(window.start, window.end)

    # ------------------------------------------------------------ back-pressure

    @property
    def outstanding(self) -> int:
        """Windows cut and not yet finished by the scheduler (queued or being scored)."""
        with self._cond:
            return self.seq - self._done

    def wait_outstanding_below(self, limit: int, timeout: float) -> bool:
        """Block the feeding thread until fewer than ``limit`` windows are unscored (--fast pacing)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.seq - self._done < limit, timeout=timeout)

    def describe(self) -> dict[str, Any]:
        """What ``hello``, ``streams`` and /healthz say about this stream."""
        return {"id": self.id, "kind": self.kind, "sample_rate": self.input_rate, "channels": self.channels, **self.info}

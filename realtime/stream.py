"""One audio stream: downmix and streaming resampling to 16 kHz, its ring buffer, VAD flags and window schedule.

Owns the stream clock. Whatever feeds a stream (a capture thread, a file
reader, a WebSocket client) hands it native-rate frames; the stream downmixes
them, resamples them with one ``soxr.ResampleStream`` for its whole life (so
consecutive chunks join without seams), writes them to its ring buffer,
analyses them for voice, and emits a :class:`Window` each time a window falls
due: first after ``min_audio_s`` of audio (scored padded, as in training), then
every ``hop_s``. ``finish()`` flushes the resampler and emits a last window
flush with the end, so no audio is left unscored.

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

from realtime.postprocess import Smoother, VoiceActivity
from realtime.ringbuffer import RingBuffer
from training.audio import SAMPLE_RATE, pad_or_crop


@dataclass(frozen=True)
class StreamSettings:
    """Per-stream numbers, read once from conf/daemon.yaml (see ``from_config``)."""

    window_samples: int
    hop_samples: int
    min_audio_samples: int
    buffer_samples: int
    resample_quality: str = "HQ"
    vad_aggressiveness: int = 2
    vad_frame_ms: int = 30
    vad_noise_window_s: float = 3.0
    vad_margin_db: float = 6.0
    vad_min_dbfs: float = -60.0
    vad_min_voiced_fraction: float = 0.2
    smoothing_tau_s: float = 1.5
    sample_rate: int = SAMPLE_RATE

    @classmethod
    def from_config(cls, cfg: Any, window_samples: int, extra_buffer_windows: int = 0) -> StreamSettings:
        """Build from the daemon config; ``extra_buffer_windows`` widens the ring for streams fed ahead (--fast)."""
        sr = SAMPLE_RATE
        hop = int(round(cfg.audio.hop_s * sr))
        buffer = max(int(round(cfg.audio.buffer_s * sr)), window_samples + hop * (extra_buffer_windows + 2))
        return cls(
            window_samples=window_samples,
            hop_samples=hop,
            min_audio_samples=min(window_samples, max(1, int(round(cfg.audio.min_audio_s * sr)))),
            buffer_samples=buffer,
            resample_quality=str(cfg.audio.resample_quality),
            vad_aggressiveness=int(cfg.post.vad_aggressiveness),
            vad_frame_ms=int(cfg.post.vad_frame_ms),
            vad_noise_window_s=float(cfg.post.vad_noise_window_s),
            vad_margin_db=float(cfg.post.vad_margin_db),
            vad_min_dbfs=float(cfg.post.vad_min_dbfs),
            vad_min_voiced_fraction=float(cfg.post.vad_min_voiced_fraction),
            smoothing_tau_s=float(cfg.post.smoothing_tau_s),
        )


@dataclass
class Window:
    """A due window: samples ``[end - window, end)`` of its stream (fewer at the start, padded)."""

    stream: Stream
    seq: int
    end: int
    due: float  # time.monotonic() when its last sample arrived
    droppable: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def start(self) -> int:
        return max(0, self.end - self.stream.settings.window_samples)

    def t_start(self) -> float:
        return self.start / self.stream.settings.sample_rate

    def t_end(self) -> float:
        return self.end / self.stream.settings.sample_rate


class Stream:
    """A source of 16 kHz audio with its own clock, ring buffer, VAD and smoother."""

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
    ) -> None:
        self.id = stream_id
        self.kind = kind
        self.settings = settings
        self.droppable = droppable
        self.info = dict(info or {})
        self._on_window = on_window
        self.ring = RingBuffer(settings.buffer_samples)
        self.vad = VoiceActivity(
            settings.sample_rate,
            capacity_s=settings.buffer_samples / settings.sample_rate,
            aggressiveness=settings.vad_aggressiveness,
            frame_ms=settings.vad_frame_ms,
            noise_window_s=settings.vad_noise_window_s,
            margin_db=settings.vad_margin_db,
            min_dbfs=settings.vad_min_dbfs,
        )
        self.smoother = Smoother(len(labels), settings.smoothing_tau_s)
        self.next_end = settings.min_audio_samples
        self.last_end = 0
        self.seq = 0
        self.ended = False
        self.created = time.monotonic()
        self._outstanding = 0
        self._cond = threading.Condition()
        self._resampler: Any = None
        self.input_rate = 0
        self.channels = 0
        self.set_input(input_rate, channels)

    # ------------------------------------------------------------ feeding

    def set_input(self, input_rate: int, channels: int) -> None:
        """(Re)declare the native format; a device reopened at another rate gets a fresh resampler."""
        if input_rate == self.input_rate and channels == self.channels:
            return
        if self._resampler is not None:
            self._append(self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        self.input_rate = int(input_rate)
        self.channels = int(channels)
        self._resampler = None
        if self.input_rate != self.settings.sample_rate:
            import soxr

            self._resampler = soxr.ResampleStream(
                self.input_rate, self.settings.sample_rate, 1, dtype="float32", quality=self.settings.resample_quality
            )

    def push(self, frames: np.ndarray) -> None:
        """Native-rate float32 frames ``[n]`` or ``[n, channels]``: downmix, resample, store, emit due windows."""
        if frames.ndim == 2:
            mono = frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1, dtype=np.float32)
        else:
            mono = frames
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        out = mono if self._resampler is None else self._resampler.resample_chunk(mono, last=False)
        self._append(out)

    def finish(self) -> None:
        """End of input: flush the resampler and emit a final window ending at the last sample."""
        if self.ended:
            return
        if self._resampler is not None:
            self._append(self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        end = self.ring.written
        if end > self.last_end:
            self._emit(end)
        self.ended = True

    def _append(self, audio: np.ndarray) -> None:
        if len(audio) == 0:
            return
        self.ring.write(audio)
        self.vad.process(audio)
        while self.ring.written >= self.next_end:
            self._emit(self.next_end)
            self.next_end += self.settings.hop_samples

    def _emit(self, end: int) -> None:
        window = Window(self, self.seq, end, time.monotonic(), self.droppable)
        self.seq += 1
        self.last_end = end
        with self._cond:
            self._outstanding += 1
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

    def voiced_fraction(self, window: Window) -> float:
        return self.vad.voiced_fraction(window.start, window.end)

    # ------------------------------------------------------------ back-pressure

    def window_done(self) -> None:
        """The scheduler finished (scored or dropped) one of this stream's windows."""
        with self._cond:
            self._outstanding -= 1
            self._cond.notify_all()

    @property
    def outstanding(self) -> int:
        with self._cond:
            return self._outstanding

    def wait_outstanding_below(self, limit: int, timeout: float) -> bool:
        """Block the feeding thread until fewer than ``limit`` windows are unscored (--fast pacing)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._outstanding < limit, timeout=timeout)

    def describe(self) -> dict[str, Any]:
        """What ``hello``, ``streams`` and /healthz say about this stream."""
        return {"id": self.id, "kind": self.kind, "sample_rate": self.input_rate, "channels": self.channels, **self.info}

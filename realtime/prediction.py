"""A scored window's post-processing, per stream, and the :class:`Prediction` it yields.

Owns what is done to a window's probabilities between the engine and the
wire. Each stream has one :class:`PostProcessor`, fed its scored windows in
order on the daemon's event loop: the voice gate (a window is voiced when its
stream's VAD found ``post.vad_min_voiced_s`` seconds of voice in it,
:func:`~realtime.postprocess.window_is_voiced`) and the exponential smoother,
whose leader is the prediction's ``top`` when voiced. The result is a typed
:class:`Prediction`; it becomes protocol JSON once, at the edge
(:meth:`Prediction.to_json`), and that one text goes to every subscriber and
to ``--jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from realtime import protocol
from realtime.postprocess import Smoother, window_is_voiced
from realtime.stream import Stream, Window


@dataclass(frozen=True)
class Prediction:
    """One window's published result: raw and smoothed probabilities, the voice gate, the latency."""

    stream: str
    seq: int
    t_start: float  # seconds of stream time
    t_end: float
    labels: tuple[str, ...]
    probs: np.ndarray
    smoothed: np.ndarray
    voiced: bool
    voiced_fraction: float
    latency_s: float  # from the window's last sample in to now

    def message(self) -> dict[str, Any]:
        """The protocol's ``prediction`` message (rounded as the protocol writes it)."""
        return protocol.prediction(
            self.stream, self.seq, self.t_start, self.t_end, self.labels, self.probs, self.smoothed,
            self.voiced, self.voiced_fraction, self.latency_s * 1000.0,
        )

    def to_json(self) -> str:
        """The message as the one JSON text every subscriber and ``--jsonl`` get."""
        return protocol.dumps(self.message())


class PostProcessor:
    """One stream's post-processing, fed its scored windows in order: voice gate, then smoothing."""

    def __init__(self, stream: Stream, labels: tuple[str, ...]) -> None:
        self.stream = stream
        self.labels = tuple(labels)
        self.min_voiced_s = stream.settings.post.vad_min_voiced_s
        self.smoother = Smoother(len(self.labels), stream.settings.post.smoothing_tau_s)

    def __call__(self, window: Window, probs: np.ndarray, now: float) -> Prediction:
        """The prediction of ``window`` (scored as ``probs``), ``now`` being ``time.monotonic()`` at delivery."""
        s = self.stream
        fraction = s.voiced_fraction(window)
        voiced = window_is_voiced(s.voiced_seconds(window), self.min_voiced_s)
        t_end = window.t_end()
        smoothed = self.smoother.update(probs, t_end, voiced)
        return Prediction(
            s.id, window.seq, window.t_start(), t_end, self.labels, probs, smoothed, voiced, fraction, now - window.due
        )

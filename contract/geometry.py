"""How a window is cut into the chunks the encoder hears: one ``ChunkGeometry`` for every package.

A chunked model encodes ``chunks_per_window`` (K) chunks of ``chunk_samples``
every ``hop_samples``, which tile a window of ``window_samples`` exactly; a
stream encodes each chunk once, by the stream sample it ends at, and a
window reuses the K - 1 chunks its predecessor encoded. A whole-window model
is the same geometry with ``hop_samples`` 0: its one chunk is the window.
Training (feature cache, heads, export), the engine (metadata, backends) and
the daemon (ring buffer, chunk store) all take their sizes from here, so the
geometry is written once and checked once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from contract.audio import CHUNK_HOP_SAMPLES, CHUNK_SAMPLES, SAMPLE_RATE, WINDOW_SAMPLES

# Three of the four ONNX metadata keys of a chunked model (the fourth, embedding_dim, is the model's: contract.model_io).
GEOMETRY_KEYS = ("chunk_samples", "chunk_hop_samples", "chunks_per_window")


class GeometryError(ValueError):
    """Sizes that cannot tile a window; the message says which sizes and why."""


@dataclass(frozen=True)
class ChunkGeometry:
    """K chunks of ``chunk_samples``, ``hop_samples`` apart, tiling ``window_samples``; hop 0: the window is the chunk."""

    window_samples: int = WINDOW_SAMPLES
    chunk_samples: int = CHUNK_SAMPLES
    hop_samples: int = CHUNK_HOP_SAMPLES

    def __post_init__(self) -> None:
        w, c, h = self.window_samples, self.chunk_samples, self.hop_samples
        if w <= 0:
            raise GeometryError(f"window_samples must be positive, got {w}")
        if h == 0:
            if c != w:
                raise GeometryError(f"a whole-window geometry (hop 0) has one chunk of the window's {w} samples, got {c}")
            return
        if c <= 0 or h < 0:
            raise GeometryError(f"chunk_samples and hop_samples must be positive, got {c} and {h}")
        if c > w:
            raise GeometryError(f"a chunk of {c} samples does not fit a window of {w}")
        if (w - c) % h:
            raise GeometryError(f"chunks of {c} samples every {h} do not tile a window of {w} samples ({w} - {c} is not a multiple of {h})")

    @classmethod
    def whole_window(cls, window_samples: int = WINDOW_SAMPLES) -> ChunkGeometry:
        """A model that scores whole windows (K = 1)."""
        return cls(window_samples, window_samples, 0)

    @classmethod
    def from_seconds(cls, chunk_s: float, hop_s: float, window_s: float = WINDOW_SAMPLES / SAMPLE_RATE,
                     sample_rate: int = SAMPLE_RATE) -> ChunkGeometry:
        """From a config's ``chunk_s`` and ``hop_s``, rounded to whole samples."""
        return cls(int(round(window_s * sample_rate)), int(round(chunk_s * sample_rate)), int(round(hop_s * sample_rate)))

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], window_samples: int) -> ChunkGeometry:
        """From ONNX metadata (strings); whole-window when none of the keys is there. KeyError/GeometryError otherwise."""
        if not any(k in meta for k in GEOMETRY_KEYS):
            return cls.whole_window(window_samples)
        try:
            chunk, hop, k = (int(meta[key]) for key in GEOMETRY_KEYS)
        except (TypeError, ValueError) as exc:
            raise GeometryError(f"chunk metadata is malformed: {exc}") from exc
        if hop <= 0:
            raise GeometryError(f"chunk_hop_samples must be positive in a chunked model, got {hop}")
        g = cls(window_samples, chunk, hop)
        if g.chunks_per_window != k:
            raise GeometryError(
                f"{k} chunks of {chunk} samples, {hop} apart, do not tile a window of {window_samples} samples "
                f"({g.chunks_per_window} would)"
            )
        return g

    def metadata(self) -> dict[str, str]:
        """The metadata ``from_metadata`` reads back (empty for a whole-window model)."""
        if not self.chunked:
            return {}
        return {"chunk_samples": str(self.chunk_samples), "chunk_hop_samples": str(self.hop_samples),
                "chunks_per_window": str(self.chunks_per_window)}

    @property
    def chunked(self) -> bool:
        return self.hop_samples > 0

    @property
    def chunks_per_window(self) -> int:
        """K: how many chunks a window holds."""
        return (self.window_samples - self.chunk_samples) // self.hop_samples + 1 if self.chunked else 1

    def chunk_starts(self) -> np.ndarray:
        """Offsets of the K chunks inside a window, oldest first."""
        return np.arange(self.chunks_per_window) * self.hop_samples

    def frame(self, windows: np.ndarray) -> np.ndarray:
        """``[..., window_samples]`` -> ``[..., K, chunk_samples]`` (a copy), chunk by chunk as the encoder sees them."""
        if windows.shape[-1] != self.window_samples:
            raise GeometryError(f"expected windows of {self.window_samples} samples, got {windows.shape[-1]}")
        idx = self.chunk_starts()[:, None] + np.arange(self.chunk_samples)[None, :]
        return windows[..., idx]

    def chunk_keys(self, end: int) -> list[int]:
        """The stream samples at which the K chunks of the window ending at ``end`` end, oldest first.

        A chunk that ends at or before a stream's first sample is all zeros,
        so every such chunk shares key 0 and is encoded once. A whole-window
        model's one key is the window's end.
        """
        if not self.chunked:
            return [end]
        last = self.chunks_per_window - 1
        return [max(0, end - (last - i) * self.hop_samples) for i in range(self.chunks_per_window)]

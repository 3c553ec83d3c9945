"""The one interface every inference backend implements, and what a model file says about itself.

An engine maps a batch of 16 kHz waveforms ``[batch, samples]`` (float32) to
probabilities ``[batch, len(labels)]`` (``infer``), and offers the same model
as two streaming halves: ``encode_chunks`` (``[N, chunk_samples]`` ->
embeddings ``[N, D]``) and ``classify`` (the K embeddings covering a window,
``[B, K, D]`` -> probabilities). A chunked model (the Whisper encoder) encodes
each chunk of a stream once; a whole-window model is the same interface with
K = 1 (one chunk = the window, embedding = its probabilities), so the daemon
has one path for both. Every output is checked (shape, finite) here, once,
for every backend. The daemon and ``ser-predict`` see only this interface, so
a backend can be swapped without touching them. Backends import this module;
it imports none of them (``engine.registry`` finds them).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.audio import LABELS, SAMPLE_RATE, WINDOW_S
from contract.geometry import ChunkGeometry, GeometryError
from contract.model_io import CHUNK_METADATA_KEYS, EMBEDDING_DIM_KEY, REQUIRED_METADATA_KEYS


class EngineError(Exception):
    """A model that cannot be loaded or run; the message names the file and the cause."""


class NonFiniteOutput(EngineError):
    """An engine call returned NaN or inf in some rows; ``rows`` says which, ``output`` holds the rest.

    Raised instead of returning poison, so one bad window cannot spread into a
    stream's smoothing; a caller that batches several streams keeps the finite
    rows (``output[i]`` for ``i`` not in ``rows``).
    """

    def __init__(self, message: str, rows: list[int], output: np.ndarray) -> None:
        super().__init__(message)
        self.rows = rows
        self.output = output


class BackendUnavailable(EngineError):
    """A backend that cannot run here at all (its library is not installed, or no GPU): ``auto`` tries the next one.

    Every other EngineError is about the model file or the call, and stops the search.
    """


@dataclass(frozen=True)
class ModelInfo:
    """What the model file says about itself (ONNX ``metadata_props`` or a checkpoint's config), checked once."""

    labels: tuple[str, ...] = LABELS
    sample_rate: int = SAMPLE_RATE
    window_s: float = WINDOW_S
    variant: str = "unknown"
    name: str = "unknown"
    geometry: ChunkGeometry = field(default_factory=ChunkGeometry.whole_window)
    embedding_dim: int = len(LABELS)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def window_samples(self) -> int:
        return int(round(self.sample_rate * self.window_s))

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path) -> ModelInfo:
        """Parse ONNX metadata, failing clearly when a required key is missing or malformed.

        A model with none of the chunk keys is whole-window (K = 1, D = its
        labels); one with any of them needs all four, positive, tiling the window.
        """
        try:
            labels = tuple(json.loads(meta["labels"]))
            sample_rate = int(meta["sample_rate"])
            window_s = float(meta["window_s"])
        except KeyError as exc:
            raise EngineError(f"{path}: model metadata lacks {exc.args[0]!r}; was it exported by ser-build-engine?") from exc
        except (ValueError, TypeError) as exc:
            raise EngineError(f"{path}: model metadata is malformed: {exc}") from exc
        if not labels or not all(isinstance(x, str) for x in labels):
            raise EngineError(f"{path}: model metadata 'labels' must be a non-empty list of strings")
        window_samples = int(round(sample_rate * window_s))
        chunked = any(k in meta for k in CHUNK_METADATA_KEYS)
        try:
            missing = [k for k in CHUNK_METADATA_KEYS if k not in meta] if chunked else []
            if missing:
                raise EngineError(f"{path}: chunked model metadata lacks {missing[0]!r} (needs {', '.join(CHUNK_METADATA_KEYS)})")
            geometry = ChunkGeometry.from_metadata(meta, window_samples)
            dim = int(meta[EMBEDDING_DIM_KEY]) if chunked else len(labels)
        except GeometryError as exc:
            raise EngineError(f"{path}: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise EngineError(f"{path}: chunked model metadata is malformed: {exc}") from exc
        if dim < 1:
            raise EngineError(f"{path}: {EMBEDDING_DIM_KEY} must be positive, got {dim}")
        core = (*REQUIRED_METADATA_KEYS, *CHUNK_METADATA_KEYS, "variant", "name")
        return cls(
            labels=labels,
            sample_rate=sample_rate,
            window_s=window_s,
            variant=meta.get("variant", "unknown"),
            name=meta.get("name", path.stem),
            geometry=geometry,
            embedding_dim=dim,
            extra={k: v for k, v in meta.items() if k not in core},
        )

    def metadata(self) -> dict[str, str]:
        """The metadata ``from_metadata`` reads back: what a TensorRT plan's sidecar stores."""
        meta = {k: str(v) for k, v in self.extra.items()}
        meta.update(labels=json.dumps(list(self.labels)), sample_rate=str(self.sample_rate),
                    window_s=repr(self.window_s), variant=self.variant, name=self.name)
        if self.geometry.chunked:
            meta.update(self.geometry.metadata(), **{EMBEDDING_DIM_KEY: str(self.embedding_dim)})
        return meta


class Engine(ABC):
    """Load once, warm up, then ``infer`` batches (or ``encode_chunks`` + ``classify`` them, streaming).

    Backends implement ``_run`` (whole-window models) or ``_encode`` and
    ``_classify`` (chunked models); the public calls here validate inputs,
    check outputs and make both kinds look the same.
    """

    name: str = "abstract"
    device: str = "cpu"
    precision: str = "fp32"  # what the arithmetic runs in: fp32, fp16 or int8 (TensorRT's plan, onnxruntime's int8 copy)

    def __init__(self, path: Path, info: ModelInfo) -> None:
        self.path = path
        self.info = info
        self.geometry = info.geometry

    @property
    def labels(self) -> tuple[str, ...]:
        return self.info.labels

    @property
    def sample_rate(self) -> int:
        return self.info.sample_rate

    @property
    def window_samples(self) -> int:
        return self.info.window_samples

    @property
    def chunked(self) -> bool:
        """True when the model encodes chunks and pools K of them (False: one whole-window graph)."""
        return self.geometry.chunked

    @property
    def chunk_samples(self) -> int:
        return self.geometry.chunk_samples

    @property
    def chunk_hop_samples(self) -> int:
        """Samples between a window's chunks; 0 for a whole-window model (its chunk follows the caller's hop)."""
        return self.geometry.hop_samples

    @property
    def chunks_per_window(self) -> int:
        return self.geometry.chunks_per_window

    @property
    def embedding_dim(self) -> int:
        """D: a chunk embedding's length (a whole-window model's "embedding" is its probabilities)."""
        return self.info.embedding_dim

    # ------------------------------------------------------------ what backends implement

    @abstractmethod
    def _run(self, waveforms: np.ndarray) -> np.ndarray:
        """Whole-window model: probabilities for a validated float32 C-contiguous ``[batch, samples]`` array."""

    def _encode(self, chunks: np.ndarray) -> np.ndarray:
        """Chunked model: embeddings ``[N, D]`` for validated ``[N, chunk_samples]`` (N >= 1)."""
        raise EngineError(f"{self.path.name}: the {self.name} backend cannot run the chunk encoder of this model")

    def _classify(self, window_embeddings: np.ndarray) -> np.ndarray:
        """Chunked model: probabilities ``[B, labels]`` for validated ``[B, K, D]`` (B >= 1)."""
        raise EngineError(f"{self.path.name}: the {self.name} backend cannot run the head of this model")

    # ------------------------------------------------------------ the interface

    def infer(self, waveforms: np.ndarray) -> np.ndarray:
        """Probabilities ``[batch, labels]`` for waveforms ``[batch, samples]`` (or one ``[samples]``).

        A chunked model frames each window into its K chunks, encodes all
        ``batch * K`` in one call and classifies: exactly what streaming does.
        """
        x = np.asarray(waveforms, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"expected waveforms of shape [batch, samples], got {x.shape}")
        if not self.chunked:
            return self._checked(self._run(np.ascontiguousarray(x)), (x.shape[0], len(self.labels)), "infer")
        if x.shape[1] != self.window_samples:
            raise ValueError(f"this chunked model takes windows of {self.window_samples} samples, got {x.shape[1]}")
        emb = self.encode_chunks(self.geometry.frame(x).reshape(-1, self.chunk_samples))
        return self.classify(emb.reshape(x.shape[0], self.chunks_per_window, self.embedding_dim))

    def encode_chunks(self, chunks: np.ndarray) -> np.ndarray:
        """Embeddings ``[N, embedding_dim]`` for chunks ``[N, chunk_samples]`` (N may be 0).

        For a whole-window model a chunk is a window and its embedding its probabilities.
        """
        x = np.ascontiguousarray(chunks, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.chunk_samples:
            raise ValueError(f"expected chunks of shape [N, {self.chunk_samples}], got {x.shape}")
        if x.shape[0] == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        out = self._encode(x) if self.chunked else self._run(x)
        return self._checked(out, (x.shape[0], self.embedding_dim), "encode_chunks")

    def classify(self, window_embeddings: np.ndarray) -> np.ndarray:
        """Probabilities ``[B, labels]`` from the K chunk embeddings ``[B, K, D]`` of each window."""
        e = np.ascontiguousarray(window_embeddings, dtype=np.float32)
        want = (self.chunks_per_window, self.embedding_dim)
        if e.ndim != 3 or e.shape[1:] != want:
            raise ValueError(f"expected window embeddings of shape [B, {want[0]}, {want[1]}], got {e.shape}")
        if e.shape[0] == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        out = self._classify(e) if self.chunked else e[:, -1, :].copy()
        return self._checked(out, (e.shape[0], len(self.labels)), "classify")

    def _checked(self, out: Any, shape: tuple[int, ...], call: str) -> np.ndarray:
        """The output as float32, or EngineError for a wrong shape and NonFiniteOutput for NaN/inf rows."""
        arr = np.asarray(out)
        if arr.shape != shape:
            raise EngineError(f"{self.path.name}: {call} returned shape {arr.shape}, expected {shape} ({self.name} backend)")
        arr = arr.astype(np.float32, copy=False)
        finite = np.isfinite(arr).reshape(shape[0], -1).all(axis=1)
        if not finite.all():
            rows = [int(i) for i in np.flatnonzero(~finite)]
            raise NonFiniteOutput(
                f"{self.path.name}: {call} returned NaN/inf in {len(rows)} of {shape[0]} rows ({self.name} backend)", rows, arr
            )
        return arr

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run silent windows once so the first real window does not pay for lazy initialisation.

        ``infer`` goes through both halves of a chunked model; the chunk
        encoder is warmed at the one-chunk batch streaming uses most too.
        """
        for b in batch_sizes:
            self.infer(np.zeros((b, self.window_samples), dtype=np.float32))
        if self.chunked:
            self.encode_chunks(np.zeros((1, self.chunk_samples), dtype=np.float32))

    def describe(self) -> str:
        return f"{self.name} on {self.device} ({self.path.name}, {self.info.variant})"

"""The one interface every inference backend implements, and ``load_engine`` that picks one.

An engine maps a batch of 16 kHz waveforms ``[batch, samples]`` (float32) to
probabilities ``[batch, len(labels)]`` (``infer``), and offers the same model
as two streaming halves: ``encode_chunks`` (``[N, chunk_samples]`` ->
embeddings ``[N, D]``) and ``classify`` (the K embeddings covering a window,
``[B, K, D]`` -> probabilities). A chunked model (the Whisper encoder) encodes
each chunk of a stream once; a whole-window model is the same interface with
K = 1 (one chunk = the window, embedding = its probabilities), so the daemon
has one path for both. Every output is checked (shape, finite) here, once,
for every backend. The daemon and ``ser-predict`` see only this interface, so
a backend can be swapped without touching them.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from training.audio import LABELS, SAMPLE_RATE, WINDOW_S

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
INPUT_NAME = "waveform"
OUTPUT_NAME = "probs"
# A chunked model's two sub-graphs: chunks -> embeddings, window_embeddings -> probs.
CHUNKS_INPUT = "chunks"
EMBEDDINGS_OUTPUT = "embeddings"
WINDOW_EMBEDDINGS_INPUT = "window_embeddings"
CHUNK_METADATA_KEYS = ("chunk_samples", "chunk_hop_samples", "chunks_per_window", "embedding_dim")


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


@dataclass(frozen=True)
class Chunking:
    """How a chunked model cuts a window: K chunks of ``chunk_samples``, ``hop_samples`` apart.

    ``hop_samples`` 0 means a whole-window model (K = 1), whose single chunk
    follows whatever hop the caller uses.
    """

    chunk_samples: int
    hop_samples: int
    chunks_per_window: int
    embedding_dim: int

    def chunk_starts(self) -> list[int]:
        """Offsets of the K chunks inside a window."""
        return [i * self.hop_samples for i in range(self.chunks_per_window)]


@dataclass(frozen=True)
class ModelInfo:
    """What the model file says about itself (ONNX ``metadata_props`` or checkpoint hparams)."""

    labels: tuple[str, ...] = LABELS
    sample_rate: int = SAMPLE_RATE
    window_s: float = WINDOW_S
    variant: str = "unknown"
    name: str = "unknown"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def window_samples(self) -> int:
        return int(round(self.sample_rate * self.window_s))

    @property
    def chunking(self) -> Chunking:
        """The chunk geometry from the metadata; a model without it is whole-window (K = 1)."""
        if not any(k in self.extra for k in CHUNK_METADATA_KEYS):
            return Chunking(self.window_samples, 0, 1, len(self.labels))
        return parse_chunking(self.extra, self.window_samples, self.name)

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path) -> ModelInfo:
        """Parse ONNX metadata, failing clearly when a required key is missing or malformed."""
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
        extra = {k: v for k, v in meta.items() if k not in ("labels", "sample_rate", "window_s")}
        return cls(
            labels=labels,
            sample_rate=sample_rate,
            window_s=window_s,
            variant=meta.get("variant", "unknown"),
            name=meta.get("name", path.stem),
            extra=extra,
        )


def parse_chunking(meta: dict[str, Any], window_samples: int, where: object) -> Chunking:
    """Chunk geometry from metadata, checked: all four keys, positive, and K chunks that tile the window."""
    try:
        c = Chunking(*(int(meta[k]) for k in CHUNK_METADATA_KEYS))
    except KeyError as exc:
        raise EngineError(f"{where}: chunked model metadata lacks {exc.args[0]!r} (needs {', '.join(CHUNK_METADATA_KEYS)})") from exc
    except (TypeError, ValueError) as exc:
        raise EngineError(f"{where}: chunked model metadata is malformed: {exc}") from exc
    if min(c.chunk_samples, c.hop_samples, c.chunks_per_window, c.embedding_dim) < 1:
        raise EngineError(f"{where}: chunk metadata must be positive, got {c}")
    if (c.chunks_per_window - 1) * c.hop_samples + c.chunk_samples != window_samples:
        raise EngineError(
            f"{where}: {c.chunks_per_window} chunks of {c.chunk_samples} samples, {c.hop_samples} apart, "
            f"do not tile a window of {window_samples} samples"
        )
    return c


class Engine(ABC):
    """Load once, warm up, then ``infer`` batches (or ``encode_chunks`` + ``classify`` them, streaming).

    Backends implement ``_run`` (whole-window models) or ``_encode`` and
    ``_classify`` (chunked models); the public calls here validate inputs,
    check outputs and make both kinds look the same.
    """

    name: str = "abstract"
    device: str = "cpu"

    def __init__(self, path: Path, info: ModelInfo) -> None:
        self.path = path
        self.info = info
        self.geometry = info.chunking

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
        return self.geometry.hop_samples > 0

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
        return self.geometry.embedding_dim

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
        emb = self.encode_chunks(frame_chunks(x, self.geometry))
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


def frame_chunks(windows: np.ndarray, geometry: Chunking) -> np.ndarray:
    """The ``[B * K, chunk_samples]`` chunks of windows ``[B, window_samples]``, window by window."""
    starts = geometry.chunk_starts()
    return np.stack([w[s : s + geometry.chunk_samples] for w in windows for s in starts]).astype(np.float32, copy=False)


def default_model_path() -> Path:
    """The ONNX model shipped inside the package (``engine/models/default.onnx``)."""
    return Path(str(resources.files("engine") / "models" / "default.onnx"))


def shipped_models() -> dict[str, Path]:
    """The models shipped in the package by name: ``default``, ``multilingual``, ``compact``."""
    return {p.stem: p for p in sorted(default_model_path().parent.glob("*.onnx"))}


def resolve_model_path(path: str | Path | None) -> Path:
    """The given path, a shipped model's name (``--model multilingual``), or the default; a missing file is a clear error."""
    if path is not None and str(path) in shipped_models() and not Path(path).exists():
        return shipped_models()[str(path)]
    if path is None:
        p = default_model_path()
        if not p.is_file():
            raise EngineError(
                f"no default model is shipped yet ({p} is absent), so --model PATH is required: "
                "train one with ser-train and export it with ser-build-engine"
            )
        return p
    p = Path(path).expanduser()
    if not p.exists():
        names = ", ".join(shipped_models())
        raise EngineError(f"model file not found: {p} (shipped models by name: {names})")
    if p.is_dir():
        raise EngineError(f"model path is a directory, not a file: {p}")
    return p


def load_engine(path: str | Path | None = None, backend: str = "auto", device: str = "auto", **options: Any) -> Engine:
    """Load a model with the requested backend.

    ``auto`` tries TensorRT, then onnxruntime with CUDA, then onnxruntime on
    the CPU, then torch, and logs which it picked. A ``.ckpt`` path means a
    Lightning checkpoint, which only the torch backend runs.
    """
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    p = resolve_model_path(path)
    is_checkpoint = p.suffix in (".ckpt", ".pt", ".pth")

    if backend == "torch" or (backend == "auto" and is_checkpoint):
        from engine.backends.torch_backend import TorchEngine

        eng: Engine = TorchEngine.load(p, device=device, **options)
    elif is_checkpoint:
        raise EngineError(f"{p} is a training checkpoint; backend {backend!r} needs an ONNX model (ser-build-engine)")
    elif backend == "onnxruntime":
        from engine.backends.ort import OrtEngine

        eng = OrtEngine.load(p, device=device, **options)
    elif backend == "tensorrt":
        from engine.backends.tensorrt_backend import TensorRTEngine

        eng = TensorRTEngine.load(p, device=device, **options)
    else:
        eng = _load_auto(p, device, **options)
    log.info("engine: %s", eng.describe())
    return eng


def _load_auto(path: Path, device: str, **options: Any) -> Engine:
    """TensorRT, then onnxruntime (CUDA, then CPU), then torch; an unusable model file stops the search.

    A backend that is not installed or has no GPU is skipped with its reason;
    a file that onnxruntime cannot open as a model is reported as such
    rather than hidden behind "no backend can run".
    """
    reasons: list[str] = []
    if device in ("auto", "cuda"):
        try:
            from engine.backends.tensorrt_backend import TensorRTEngine

            return TensorRTEngine.load(path, device=device, **options)
        except EngineError as exc:
            reasons.append(f"tensorrt: {exc}")
            log.info("auto: skipping TensorRT: %s", exc)
    try:
        from engine.backends.ort import OrtEngine

        return OrtEngine.load(path, device=device, **options)
    except EngineError as exc:
        if "onnxruntime is not installed" not in str(exc):
            raise
        reasons.append(f"onnxruntime: {exc}")
    try:
        from engine.backends.torch_backend import TorchEngine

        return TorchEngine.load(path, device=device, **options)
    except EngineError as exc:
        reasons.append(f"torch: {exc}")
    raise EngineError(f"no backend can run {path}: " + "; ".join(reasons))

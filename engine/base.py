"""The one interface every inference backend implements, and ``load_engine`` that picks one.

An engine maps a batch of 16 kHz waveforms ``[batch, samples]`` (float32) to
probabilities ``[batch, len(labels)]``. The daemon and ``ser-predict`` see only
this interface, so a backend can be swapped without touching them.
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


class EngineError(Exception):
    """A model that cannot be loaded or run; the message names the file and the cause."""


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


class Engine(ABC):
    """Load once, warm up, then ``infer`` batches; ``name`` and ``device`` say what runs where."""

    name: str = "abstract"
    device: str = "cpu"

    def __init__(self, path: Path, info: ModelInfo) -> None:
        self.path = path
        self.info = info

    @property
    def labels(self) -> tuple[str, ...]:
        return self.info.labels

    @property
    def sample_rate(self) -> int:
        return self.info.sample_rate

    @property
    def window_samples(self) -> int:
        return self.info.window_samples

    @abstractmethod
    def _run(self, waveforms: np.ndarray) -> np.ndarray:
        """Run the model on a validated float32 C-contiguous ``[batch, samples]`` array."""

    def infer(self, waveforms: np.ndarray) -> np.ndarray:
        """Probabilities ``[batch, labels]`` for waveforms ``[batch, samples]`` (or one ``[samples]``)."""
        x = np.asarray(waveforms, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"expected waveforms of shape [batch, samples], got {x.shape}")
        return self._run(np.ascontiguousarray(x))

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run silent windows once so the first real window does not pay for lazy initialisation."""
        for b in batch_sizes:
            self.infer(np.zeros((b, self.window_samples), dtype=np.float32))

    def describe(self) -> str:
        return f"{self.name} on {self.device} ({self.path.name}, {self.info.variant})"


def default_model_path() -> Path:
    """The ONNX model shipped inside the package (``engine/models/default.onnx``)."""
    return Path(str(resources.files("engine") / "models" / "default.onnx"))


def resolve_model_path(path: str | Path | None) -> Path:
    """The given path, or the shipped default model; a missing file is a clear error."""
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
        raise EngineError(f"model file not found: {p}")
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

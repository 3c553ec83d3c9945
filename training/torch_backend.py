"""torch backend: runs a ``ser-train`` checkpoint directly, for debugging and machines without onnxruntime.

Imports torch and ``training.model`` (the ``train`` extra); registered with the
engine through the ``ser.engine_backends`` entry point, so the runtime never imports it. It takes
checkpoints only: an ONNX file is the other backends' input, and running it
through torch would test nothing the parity check has not. Softmax is applied
here, as the exporter appends it to the served graph. A chunked model
(``model.geometry``, ``model.embedding_dim``, ``model.encode_chunks``, ``model.classify``) runs its two
halves; a whole-window model runs ``forward``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from contract.model_io import chunk_metadata
from engine.interface import BackendUnavailable, Engine, EngineError, ModelInfo
from training.metadata import model_metadata


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, path: Path, info: ModelInfo, model: Any, device: str, compiled: bool) -> None:
        super().__init__(path, info)
        self.model = model
        self.device = device
        self.compiled = compiled

    @classmethod
    def load(cls, path: Path, device: str = "auto", compile: bool = False, threads: int | None = None) -> TorchEngine:
        """Open a checkpoint on ``device``; ``compile`` wraps the model in torch.compile, ``threads`` sets torch's."""
        path = Path(path)
        if path.suffix == ".onnx":
            raise EngineError(
                f"{path} is an ONNX model; the torch backend runs ser-train checkpoints (.ckpt): "
                "use --backend onnxruntime (or tensorrt) for ONNX"
            )
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailable("torch is not installed: pip install 'ser[train]' (the torch backend runs checkpoints)") from exc
        from training.checkpoint import CheckpointError, open_checkpoint

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise EngineError("device 'cuda' asked for, but this torch has no CUDA device")
        if threads or os.environ.get("SER_TORCH_THREADS"):
            torch.set_num_threads(int(threads or os.environ["SER_TORCH_THREADS"]))
        try:
            model, cfg, extras = open_checkpoint(path)
        except CheckpointError as exc:
            raise EngineError(str(exc)) from exc
        meta = model_metadata(cfg, extras, name=path.stem)
        geometry = getattr(model, "geometry", None)
        if geometry is not None:
            try:
                meta.update(chunk_metadata(geometry, int(model.embedding_dim)))
            except (AttributeError, TypeError, ValueError) as exc:
                raise EngineError(f"{path}: a chunked model needs a ChunkGeometry and an int embedding_dim: {exc!r}") from exc
            if not (callable(getattr(model, "encode_chunks", None)) and callable(getattr(model, "classify", None))):
                raise EngineError(f"{path}: a chunked model needs encode_chunks() and classify()")
        info = ModelInfo.from_metadata(meta, path)
        model = model.to(device).eval()
        if compile:
            model = torch.compile(model, dynamic=True)
        return cls(path, info, model, device, compile)

    def _run(self, waveforms: np.ndarray) -> np.ndarray:
        return self._call(self.model, waveforms, softmax=True)

    def _encode(self, chunks: np.ndarray) -> np.ndarray:
        return self._call(self._module().encode_chunks, chunks, softmax=False)

    def _classify(self, window_embeddings: np.ndarray) -> np.ndarray:
        return self._call(self._module().classify, window_embeddings, softmax=True)

    def _module(self) -> Any:
        """The model's own module (``torch.compile`` wraps it; the two halves are methods of the original)."""
        return getattr(self.model, "_orig_mod", self.model)

    def _call(self, fn: Any, x: np.ndarray, softmax: bool) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = fn(torch.from_numpy(x).to(self.device, non_blocking=True))
            if softmax:
                out = torch.softmax(out, dim=-1)
            return out.float().cpu().numpy()

    def describe(self) -> str:
        extra = ", torch.compile" if self.compiled else ""
        return f"torch on {self.device} ({self.path.name}, {self.info.variant}{extra})"

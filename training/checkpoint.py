"""Open ``ser-train`` checkpoints for export and for the torch backend.

Imports torch and ``training.model`` (the one owner of the checkpoint format);
this module only adds the optional ``"ser"`` block (validation metrics, data,
variant) that ``load_checkpoint`` does not return.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from training.model import CheckpointError, EmotionModel, load_checkpoint

__all__ = ["CheckpointError", "open_checkpoint"]


def open_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[EmotionModel, dict[str, Any], dict[str, Any]]:
    """``(model in eval mode, resolved config, "ser" extras or {})``; errors name the file."""
    path = Path(path)
    if path.suffix == ".onnx":
        raise CheckpointError(f"{path} is an ONNX model, not a ser-train checkpoint (.ckpt)")
    model, cfg = load_checkpoint(path, map_location=map_location)
    return model, cfg, _extras(path)


def _extras(path: Path) -> dict[str, Any]:
    # A second, memory-mapped read: cheap, and it keeps training.model the only parser of the format.
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # load_checkpoint already succeeded, so only the optional block is missing
        return {}
    extras = ckpt.get("ser") if isinstance(ckpt, dict) else None
    return dict(extras) if isinstance(extras, dict) else {}

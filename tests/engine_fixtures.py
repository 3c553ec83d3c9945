"""Helpers for the engine tests: checkpoints in exactly the format ``ser-train`` writes.

Untrained weights are enough for parity, metadata and backend tests; the
format (``hyper_parameters.cfg``, ``state_dict`` with ``model.`` prefixes, the
optional ``ser`` block) is what matters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def make_checkpoint(
    path: Path, variant: str = "compact", seed: int = 0, extras: dict[str, Any] | None = None, with_extras: bool = True
) -> Path:
    """Write an untrained ``variant`` checkpoint; ``with_extras=False`` omits the optional ``ser`` block."""
    import torch
    from omegaconf import OmegaConf

    from contract.config import compose
    from training.model import build_model

    torch.manual_seed(seed)
    cfg = OmegaConf.to_container(compose("train", [f"model={variant}"]), resolve=True)
    model = build_model(cfg["model"])
    ckpt: dict[str, Any] = {
        "hyper_parameters": {"cfg": cfg},
        "state_dict": {"model." + k: v for k, v in model.state_dict().items()},
    }
    if with_extras:
        ckpt["ser"] = extras or {"val_metrics": {"val/uar": 0.41, "val/acc": 0.44}, "data": "ravdess+tess", "variant": variant}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


_EXPORTS: dict[tuple[str, str], Path] = {}


def exported_compact(base: Path) -> Path:
    """The compact model exported once per test session (export + parity takes seconds, not minutes)."""
    key = (str(base), "compact")
    if key not in _EXPORTS:
        from training.export import export_checkpoint

        ckpt = make_checkpoint(base / "engine-models" / "compact.ckpt")
        export_checkpoint(ckpt, base / "engine-models" / "compact.onnx", log=lambda _msg: None)
        _EXPORTS[key] = base / "engine-models" / "compact.onnx"
    return _EXPORTS[key]

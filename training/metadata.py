"""What an exported model says about itself: the ONNX ``metadata_props`` built from a checkpoint.

Torch-free: it reads the plain config dict stored in a ``ser-train``
checkpoint. The torch backend builds its ``ModelInfo`` from the same
function, so a checkpoint and its export describe themselves identically.
"""

from __future__ import annotations

import datetime as _dt
import json
from importlib import metadata as _importlib_metadata
from pathlib import Path
from typing import Any

from contract.audio import LABELS, SAMPLE_RATE, WINDOW_S

REPO_ROOT = Path(__file__).resolve().parents[1]


def package_version() -> str:
    """Installed version of ``ser``; a source checkout that is not installed reads pyproject.toml."""
    try:
        return _importlib_metadata.version("ser")
    except _importlib_metadata.PackageNotFoundError:
        pass
    try:
        import tomllib

        with open(REPO_ROOT / "pyproject.toml", "rb") as fh:
            return str(tomllib.load(fh)["project"]["version"]) + "+source"
    except (ImportError, OSError, KeyError, ValueError):
        return "unknown"


def model_metadata(cfg: dict[str, Any], extras: dict[str, Any] | None = None, name: str | None = None) -> dict[str, str]:
    """Metadata for a model trained with ``cfg`` (a resolved ``ser-train`` config).

    ``cfg`` is the config as ``training.model.load_checkpoint`` returns it:
    its model section has every key (the stored config's absent ones at
    training.schema's defaults), so it is read without fallbacks; a chunk
    model has no spectrogram frontend and hears SAMPLE_RATE audio.
    ``extras`` is the checkpoint's optional ``"ser"`` block (validation
    metrics, data, variant); old checkpoints lack it, so every field falls
    back to the config.
    """
    extras = dict(extras or {})
    model_cfg = cfg["model"]
    frontend = dict(model_cfg["frontend"]) if "frontend" in model_cfg else {}
    variant = str(extras.get("variant") or model_cfg["variant"])
    data = extras.get("data") or (cfg.get("choices") or {}).get("data") or "unknown"
    window_s = float((cfg.get("dataset") or {}).get("window_s", WINDOW_S))
    metrics = {k: float(v) for k, v in dict(extras.get("val_metrics") or {}).items() if _is_number(v)}
    return {
        "labels": json.dumps(list(LABELS)),
        "sample_rate": str(int(frontend["sample_rate"] if frontend else SAMPLE_RATE)),
        "window_s": repr(window_s),
        "variant": variant,
        "name": name or f"ser-{variant}",
        "data": str(data),
        "val_metrics": json.dumps(metrics, sort_keys=True),
        "frontend": json.dumps(frontend, sort_keys=True),
        **{key: json.dumps(extras[key]) if not isinstance(extras[key], str) else extras[key]
           for key in ("calibration", "encoder_weights", "layer_weights") if extras.get(key) is not None},
        "version": package_version(),
        "export_date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True

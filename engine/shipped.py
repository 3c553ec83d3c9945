"""The models shipped inside the package (``engine/models/*.onnx``) and how a ``--model`` argument names one.

``--model`` takes a path, a shipped model's name (``multilingual``) or
nothing (the default, tiny.en). A missing file is an EngineError that lists
the shipped names, so a typo is answered with the choices.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from engine.interface import EngineError


def default_model_path() -> Path:
    """The ONNX model shipped inside the package (``engine/models/default.onnx``)."""
    return Path(str(resources.files("engine") / "models" / "default.onnx"))


def shipped_models() -> dict[str, Path]:
    """The models shipped in the package by name: ``default``, ``multilingual``, ``compact``.

    A model's CPU int8 copy (``default.int8.onnx``) is not a model of its own: onnxruntime serves
    it in the model's place (``engine.backends.ort``).
    """
    return {p.stem: p for p in sorted(default_model_path().parent.glob("*.onnx")) if not p.stem.endswith(".int8")}


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

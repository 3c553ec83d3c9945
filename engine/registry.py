"""Which backends exist, which one ``--backend auto`` picks, and ``load_engine`` that loads a model with it.

A backend is a name, the ``module:Class`` that implements
:class:`engine.interface.Engine`, the file suffixes it runs and whether
``auto`` may pick it. The built-in ones (TensorRT, onnxruntime) are listed
here; another package adds its own through the ``ser.engine_backends`` entry
point group (``training`` registers ``torch``, which runs ``ser-train``
checkpoints), so the runtime never imports the package that trains.

``auto`` tries the backends in order and skips one when it raises
:class:`BackendUnavailable` (library not installed, no GPU) or, for a GPU
backend, any EngineError (its plan may not build; onnxruntime runs the same
file); any other error is about the model file and stops the search. Backend options are
explicit keyword arguments of each ``load``: an option no registered backend
declares is an error, and each backend receives only the options it declares.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from engine.interface import BackendUnavailable, Engine, EngineError
from engine.shipped import resolve_model_path

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ser.engine_backends"
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")
ONNX_SUFFIXES = (".onnx", ".plan")
# Options every backend's load takes (device is one of auto, cpu, cuda).
COMMON_OPTIONS = ("device",)


@dataclass(frozen=True)
class Backend:
    """A registered backend: ``target`` is ``module:Class``, loaded only when the backend is tried."""

    name: str
    target: str
    suffixes: tuple[str, ...]
    gpu_only: bool = False

    def engine_class(self) -> type[Engine]:
        module, _, attr = self.target.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise BackendUnavailable(f"backend {self.name!r} cannot be imported ({self.target}): {exc}") from exc
        except AttributeError as exc:
            raise EngineError(f"backend {self.name!r}: {self.target} names no class") from exc
        if not (isinstance(cls, type) and issubclass(cls, Engine)):
            raise EngineError(f"backend {self.name!r}: {self.target} is not an Engine")
        return cls

    def options(self) -> tuple[str, ...]:
        """The keyword options this backend's ``load`` declares (beyond path and device)."""
        params = inspect.signature(self.engine_class().load).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            raise EngineError(f"backend {self.name!r}: load(**kwargs) hides its options; declare them")
        return tuple(n for n in params if n not in ("cls", "path", *COMMON_OPTIONS))


BUILTIN: tuple[Backend, ...] = (
    Backend("tensorrt", "engine.backends.tensorrt_backend:TensorRTEngine", ONNX_SUFFIXES, gpu_only=True),
    Backend("onnxruntime", "engine.backends.ort:OrtEngine", (".onnx",)),
)


def registered() -> dict[str, Backend]:
    """Built-in backends, then those other installed packages register (in ``auto``'s order)."""
    out = {b.name: b for b in BUILTIN}
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in out:
            continue  # a built-in name cannot be replaced by a plugin
        suffixes = CHECKPOINT_SUFFIXES if ep.name == "torch" else ONNX_SUFFIXES
        out[ep.name] = Backend(ep.name, ep.value, suffixes)
    return out


def backend_names() -> tuple[str, ...]:
    """What ``--backend`` accepts: ``auto`` and every registered backend."""
    return ("auto", *registered())


def load_engine(path: str | Path | None = None, backend: str = "auto", device: str = "auto", **options: Any) -> Engine:
    """Load a model (a path, a shipped model's name, or the default) with the requested backend.

    ``auto`` tries, in registry order, every backend that runs this kind of
    file (TensorRT only where a GPU may be used), and logs which it picked.
    ``options`` go to the backend's ``load``; ``threads`` is for CPU backends.
    """
    backends = registered()
    if backend != "auto" and backend not in backends:
        raise EngineError(f"unknown backend {backend!r}; choose one of {', '.join(backend_names())}")
    if device not in ("auto", "cpu", "cuda"):
        raise EngineError(f"unknown device {device!r}; choose auto, cpu or cuda")
    p = resolve_model_path(path)
    if backend != "auto":
        b = backends[backend]
        if p.suffix in CHECKPOINT_SUFFIXES and p.suffix not in b.suffixes:
            raise EngineError(f"{p} is a training checkpoint; backend {backend!r} needs an ONNX model (ser-build-engine)")
        # Any other file goes to the backend asked for, whose load says what it takes (torch: checkpoints).
        eng = _load(b, p, device, options, strict=True)
    else:
        eng = _load_auto([b for b in backends.values() if p.suffix in b.suffixes], p, device, options)
    log.info("engine: %s", eng.describe())
    return eng


def _load(b: Backend, path: Path, device: str, options: dict[str, Any], strict: bool) -> Engine:
    """``b``'s ``load`` with the options it declares; with ``strict``, an option it does not declare is an error."""
    declared = b.options()
    extra = sorted(set(options) - set(declared))
    if strict and extra:
        raise EngineError(f"backend {b.name!r} takes no option {extra[0]!r} (its options: {', '.join(declared) or 'none'})")
    return b.engine_class().load(path, device=device, **{k: v for k, v in options.items() if k in declared})


def _load_auto(candidates: list[Backend], path: Path, device: str, options: dict[str, Any]) -> Engine:
    """The first candidate that is available; an unusable model file stops the search with its own error."""
    if options:  # (reading every backend's signature imports its module: only when there is something to check)
        known = {o for b in registered().values() for o in _options_or_none(b)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise EngineError(f"no backend takes the option {unknown[0]!r} (options: {', '.join(sorted(known)) or 'none'})")
    reasons: list[str] = []
    for b in candidates:
        if b.gpu_only and device == "cpu":
            continue
        try:
            return _load(b, path, device, options, strict=False)
        except EngineError as exc:
            # A GPU backend that fails for this model (a plan that does not build) is skipped too: the next
            # backend runs the same file. Any other backend's error is about the file, and is the answer.
            if not (isinstance(exc, BackendUnavailable) or b.gpu_only):
                raise
            reasons.append(f"{b.name}: {exc}")
            log.info("auto: skipping %s: %s", b.name, exc)
    if not candidates:
        hint = " (the torch backend comes with ser[train])" if path.suffix in CHECKPOINT_SUFFIXES else ""
        raise EngineError(f"no backend runs {path.suffix or 'suffix-less'} files like {path}{hint}")
    raise EngineError(f"no backend can run {path}: " + "; ".join(reasons))


def _options_or_none(b: Backend) -> tuple[str, ...]:
    try:
        return b.options()
    except BackendUnavailable:
        return ()

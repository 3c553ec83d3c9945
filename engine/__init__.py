"""Engine package: export to ONNX, inference backends behind one interface, ser-build-engine, ser-predict.

May import ``training`` (its torch-free modules at import time; torch only
inside the torch backend and the exporter). Never imports ``realtime``.
"""

from engine.base import Engine, EngineError, load_engine

__all__ = ["Engine", "EngineError", "load_engine"]

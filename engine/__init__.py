"""Engine package: the runtime that serves an exported model, behind one interface.

Owns the backend interface (``engine.interface``), the backend registry and
``load_engine`` (``engine.registry``), the shipped models (``engine.shipped``),
the onnxruntime and TensorRT backends, the TensorRT plan builder and
``ser-predict``. May import ``contract``; never ``training`` (which produces
the models this package serves, and registers the torch backend through an
entry point) nor ``realtime``. Deliberately imports nothing here, so that
importing one engine module never drags in the rest.
"""

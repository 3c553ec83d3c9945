"""CUDA device/pinned buffers and streams through cuda-python, for the TensorRT backend and calibrator.

Why cuda-python (``cuda.bindings.runtime``, or ``cuda.cudart`` before
cuda-python 12.6) and not torch CUDA tensors or pycuda: the daemon must run
without torch (``realtime`` is torch-free by contract), cuda-python is the
NVIDIA-maintained binding already in the ``gpu`` extra next to tensorrt, and
it needs no context juggling (the runtime API uses the primary context, the
same one TensorRT uses), where pycuda's ``autoinit`` creates its own. The
cost is raw integer pointers and ``(err, value)`` tuples, both wrapped here.

Imported only where a GPU is used; importing this module without cuda-python
installed is fine, using it raises :class:`EngineError`.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.interface import BackendUnavailable, EngineError


def cudart() -> Any:
    """The CUDA runtime module of cuda-python, or a clear error."""
    try:
        from cuda.bindings import runtime as rt
    except ImportError:
        try:
            from cuda import cudart as rt  # cuda-python < 12.6
        except ImportError as exc:
            raise BackendUnavailable("cuda-python is not installed: pip install 'ser[gpu]' (needed by the TensorRT backend)") from exc
    return rt


def check(result: Any, what: str) -> Any:
    """Unwrap cuda-python's ``(err, *values)`` tuple, raising EngineError on a CUDA error."""
    rt = cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        name = rt.cudaGetErrorName(err)[1] if hasattr(rt, "cudaGetErrorName") else err
        raise EngineError(f"CUDA error in {what}: {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "9.0"


def current_gpu(device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device ``device`` (the plan cache key)."""
    rt = cudart()
    count = check(rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if not count:
        raise BackendUnavailable("no CUDA device is visible; TensorRT needs an NVIDIA GPU")
    prop = check(rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return GpuInfo(name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}")


class Stream:
    """A non-default CUDA stream, so copies and the engine overlap with nothing else by accident."""

    def __init__(self) -> None:
        self.handle = check(cudart().cudaStreamCreate(), "cudaStreamCreate")

    @property
    def ptr(self) -> int:
        return int(self.handle)

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            cudart().cudaStreamDestroy(self.handle)
            self.handle = None


class HostDeviceBuffer:
    """A float32 device buffer with a page-locked host twin; grows, never shrinks, and is reused.

    Pinned host memory makes ``cudaMemcpyAsync`` truly asynchronous and as fast
    as the bus allows; allocating once avoids a malloc per inference.
    """

    def __init__(self, elements: int, dtype: type = np.float32) -> None:
        self.dtype = np.dtype(dtype)
        self.capacity = 0
        self.device = 0
        self.host_ptr = 0
        self.host: np.ndarray = np.empty(0, self.dtype)
        self.ensure(elements)

    def ensure(self, elements: int) -> bool:
        """Make room for ``elements``; True when the buffers moved (addresses must be rebound)."""
        if elements <= self.capacity:
            return False
        self.free()
        rt = cudart()
        nbytes = elements * self.dtype.itemsize
        self.device = int(check(rt.cudaMalloc(nbytes), "cudaMalloc"))
        self.host_ptr = int(check(rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        ctype = np.ctypeslib.as_ctypes_type(self.dtype)
        self.host = np.ctypeslib.as_array(ctypes.cast(self.host_ptr, ctypes.POINTER(ctype)), shape=(elements,))
        self.capacity = elements
        return True

    def to_device(self, array: np.ndarray, stream: Stream) -> None:
        flat = array.reshape(-1)
        self.ensure(flat.size)
        self.host[: flat.size] = flat
        rt = cudart()
        check(
            rt.cudaMemcpyAsync(self.device, self.host_ptr, flat.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.handle),
            "cudaMemcpyAsync(host->device)",
        )

    def to_host(self, elements: int, stream: Stream) -> None:
        rt = cudart()
        nbytes = elements * self.dtype.itemsize
        check(
            rt.cudaMemcpyAsync(self.host_ptr, self.device, nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.handle),
            "cudaMemcpyAsync(device->host)",
        )

    def free(self) -> None:
        rt = cudart() if (self.device or self.host_ptr) else None
        if rt is not None and self.device:
            rt.cudaFree(self.device)
        if rt is not None and self.host_ptr:
            rt.cudaFreeHost(self.host_ptr)
        self.device = self.host_ptr = self.capacity = 0
        self.host = np.empty(0, self.dtype)

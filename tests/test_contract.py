"""The shared contract: chunk geometry checked once, metadata that round-trips, checksums."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from contract.audio import CHUNK_HOP_SAMPLES, CHUNK_SAMPLES, SAMPLE_RATE, WINDOW_SAMPLES, exact_div
from contract.checksums import sha256_of
from contract.geometry import ChunkGeometry, GeometryError
from contract.model_io import CHUNK_METADATA_KEYS, chunk_metadata


def test_the_default_geometry_is_nine_one_second_chunks_every_half_second() -> None:
    g = ChunkGeometry()
    assert (g.window_samples, g.chunk_samples, g.hop_samples) == (WINDOW_SAMPLES, SAMPLE_RATE, SAMPLE_RATE // 2)
    assert (CHUNK_SAMPLES, CHUNK_HOP_SAMPLES) == (16_000, 8_000) and g.chunks_per_window == 9 and g.chunked
    frames = g.frame(np.arange(WINDOW_SAMPLES, dtype=np.float32))
    assert frames.shape == (9, 16_000)
    assert frames[0, 0] == 0 and frames[1, 0] == 8_000 and frames[-1, -1] == WINDOW_SAMPLES - 1
    assert g.frame(np.zeros((2, 3, WINDOW_SAMPLES), np.float32)).shape == (2, 3, 9, 16_000)
    assert list(g.chunk_starts()) == [i * 8_000 for i in range(9)]


@pytest.mark.parametrize(("window", "chunk", "hop", "words"), [
    (80_000, 16_000, 7_000, "do not tile"), (80_000, 90_000, 8_000, "does not fit"), (0, 1, 1, "positive"),
    (80_000, 0, 8_000, "positive"), (80_000, 16_000, 0, "whole-window"),
])
def test_sizes_that_cannot_tile_a_window_are_refused_with_the_reason(window: int, chunk: int, hop: int, words: str) -> None:
    with pytest.raises(GeometryError, match=words):
        ChunkGeometry(window, chunk, hop)


def test_chunk_keys_share_the_silent_key_before_the_stream_starts() -> None:
    g = ChunkGeometry()
    assert g.chunk_keys(80_000) == [16_000 + 8_000 * i for i in range(9)]
    assert g.chunk_keys(24_000) == [0, 0, 0, 0, 0, 0, 8_000, 16_000, 24_000]
    whole = ChunkGeometry.whole_window()
    assert not whole.chunked and whole.chunks_per_window == 1 and whole.chunk_keys(12_345) == [12_345]


def test_metadata_round_trips_and_is_checked() -> None:
    g = ChunkGeometry.from_seconds(1.0, 0.5)
    meta = chunk_metadata(g, 6146)
    assert set(meta) == set(CHUNK_METADATA_KEYS) and meta["chunks_per_window"] == "9"
    assert ChunkGeometry.from_metadata(meta, WINDOW_SAMPLES) == g
    assert ChunkGeometry.from_metadata({}, WINDOW_SAMPLES) == ChunkGeometry.whole_window()
    assert chunk_metadata(ChunkGeometry.whole_window(), 6) == {}
    with pytest.raises(GeometryError, match="would"):
        ChunkGeometry.from_metadata({**meta, "chunks_per_window": "8"}, WINDOW_SAMPLES)
    with pytest.raises(GeometryError, match="malformed"):
        ChunkGeometry.from_metadata({**meta, "chunk_samples": "one"}, WINDOW_SAMPLES)


def test_exact_div_and_sha256() -> None:
    assert exact_div(80_000, 8_000) == 10
    with pytest.raises(AssertionError):
        exact_div(80_000, 7_000)


def test_sha256_of_a_file(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"ser" * 1_000_000)
    assert sha256_of(f) == hashlib.sha256(b"ser" * 1_000_000).hexdigest()

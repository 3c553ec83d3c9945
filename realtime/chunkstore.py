"""Chunk embeddings of every stream, for the scheduler's thread: what is held, what is pruned, the shared silence.

Owns the chunk cache's policy. A streaming engine encodes each chunk of a
stream once (``Stream.chunk_keys`` names a window's K chunks by their end
sample) and every window that covers it reuses the embedding. After each batch
``prune`` keeps, per stream, only the chunks of its newest window so far, so a
stream never holds more than K embeddings between batches (a window served
late, out of order, never evicts newer chunks; a dropped window only means the
next one finds fewer held). Every chunk that ends at or before a stream's first
sample is all zeros and has the key 0: its embedding is the same for every
stream, so the first one encoded is kept as :attr:`ChunkStore.silence` and
serves them all (a burst of new streams then costs one chunk each, not K).

A stream's embeddings live as long as the stream (weakly keyed): nothing has
to tell the store that a stream retired. Only the scheduler's worker thread
touches a store; it takes no locks.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from realtime.stream import Stream, Window

SILENCE_KEY = 0  # every chunk ending at or before a stream's first sample: all zeros


class _Held:
    """One stream's embeddings by chunk end sample, and the newest window end they were pruned to."""

    __slots__ = ("emb", "newest_end")

    def __init__(self) -> None:
        self.emb: dict[int, np.ndarray] = {}
        self.newest_end = -1


class ChunkStore:
    """Every stream's chunk embeddings by (stream, end sample); pruning; the one silence embedding."""

    def __init__(self) -> None:
        self._streams: weakref.WeakKeyDictionary[Stream, _Held] = weakref.WeakKeyDictionary()
        self.silence: np.ndarray | None = None  # embedding of the all-zero chunk, once one was encoded

    def has(self, stream: Stream, key: int) -> bool:
        """Whether the chunk ending at ``key`` needs no encoding (held, or the shared silence)."""
        if key == SILENCE_KEY and self.silence is not None:
            return True
        held = self._streams.get(stream)
        return held is not None and key in held.emb

    def missing(self, stream: Stream, keys: Iterable[int]) -> list[int]:
        """The keys among ``keys`` that must be encoded, in order."""
        return [k for k in keys if not self.has(stream, k)]

    def get(self, stream: Stream, key: int) -> np.ndarray:
        """The embedding of a chunk that ``has`` says is here (KeyError otherwise)."""
        held = self._streams.get(stream)
        if held is not None and key in held.emb:
            return held.emb[key]
        if key == SILENCE_KEY and self.silence is not None:
            return self.silence
        raise KeyError((stream.id, key))

    def put(self, stream: Stream, key: int, embedding: np.ndarray) -> None:
        """Keep a freshly encoded chunk; the first silence chunk encoded becomes everyone's."""
        held = self._streams.get(stream)
        if held is None:
            held = self._streams[stream] = _Held()
        held.emb[key] = embedding
        if key == SILENCE_KEY and self.silence is None:
            self.silence = embedding

    def prune(self, windows: Iterable[Window]) -> None:
        """Keep, per stream of ``windows``, only the chunks of its newest window so far (at most K; 2K if one came late)."""
        newest: dict[int, Window] = {}
        for w in windows:
            cur = newest.get(id(w.stream))
            if cur is None or w.end > cur.end:
                newest[id(w.stream)] = w
        for w in newest.values():
            held = self._streams.get(w.stream)
            if held is None:
                held = self._streams[w.stream] = _Held()
            if w.end < held.newest_end:  # a window served late (out of order) must not evict newer chunks
                continue
            held.newest_end = w.end
            wanted = set(w.stream.chunk_keys(w))
            for k in [k for k in held.emb if k not in wanted]:
                del held.emb[k]

    def held(self, stream: Stream) -> int:
        """How many of ``stream``'s chunk embeddings are held (the shared silence not counted)."""
        held = self._streams.get(stream)
        return 0 if held is None else len(held.emb)

    def __len__(self) -> int:
        """Streams with embeddings held."""
        return len(self._streams)

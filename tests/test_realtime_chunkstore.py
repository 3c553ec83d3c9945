"""realtime.chunkstore: what the scheduler keeps of each stream's chunk embeddings, pruning and the shared silence."""

from __future__ import annotations

import gc

import numpy as np

from contract.audio import LABELS, SAMPLE_RATE
from contract.geometry import ChunkGeometry
from realtime.chunkstore import ChunkStore
from realtime.config import load_daemon_config
from realtime.stream import Stream, StreamSettings, Window

SR = SAMPLE_RATE


def chunked_stream(name: str = "s") -> Stream:
    geometry = ChunkGeometry(5 * SR, SR, SR // 2)  # K = 9 chunks of 1 s every 0.5 s
    settings = StreamSettings.from_config(load_daemon_config(), geometry)
    return Stream(name, "test", settings, SR, 1, lambda w: None, LABELS)


def emb(v: float) -> np.ndarray:
    return np.full(4, v, np.float32)


def window(stream: Stream, end: int) -> Window:
    return Window(stream, 0, end, 0.0)


def test_missing_names_only_what_is_not_held_and_the_silence_is_shared():
    store = ChunkStore()
    a, b = chunked_stream("a"), chunked_stream("b")
    keys = a.chunk_keys(window(a, SR))  # a first window: 7 chunks of zeros (key 0), then 0.5 s, 1.0 s
    assert keys == [0] * 7 + [8000, 16000]
    assert store.missing(a, keys) == keys and store.silence is None
    store.put(a, 0, emb(0))
    store.put(a, 8000, emb(1))
    assert store.silence is not None and np.array_equal(store.silence, emb(0))
    assert store.missing(a, keys) == [16000]
    assert store.missing(b, b.chunk_keys(window(b, SR))) == [8000, 16000]  # b reuses a's silence, not a's chunks
    assert np.array_equal(store.get(b, 0), emb(0)) and store.held(b) == 0
    store.put(b, 0, emb(9))  # a silence chunk encoded again (same batch) does not replace the shared one
    assert np.array_equal(store.silence, emb(0))


def test_prune_keeps_each_streams_newest_window_and_never_evicts_for_a_late_one():
    store = ChunkStore()
    s = chunked_stream()
    for end in range(8000, 10 * SR + 1, 8000):
        store.put(s, end, emb(end))
    store.prune([window(s, 6 * SR), window(s, 8 * SR)])
    assert store.held(s) == 9 and store.missing(s, s.chunk_keys(window(s, 8 * SR))) == []
    store.put(s, 3 * SR, emb(3))  # a chunk only an older window needs
    store.prune([window(s, 6 * SR)])  # late (out of order): the newer window's chunks stay
    assert store.missing(s, s.chunk_keys(window(s, 8 * SR))) == []
    assert store.held(s) == 10
    store.prune([window(s, 8 * SR + 8000)])
    assert store.held(s) == 8  # the 9 chunks of the window ending 8.5 s, less the one not encoded yet


def test_a_streams_embeddings_go_with_the_stream():
    store = ChunkStore()
    s = chunked_stream()
    store.put(s, 8000, emb(1))
    assert len(store) == 1
    del s
    gc.collect()
    assert len(store) == 0

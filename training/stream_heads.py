"""Live-like streams scored offline for any head: the stream's chunks encoded once, then only the head runs.

The daemon encodes each chunk of a stream once (frozen encoder) and
``classify``-es every window from the K chunks that cover it; only the head
differs between recipes. So the chunks of a kept stream (the windows' ends
from its ``--jsonl``, the audio rebuilt by the same seeded
:func:`training.stream_eval.build_stream`) are encoded once into the feature
cache's format (:class:`training.features.ChunkEncoder`), and any head's
window probabilities follow in milliseconds: put them in place of the kept
lines' ``probs`` and :func:`training.stream_eval.rescore` applies the
daemon's gate (the VAD's voiced fraction does not depend on the head) and
smoother. :func:`probs_parity` checks the result against the daemon's own
``probs`` for the head that produced them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from contract.audio import LABELS, SAMPLE_RATE
from contract.geometry import ChunkGeometry


@dataclass
class StreamChunks:
    """A stream's encoded chunks: ``keys`` (the sample each ends at, sorted), the cache's ``feats`` and ``voiced``."""

    keys: np.ndarray
    feats: np.ndarray
    voiced: np.ndarray


def window_ends(predictions: Sequence[dict], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The end sample of every prediction's window, in ``seq`` order."""
    preds = sorted((p for p in predictions if p.get("type", "prediction") == "prediction"), key=lambda p: p.get("seq", 0))
    return np.array([int(round(float(p["t_end"]) * sample_rate)) for p in preds], np.int64)


def encode_stream(audio: np.ndarray, ends: np.ndarray, ch: ChunkGeometry, encoder: Any) -> StreamChunks:
    """Encode every chunk the windows ending at ``ends`` need, once: a chunk ending at ``k`` is ``audio[k - chunk : k]``
    with zeros before the stream's start, as the daemon reads it (``Stream.read_chunk``)."""
    keys = np.array(sorted({k for e in ends for k in ch.chunk_keys(int(e))}), np.int64)
    n = ch.chunk_samples
    chunks = np.zeros((len(keys), n), np.float32)
    for i, k in enumerate(keys):
        part = audio[max(0, k - n) : k]
        chunks[i, n - len(part) :] = part
    feats, voiced = encoder(chunks)
    return StreamChunks(keys, feats, voiced)


@torch.inference_mode()
def head_probs(model: Any, sc: StreamChunks, ends: np.ndarray, batch: int = 256) -> np.ndarray:
    """``[len(ends), classes]``: the head's probabilities for each window, from the stream's encoded chunks."""
    from training.chunk_training import chunk_rich, served_embeddings

    g = model.geometry
    rows = np.searchsorted(sc.keys, np.array([g.chunk_keys(int(e)) for e in ends], np.int64))
    rich = chunk_rich(sc.feats, sc.voiced, model.layers)
    model.eval()
    out = []
    for i in range(0, len(rows), batch):
        emb = served_embeddings(torch.from_numpy(rich[rows[i : i + batch]]))
        out.append(torch.softmax(model.classify(emb), -1).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(LABELS)), np.float32)


def with_probs(predictions: Sequence[dict], probs: np.ndarray, labels: Sequence[str] = LABELS) -> list[dict]:
    """The kept prediction lines (``seq`` order) with another head's window probabilities in place of ``probs``."""
    preds = sorted((p for p in predictions if p.get("type", "prediction") == "prediction"), key=lambda p: p.get("seq", 0))
    if len(preds) != len(probs):
        raise ValueError(f"{len(preds)} predictions but {len(probs)} probability rows")
    return [{**p, "probs": dict(zip(labels, map(float, row), strict=True))} for p, row in zip(preds, probs, strict=True)]


def probs_parity(predictions: Sequence[dict], probs: np.ndarray, labels: Sequence[str] = LABELS) -> float:
    """Largest difference between the daemon's ``probs`` and ``probs`` (same windows, same head)."""
    preds = sorted((p for p in predictions if p.get("type", "prediction") == "prediction"), key=lambda p: p.get("seq", 0))
    daemon = np.array([[float(p["probs"][lab]) for lab in labels] for p in preds])
    return float(np.abs(daemon - probs).max()) if len(daemon) else 0.0

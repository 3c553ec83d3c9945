"""Which 20 ms frames of a chunk hold speech, as a soft weight, and the moments of states weighted by it.

A window the daemon scores is 5 s of live audio: pauses, breaths and the
silence around a short utterance share it with the speech. Statistics over
all of its frames mix those in, so the head learns silence (the cross-
validated probe lost 0.03 UA that way). Weighting every encoder position by
how likely its 20 ms hold speech, and carrying the weighted first and second
moments per chunk, keeps the head's input the statistics of the voiced
frames while staying streaming-native: a window's moments combine exactly
from its chunks' (:func:`combine`), so each chunk is still encoded once.

The gate is deliberately simple, level-relative and exportable (a reshape,
a mean, a log, a sigmoid): a frame counts as voiced when its energy is
within ``RANGE_DB`` of the chunk's loudest frame and above ``FLOOR_DBFS``
(so digital silence is not speech), with a soft ``SLOPE_DB`` edge, and a
chunk counts in its window by its voiced share times :func:`chunk_gate`
(its loudest frame against the window's loudest chunk, so a chunk of room
tone between two utterances does not count as speech). ``EPS_WEIGHT`` keeps
every frame a little weight, so a window of pure silence still has defined
(silence) moments.
"""

from __future__ import annotations

import torch

from training.whisper import FRAME_SAMPLES

RANGE_DB = 25.0  # a frame more than this below the chunk's loudest is a pause, not speech
FLOOR_DBFS = -60.0  # below this nothing is speech, whatever the chunk's peak
SLOPE_DB = 2.0  # width of the soft edge of the gate
EPS_WEIGHT = 0.01  # every frame keeps this weight, so a silent chunk still has moments
TURN_TIE = 1e-4  # turns whose speech weighs within this of the heaviest are kept too (float sums differ by ~1e-6)


def frame_levels(chunks: torch.Tensor) -> torch.Tensor:
    """``[N, samples]`` -> ``[N, samples // 320]``: the level of each 20 ms frame (one encoder position), dBFS."""
    n = chunks.shape[-1] // FRAME_SAMPLES
    frames = chunks[..., : n * FRAME_SAMPLES].reshape(*chunks.shape[:-1], n, FRAME_SAMPLES)
    return 10.0 * torch.log10(frames.pow(2).mean(-1) + 1e-10)


def frame_weights(db: torch.Tensor) -> torch.Tensor:
    """Frame levels ``[N, T]`` -> per frame a weight in (0.01, 1.01): near 1 within 25 dB of the chunk's loudest."""
    ref = torch.clamp(db.amax(-1, keepdim=True) - RANGE_DB, min=FLOOR_DBFS)
    return torch.sigmoid((db - ref) / SLOPE_DB) + EPS_WEIGHT


def chunk_gate(peak_db: torch.Tensor) -> torch.Tensor:
    """Chunk peaks ``[..., K]`` -> how much each chunk of a window counts: near 1 within 25 dB of the window's loudest.

    The frame gate is relative to its own chunk, so a chunk holding only a
    pause with room tone looks voiced by itself; against the window's
    loudest chunk it is not. (``EPS_WEIGHT`` keeps a window of silence defined.)
    """
    ref = peak_db.amax(-1, keepdim=True) - RANGE_DB
    return torch.sigmoid((peak_db - ref) / SLOPE_DB) + EPS_WEIGHT


def dominant_turn(weight: torch.Tensor, pause: float) -> torch.Tensor:
    """Chunk weights ``[..., K]`` -> ``[..., K]`` in {0, 1}: the chunks of the window's turn with the most speech, and its pauses.

    A live window holds the end of one utterance, a pause, and the start of
    the next; pooling all of it blends two emotions, and the stream scorer
    saw windows with a neighbour's speech lose 0.11 UA against whole clips
    alone (README, live-like streams). A chunk weighing less than ``pause``
    (its voiced share times :func:`chunk_gate`) separates two turns; the
    turn whose chunks weigh most is kept, with every pause chunk (they carry
    the room, as a clip's silence does in training), and the other turns'
    chunks are dropped. A window without such a pause is one turn and keeps
    every chunk. Only exportable operations (cumsum, comparisons, a sum).

    Turns that weigh the same (loud chunks saturate the gate at exactly
    1 + ``EPS_WEIGHT``, so two turns of two loud chunks tie) are all kept:
    nothing tells which one the listener means. The comparison allows
    ``TURN_TIE`` because onnxruntime sums each chunk's row in its own order,
    so members of one turn can differ in the last bit; an exact ``>=``
    dropped some of them from the served graph (ser-build-engine's parity
    check caught it: 0.43 on speech-like windows).
    """
    is_pause = weight < pause
    turn = torch.cumsum(is_pause.to(weight.dtype), dim=-1)  # chunks between two pauses share a number
    same = (turn[..., :, None] == turn[..., None, :]).to(weight.dtype)
    speech = torch.where(is_pause, torch.zeros_like(weight), weight)
    mass = (same * speech[..., None, :]).sum(-1)  # each chunk's turn's total weight
    return (is_pause | (mass >= mass.amax(-1, keepdim=True) - TURN_TIE)).to(weight.dtype)


def weighted_moments(h: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """States ``[N, T, d]`` and weights ``[N, T']`` -> weighted mean and second moment ``[N, d]`` each.

    ``T'`` may exceed ``T`` by the frame the encoder's stride drops; the extra weights are ignored.
    """
    w = w[..., : h.shape[1], None]
    total = w.sum(1)
    return (w * h).sum(1) / total, (w * h * h).sum(1) / total


def combine(mean: torch.Tensor, second: torch.Tensor, share: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-chunk moments ``[..., K, F]`` and voiced shares ``[..., K]`` -> the window's mean and deviation ``[..., F]``.

    Each chunk counts by its voiced share, which is the exact pooling of its
    weighted frames when every chunk has the same number of frames.
    """
    a = share[..., None] / share.sum(-1, keepdim=True)[..., None]
    m = (a * mean).sum(-2)
    var = (a * second).sum(-2) - m * m
    return m, torch.sqrt(torch.clamp(var, min=0.0) + eps)

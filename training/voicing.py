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

from dataclasses import dataclass

import torch

from training.whisper import FRAME_SAMPLES

RANGE_DB = 25.0  # a frame more than this below the chunk's loudest is a pause, not speech
FLOOR_DBFS = -60.0  # below this nothing is speech, whatever the chunk's peak
SLOPE_DB = 2.0  # width of the soft edge of the gate
EPS_WEIGHT = 0.01  # every frame keeps this weight, so a silent chunk still has moments
TURN_TIE = 1e-4  # turns whose speech weighs within this of the heaviest are kept too (float sums differ by ~1e-6)
SEGMENTS = 4  # each chunk's embedding carries the voiced share of its quarters, so turns can split finer than a hop
TAIL = 2 + SEGMENTS  # an embedding's last columns, after its moments: voiced share, loudest frame (dBFS), the quarters'


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


def segment_shares(w: torch.Tensor, frames: int, segments: int = SEGMENTS) -> torch.Tensor:
    """Frame weights ``[N, frames]`` -> ``[N, segments]``: the voiced share of each consecutive part of the chunk.

    Parts are as even as whole frames allow (50 frames in quarters: 12, 13,
    13, 12). ``frames`` is passed as a Python int, so the exported graph holds
    plain slices (a traced shape would not round, and ``tensor_split``
    exports to sequence ops TensorRT's parser lacks). What :class:`Turns`
    reads to find pauses shorter than a chunk.
    """
    bounds = [round(i * frames / segments) for i in range(segments + 1)]
    return torch.stack([w[..., a:b].mean(-1) for a, b in zip(bounds[:-1], bounds[1:], strict=True)], dim=-1)


@dataclass(frozen=True)
class Turns:
    """Where a window's turns split, and which of its chunks the head pools: the dominant turn's and the pauses'.

    ``segments`` 1 splits turns at whole chunks (:func:`dominant_turn` on the
    chunks' weights), so only a pause that leaves a chunk mostly silent (about
    0.6 s to 1.1 s, depending on where it falls against the 0.5 s hop) is
    seen. With 2 or 4, each chunk's halves or quarters
    (:func:`segment_shares`, times the chunk's :func:`chunk_gate`) are laid
    on the window's time line (``hop`` parts per chunk hop; where chunks
    overlap their shares are averaged), turns split at any part weighing
    under ``pause``, and a chunk is pooled when all its parts belong to the
    dominant turn or are pauses: a chunk that holds the end of one
    utterance, a short pause and the start of the next is dropped instead
    of merging the two. When no chunk lies wholly in the dominant turn (a
    turn shorter than a chunk between two others), the chunks with the
    largest share of their parts in it are pooled. Only exportable
    operations (constant matrices, cumsum, comparisons).
    """

    pause: float = 0.0  # a part (or chunk) weighing under this separates two turns; 0: the window is one turn
    segments: int = 1  # parts per chunk: 1, 2 or 4 (a divisor of SEGMENTS)
    hop: int = 1  # parts per chunk hop
    chunks: int = 1  # chunks per window

    @classmethod
    def of(cls, pause: float, segments: int, chunk_samples: int, hop_samples: int, chunks: int) -> Turns:
        """The split for a geometry; ValueError when ``segments`` parts of a chunk do not tile its hop."""
        if segments < 1 or SEGMENTS % segments:
            raise ValueError(f"head.turn_segments must divide {SEGMENTS}, got {segments}")
        hop, rem = divmod(hop_samples * segments, chunk_samples)
        if segments > 1 and (rem or hop < 1):
            raise ValueError(f"head.turn_segments {segments}: a chunk's parts must tile its hop ({hop_samples} of {chunk_samples} samples)")
        if pause <= 0:
            return cls()  # every inactive split is the same one, ONE_TURN (pooled features are cached by it)
        return cls(float(pause), int(segments), int(hop) if segments > 1 else 1, int(chunks))

    @property
    def active(self) -> bool:
        return self.pause > 0

    def _cover(self, dtype: torch.dtype) -> torch.Tensor:
        """``[K * segments, parts]``: 1 where a chunk's part lies on the window's time line (a constant when traced)."""
        s, k, n = self.segments, self.chunks, (self.chunks - 1) * self.hop + self.segments
        rows = [[float(q == (r // s) * self.hop + r % s) for q in range(n)] for r in range(k * s)]
        return torch.tensor(rows, dtype=dtype)

    def keep(self, weight: torch.Tensor, gate: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
        """``[..., K]`` chunk weights, chunk gates and ``[..., K, SEGMENTS]`` part shares -> ``[..., K]`` in {0, 1}."""
        if self.segments == 1:
            return dominant_turn(weight, self.pause)
        k, s = self.chunks, self.segments  # the window's chunk count is the geometry's (a constant in the exported graph)
        parts = shares.reshape(*shares.shape[:-1], s, SEGMENTS // s).mean(-1) * gate[..., None]  # [..., K, s]
        cover = self._cover(weight.dtype)
        flat = parts.reshape(*parts.shape[:-2], k * s)
        line = (flat @ cover) / cover.sum(0)  # [..., parts on the time line]
        inside = dominant_turn(line, self.pause) @ cover.T  # [..., K * s]: 1 where the part is kept
        share_in = inside.reshape(*inside.shape[:-1], k, s).mean(-1)
        return (share_in >= share_in.amax(-1, keepdim=True) - TURN_TIE).to(weight.dtype)


def chunk_tail(w: torch.Tensor, db: torch.Tensor, frames: int) -> torch.Tensor:
    """Frame weights and levels ``[N, frames]`` -> ``[N, TAIL]``: voiced share, loudest frame (dBFS), quarters' shares.

    The columns after a chunk's moments, in the served embedding and in the feature cache alike.
    """
    return torch.cat([w.mean(-1, keepdim=True), db.amax(-1, keepdim=True), segment_shares(w, frames)], dim=-1)


ONE_TURN = Turns()  # no split: the window pools every chunk (what every inactive Turns.of returns)


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

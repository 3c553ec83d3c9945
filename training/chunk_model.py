"""The streaming model: a frozen Whisper encoder on 1 s chunks, then a linear head over a window's voiced frames.

Two halves, as the engine contract has them. ``encode_chunks`` maps chunks
``[N, chunk]`` to embeddings ``[N, D]``: log-mel, encoder, and for each used
hidden state the first and second moments of the chunk's frames weighted by
how voiced each 20 ms frame is (:mod:`training.voicing`), then the chunk's
all-frame mean and deviation, then its voiced share, loudest frame and the
voiced share of each quarter (``D = 4 * layers * d + TAIL``). ``classify`` maps the ``K`` embeddings that
cover a window ``[B, K, D]`` to logits: the chunks' moments combine into the
mean and deviation of the window's voiced frames (each chunk weighted by its
voiced share and its level against the window's loudest chunk), which,
beside the chunks' all-frame statistics averaged, are standardised and
classified by one linear layer, then divided by the calibrated temperature.

Why this head: a linear probe on the same frozen states, pooled over the
speech of a clip, cross-validates 0.06 UA above the attention head that
shipped before, and more on new voices (issue 16; ``bench/ablation.py``
measures where it went). Moments combine exactly across chunks, so each
chunk is still encoded once and reused by every window that holds it.

``head.kind: attention`` keeps the previous head (attention pooling over
per-chunk all-frame statistics, trained by AdamW) so the ablation can run it
beside the new one; it is not what ships.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from contract.audio import LABELS
from contract.geometry import ChunkGeometry
from training.schema import model_config
from training.voicing import (
    ONE_TURN,
    TAIL,
    Turns,
    chunk_gate,
    chunk_tail,
    combine,
    frame_levels,
    frame_weights,
    weighted_moments,
)
from training.whisper import DIMENSIONS, HOP_LENGTH, WhisperEncoder, WhisperLogMel


class MomentHead(nn.Module):
    """``[B, K, 4 f + TAIL]`` chunk embeddings -> logits: pooled, standardised, one linear layer.

    ``f = layers * d``; each embedding is ``[voiced mean (f), voiced second
    moment (f), all-frame mean (f), all-frame deviation (f), voiced share,
    loudest frame dBFS, voiced share of each quarter]``
    (:meth:`WhisperChunkModel.encode_chunks`). The
    pooled vector ``[4 f]`` is the window's voiced-frame mean and deviation
    (combined from the chunks' moments, each chunk weighted by its voiced
    share and :func:`training.voicing.chunk_gate`) beside the chunks'
    all-frame statistics averaged: the voiced half carries what the
    speech says (+0.03 UA), the all-frame half keeps the head steady when
    noise fills the pauses and the voicing gate lets it in (bench/ablation.py).
    """

    def __init__(self, f: int, n_classes: int = len(LABELS), turns: Turns = ONE_TURN) -> None:
        super().__init__()
        self.f = f
        self.turns = turns
        self.register_buffer("mean", torch.zeros(4 * f))
        self.register_buffer("std", torch.ones(4 * f))
        self.linear = nn.Linear(4 * f, n_classes)
        self.register_buffer("temperature", torch.ones(()))

    @staticmethod
    def pool(emb: torch.Tensor, f: int, turns: Turns = ONE_TURN) -> torch.Tensor:
        """``[B, K, 4 f + TAIL]`` -> ``[B, 4 f]``: voiced mean and deviation of the window, all-frame statistics averaged.

        With active ``turns`` both read only the chunks of the window's
        dominant turn and its pauses (:class:`training.voicing.Turns`).
        """
        gate = chunk_gate(emb[..., 4 * f + 1])
        weight = emb[..., 4 * f] * gate
        if not turns.active:
            m, sd = combine(emb[..., :f], emb[..., f : 2 * f], weight)
            return torch.cat([m, sd, emb[..., 2 * f : 4 * f].mean(-2)], dim=-1)
        keep = turns.keep(weight, gate, emb[..., 4 * f + 2 : 4 * f + TAIL])
        m, sd = combine(emb[..., :f], emb[..., f : 2 * f], weight * keep)
        frames = (keep[..., None] * emb[..., 2 * f : 4 * f]).sum(-2) / keep.sum(-1, keepdim=True)
        return torch.cat([m, sd, frames], dim=-1)

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled features -> calibrated logits: standardise, the linear layer, the temperature."""
        return self.linear((pooled - self.mean) / self.std) / self.temperature

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.logits(self.pool(emb, self.f, self.turns))


class LayerMix(nn.Module):
    """Per-layer statistics ``[..., len(layers), 2 d]`` -> one embedding per chunk (the previous head's input).

    Each chosen layer is standardised with the training set's mean and
    deviation; ``concat`` keeps them side by side, ``weighted`` learns a
    softmax weight per layer, ``last`` keeps the top one.
    """

    def __init__(self, n_layers: int, stat_dim: int, mix: str) -> None:
        super().__init__()
        if mix not in ("concat", "weighted", "last"):
            raise ValueError(f"head.mix must be concat, weighted or last, got {mix!r}")
        self.mix, self.stat_dim = mix, stat_dim
        self.register_buffer("mean", torch.zeros(n_layers, stat_dim))
        self.register_buffer("std", torch.ones(n_layers, stat_dim))
        self.layer_logits = nn.Parameter(torch.zeros(n_layers)) if mix == "weighted" else None

    @property
    def dim(self) -> int:
        return self.stat_dim * self.mean.shape[0] if self.mix == "concat" else self.stat_dim

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        z = (stats - self.mean) / self.std
        if self.mix == "concat":
            return z.reshape(*z.shape[:-2], self.dim)  # explicit size: a zero-size batch must reshape too
        if self.mix == "last":
            return z[..., -1, :]
        w = torch.softmax(self.layer_logits, dim=0)
        return (z * w[:, None]).sum(-2)

    def layer_weights(self) -> list[float] | None:
        return None if self.layer_logits is None else torch.softmax(self.layer_logits, 0).tolist()


class ChunkHead(nn.Module):
    """``[B, K, D]`` -> logits ``[B, classes]``: per-chunk projection, attention (or mean) pooling, linear."""

    def __init__(self, dim: int, hidden: int = 0, dropout: float = 0.3, pooling: str = "attention", n_classes: int = len(LABELS)) -> None:
        super().__init__()
        if pooling not in ("attention", "mean"):
            raise ValueError(f"head.pooling must be attention or mean, got {pooling!r}")
        self.pooling = pooling
        self.proj = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout)) if hidden else nn.Identity()
        hidden = hidden or dim
        self.score = nn.Linear(hidden, 1)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, n_classes))
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        h = self.proj(emb)
        pooled = (torch.softmax(self.score(h), dim=1) * h).sum(1) if self.pooling == "attention" else h.mean(1)
        return self.out(pooled) / self.temperature


class WhisperChunkModel(nn.Module):
    """Frontend + encoder + per-chunk moments (the chunk half) and the head (the window half)."""

    def __init__(self, model_cfg: Any) -> None:
        """``model_cfg``: a ``conf/model/whisper*.yaml`` config, whole or partial (absent keys take the schema's defaults)."""
        super().__init__()
        cfg = model_config(model_cfg)  # ConfigError naming the key for anything unknown, mistyped or out of range
        enc, head = cfg.encoder, cfg.head
        self.variant = cfg.variant
        self.encoder_name = enc.name
        if self.encoder_name not in DIMENSIONS:
            raise ValueError(f"encoder.name must be one of {sorted(DIMENSIONS)}, got {self.encoder_name!r}")
        dims = DIMENSIONS[self.encoder_name]
        self.layers = list(head.layers)
        if not self.layers or min(self.layers) < 0 or max(self.layers) > dims.n_audio_layer:
            raise ValueError(f"head.layers must lie in 0..{dims.n_audio_layer} for {self.encoder_name}, got {self.layers}")
        self.kind = head.kind
        blocks = max(self.layers)  # run only the blocks whose states are used
        # GeometryError (a ValueError) when chunk_s and hop_s do not tile the window.
        self.geometry = ChunkGeometry.from_seconds(enc.chunk_s, enc.hop_s)
        self.d = dims.n_audio_state
        self.frontend = WhisperLogMel()
        self.frames = self.geometry.chunk_samples // HOP_LENGTH // 2  # encoder positions (20 ms frames) per chunk
        self.encoder = WhisperEncoder(dims, blocks, max_positions=self.frames)
        f = len(self.layers) * self.d
        if self.kind == "moments":
            self.mix = None
            g = self.geometry
            turns = Turns.of(head.turn_pause, head.turn_segments, g.chunk_samples, g.hop_samples, g.chunks_per_window)
            self.head: nn.Module = MomentHead(f, turns=turns)
            dim = 4 * f + TAIL
        else:
            self.mix = LayerMix(len(self.layers), 2 * self.d, head.mix)
            self.head = ChunkHead(self.mix.dim, head.hidden, head.dropout, head.pooling)
            dim = self.mix.dim
        self.embedding_dim = dim

    def chunk_stats(self, chunks: torch.Tensor) -> torch.Tensor:
        """``[N, chunk]`` -> ``[N, len(layers), 2 d]``: all-frame mean and deviation (the attention head's input)."""
        states = self.encoder(self.frontend(chunks))
        return torch.stack([torch.cat([states[i].mean(1), states[i].std(1)], dim=-1) for i in self.layers], dim=1)

    def chunk_moments(self, chunks: torch.Tensor) -> torch.Tensor:
        """``[N, chunk]`` -> ``[N, 4 f + TAIL]``: voiced moments and all-frame statistics of the used layers, share,
        peak, the quarters' shares."""
        db = frame_levels(chunks)
        states = self.encoder(self.frontend(chunks))
        t = states[0].shape[1]
        db = db[:, :t]
        w = frame_weights(db)
        means, seconds = zip(*(weighted_moments(states[i], w) for i in self.layers), strict=True)
        all_means = [states[i].mean(1) for i in self.layers]
        all_stds = [states[i].std(1) for i in self.layers]
        return torch.cat([*means, *seconds, *all_means, *all_stds, chunk_tail(w, db, self.frames)], dim=-1)

    def encode_chunks(self, chunks: torch.Tensor) -> torch.Tensor:
        if self.kind == "moments":
            return self.chunk_moments(chunks)
        return self.mix(self.chunk_stats(chunks))

    def classify(self, window_embeddings: torch.Tensor) -> torch.Tensor:
        return self.head(window_embeddings)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        b, g = waveform.shape[0], self.geometry
        chunks = waveform.unfold(1, g.chunk_samples, g.hop_samples)  # [B, K, chunk]
        emb = self.encode_chunks(chunks.reshape(b * g.chunks_per_window, g.chunk_samples))
        return self.classify(emb.reshape(b, g.chunks_per_window, -1))

    def load_pretrained_encoder(self) -> None:
        """Copy the verified Whisper weights in (a new model; checkpoints carry them already)."""
        from training.whisper_weights import load_encoder_weights

        self.encoder.load_ctranslate2(load_encoder_weights(name=self.encoder_name))

    def head_state(self) -> dict[str, torch.Tensor]:
        """What training changes (the head, and the previous head's layer mix): the encoder is the pinned file's."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}

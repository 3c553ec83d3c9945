"""The streaming model: a frozen Whisper encoder on chunks, a layer mix, and a light head over a window's chunks.

Two halves, as the engine contract has them: ``encode_chunks`` maps 1 s
chunks ``[N, chunk]`` to embeddings ``[N, D]`` (log-mel, encoder, per-layer
mean and standard deviation over time, standardised with training statistics
and mixed across layers), and ``classify`` maps the ``K`` embeddings that
cover a window ``[B, K, D]`` to logits (attention pooling over chunks, so
silent chunks can be ignored, then a linear layer; divided by the calibrated
temperature). ``forward`` on whole windows is the two halves in a row, which
is what makes offline and streaming scores equal.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from training.audio import LABELS, SAMPLE_RATE, WINDOW_SAMPLES
from training.whisper import HOP_LENGTH, TINY_EN, WhisperEncoder, WhisperLogMel

D_MODEL, N_LAYERS = TINY_EN.n_audio_state, TINY_EN.n_audio_layer

STAT_DIM = 2 * D_MODEL  # mean and standard deviation of each hidden state


class LayerMix(nn.Module):
    """Per-layer statistics ``[..., len(layers), 768]`` -> one embedding per chunk.

    Each chosen layer is standardised with the training set's mean and
    deviation (buffers, so they export as constants); ``concat`` keeps all of
    them side by side (D = 768 x layers), ``weighted`` learns a softmax weight
    per layer (D = 768: the "learned layer weighting"), ``last`` keeps the top one.
    """

    def __init__(self, n_layers: int, mix: str) -> None:
        super().__init__()
        if mix not in ("concat", "weighted", "last"):
            raise ValueError(f"head.mix must be concat, weighted or last, got {mix!r}")
        self.mix = mix
        self.register_buffer("mean", torch.zeros(n_layers, STAT_DIM))
        self.register_buffer("std", torch.ones(n_layers, STAT_DIM))
        self.layer_logits = nn.Parameter(torch.zeros(n_layers)) if mix == "weighted" else None

    @property
    def dim(self) -> int:
        return STAT_DIM * self.mean.shape[0] if self.mix == "concat" else STAT_DIM

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

    def __init__(self, dim: int, hidden: int = 256, dropout: float = 0.3, pooling: str = "attention", n_classes: int = len(LABELS)) -> None:
        super().__init__()
        if pooling not in ("attention", "mean"):
            raise ValueError(f"head.pooling must be attention or mean, got {pooling!r}")
        self.pooling = pooling
        # hidden 0: pool the standardised chunk embeddings themselves and classify linearly (a probe,
        # cheap enough to compare recipes over many seeds); otherwise a GELU projection first.
        # (Dropout acts after the projection and pooling: on every chunk's full embedding it cost more
        # than the rest of a training step.)
        self.proj = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout)) if hidden else nn.Identity()
        hidden = hidden or dim
        self.score = nn.Linear(hidden, 1)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, n_classes))
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        h = self.proj(emb)
        if self.pooling == "attention":
            pooled = (torch.softmax(self.score(h), dim=1) * h).sum(1)
        else:
            pooled = h.mean(1)
        return self.out(pooled) / self.temperature


class WhisperChunkModel(nn.Module):
    """Frontend + encoder + layer mix (the chunk half) and the head (the window half)."""

    def __init__(self, model_cfg: Any) -> None:
        super().__init__()
        enc, head = model_cfg["encoder"], model_cfg["head"]
        self.variant = str(model_cfg.get("variant", "whisper"))
        self.layers = [int(i) for i in head["layers"]]
        if not self.layers or min(self.layers) < 0 or max(self.layers) > N_LAYERS:
            raise ValueError(f"head.layers must lie in 0..{N_LAYERS}, got {self.layers}")
        blocks = max(self.layers)  # run only the blocks whose states are used
        self.chunk = int(round(float(enc["chunk_s"]) * SAMPLE_RATE))
        self.hop = int(round(float(enc["hop_s"]) * SAMPLE_RATE))
        if (WINDOW_SAMPLES - self.chunk) % self.hop:
            raise ValueError("encoder.chunk_s and hop_s must tile the 5 s window")
        self.per_window = (WINDOW_SAMPLES - self.chunk) // self.hop + 1
        self.frontend = WhisperLogMel()
        self.encoder = WhisperEncoder(TINY_EN, blocks, max_positions=self.chunk // HOP_LENGTH // 2)
        self.mix = LayerMix(len(self.layers), str(head.get("mix", "concat")))
        self.head = ChunkHead(self.mix.dim, int(head.get("hidden", 256)), float(head.get("dropout", 0.3)), str(head.get("pooling", "attention")))
        self.chunking = {
            "chunk_samples": self.chunk,
            "chunk_hop_samples": self.hop,
            "chunks_per_window": self.per_window,
            "embedding_dim": self.mix.dim,
        }

    def chunk_stats(self, chunks: torch.Tensor) -> torch.Tensor:
        """``[N, chunk]`` -> ``[N, len(layers), 768]``: what the feature cache stores, for the used layers."""
        states = self.encoder(self.frontend(chunks))
        return torch.stack([torch.cat([states[i].mean(1), states[i].std(1)], dim=-1) for i in self.layers], dim=1)

    def encode_chunks(self, chunks: torch.Tensor) -> torch.Tensor:
        return self.mix(self.chunk_stats(chunks))

    def classify(self, window_embeddings: torch.Tensor) -> torch.Tensor:
        return self.head(window_embeddings)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        b = waveform.shape[0]
        chunks = waveform.unfold(1, self.chunk, self.hop)  # [B, K, chunk]
        emb = self.encode_chunks(chunks.reshape(b * self.per_window, self.chunk))
        return self.classify(emb.reshape(b, self.per_window, -1))

    def load_pretrained_encoder(self) -> None:
        """Copy the verified Whisper weights in (a new model; checkpoints carry them already)."""
        from training.whisper_weights import load_encoder_weights

        self.encoder.load_ctranslate2(load_encoder_weights())

    def head_state(self) -> dict[str, torch.Tensor]:
        """What training changes (mix + head): the encoder is the pinned file's, verified by checksum."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}

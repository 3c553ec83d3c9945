"""Networks over the log-mel spectrogram; every variant maps a waveform batch to logits.

``seed`` is the published CNN + Transformer design (conv stack 1->32->...->512,
6-layer Transformer encoder d=512, ~14 M parameters). ``compact`` keeps its
shape (conv stack, then attention over time) at a size that trains on two CPU
cores and serves many streams on one. Softmax is never applied here: the loss
takes logits, and the exporter appends the softmax to the served graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contract.audio import NUM_CLASSES
from contract.config import ConfigError
from training.frontend import FrontendConfig, LogMel
from training.schema import model_config, stored_model_config


class ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, pool: Sequence[int]) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(tuple(pool)),
        )


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """The Transformer paper's fixed position encoding ``[length, dim]``."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


class AttentivePool(nn.Module):
    """Weighted mean over time with learned weights, so silent or padded frames can count for little."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, dim // 2), nn.Tanh(), nn.Linear(dim // 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, T, D]
        w = torch.softmax(self.score(x), dim=1)
        return (w * x).sum(dim=1)


class SpectrogramTransformer(nn.Module):
    """Conv stack over ``[B, 1, mels, frames]``, frequency folded into channels, Transformer over time."""

    def __init__(
        self,
        n_mels: int,
        channels: Sequence[int],
        kernels: Sequence[int],
        pools: Sequence[Sequence[int]],
        d_model: int,
        n_heads: int,
        ff_dim: int,
        n_layers: int,
        dropout: float,
        pooling: str = "mean",
        max_frames: int = 4096,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        if not (len(channels) == len(kernels) == len(pools)):
            raise ValueError("channels, kernels and pools must have the same length")
        blocks, c_in, freq = [], 1, n_mels
        for c_out, k, p in zip(channels, kernels, pools, strict=True):
            blocks.append(ConvBlock(c_in, c_out, k, p))
            c_in, freq = c_out, freq // p[0]
        if freq < 1:
            raise ValueError(f"pools reduce {n_mels} mel bands below one")
        self.cnn = nn.Sequential(*blocks)
        flat = c_in * freq
        self.proj = nn.Identity() if flat == d_model else nn.Linear(flat, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.register_buffer("positions", sinusoidal_positions(max_frames, d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, ff_dim, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False) if n_layers else nn.Identity()
        self.pool = AttentivePool(d_model) if pooling == "attention" else None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:  # spec: [B, mels, frames]
        x = self.cnn(spec.unsqueeze(1))  # [B, C, F', T']
        b, c, f, t = x.shape
        x = x.permute(0, 3, 1, 2).reshape(b, t, c * f)
        x = self.norm(self.proj(x)) + self.positions[:t]
        x = self.encoder(x)
        x = self.pool(x) if self.pool is not None else x.mean(dim=1)
        return self.head(self.dropout(x))


class EmotionModel(nn.Module):
    """Waveform ``[batch, samples]`` at 16 kHz -> logits ``[batch, classes]``: frontend + network."""

    def __init__(self, frontend: LogMel, net: nn.Module, variant: str) -> None:
        super().__init__()
        self.frontend = frontend
        self.net = net
        self.variant = variant

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.net(self.frontend(waveform))


class SpecAugment(nn.Module):
    """Time and frequency masking on the spectrogram, applied in training only."""

    def __init__(self, freq_masks: int = 2, freq_width: int = 8, time_masks: int = 2, time_width: int = 40) -> None:
        super().__init__()
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return spec
        b, n_mels, n_frames = spec.shape
        out = spec.clone()
        fill = 0.0  # the utterance-normalised mean
        for axis, count, width, size in ((1, self.freq_masks, self.freq_width, n_mels), (2, self.time_masks, self.time_width, n_frames)):
            for _ in range(count):
                w = torch.randint(0, width + 1, (b,))
                start = (torch.rand(b) * (size - w).clamp(min=1)).long()
                idx = torch.arange(size)[None, :]
                mask = (idx >= start[:, None]) & (idx < (start + w)[:, None])
                mask = mask[:, :, None] if axis == 1 else mask[:, None, :]
                out = out.masked_fill(mask, fill)
        return out


def frontend_config(model_cfg: Any) -> FrontendConfig:
    """The spectrogram frontend of a whole-window model config (keys it leaves out: FrontendConfig's defaults)."""
    fe = model_config(model_cfg).frontend
    return FrontendConfig(**{f.name: fe[f.name] for f in fields(FrontendConfig)})


def build_model(model_cfg: Any) -> nn.Module:
    """Build the variant a ``conf/model/*.yaml`` describes.

    A config with an ``encoder`` section is the chunked Whisper model
    (:class:`training.chunk_model.WhisperChunkModel`, random encoder weights
    until its checkpoint or ``load_pretrained_encoder`` fills them); the
    others are whole-window spectrogram networks. The config is checked
    against :mod:`training.schema` (ConfigError naming the key).
    """
    cfg = model_config(model_cfg)
    if "encoder" in cfg:
        from training.chunk_model import WhisperChunkModel

        return WhisperChunkModel(cfg)
    fe_cfg = frontend_config(cfg)
    net_cfg = cfg.net
    net = SpectrogramTransformer(
        n_mels=fe_cfg.n_mels,
        channels=list(net_cfg.channels),
        kernels=list(net_cfg.kernels),
        pools=[list(p) for p in net_cfg.pools],
        d_model=net_cfg.d_model,
        n_heads=net_cfg.n_heads,
        ff_dim=net_cfg.ff_dim,
        n_layers=net_cfg.n_layers,
        dropout=net_cfg.dropout,
        pooling=net_cfg.pooling,
    )
    return EmotionModel(LogMel(fe_cfg), net, cfg.variant)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class CheckpointError(Exception):
    """A checkpoint that is missing, truncated, or not one of ours; the message names the file."""


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model of a ``ser-train`` checkpoint (in eval mode) and return it with its config.

    The returned config's model section has every key: one the checkpoint's
    stored config lacks (written before the key existed) is at the schema's default.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(str(path), map_location=map_location, weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch file: {exc}") from exc
    try:
        cfg = ckpt["hyper_parameters"]["cfg"]
        state = ckpt["state_dict"]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a ser-train checkpoint (no {exc} inside)") from exc
    try:
        cfg = {**cfg, "model": stored_model_config(cfg["model"])}
        model = build_model(cfg["model"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its stored config does not describe a model: {exc}") from exc
    weights = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the model its config describes: {exc}") from exc
    model.eval()
    return model, cfg

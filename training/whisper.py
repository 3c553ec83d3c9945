"""Whisper's log-mel frontend and audio encoder, in plain torch that exports to ONNX.

Written from the published architecture (Radford et al. 2022; ``whisper/model.py``):
two conv1d + GELU (the second with stride 2), sinusoidal positions, pre-LayerNorm
blocks (MLP 4 d), a final LayerNorm. The sizes are :class:`ModelDimensions`, read
from the weights file as Whisper keeps them (tiny.en: d 384, 6 heads, 4 blocks;
base: d 512, 8 heads, 6 blocks). Weights come from :mod:`training.whisper_weights`. The encoder runs on short chunks (1 s gives
100 mel frames, 50 positions) rather than Whisper's padded 30 s: emotion lives
in prosody over a second or two, and a chunk is encoded once and reused by
every window that contains it.

:class:`WhisperLogMel` is Whisper's ``log_mel_spectrogram`` (n_fft 400, hop
160, periodic Hann, centred with reflection, 80 Slaney mels, log10, clamp at
max - 8, ``(x + 4) / 4``) with the STFT as a strided conv1d and the mel
projection as a matmul, the ops every exporter and TensorRT take. The max is
taken per input (per chunk), as Whisper does per call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from contract.audio import SAMPLE_RATE
from training.mel import dft_basis, mel_filterbank

N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
MAX_POSITIONS = 1500  # Whisper's 30 s
LAYER_NORM_EPS = 1e-5
FRAME_SAMPLES = 2 * HOP_LENGTH  # one encoder position: two mel frames (conv2 has stride 2), 20 ms


@dataclass(frozen=True)
class ModelDimensions:
    """The encoder's sizes, as ``whisper/model.py`` names them; read from the weights, never assumed."""

    n_mels: int = N_MELS
    n_audio_state: int = 384
    n_audio_head: int = 6
    n_audio_layer: int = 4

    def __post_init__(self) -> None:
        if self.n_audio_state % self.n_audio_head:
            raise ValueError(f"d {self.n_audio_state} is not a multiple of {self.n_audio_head} heads")

    @classmethod
    def from_weights(cls, weights: dict[str, np.ndarray]) -> ModelDimensions:
        """Sizes of a CTranslate2 Whisper encoder: conv1's shape, the block count, the stored head count."""
        try:
            d, n_mels, _ = weights["encoder/conv1/weight"].shape
            heads = int(np.asarray(weights["encoder/num_heads"]).item())
        except KeyError as exc:
            raise ValueError(f"not a Whisper encoder: no {exc.args[0]}") from None
        blocks = 0
        while f"encoder/layer_{blocks}/ffn/linear_0/weight" in weights:
            blocks += 1
        return cls(int(n_mels), int(d), heads, blocks)


TINY_EN = ModelDimensions(N_MELS, 384, 6, 4)
BASE = ModelDimensions(N_MELS, 512, 8, 6)
DIMENSIONS = {"tiny.en": TINY_EN, "base": BASE}  # what each pinned file holds (checked when it is loaded)


class WhisperLogMel(nn.Module):
    """``[batch, samples]`` -> ``[batch, 80, samples // 160]``, Whisper's normalised log-mel."""

    def __init__(self) -> None:
        super().__init__()
        real, imag = dft_basis(N_FFT, N_FFT)
        basis = torch.cat([torch.from_numpy(real), torch.from_numpy(imag)])
        self.register_buffer("basis", basis[:, None, :], persistent=False)  # [2F, 1, n_fft]
        mel = mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, 0.0, SAMPLE_RATE / 2)
        self.register_buffer("mel", torch.from_numpy(mel), persistent=False)  # [80, F]
        self.n_freq = real.shape[0]

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        pad = N_FFT // 2
        x = F.pad(waveform.unsqueeze(1), (pad, pad), mode="reflect")
        spec = F.conv1d(x, self.basis, stride=HOP_LENGTH)[..., :-1]  # Whisper drops the last frame
        real, imag = spec[:, : self.n_freq], spec[:, self.n_freq :]
        power = real * real + imag * imag
        log_spec = torch.log10(torch.clamp(torch.matmul(self.mel, power), min=1e-10))
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)
        return (log_spec + 4.0) / 4.0


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's positional table (the same values CTranslate2 stores)."""
    log_inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-log_inc * torch.arange(channels // 2, dtype=torch.float64))
    t = torch.arange(length, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1).float()


class Block(nn.Module):
    """Pre-LayerNorm self-attention + GELU MLP, with Whisper's fused q/k/v projection (k has no bias)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.d, self.heads = d, heads
        self.attn_ln = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.mlp_ln = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        d_head = self.d // self.heads
        q, k, v = self.qkv(self.attn_ln(x)).view(b, t, 3, self.heads, d_head).permute(2, 0, 3, 1, 4)
        scores = torch.matmul(q, k.transpose(-1, -2)) * d_head**-0.5
        attn = torch.matmul(scores.softmax(dim=-1), v)  # [b, heads, t, d_head]
        x = x + self.out(attn.transpose(1, 2).reshape(b, t, self.d))
        return x + self.fc2(F.gelu(self.fc1(self.mlp_ln(x))))


class WhisperEncoder(nn.Module):
    """Log-mel ``[batch, 80, frames]`` -> hidden states of every layer, each ``[batch, frames // 2, d]``.

    ``forward`` returns ``n_layers + 1`` states: the input to the first block
    (conv features plus positions), then the output of each block, the last
    one through the final LayerNorm as Whisper's decoder sees it.
    ``n_layers`` below ``dims.n_audio_layer`` drops the top blocks (cheaper, if they do not pay).
    """

    def __init__(self, dims: ModelDimensions = TINY_EN, n_layers: int | None = None, max_positions: int = MAX_POSITIONS) -> None:
        super().__init__()
        self.dims = dims
        n_layers = dims.n_audio_layer if n_layers is None else n_layers
        if not 0 <= n_layers <= dims.n_audio_layer:
            raise ValueError(f"this encoder has {dims.n_audio_layer} blocks; {n_layers} asked")
        d = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, d, 3, padding=1)
        self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1)
        # Only as many positions as the longest input (50 for a 1 s chunk); the file's float16 table
        # replaces these when weights are loaded, as CTranslate2 uses it.
        self.register_buffer("positions", sinusoids(max_positions, d))
        self.blocks = nn.ModuleList(Block(d, dims.n_audio_head) for _ in range(n_layers))
        self.ln_post = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def forward(self, mel: torch.Tensor) -> list[torch.Tensor]:
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        x = x + self.positions[: x.shape[1]]
        states = [x]
        for block in self.blocks:
            x = block(x)
            states.append(x)
        if len(self.blocks) == self.dims.n_audio_layer:
            states[-1] = self.ln_post(x)
        return states

    def load_ctranslate2(self, weights: dict[str, np.ndarray]) -> None:
        """Copy CTranslate2 ``encoder/...`` variables in (cast to float32); every tensor must match."""
        found = ModelDimensions.from_weights(weights)
        if found != self.dims:
            raise ValueError(f"the weights hold an encoder of {found}, this one is {self.dims}")
        own = self.state_dict()
        mapped: dict[str, torch.Tensor] = {}

        def put(dst: str, src: str) -> None:
            value = torch.from_numpy(np.asarray(weights[src], dtype=np.float32).copy())
            if value.shape != own[dst].shape:
                raise ValueError(f"{src}: shape {tuple(value.shape)} does not fit {dst} {tuple(own[dst].shape)}")
            mapped[dst] = value

        for conv in ("conv1", "conv2"):
            put(f"{conv}.weight", f"encoder/{conv}/weight")
            put(f"{conv}.bias", f"encoder/{conv}/bias")
        for i in range(len(self.blocks)):
            src, dst = f"encoder/layer_{i}", f"blocks.{i}"
            pairs = {
                "attn_ln": "self_attention/layer_norm",
                "mlp_ln": "ffn/layer_norm",
            }
            for d, s in pairs.items():
                put(f"{dst}.{d}.weight", f"{src}/{s}/gamma")
                put(f"{dst}.{d}.bias", f"{src}/{s}/beta")
            for d, s in {"qkv": "self_attention/linear_0", "out": "self_attention/linear_1",
                         "fc1": "ffn/linear_0", "fc2": "ffn/linear_1"}.items():
                put(f"{dst}.{d}.weight", f"{src}/{s}/weight")
                put(f"{dst}.{d}.bias", f"{src}/{s}/bias")
        put("ln_post.weight", "encoder/layer_norm/gamma")
        put("ln_post.bias", "encoder/layer_norm/beta")
        stored = weights.get("encoder/position_encodings/encodings")
        if stored is not None:
            table = np.asarray(stored[: len(self.positions)], dtype=np.float32)
            if table.shape != tuple(self.positions.shape) or not np.allclose(table, self.positions.numpy(), atol=2e-3):
                raise ValueError("the file's position encodings are not Whisper's sinusoids")
            mapped["positions"] = torch.from_numpy(table.copy())
        else:
            mapped["positions"] = self.positions.clone()
        missing = set(own) - set(mapped)
        if missing:
            raise ValueError(f"no weights for {sorted(missing)}")
        self.load_state_dict(mapped)


def pretrained_encoder(n_layers: int | None = None, model_bin: Path | None = None, name: str = "tiny.en",
                       max_positions: int = MAX_POSITIONS) -> WhisperEncoder:
    """Encoder ``name`` (tiny.en, base) with the verified weights of its pinned packages, in eval mode."""
    from training.whisper_weights import load_encoder_weights

    weights = load_encoder_weights(model_bin, name=name)
    encoder = WhisperEncoder(ModelDimensions.from_weights(weights), n_layers, max_positions)
    encoder.load_ctranslate2(weights)
    return encoder.eval()

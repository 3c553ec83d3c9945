"""Log-mel spectrogram in pure torch, written to export to ONNX and TensorRT.

The STFT is a strided ``conv1d`` with a constant windowed DFT basis and the
mel projection a constant ``matmul``: both are plain ops every exporter and
TensorRT's ONNX parser take (unlike ``torch.stft`` / ONNX ``STFT``). The same
module runs in training and inside the exported graph, so what is served is
exactly what was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from contract.audio import SAMPLE_RATE
from training.mel import dft_basis, mel_filterbank


@dataclass(frozen=True)
class FrontendConfig:
    sample_rate: int = SAMPLE_RATE
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 8000.0
    top_db: float = 80.0
    norm: str = "cmvn"  # cmvn | utterance | none (see LogMel)
    active_db: float = 50.0  # cmvn: frames within this many dB of the loudest one count as active


class LogMel(nn.Module):
    """``[batch, samples]`` waveform -> ``[batch, n_mels, frames]`` log-mel in dB, optionally normalised.

    Normalisation per clip: ``utterance`` subtracts the mean and divides by the
    standard deviation of the whole spectrogram (gain-invariant); ``cmvn``
    subtracts each mel band's mean over the *active* frames, then divides by
    the overall deviation. Removing the long-term spectrum takes out most of
    a microphone's colouring and a voice's timbre, which is what a model must
    ignore on speakers and devices it never heard; weighting frames by a
    soft activity mask keeps padding and pauses from setting that mean (and,
    being smooth, cannot flip between torch and an exported runtime).

    Frames are centred (``n_fft // 2`` zeros on each side), so a clip of N
    samples gives ``1 + N // hop_length`` frames, as ``torch.stft(center=True)``.
    """

    def __init__(self, cfg: FrontendConfig) -> None:
        super().__init__()
        if cfg.norm not in ("cmvn", "utterance", "none"):
            raise ValueError(f"frontend norm must be 'cmvn', 'utterance' or 'none', got {cfg.norm!r}")
        self.cfg = cfg
        real, imag = dft_basis(cfg.n_fft, cfg.win_length)
        basis = torch.cat([torch.from_numpy(real), torch.from_numpy(imag)])
        self.register_buffer("basis", basis[:, None, :], persistent=False)  # [2F, 1, n_fft]
        mel = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max)
        self.register_buffer("mel", torch.from_numpy(mel), persistent=False)  # [n_mels, F]
        self.n_freq = real.shape[0]

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        pad = self.cfg.n_fft // 2
        x = F.pad(waveform.unsqueeze(1), (pad, pad))
        spec = F.conv1d(x, self.basis, stride=self.cfg.hop_length)  # [B, 2F, T]
        real, imag = spec[:, : self.n_freq], spec[:, self.n_freq :]
        power = real * real + imag * imag
        mel = torch.matmul(self.mel, power)  # [B, n_mels, T]
        db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
        if self.cfg.top_db > 0:
            peak = db.amax(dim=(1, 2), keepdim=True)
            db = torch.maximum(db, peak - self.cfg.top_db)
        if self.cfg.norm == "cmvn":
            frame_level = db.amax(dim=1, keepdim=True)  # [B, 1, T]
            threshold = frame_level.amax(dim=2, keepdim=True) - self.cfg.active_db
            active = torch.sigmoid(frame_level - threshold)  # ~1 for active frames, ~0 for silence/padding
            weight = active / active.sum(dim=2, keepdim=True).clamp(min=1e-3)
            centred = db - (db * weight).sum(dim=2, keepdim=True)
            var = (centred * centred * weight).sum(dim=2, keepdim=True).mean(dim=1, keepdim=True)
            db = centred / torch.sqrt(var + 1e-5)
        elif self.cfg.norm == "utterance":
            mean = db.mean(dim=(1, 2), keepdim=True)
            std = db.std(dim=(1, 2), keepdim=True)
            db = (db - mean) / (std + 1e-5)
        return db

    def num_frames(self, samples: int) -> int:
        return 1 + samples // self.cfg.hop_length

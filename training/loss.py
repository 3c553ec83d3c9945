"""Focal loss on logits (never on probabilities), and class weights from the training split."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F


def class_weights(labels: Sequence[int], n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``N / (C * n_c)``, normalised to mean 1 over the classes present."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=n_classes).float()
    w = torch.where(counts > 0, counts.sum() / (n_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return w * (counts > 0).sum() / w.sum()


def soft_targets(target: torch.Tensor, n_classes: int, label_smoothing: float = 0.0) -> torch.Tensor:
    if target.dtype.is_floating_point:
        return target
    one_hot = F.one_hot(target, n_classes).float()
    return one_hot * (1 - label_smoothing) + label_smoothing / n_classes


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) from logits, for hard or soft (mixup) targets.

    Per sample ``-sum_c w_c y_c (1 - p_c)^gamma log p_c``, averaged with the
    weights ``sum_c w_c y_c`` so that class weights rebalance rather than
    rescale. With ``gamma=0`` and no weights it equals cross-entropy.
    """
    n_classes = logits.shape[-1]
    y = soft_targets(target, n_classes, label_smoothing)
    logp = F.log_softmax(logits, dim=-1)
    modulating = (1 - logp.exp()).clamp(min=0).pow(gamma) if gamma else 1.0
    w = weight[None, :] if weight is not None else torch.ones(1, n_classes, device=logits.device)
    per_sample = -(w * y * modulating * logp).sum(dim=-1)
    norm = (w * y).sum(dim=-1)
    return per_sample.sum() / norm.sum().clamp(min=1e-8)

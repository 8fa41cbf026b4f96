"""Classification losses on soft targets: cross-entropy, class-weighted CE and focal loss.

All three are one formula, -sum_k w_k (1 - p_k)^gamma t_k log p_k averaged over the batch, so
they work unchanged with the soft targets that CutMix/MixUp and label smoothing produce.
Class weighting follows Keras' class_weight (each sample's loss scaled by its class weight).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from plantid.config import LossConfig
from plantid.errors import PlantidError


def balanced_class_weights(class_counts: Sequence[int]) -> torch.Tensor:
    """Weights n / (k * count_k): rare classes weigh more, and the mean weight per sample is 1."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float32).clamp(min=1)
    return counts.sum() / (len(counts) * counts)


class SoftTargetLoss(nn.Module):
    """Weighted focal cross-entropy on class-index or soft (N x K) targets."""

    def __init__(self, num_classes: int, weights: torch.Tensor | None = None, gamma: float = 0.0,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.register_buffer("weights", weights if weights is not None else torch.ones(num_classes))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == 1:
            target = F.one_hot(target, self.num_classes).to(logits.dtype)
            if self.label_smoothing:
                target = target * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes
        log_p = F.log_softmax(logits.float(), dim=1)
        per_class = -target.float() * log_p * self.weights
        if self.gamma:
            per_class = per_class * (1 - log_p.exp()).pow(self.gamma)
        return per_class.sum(dim=1).mean()


def build_loss(cfg: LossConfig, class_counts: Sequence[int]) -> SoftTargetLoss:
    """The loss named in the config; class weights come from the training split's counts."""
    k = len(class_counts)
    if cfg.name == "ce":
        return SoftTargetLoss(k, label_smoothing=cfg.label_smoothing)
    if cfg.name == "weighted_ce":
        return SoftTargetLoss(k, balanced_class_weights(class_counts), label_smoothing=cfg.label_smoothing)
    if cfg.alpha == "none":
        alpha = None
    elif cfg.alpha == "balanced":
        alpha = balanced_class_weights(class_counts)
    else:
        if len(cfg.alpha) != k:
            raise PlantidError(f"loss.alpha has {len(cfg.alpha)} values but the data has {k} classes")
        alpha = torch.tensor(cfg.alpha, dtype=torch.float32)
    return SoftTargetLoss(k, alpha, gamma=cfg.gamma, label_smoothing=cfg.label_smoothing)

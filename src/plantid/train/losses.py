"""Classification losses on class-index or soft targets: cross-entropy, class-weighted CE, focal.

CE and class-weighted CE are torch's `F.cross_entropy(weight=, label_smoothing=)`, which takes
the soft (N x K) targets that CutMix/MixUp produce as well as class indices. Focal loss has no
torch or timm counterpart for soft targets, so it is written out here:
-sum_k w_k (1 - p_k)^gamma t_k log p_k, which is weighted CE when gamma is 0.

Every loss is the plain mean of per-sample losses, so class weights follow Keras' class_weight
(each sample's loss scaled by its class weight), not torch's weighted mean over class-index
targets (which divides by the batch's summed weights).
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


class _ClassLoss(nn.Module):
    """Shared state: class count, optional per-class weights (a buffer, saved in checkpoints) and
    the label smoothing applied to class-index targets (soft targets arrive already smoothed:
    timm's Mixup smooths them itself)."""

    def __init__(self, num_classes: int, weights: torch.Tensor | None, label_smoothing: float):
        super().__init__()
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.register_buffer("weights", weights if weights is not None else torch.ones(num_classes))


class CrossEntropy(_ClassLoss):
    """Torch's cross-entropy (optionally class-weighted) on class-index or soft (N x K) targets."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        smoothing = self.label_smoothing if target.dim() == 1 else 0.0
        target = target if target.dim() == 1 else target.float()
        per_sample = F.cross_entropy(logits.float(), target, weight=self.weights, label_smoothing=smoothing,
                                     reduction="none")
        return per_sample.mean()


class FocalLoss(_ClassLoss):
    """Class-weighted focal loss (Lin et al.) on class-index or soft (N x K) targets."""

    def __init__(self, num_classes: int, weights: torch.Tensor | None = None, gamma: float = 2.0,
                 label_smoothing: float = 0.0):
        super().__init__(num_classes, weights, label_smoothing)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == 1:
            target = F.one_hot(target, self.num_classes).float()
            if self.label_smoothing:
                target = target * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes
        log_p = F.log_softmax(logits.float(), dim=1)
        per_class = -target.float() * log_p * self.weights * (1 - log_p.exp()).pow(self.gamma)
        return per_class.sum(dim=1).mean()


def build_loss(cfg: LossConfig, class_counts: Sequence[int]) -> nn.Module:
    """The loss named in the config; class weights come from the training split's counts."""
    k = len(class_counts)
    if cfg.name == "ce":
        return CrossEntropy(k, None, cfg.label_smoothing)
    if cfg.name == "weighted_ce":
        return CrossEntropy(k, balanced_class_weights(class_counts), cfg.label_smoothing)
    if cfg.alpha == "none":
        alpha = None
    elif cfg.alpha == "balanced":
        alpha = balanced_class_weights(class_counts)
    else:
        if len(cfg.alpha) != k:
            raise PlantidError(f"loss.alpha has {len(cfg.alpha)} values but the data has {k} classes")
        alpha = torch.tensor(cfg.alpha, dtype=torch.float32)
    return FocalLoss(k, alpha, gamma=cfg.gamma, label_smoothing=cfg.label_smoothing)

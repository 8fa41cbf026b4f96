"""Optimizers keyed by name, with optional layer-wise learning-rate decay.

Fine-tuning a pretrained backbone on a few thousand photos moves its early, generic layers less
than its late, task-specific ones. `optim.layer_decay` says by how much: each block of the
backbone (timm's `group_matcher`, the grouping timm's own `--layer-decay` uses) trains at
`layer_decay` times the learning rate of the block after it, and the classifier at the full rate.
The scale travels in each param group as `lr_scale`, which `build_scheduler` applies.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.optim import param_groups_layer_decay
from torch import nn

from plantid.config import OptimConfig
from plantid.errors import PlantidError
from plantid.models import members_of

_OPTIMIZERS = {
    "adam": lambda groups, cfg: torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "adamw": lambda groups, cfg: torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "sgd": lambda groups, cfg: torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay,
                                               nesterov=True),
}


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """Param groups of a plantid Classifier with per-block `lr_scale` (trainable parameters only).

    The backbone's blocks decay from the top down; a separate head (the seed head) and the
    backbone's own classifier keep the full rate. As in timm, biases and norm weights get no
    weight decay.
    """
    backbone = getattr(model, "backbone", model)
    if not hasattr(backbone, "group_matcher"):
        raise PlantidError(f"optim.layer_decay needs a timm backbone that groups its blocks; "
                           f"{type(backbone).__name__} does not: remove optim.layer_decay")
    groups = param_groups_layer_decay(backbone, weight_decay=weight_decay, layer_decay=layer_decay)
    in_backbone = {id(p) for p in backbone.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in in_backbone]
    if rest:
        groups.append({"params": rest, "lr_scale": 1.0, "weight_decay": weight_decay})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The configured optimizer over the model's trainable parameters."""
    if cfg.layer_decay is None:
        groups: list[Any] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    else:
        groups = [group for member in members_of(model)
                  for group in layer_decay_groups(member, cfg.weight_decay, cfg.layer_decay)]
    return _OPTIMIZERS[cfg.name](groups, cfg)

"""Optimizers keyed by name (timm's `create_optimizer_v2`), with optional layer-wise LR decay.

Parameter groups follow timm's rules on both paths: biases, norm weights and the backbone's own
`no_weight_decay()` names get no weight decay (`param_groups_weight_decay`), and with
`optim.layer_decay` each block of the backbone (timm's `group_matcher`, the grouping timm's own
`--layer-decay` uses) trains at `layer_decay` times the learning rate of the block after it, the
classifier at the full rate (`param_groups_layer_decay`). plantid only adds what timm cannot
know: a Classifier wraps a timm backbone with its own head, and an ensemble has several.

Each group's learning rate starts at optim.lr x its `lr_scale`; the schedule (`build_scheduler`)
moves every group by the same factor.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from plantid.config import OptimConfig
from plantid.errors import PlantidError
from plantid.models import members_of


def _no_weight_decay_names(member: nn.Module) -> set[str]:
    """The parameters a timm backbone asks not to decay (position embeddings, tokens), named as in `member`."""
    backbone = getattr(member, "backbone", member)
    names = set(getattr(backbone, "no_weight_decay", lambda: set())())
    return names if backbone is member else {f"backbone.{name}" for name in names}


def weight_decay_groups(member: nn.Module, weight_decay: float,
                        decay_biases_and_norms: bool = False) -> list[dict[str, Any]]:
    """timm's decay / no-decay param groups of one network (trainable parameters only).

    With `decay_biases_and_norms` every trainable tensor is decayed (one group), the rule plain
    `torch.optim.AdamW(model.parameters())` follows, kept so that choice can be measured.
    """
    if decay_biases_and_norms:
        return [{"params": [p for p in member.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    return param_groups_weight_decay(member, weight_decay, no_weight_decay_list=_no_weight_decay_names(member))


def layer_decay_groups(member: nn.Module, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """Param groups of a plantid Classifier with per-block `lr_scale` (trainable parameters only).

    The backbone's blocks decay from the top down (timm); a separate head (the seed head) and the
    backbone's own classifier keep the full rate. Biases and norm weights get no weight decay.
    """
    backbone = getattr(member, "backbone", member)
    if not hasattr(backbone, "group_matcher"):
        raise PlantidError(f"optim.layer_decay needs a timm backbone that groups its blocks; "
                           f"{type(backbone).__name__} does not: remove optim.layer_decay")
    no_decay = set(getattr(backbone, "no_weight_decay", lambda: set())())
    groups = param_groups_layer_decay(backbone, weight_decay=weight_decay, layer_decay=layer_decay,
                                      no_weight_decay_list=no_decay)
    for child in member.children():
        if child is not backbone:
            groups += [{**group, "lr_scale": 1.0} for group in param_groups_weight_decay(child, weight_decay)]
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The configured optimizer (adam, adamw, or sgd with Nesterov momentum 0.9) over the trainable parameters."""
    groups = [group for member in members_of(model)
              for group in (weight_decay_groups(member, cfg.weight_decay, cfg.decay_biases_and_norms)
                            if cfg.layer_decay is None
                            else layer_decay_groups(member, cfg.weight_decay, cfg.layer_decay))]
    groups = [{**group, "lr": cfg.lr * group.get("lr_scale", 1.0)} for group in groups if group["params"]]
    return create_optimizer_v2(groups, opt=cfg.name, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.9)

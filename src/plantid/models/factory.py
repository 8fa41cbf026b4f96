"""ModelConfig -> Classifier: the scratch nets by name, anything else through timm."""

from __future__ import annotations

import logging

import torch
from torch import nn

from plantid.config import ModelConfig
from plantid.errors import PlantidError
from plantid.models.classifier import Classifier, Ensemble, SeedHead, count_layers, freeze_first_layers
from plantid.models.scratch import InceptionNet, SimpleCNN
from plantid.models.backbone import create_backbone

log = logging.getLogger("plantid")

SCRATCH_MODELS = ("simple_cnn", "inception")


def _scratch_backbone(cfg: ModelConfig, num_classes: int, image_size: int, drop: float) -> nn.Module:
    if cfg.weights.strip().lower() not in ("none", "auto"):
        raise PlantidError(
            f"{cfg.name} is trained from scratch and has no pretrained weights: "
            f"use model.weights=none (got model.weights={cfg.weights})"
        )
    if cfg.name == "simple_cnn":
        if image_size < 32:
            raise PlantidError(f"simple_cnn needs data.image_size >= 32 (got {image_size})")
        return SimpleCNN(num_classes, dropout=drop, image_size=image_size)
    return InceptionNet(num_classes, dropout=drop)


def freeze_count(freeze: float, layers: int) -> int:
    """ModelConfig.freeze -> a layer count: >= 1 is a count, 0 < f < 1 a rounded fraction."""
    if freeze <= 0:
        return 0
    if freeze < 1:
        return int(round(freeze * layers))
    if freeze != int(freeze):
        raise PlantidError(f"model.freeze={freeze}: use a whole number of layers (>= 1) or a fraction below 1")
    return int(freeze)


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _small_init_classifier(layer: nn.Module) -> None:
    """Start a fresh classifier near zero so the first logits are near-uniform.

    timm initialises EfficientNet classifiers for 1000 classes (uniform, 1/sqrt(fan_out)); with 8
    classes that gives weights of std 0.2, logits of std ~4 and an initial loss near 7, which
    costs the first epochs of a short CPU fine-tune.
    """
    if isinstance(layer, nn.Linear):
        nn.init.normal_(layer.weight, std=0.01)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def build_model(cfg: ModelConfig, num_classes: int, image_size: int) -> Classifier | Ensemble:
    """Build the network a run trains: backbone, head, freezing and memory format.

    'simple_cnn' and 'inception' are the from-scratch nets (weights 'none' or 'auto', which
    means none for them); any other name is a timm model whose weights come from
    `plantid.models.backbone.create_backbone`. With head='seed' the backbone returns pooled
    features and the SeedHead adds Dropout, Dense(head_hidden) ReLU (L1L2), Dense(num_classes).
    With `members` > 1 it is an Ensemble of that many such Classifiers (fresh heads each).
    """
    if num_classes < 1:
        raise PlantidError(f"need at least one class to build a model (got {num_classes})")
    built = [_build_classifier(cfg, num_classes, image_size) for _ in range(cfg.members)]
    members = [member for member, _ in built]
    frozen_names = built[0][1]
    model: Classifier | Ensemble = members[0] if len(members) == 1 else Ensemble(members)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    counts = model.parameter_counts()
    log.info(
        "model %s (%s head, %d classes, %d px): %s parameters, %s trainable, %s frozen; "
        "%d of %d backbone layers frozen%s",
        cfg.label, cfg.head, num_classes, image_size, _millions(counts["total"]), _millions(counts["trainable"]),
        _millions(counts["frozen"]), len(frozen_names), count_layers(members[0]),
        f" (through {frozen_names[-1]})" if frozen_names else "",
    )
    return model


def _build_classifier(cfg: ModelConfig, num_classes: int, image_size: int) -> tuple[Classifier, list[str]]:
    """One Classifier, frozen as configured, and the names of its frozen layers."""
    name = cfg.name.strip()
    seed = cfg.head == "seed"
    backbone_classes = 0 if seed else num_classes
    backbone_drop = 0.0 if seed else cfg.dropout  # the seed head has its own dropout
    if name in SCRATCH_MODELS:
        backbone = _scratch_backbone(cfg.model_copy(update={"name": name}), backbone_classes, image_size,
                                     backbone_drop)
    else:
        backbone = create_backbone(name, cfg.weights, num_classes=backbone_classes, drop_rate=backbone_drop,
                                   drop_path_rate=cfg.drop_path)
        if backbone_classes:
            _small_init_classifier(backbone.get_classifier())
    head = None
    if seed:
        features = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        head = SeedHead(features, num_classes, hidden=cfg.head_hidden, dropout=cfg.dropout, l1=cfg.l1, l2=cfg.l2)
    elif cfg.l1 or cfg.l2:
        log.warning("model.l1/model.l2 only apply to the seed head (model.head=seed); ignored for head=%s", cfg.head)
    if cfg.grad_checkpointing and not hasattr(backbone, "set_grad_checkpointing"):
        raise PlantidError(f"model.grad_checkpointing=true: {name} cannot recompute its activations; set it to false")
    model = Classifier(backbone, num_classes, head=head, image_size=image_size, name=name,
                       grad_checkpointing=cfg.grad_checkpointing)

    layers = count_layers(model)
    n_frozen = freeze_count(cfg.freeze, layers)
    if n_frozen > layers:
        raise PlantidError(f"model.freeze={cfg.freeze:g}: {name} has only {layers} layers with weights")
    return model, freeze_first_layers(model, n_frozen)

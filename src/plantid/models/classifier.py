"""The network users train: a backbone plus head that takes [0, 1] images and returns logits.

Normalization lives inside the model (`mean`/`std` buffers), so training, evaluation, the
exported ONNX graph and the server all feed the same unnormalized float NCHW pixels.

Layers are counted the way Keras counts the layers that carry weights: every module that
directly owns parameters, in module order (leaf convs, norms and linears, plus containers
holding their own parameters, such as a ConvNeXt block's layer-scale `gamma` or a ViT's
`pos_embed`). `freeze_first_layers` freezes a prefix of that list and keeps the norm layers
inside it in eval mode, so their running statistics stay the pretrained ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from plantid.errors import PlantidError

__all__ = ["Classifier", "Ensemble", "SeedHead", "count_layers", "freeze_first_layers", "layer_modules",
           "keep_frozen_norms_eval", "members_of"]

_FROZEN_ATTR = "_plantid_frozen"


class SeedHead(nn.Module):
    """The report's head on pooled features: Dropout(p), Dense(hidden) + ReLU, Dense(classes).

    Global average pooling is done by the backbone (timm `num_classes=0` returns pooled
    features). Outputs are logits; softmax belongs to the loss / predictor. The hidden dense
    layer carries Keras' L1L2 kernel penalty, returned by `regularization()`.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 1024, dropout: float = 0.0,
                 l1: float = 0.0, l2: float = 0.0):
        super().__init__()
        self.l1 = float(l1)
        self.l2 = float(l2)
        self.drop = nn.Dropout(dropout)
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.fc1(self.drop(x))))

    def regularization(self) -> torch.Tensor:
        """l1 * sum|W| + l2 * sum W^2 over the hidden dense kernel (bias excluded, as in Keras)."""
        w = self.fc1.weight
        penalty = w.new_zeros(())
        if self.l1:
            penalty = penalty + self.l1 * w.abs().sum()
        if self.l2:
            penalty = penalty + self.l2 * w.square().sum()
        return penalty


# -- layers and freezing ----------------------------------------------------------------------
def _layer_root(model: nn.Module) -> nn.Module:
    return model.backbone if isinstance(model, Classifier) else model


def _classifier_ids(root: nn.Module) -> set[int]:
    get = getattr(root, "get_classifier", None)
    if not callable(get):
        return set()
    try:
        clf = get()
    except Exception:
        return set()
    if isinstance(clf, nn.Module):
        return {id(m) for m in clf.modules()}
    if isinstance(clf, Sequence):  # some timm models return a tuple of heads
        return {id(m) for c in clf if isinstance(c, nn.Module) for m in c.modules()}
    return set()


def layer_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module directly owning parameters, in module order.

    For a Classifier only its backbone counts, and a backbone's own classifier
    (`get_classifier()`) is left out: the head is never counted nor frozen.
    """
    root = _layer_root(model)
    skip = _classifier_ids(root)
    return [
        (name, module)
        for name, module in root.named_modules()
        if id(module) not in skip and any(True for _ in module.parameters(recurse=False))
    ]


def count_layers(model: nn.Module) -> int:
    """How many layers with weights the backbone has (see `layer_modules`), like Keras counts them."""
    return len(layer_modules(model))


def _has_running_stats(module: nn.Module) -> bool:
    if isinstance(module, _NormBase):
        return bool(module.track_running_stats)
    return isinstance(getattr(module, "running_mean", None), torch.Tensor)


def keep_frozen_norms_eval(model: nn.Module) -> None:
    """Put norm layers marked frozen (by `freeze_first_layers`) in eval mode."""
    for module in model.modules():
        if getattr(module, _FROZEN_ATTR, False) and _has_running_stats(module):
            module.eval()


def freeze_first_layers(model: nn.Module, n: int) -> list[str]:
    """Freeze exactly the first `n` layers of `count_layers(model)` and unfreeze the rest of them.

    Frozen layers get `requires_grad=False` and are marked so that `Classifier.train()` (or
    `keep_frozen_norms_eval`) keeps their norm layers, and any parameter-free norm with running
    stats before the first trainable layer, in eval mode. Returns the frozen layers' names.
    """
    layers = layer_modules(model)
    if not 0 <= n <= len(layers):
        raise PlantidError(f"cannot freeze {n} layers: the backbone has {len(layers)} layers with weights")
    root = _layer_root(model)
    for module in root.modules():
        if getattr(module, _FROZEN_ATTR, False):
            setattr(module, _FROZEN_ATTR, False)
    for i, (_, module) in enumerate(layers):
        frozen = i < n
        for p in module.parameters(recurse=False):
            p.requires_grad_(not frozen)
        if frozen:
            setattr(module, _FROZEN_ATTR, True)
    if n:
        first_trainable = layers[n][1] if n < len(layers) else None
        skip = _classifier_ids(root)
        for module in root.modules():
            if module is first_trainable:
                break
            if id(module) not in skip and _has_running_stats(module):
                setattr(module, _FROZEN_ATTR, True)
    if model.training:
        keep_frozen_norms_eval(model)
    return [name for name, _ in layers[:n]]


def _pooled(output: torch.Tensor) -> torch.Tensor:
    """A module's output averaged over space: N x C x H x W maps, or N x L x C tokens -> N x C."""
    output = output.float()
    if output.ndim == 4:
        return output.mean(dim=(2, 3))
    return output.mean(dim=1) if output.ndim == 3 else output.flatten(1)


# -- the model --------------------------------------------------------------------------------
class Classifier(nn.Module):
    """backbone (+ head) with the input normalization built in.

    Args:
        backbone: timm model or scratch net. With the 'linear' head it is the whole timm model,
            its own classifier included (`backbone.get_classifier()`); with the 'seed' head it
            returns pooled features and `head` maps them to logits.
        num_classes: number of outputs (logits).
        head: module applied to the backbone's output; None means identity ('linear').
        mean, std: per-channel statistics; default the backbone's `pretrained_cfg` ones, or
            0.5 / 0.5 when it has none.
        image_size: the training image size (a hint for export, serving and Grad-CAM).
        name: the model name, for logs and reports.
        grad_checkpointing: in a training step (training mode, gradients on), the timm backbone
            recomputes its activations during the backward pass instead of keeping them (less
            memory, slower steps); set per call, since Lightning restores modules' modes by attribute.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head: nn.Module | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 image_size: int = 224, name: str = "", grad_checkpointing: bool = False):
        super().__init__()
        self.grad_checkpointing = grad_checkpointing  # build_model refuses it for a backbone without the switch
        cfg = getattr(backbone, "pretrained_cfg", None) or {}
        mean = tuple(mean if mean is not None else cfg.get("mean", (0.5, 0.5, 0.5)))
        std = tuple(std if std is not None else cfg.get("std", (0.5, 0.5, 0.5)))
        if len(mean) != len(std):
            raise ValueError(f"mean {mean} and std {std} differ in length")
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.num_classes = num_classes
        self.image_size = image_size
        self.name = name or type(backbone).__name__

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> the backbone's input statistics."""
        return (x - self.mean) / self.std

    def _recompute_in_training_steps(self) -> None:
        """Activation recomputation only where a backward pass follows; evaluation also needs every
        block to run as a module, for the feature taps' hooks."""
        if self.grad_checkpointing:
            self.backbone.set_grad_checkpointing(self.training and torch.is_grad_enabled())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float NCHW images in [0, 1] (not normalized) -> logits (N, num_classes)."""
        self._recompute_in_training_steps()
        return self.head(self.backbone(self.normalize(x)))

    def features_and_logits(self, x: torch.Tensor, taps: Sequence[str] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """Float NCHW images in [0, 1] -> (features N x D, logits N x K) in one pass.

        The features are what the last dense layer reads: the backbone's pooled features for the
        linear head (timm's `forward_head(pre_logits=True)`), the hidden ReLU layer for the seed
        head; then, for each backbone module named in `taps`, its output averaged over space.
        Out-of-distribution scores are computed from them (plantid.trust); the logits equal
        `forward(x)`.
        """
        penultimate, tapped, logits = self.feature_parts(x, taps)
        return (torch.cat([penultimate, *tapped], dim=1) if tapped else penultimate), logits

    def feature_parts(self, x: torch.Tensor, taps: Sequence[str] = ()) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """(penultimate features, [pooled output of each tapped module], logits): `features_and_logits` unjoined."""
        self._recompute_in_training_steps()
        outputs: dict[str, torch.Tensor] = {}
        hooks = [self.backbone.get_submodule(name).register_forward_hook(
            lambda _module, _args, out, name=name: outputs.__setitem__(name, out)) for name in taps]
        try:
            penultimate, logits = self._penultimate_and_logits(self.normalize(x))
        finally:
            for hook in hooks:
                hook.remove()
        return penultimate, [_pooled(outputs[name]) for name in taps], logits

    def _penultimate_and_logits(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.head, SeedHead):
            pooled = self.backbone(z)
            hidden = self.head.act(self.head.fc1(self.head.drop(pooled)))
            return hidden, self.head.fc(hidden)
        bb = self.backbone
        if not (callable(getattr(bb, "forward_head", None)) and callable(getattr(bb, "forward_features", None))):
            raise PlantidError(f"{self.name} has no forward_features/forward_head: its features cannot be read")
        features = bb.forward_head(bb.forward_features(z), pre_logits=True)
        classifier = bb.get_classifier()
        return features, self.head(classifier(features))

    def last_stage(self) -> tuple[str, ...]:
        """The backbone module that ends its last feature stage (timm's `feature_info`), or ().

        Its pooled output describes the photo's content like the penultimate features, but before
        the head's own layers (EfficientNet's 1x1 expansion, a norm): a second view in which
        photos of other things that the fine-tuned penultimate layer maps close to a class often
        stay apart (plantid.trust.ood, docs/decisions.md). Earlier stages describe how a photo was
        taken (JPEG, blur, resolution) more than what it shows.
        """
        info = getattr(self.backbone, "feature_info", None)
        stages = info.get_dicts() if callable(getattr(info, "get_dicts", None)) else list(info or [])
        names = [s.get("module") for s in stages if isinstance(s, dict) and s.get("module")]
        return (names[-1],) if names else ()

    def regularization(self) -> torch.Tensor:
        """The head's weight penalty (seed head L1L2), a zero tensor when there is none."""
        fn = getattr(self.head, "regularization", None)
        return fn() if callable(fn) else self.mean.new_zeros(())

    def parameter_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return dict(trainable=trainable, frozen=total - trainable, total=total)

    def gradcam_layer(self) -> nn.Module:
        """The module whose output is the last spatial feature map (the Grad-CAM target)."""
        bb = self.backbone
        # timm EfficientNets end their features with conv_head -> bn2 (+act) after the last stage.
        if isinstance(getattr(bb, "conv_head", None), nn.Conv2d) and isinstance(getattr(bb, "bn2", None), nn.Module):
            return bb.bn2
        info = getattr(bb, "feature_info", None)
        if info:
            last = info[-1] if isinstance(info, list) else None
            module_name = last.get("module") if isinstance(last, dict) else None
            if module_name:
                return bb.get_submodule(module_name)
        skip = _classifier_ids(bb)
        convs = [m for m in bb.modules() if isinstance(m, nn.Conv2d) and id(m) not in skip]
        if not convs:
            raise PlantidError(f"{self.name} has no convolutional feature map for Grad-CAM")
        return convs[-1]

    def train(self, mode: bool = True) -> Classifier:
        """Like nn.Module.train, but norm layers inside frozen layers always stay in eval mode."""
        super().train(mode)
        if mode:
            keep_frozen_norms_eval(self)
        return self


class Ensemble(nn.Module):
    """Several Classifiers trained side by side, whose softmax probabilities are averaged.

    Members that differ only in their random head, dropout and augmentation draws still make
    different mistakes on a few thousand photos, so averaging them is more accurate than any one
    (docs/benchmarks.md). The output is the log of the mean probability: softmax of it is that
    mean, so losses, argmax, test-time augmentation, export and serving treat it as logits.
    Training calls each member itself (`members_of`), so each learns from its own loss.
    """

    def __init__(self, members: Sequence[Classifier]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members (got {len(members)})")
        first = members[0]
        if any(m.num_classes != first.num_classes for m in members):
            raise ValueError("ensemble members must have the same number of classes")
        self.members = nn.ModuleList(members)
        self.num_classes = first.num_classes
        self.image_size = first.image_size
        self.name = first.name

    @property
    def mean(self) -> torch.Tensor:
        return self.members[0].mean

    @property
    def std(self) -> torch.Tensor:
        return self.members[0].std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float NCHW images in [0, 1] -> log of the members' mean softmax probability."""
        log_probs = torch.stack([torch.log_softmax(m(x).float(), dim=1) for m in self.members])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))

    def features_and_logits(self, x: torch.Tensor, taps: Sequence[str] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """(the members' penultimate features side by side, then their tapped ones; the ensemble's
        logits = `forward(x)`): one Classifier's layout, penultimate columns first."""
        parts = [m.feature_parts(x, taps) for m in self.members]
        log_probs = torch.stack([torch.log_softmax(logits.float(), dim=1) for _, _, logits in parts])
        logits = torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))
        features = [p for p, _, _ in parts] + [t for _, tapped, _ in parts for t in tapped]
        return torch.cat(features, dim=1), logits

    def last_stage(self) -> tuple[str, ...]:
        """The members' last stage (they share one architecture)."""
        return self.members[0].last_stage()

    def parameter_counts(self) -> dict[str, int]:
        counts = [m.parameter_counts() for m in self.members]
        return {key: sum(c[key] for c in counts) for key in counts[0]}

    def gradcam_layer(self) -> nn.Module:
        """The first member's last feature map (Grad-CAM explains the ensemble through it)."""
        return self.members[0].gradcam_layer()


def members_of(model: nn.Module) -> list[nn.Module]:
    """The networks a model trains separately: an Ensemble's members, else the model itself."""
    return list(model.members) if isinstance(model, Ensemble) else [model]

"""The report's from-scratch CNNs, written timm-style.

Both follow timm's model interface (`forward_features`, `forward_head(pre_logits=...)`,
`get_classifier`, `reset_classifier`, `num_features`, `feature_info`, `pretrained_cfg`), so the
Classifier, freezing, Grad-CAM and export treat them like any timm backbone. `num_classes=0`
returns pre-logit features, which is how the 'seed' head is put on top of them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["SimpleCNN", "InceptionNet"]


def _scratch_cfg(image_size: int) -> dict[str, Any]:
    # No pretrained statistics: inputs in [0, 1] are mapped to [-1, 1].
    return dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=(3, image_size, image_size),
                num_classes=0, classifier="fc", first_conv="features.0")


def _classifier(num_features: int, num_classes: int) -> nn.Module:
    """timm's convention: a dense layer, or `Identity` (pre-logit features out) for `num_classes=0`."""
    return nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()


class _ScratchNet(nn.Module):
    """timm's classifier interface, shared by the from-scratch nets.

    A subclass sets `num_classes`, `num_features` and `fc`, and defines `forward_features` and
    `forward_head(x, pre_logits=False)`.
    """

    num_classes: int
    num_features: int
    fc: nn.Module

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = _classifier(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class SimpleCNN(_ScratchNet):
    """3 x (conv 3x3 + ReLU + 2x2 max-pool), flatten, dense + ReLU, dropout, dense (logits).

    The report's baseline. Flattening needs a fixed spatial size, so the input size is an
    explicit `image_size` argument (any size >= 32; no lazy modules, so ONNX export and
    `load_state_dict` work on a freshly built model). Each pool halves the size (floored).
    """

    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 32, hidden: int = 256,
                 dropout: float = 0.5, image_size: int = 224):
        super().__init__()
        if image_size < 32:
            raise ValueError(f"SimpleCNN needs images of at least 32 px, got {image_size}")
        self.num_classes = num_classes
        self.image_size = image_size
        self.drop_rate = dropout
        chans = [in_chans, width, width * 2, width * 4]
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        side = image_size
        for _ in range(3):
            side //= 2
        self.feature_size = side
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(chans[3] * side * side, hidden)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout)
        self.num_features = hidden
        self.fc = _classifier(hidden, num_classes)
        self.feature_info = [dict(num_chs=chans[i + 1], reduction=2 ** (i + 1), module=f"features.{3 * i + 2}")
                             for i in range(3)]
        self.pretrained_cfg = _scratch_cfg(image_size)
        self.pretrained_cfg["first_conv"] = "features.0"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(self.flatten(x))))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            height, width = x.shape[-2:]
            if (height // 8, width // 8) != (self.feature_size, self.feature_size):
                raise ValueError(
                    f"SimpleCNN was built for {self.image_size} px images (data.image_size), got {height}x{width}"
                )
        return self.forward_head(self.forward_features(x))


class ConvBnAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU, 'same' padding for odd kernels."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_chs),
            nn.ReLU(inplace=True),
        )


class InceptionModule(nn.Module):
    """Four parallel branches concatenated: 1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max-pool -> 1x1."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        if out_chs % 4:
            raise ValueError(f"InceptionModule out_chs must be a multiple of 4, got {out_chs}")
        branch = out_chs // 4
        reduce = max(branch // 2, 8)
        self.branch1 = ConvBnAct(in_chs, branch, 1)
        self.branch3 = nn.Sequential(ConvBnAct(in_chs, reduce, 1), ConvBnAct(reduce, branch, 3))
        self.branch5 = nn.Sequential(ConvBnAct(in_chs, reduce, 1), ConvBnAct(reduce, branch, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), ConvBnAct(in_chs, branch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


class InceptionNet(_ScratchNet):
    """Stem conv, pool, Inception module, pool, Inception module, global average pool, dropout, dense.

    Works at any input size >= 8 px (global pooling), channels: width -> 2*width -> 4*width.
    """

    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 32, dropout: float = 0.4):
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = dropout
        self.stem = ConvBnAct(in_chans, width, 3, stride=2)
        self.pool1 = nn.MaxPool2d(2)
        self.inception1 = InceptionModule(width, width * 2)
        self.pool2 = nn.MaxPool2d(2)
        self.inception2 = InceptionModule(width * 2, width * 4)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.drop = nn.Dropout(dropout)
        self.num_features = width * 4
        self.fc = _classifier(self.num_features, num_classes)
        self.feature_info = [
            dict(num_chs=width, reduction=2, module="stem"),
            dict(num_chs=width * 2, reduction=4, module="inception1"),
            dict(num_chs=width * 4, reduction=8, module="inception2"),
        ]
        self.pretrained_cfg = _scratch_cfg(224)
        self.pretrained_cfg["first_conv"] = "stem.0"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.stem(x))
        x = self.pool2(self.inception1(x))
        return self.inception2(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.flatten(self.global_pool(x)))
        return x if pre_logits else self.fc(x)

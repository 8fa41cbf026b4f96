"""The cached uint8 pixels as the network's input tensor: the step after `images.load_image`.

Training, evaluation, prediction, the ONNX graph and Grad-CAM all turn a uint8 batch into the
model's float input with this one function, so none of them depends on another's module.
"""

from __future__ import annotations

import torch


def to_unit_float(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 N x H x W x 3 batch -> float N x 3 x H x W in [0, 1] (the model's input)."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

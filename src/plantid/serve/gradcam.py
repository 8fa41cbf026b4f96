"""Grad-CAM: which parts of a photo pushed the model towards a class.

The activations of `Classifier.gradcam_layer()` (the last spatial feature map) are weighted by
the spatially averaged gradient of the chosen class's logit, summed over channels and passed
through ReLU; the map is upsampled to the image and drawn over the photo with a colour map.

`GradCam` keeps one forward hook on the layer for its whole life. The hook only acts in a
thread that is computing a Grad-CAM, so the same model can serve ordinary predictions from
other threads at the same time (their forward passes are untouched).
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from plantid.errors import PlantidError
from plantid.data.tensors import to_unit_float

__all__ = ["GradCam", "GradCamResult", "overlay_heatmap", "colorize", "encode_png"]

DEFAULT_COLORMAP = "turbo"


@dataclass
class GradCamResult:
    """One Grad-CAM: the heat-map at the image's size and the model's output for the photo."""

    heatmap: np.ndarray  # float32 H x W, in [0, 1], non-negative
    class_index: int  # the class the map explains
    probabilities: np.ndarray  # softmax over all classes, for the same forward pass
    raw_max: float  # the largest value before normalisation (0: no positive evidence at all)


class GradCam:
    """Grad-CAM for a Classifier (anything with `gradcam_layer()` returning an nn.Module).

    Usage: ``cam = GradCam(model); result = cam(image_uint8, class_index=None); cam.close()``.
    """

    def __init__(self, model: nn.Module, layer: nn.Module | None = None):
        if layer is None:
            get_layer = getattr(model, "gradcam_layer", None)
            if not callable(get_layer):
                raise PlantidError(f"{type(model).__name__} has no gradcam_layer(); Grad-CAM needs a plantid Classifier")
            layer = get_layer()
        self.model = model
        self.layer = layer
        self._local = threading.local()
        self._handle = layer.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not getattr(self._local, "capturing", False):
            return None  # another thread's ordinary prediction: leave it alone
        if not isinstance(output, torch.Tensor):
            raise PlantidError(f"Grad-CAM layer {type(module).__name__} returns {type(output).__name__}, not a tensor")
        self._local.activations = output
        # Later in-place ops (e.g. ReLU(inplace=True)) must not overwrite the captured tensor.
        return output.clone()

    def close(self) -> None:
        """Remove the hook from the model."""
        self._handle.remove()

    def __enter__(self) -> "GradCam":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, image: np.ndarray, class_index: int | None = None) -> GradCamResult:
        """Grad-CAM of one uint8 H x W x 3 image (already at the model's input size).

        `class_index` None explains the most likely class.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 H x W x 3 image, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        x = to_unit_float(torch.from_numpy(np.array(image[None], copy=True)).to(device))  # writable copy
        self._local.capturing = True
        self._local.activations = None
        try:
            with torch.inference_mode(False), torch.enable_grad():
                # The input requires grad so that the graph exists even if the hooked layer is frozen.
                x = x.clone().requires_grad_(True)
                logits = self.model(x)
                activations = self._local.activations
                if activations is None:
                    raise PlantidError("the Grad-CAM layer was not used in the forward pass")
                if activations.ndim != 4:
                    raise PlantidError(f"Grad-CAM needs an N x C x H x W feature map, got shape {tuple(activations.shape)}")
                probs = torch.softmax(logits.detach().float(), dim=1)[0]
                num_classes = logits.shape[1]
                if class_index is None:
                    class_index = int(torch.argmax(probs))
                if not 0 <= class_index < num_classes:
                    raise ValueError(f"class index {class_index} is out of range (0..{num_classes - 1})")
                (grads,) = torch.autograd.grad(logits[0, class_index], activations)
        finally:
            self._local.capturing = False
            self._local.activations = None
        weights = grads.detach().float().mean(dim=(2, 3), keepdim=True)  # 1 x C x 1 x 1
        cam = F.relu((weights * activations.detach().float()).sum(dim=1, keepdim=True))  # 1 x 1 x h x w
        cam = F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        cam = cam.clamp_(min=0.0)  # bilinear interpolation of non-negative values stays >= 0; be exact
        raw_max = float(cam.max())
        heatmap = (cam / raw_max) if raw_max > 0 else torch.zeros_like(cam)
        return GradCamResult(
            heatmap=heatmap.cpu().numpy().astype(np.float32),
            class_index=int(class_index),
            probabilities=probs.cpu().numpy(),
            raw_max=raw_max,
        )


@lru_cache(maxsize=4)
def _colormap_lut(name: str) -> np.ndarray:
    """A 256 x 3 uint8 lookup table for a matplotlib colour map."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    return (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)


def colorize(heatmap: np.ndarray, colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """Float H x W in [0, 1] -> uint8 H x W x 3 through a colour map."""
    index = np.clip(np.nan_to_num(heatmap) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return _colormap_lut(colormap)[index]


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5,
                    colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """Blend a coloured heat-map over a uint8 H x W x 3 photo of the same size.

    The colour's weight grows with the heat (up to `alpha`), so cold regions keep the photo
    visible and hot regions show the colour clearly.
    """
    if image.shape[:2] != heatmap.shape:
        raise ValueError(f"image {image.shape[:2]} and heat-map {heatmap.shape} differ in size")
    colours = colorize(heatmap, colormap).astype(np.float32)
    weight = (alpha * (0.35 + 0.65 * np.clip(heatmap, 0.0, 1.0)))[..., None].astype(np.float32)
    blended = image.astype(np.float32) * (1.0 - weight) + colours * weight
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 H x W x 3 (or H x W) -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()

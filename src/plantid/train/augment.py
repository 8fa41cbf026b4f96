"""Batched photo augmentation that runs on the training device.

Each sample in a batch gets its own random shift, flip, rotation and zoom (folded into one
affine warp per sample, applied with a single `grid_sample`), then brightness/contrast jitter
and cutout. Working on whole batches on the device keeps the data path trivial (uint8 cache ->
device) and fast on both a 2-core CPU and a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from plantid.config import AugmentConfig, ResizePhase


@dataclass(frozen=True)
class AugmentSpec:
    """Magnitudes of each augmentation; zero disables that transform."""

    shift: float = 0.0  # max translation as a fraction of the image side
    rotate_deg: float = 0.0  # max rotation in degrees (either way)
    zoom: float = 0.0  # max relative zoom in or out
    hflip: bool = False
    vflip: bool = False
    transpose: bool = False  # swap rows and columns (with both flips: any quarter turn or mirror)
    brightness: float = 0.0  # max additive change of brightness (images in [0, 1])
    contrast: float = 0.0  # max relative change of contrast
    cutout_prob: float = 0.0  # probability that a sample gets one erased rectangle
    cutout_frac: float = 0.0  # max side of the erased rectangle, as a fraction of the image side
    warp_prob: float = 1.0  # share of samples that get the shift/rotation/zoom warp (flips: all)

    def scaled(self, strength: float) -> "AugmentSpec":
        """The same spec with every magnitude multiplied by `strength` (flips kept as they are)."""
        return replace(
            self,
            shift=self.shift * strength,
            rotate_deg=self.rotate_deg * strength,
            zoom=self.zoom * strength,
            brightness=self.brightness * strength,
            contrast=self.contrast * strength,
            cutout_prob=min(1.0, self.cutout_prob * strength),
            cutout_frac=min(0.9, self.cutout_frac * strength),
        )


PRESETS: dict[str, AugmentSpec] = {
    "none": AugmentSpec(),
    "flip": AugmentSpec(hflip=True, vflip=True),
    # The report's ImageDataGenerator-style recipe: shifts, flips, rotation, zoom, cutout,
    # contrast and brightness. Leaves have no canonical orientation, so both flips are safe.
    "seed": AugmentSpec(
        shift=0.1, rotate_deg=20.0, zoom=0.15, hflip=True, vflip=True,
        brightness=0.15, contrast=0.2, cutout_prob=0.5, cutout_frac=0.3,
    ),
}


class BatchAugment(nn.Module):
    """Augment a float batch N x C x H x W in [0, 1]; returns a new batch of the same shape."""

    def __init__(self, spec: AugmentSpec):
        super().__init__()
        self.spec = spec

    @property
    def is_identity(self) -> bool:
        return self.spec == AugmentSpec()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_identity or x.numel() == 0:
            return x
        x = self._geometric(x)
        x = self._photometric(x)
        x = self._cutout(x)
        return x

    def _uniform(self, n: int, magnitude: float, like: torch.Tensor) -> torch.Tensor:
        return (torch.rand(n, device=like.device, dtype=torch.float32) * 2 - 1) * magnitude

    def _geometric(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if not (s.shift or s.rotate_deg or s.zoom or s.hflip or s.vflip or s.transpose):
            return x
        n = x.shape[0]
        angle = self._uniform(n, math.radians(s.rotate_deg), x)
        scale = 1.0 + self._uniform(n, s.zoom, x)  # >1 zooms out, <1 zooms in (sampling grid)
        fx = torch.ones(n, device=x.device)
        fy = torch.ones(n, device=x.device)
        if s.hflip:
            fx = torch.where(torch.rand(n, device=x.device) < 0.5, -fx, fx)
        if s.vflip:
            fy = torch.where(torch.rand(n, device=x.device) < 0.5, -fy, fy)
        tx = self._uniform(n, 2 * s.shift, x)  # grid units span [-1, 1], so 2x the fraction
        ty = self._uniform(n, 2 * s.shift, x)
        if s.warp_prob < 1.0:  # the others sample exactly at pixel centres: their pixels stay sharp
            warp = torch.rand(n, device=x.device) < s.warp_prob
            angle, tx, ty = angle * warp, tx * warp, ty * warp
            scale = torch.where(warp, scale, torch.ones_like(scale))
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        linear = torch.stack(
            [torch.stack([cos * fx, -sin * fy], dim=1), torch.stack([sin * fx, cos * fy], dim=1)], dim=1
        )  # N x 2 x 2, maps output grid coordinates (x, y) to input ones
        if s.transpose:  # sample (y, x) instead of (x, y) for a random half
            swap = torch.rand(n, device=x.device) < 0.5
            linear = torch.where(swap.view(n, 1, 1), linear.flip(-1), linear)
        theta = torch.cat([linear, torch.stack([tx, ty], dim=1).unsqueeze(-1)], dim=2).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _photometric(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if not (s.brightness or s.contrast):
            return x
        n = x.shape[0]
        shape = (n, 1, 1, 1)
        if s.contrast:
            factor = (1.0 + self._uniform(n, s.contrast, x)).view(shape).to(x.dtype)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * factor + mean
        if s.brightness:
            x = x + self._uniform(n, s.brightness, x).view(shape).to(x.dtype)
        return x.clamp_(0.0, 1.0)

    def _cutout(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if not (s.cutout_prob and s.cutout_frac):
            return x
        n, _, h, w = x.shape
        dev = x.device
        apply = torch.rand(n, device=dev) < s.cutout_prob
        side_h = (torch.rand(n, device=dev) * s.cutout_frac * h).long().clamp(min=1)
        side_w = (torch.rand(n, device=dev) * s.cutout_frac * w).long().clamp(min=1)
        top = (torch.rand(n, device=dev) * (h - side_h + 1)).long()
        left = (torch.rand(n, device=dev) * (w - side_w + 1)).long()
        rows = torch.arange(h, device=dev).view(1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, w)
        inside = (
            (rows >= top.view(n, 1, 1)) & (rows < (top + side_h).view(n, 1, 1))
            & (cols >= left.view(n, 1, 1)) & (cols < (left + side_w).view(n, 1, 1))
            & apply.view(n, 1, 1)
        )
        fill = x.mean(dim=(2, 3), keepdim=True)  # erase with the sample's mean colour
        return torch.where(inside.unsqueeze(1), fill.expand_as(x), x)


def build_augment(cfg: AugmentConfig) -> BatchAugment:
    """The training augmentation for a config: a named preset scaled by `strength`."""
    spec = PRESETS[cfg.preset].scaled(cfg.strength)
    vflip = spec.vflip if cfg.vflip is None else cfg.vflip
    return BatchAugment(replace(spec, warp_prob=cfg.warp_prob, transpose=spec.transpose or cfg.transpose, vflip=vflip))


def train_image_size(phases: Sequence[ResizePhase], final_size: int, epoch: int) -> int:
    """The image size training uses in `epoch` (0-based) under progressive resizing.

    Each phase trains its `epochs` at its `image_size`; after the last phase, `final_size`.
    Small images make the early epochs cheap; the last epochs at the final size let the
    network settle at the resolution it is evaluated and deployed at. A phase never trains
    above `final_size`, so lowering data.image_size keeps a recipe's phases sensible.
    """
    start = 0
    for phase in phases:
        if epoch < start + phase.epochs:
            return min(phase.image_size, final_size)
        start += phase.epochs
    return final_size


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a float N x C x H x W batch to size x size (antialiased when shrinking); a no-op at that size."""
    if x.shape[-2:] == (size, size):
        return x
    shrink = size < min(x.shape[-2:])
    # interpolate keeps a channels_last batch channels_last
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=shrink, align_corners=False).clamp_(0.0, 1.0)

"""Test-time augmentation: predict on a few deterministic views of each image and average.

The report's TTA: horizontal and vertical flips, +-10 degree rotations and small shifts,
softmax probabilities averaged (+0.4 points there). Views are named so a user can pick them, and
a few sets are named too:

* ``flips`` (the ``default`` unless a run's config sets ``eval.tta``): the photo, its two mirror
  images and its half turn. They move pixels without resampling them and are the views
  training's flips already showed the model;
  on six `cpu-default`-style checkpoints they gained 1.0 point of test and 1.6 of val accuracy on
  average and never lost, where the report's set (whose rotated and shifted views are softened by
  bilinear resampling) gained 0.3 and 1.1 (docs/benchmarks.md, "Test-time views").
* ``report``: the report's six views.
* ``dihedral``: all eight symmetries of the square, for models trained with
  ``augment.transpose=true``; a model trained without it has never seen quarter turns.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

View = Callable[[torch.Tensor], torch.Tensor]  # one per name in plantid.config.VIEW_NAMES


def _affine(x: torch.Tensor, angle_deg: float = 0.0, tx: float = 0.0, ty: float = 0.0) -> torch.Tensor:
    a = math.radians(angle_deg)
    theta = torch.tensor([[math.cos(a), -math.sin(a), tx], [math.sin(a), math.cos(a), ty]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


VIEWS: dict[str, View] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot180": lambda x: x.flip((-2, -1)),
    "transpose": lambda x: x.transpose(-2, -1),
    "rot90": lambda x: x.rot90(1, (-2, -1)),  # a quarter turn counter-clockwise
    "rot270": lambda x: x.rot90(-1, (-2, -1)),
    "antitranspose": lambda x: x.flip((-2, -1)).transpose(-2, -1),
    "rot+10": lambda x: _affine(x, 10.0),
    "rot-10": lambda x: _affine(x, -10.0),
    "shift": lambda x: _affine(x, tx=0.1, ty=0.1),  # 5% of the side right and down
    "shift-": lambda x: _affine(x, tx=-0.1, ty=-0.1),
}


@torch.no_grad()
def predict_proba(model: torch.nn.Module, x: torch.Tensor, views: tuple[str, ...] = ()) -> torch.Tensor:
    """Softmax probabilities for a float [0, 1] NCHW batch, averaged over the TTA views (if any)."""
    if not views:
        return F.softmax(model(x).float(), dim=1)
    total = torch.zeros(())
    for name in views:
        total = total + F.softmax(model(VIEWS[name](x)).float(), dim=1)
    return total / len(views)

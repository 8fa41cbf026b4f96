"""Loading a trained run for inference, safely (weights_only) and without pretrained sources."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from plantid.config import RunConfig
from plantid.errors import PlantidError
from plantid.models import Classifier, build_model
from plantid.runfolder import find_checkpoint

MODEL_PREFIX = "model."


@dataclass
class TrainedModel:
    """A run's classifier in eval mode on the CPU, with what is needed to use it."""

    model: Classifier
    classes: list[str]
    config: RunConfig
    checkpoint: Path

    @property
    def image_size(self) -> int:
        return self.config.data.image_size

    @property
    def model_id(self) -> str:
        """A short human id: run folder name, backbone and checkpoint name."""
        return f"{self.checkpoint.parent.name}:{self.config.model.name}:{self.checkpoint.stem}"


def load_trained(run_dir: Path) -> TrainedModel:
    """Rebuild a run's Classifier from its checkpoint (loaded with weights_only=True).

    The architecture is rebuilt from the saved config with pretrained weights disabled, so
    inference needs neither the network nor the weight packages.
    """
    path = find_checkpoint(Path(run_dir))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or unsafe pickle: all refused the same way
        raise PlantidError(f"{path}: cannot load checkpoint ({type(exc).__name__}); retrain or resume the run") from None
    hparams = ckpt.get("hyper_parameters") or {}
    if "config" not in hparams or "classes" not in hparams:
        raise PlantidError(f"{path}: not a plantid checkpoint (no config/classes inside)")
    config = RunConfig.model_validate(hparams["config"])
    classes = list(hparams["classes"])
    model_cfg = config.model.model_copy(update={"weights": "none"})
    model = build_model(model_cfg, len(classes), config.data.image_size)
    state = {k[len(MODEL_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(MODEL_PREFIX)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PlantidError(f"{path}: checkpoint does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.eval()
    return TrainedModel(model=model, classes=classes, config=config, checkpoint=path)


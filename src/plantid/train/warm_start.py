"""Warm start: a run that begins from an earlier run's weights instead of ImageNet's (`plantid train --from RUN`).

After a review has corrected labels or new photos were added, the network already knows the
species; retraining it from its pretrained backbone throws that away. A warm-started run loads
every weight of the earlier run's checkpoint (best.ckpt, read with weights_only=True); the
classifier's rows follow the class names, so classes both runs know keep their row, a new
class gets the freshly initialised row, and a class no longer in the data is dropped. The
network must be the same architecture (model.name, head, members).

By default it trains on a shorter plan, `WARM_SHARE` of the recipe's (half its epochs, or, when
epochs are planned, half its time budget and half its epoch cap: `train.plan_share`), every epoch
at the final size, at `WARM_LR` of the recipe's learning rate; a setting given on the command line
(train.epochs, train.budget_minutes, train.resize_phases, optim.lr) keeps its value.
Without its own split.csv, the run grows the earlier run's split (plantid.data.split.grow_split),
so photos the earlier network trained on never reach the new test split.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

from plantid.config import RunConfig
from plantid.errors import PlantidError
from plantid.models import members_of
from plantid.runfolder import RunFolder, find_checkpoint

log = logging.getLogger("plantid")

WARM_SHARE = 0.5  # of the recipe's epochs (or budget) a warm-started run trains by default
WARM_LR = 0.2  # of the recipe's learning rate: fine-tuning a trained network, not a fresh head
MODEL_PREFIX = "model."


def parent_manifest(cfg: RunConfig) -> Path | None:
    """The split.csv of the run `cfg` starts from, which a warm-started run grows (None for a fresh run)."""
    if cfg.train.init_from is None:
        return None
    manifest = RunFolder(cfg.train.init_from).manifest
    return manifest if manifest.is_file() else None


def shorter_plan(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """`cfg` for a run that starts from a trained network, each part unless the overrides set it:
    WARM_SHARE of its epochs (or of its budget and epoch cap for planned epochs: train.epochs,
    train.budget_minutes); every epoch at the final size (train.resize_phases: the network already
    learned at it, and a smaller first phase cost the earlier run's accuracy back); and WARM_LR of
    the learning rate (optim.lr: the recipe's rate, meant for a fresh head, scattered a trained
    network to 70% val in its first epoch)."""
    keys = {item.split("=", 1)[0].strip() for item in overrides}
    t, optim = cfg.train, cfg.optim
    train_update: dict = {}
    if not keys & {"train.epochs", "train.budget_minutes"}:
        if t.epochs == "auto":
            train_update["plan_share"] = WARM_SHARE
        else:
            train_update["epochs"] = max(1, math.ceil(t.epochs * WARM_SHARE))
    if "train.resize_phases" not in keys:
        train_update["resize_phases"] = []
    update: dict = {"train": t.model_copy(update=train_update)}
    if "optim.lr" not in keys:
        update["optim"] = optim.model_copy(update={"lr": optim.lr * WARM_LR})
    return cfg.model_copy(update=update)


def load_parent_weights(model: nn.Module, cfg: RunConfig, classes: list[str]) -> dict[str, int]:
    """Copy the weights of `cfg.train.init_from`'s checkpoint into `model` (built for `classes`).

    Tensors whose shape differs only in their first dimension, which has one row per class in
    both networks, are the classifier's: their rows are matched by class name. Anything else
    that does not fit means another architecture: a PlantidError naming the earlier run.
    Returns counts for the log: classes kept, new, dropped.
    """
    parent = Path(cfg.train.init_from)
    checkpoint = find_checkpoint(parent)
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated or unsafe: refused the same way
        raise PlantidError(f"{checkpoint}: cannot start from it ({type(exc).__name__}); pick another --from run") from None
    hparams = ckpt.get("hyper_parameters") or {}
    old_classes = list(hparams.get("classes") or [])
    old_model = (hparams.get("config") or {}).get("model") or {}
    ours = cfg.model.model_dump(mode="json")
    differs = [k for k in ("name", "head", "members") if old_model.get(k) != ours.get(k)]
    if not old_classes or differs:
        what = f"{differs[0]} {old_model.get(differs[0])!r} against {ours.get(differs[0])!r}" if differs else "no classes"
        raise PlantidError(f"{parent}: cannot start from it: another network ({what}); train with that run's "
                           "recipe, or drop --from")
    old_state = {k[len(MODEL_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(MODEL_PREFIX)}
    rows = {c: i for i, c in enumerate(old_classes)}
    per_class = class_row_keys(model, len(classes))
    state = model.state_dict()
    for key, fresh in state.items():
        old = old_state.get(key)
        if old is None:
            raise PlantidError(f"{parent}: cannot start from it: its checkpoint lacks {key}; train with that run's recipe")
        if key in per_class and old.shape[1:] == fresh.shape[1:] and old.shape[0] == len(old_classes):
            merged = fresh.clone()
            for i, name in enumerate(classes):
                if name in rows:
                    merged[i] = old[rows[name]]
            state[key] = merged
        elif old.shape == fresh.shape:
            state[key] = old
        else:
            raise PlantidError(f"{parent}: cannot start from it: {key} is {tuple(old.shape)} there and "
                               f"{tuple(fresh.shape)} here; train with that run's recipe")
    model.load_state_dict(state)
    kept = sum(1 for c in classes if c in rows)
    return {"kept": kept, "new": len(classes) - kept, "dropped": sum(1 for c in old_classes if c not in classes)}


def class_row_keys(model: nn.Module, num_classes: int) -> set[str]:
    """State-dict keys of the classifier layer(s): per network, the last Linear or Conv2d with one
    output per class (a timm model's classifier, the seed head's last dense layer), weight and bias."""
    networks = members_of(model)
    keys: set[str] = set()
    for index, network in enumerate(networks):
        prefix = f"members.{index}." if len(networks) > 1 else ""
        last = None
        for name, module in network.named_modules():
            outputs = getattr(module, "out_features", getattr(module, "out_channels", None))
            if isinstance(module, (nn.Linear, nn.Conv2d)) and outputs == num_classes:
                last = name
        if last is not None:
            keys |= {f"{prefix}{last}.{p}" for p, _ in network.get_submodule(last).named_parameters(recurse=False)}
    return keys

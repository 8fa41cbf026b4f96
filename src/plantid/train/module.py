"""The LightningModule: one place that says what a training, validation and test step is.

Batches arrive as uint8 N x H x W x 3 straight from the cache; on the device they become float
[0, 1] N x 3 x H x W; training steps augment them and optionally CutMix/MixUp them, and all go
through the Classifier, which normalizes internally. An ensemble (`model.members`) trains each
member on its own batch with its own loss. Lightning owns the loop, devices and precision.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import seed_everything
from timm.data import Mixup
from torchmetrics.classification import MulticlassAccuracy

from plantid.config import RunConfig
from plantid.errors import PlantidError
from plantid.models import build_model, members_of
from plantid.data.tensors import to_unit_float
from plantid.train.augment import build_augment, resize_batch, train_image_size
from plantid.train.depthwise import use_small_map_depthwise
from plantid.train.losses import build_loss
from plantid.train.optim import build_optimizer
from plantid.train.schedules import build_scheduler, scheduler_at_step


class PlantClassifierModule(L.LightningModule):
    """Trains a plantid Classifier. Hyper-parameters (config, classes, counts) travel in checkpoints."""

    def __init__(self, config: dict[str, Any], classes: list[str], class_counts: list[int]):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = RunConfig.model_validate(config)
        self.classes = list(classes)
        num_classes = len(self.classes)
        if self.cfg.train.resize_phases and self.cfg.model.name.strip() == "simple_cnn":
            raise PlantidError("simple_cnn's flatten layer fixes its input size to data.image_size: drop "
                               "train.resize_phases, or use a model with global pooling (inception, timm models)")
        self.model = build_model(self.cfg.model, num_classes, self.cfg.data.image_size)
        if self.cfg.train.small_map_depthwise and not self.cfg.train.compile:
            use_small_map_depthwise(self.model)  # CPU training only; compile traces the plain layers
        self.augment = build_augment(self.cfg.augment)
        self.loss_fn = build_loss(self.cfg.loss, class_counts)
        aug = self.cfg.augment
        self.mixer = (
            Mixup(mixup_alpha=aug.mixup_alpha, cutmix_alpha=aug.cutmix_alpha, prob=aug.mix_prob,
                  label_smoothing=self.cfg.loss.label_smoothing, num_classes=num_classes)
            if aug.mix_prob > 0 and (aug.mixup_alpha > 0 or aug.cutmix_alpha > 0)
            else None
        )
        # Labels come from the manifest's class index, so the metrics' input checks are skipped: they
        # call torch.unique on every update, which on a GPU waits for the step's forward to finish.
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # -- data on the device -------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        channels_last = self.cfg.model.channels_last
        if images.ndim == 5:  # an ensemble's training batch: one batch per member
            return tuple(to_unit_float(view, channels_last=channels_last) for view in images), labels.unbind(0)
        return to_unit_float(images, channels_last=channels_last), labels

    def _seed_step(self) -> None:
        # Each optimizer step draws its augmentation, mixing and dropout randomness from
        # (seed, step, rank) alone, so a run resumed from last.ckpt replays exactly what an
        # uninterrupted run would have done, whatever order Lightning runs its hooks in.
        step_seed = (self.cfg.train.seed * 1_000_003 + self.global_step * 7919 + self.global_rank) % (2**32)
        seed_everything(step_seed, verbose=False)

    # -- steps ------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, labels = batch
        self._seed_step()
        size = train_image_size(self.cfg.train.resize_phases, self.cfg.data.image_size, self.current_epoch)
        members = members_of(self.model)
        # An ensemble's members each get their own batch (PlantDataModule) and augmentation draws.
        views, member_labels = (x, labels) if isinstance(x, tuple) else ([x] * len(members), [labels] * len(members))
        loss = views[0].new_zeros(())
        for member, images, y in zip(members, views, member_labels):
            view, target = self.augment(resize_batch(images, size)), y
            if self.mixer is not None and view.shape[0] % 2 == 0:
                view, target = self.mixer(view, y)
            logits = member(view)
            loss = loss + self.loss_fn(logits, target) + member.regularization()
            self.train_acc(logits.detach(), y)
        batch_size = len(member_labels[0])
        self.log("train_loss", loss / len(members), on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch_size)
        return loss

    def _evaluate(self, batch: Any, stage: str, metric: MulticlassAccuracy) -> None:
        x, labels = batch
        logits = self.model(x)
        loss = self.loss_fn(logits, labels)
        metric(logits, labels)
        self.log(f"{stage}_loss", loss, on_epoch=True, prog_bar=stage == "val", batch_size=x.shape[0], sync_dist=True)
        self.log(f"{stage}_acc", metric, on_epoch=True, prog_bar=stage == "val", batch_size=x.shape[0])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    # -- optimisation -------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        opt_cfg = self.cfg.optim
        optimizer = build_optimizer(self.model, opt_cfg)
        epochs = self.trainer.max_epochs or self.cfg.train.epochs
        steps_per_epoch = max(1, int(np.ceil(self.trainer.estimated_stepping_batches / max(1, epochs))))
        scheduler = build_scheduler(optimizer, opt_cfg, epochs, steps_per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def reschedule(self, total_steps: int, steps_per_epoch: int) -> None:
        """Carry on with a schedule over `total_steps` optimizer steps from the step reached, for a
        run whose remaining epochs changed length (plantid.train.budget_guard re-plans them)."""
        config = self.trainer.lr_scheduler_configs[0]
        config.scheduler = scheduler_at_step(config.scheduler.optimizer, self.cfg.optim, total_steps, steps_per_epoch,
                                             self.global_step)

"""Training speed as a metric: photos per second of each epoch's training steps.

Lightning's own ThroughputMonitor logs per step and times validation batches under the training
step counter; plantid's curves and reports are per epoch, so this one callback logs one number
per epoch (`train_images_per_s` in metrics.csv and TensorBoard), validation excluded, and keeps
the run's totals for train_summary.json. Beside it, `elapsed_s`: the wall seconds from the start
of training to the end of each epoch, its validation included, so that the time a run took to
reach a val accuracy can be read off metrics.csv (a resumed run counts from its restart).
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


def _photos_in(batch: Any) -> int:
    """Photos in one training batch: (images, labels), or an ensemble's (views, per-member labels)."""
    labels = batch[1]
    return len(labels[0]) if isinstance(labels, (tuple, list)) else len(labels)


class EpochThroughput(L.Callback):
    """Logs each epoch's training photos per second; `images` and `seconds` total the run's.

    Under DDP every process trains an equal shard at the same time, so the photos of one process
    times the world size is the whole run's rate.
    """

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._epoch_images = 0
        self._started = 0.0
        self._last_batch_end = 0.0
        self._training_started = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training_started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_images = 0
        self._started = self._last_batch_end = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if batch_idx + 1 >= trainer.num_training_batches and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # the epoch's last step really finished
        self._epoch_images += _photos_in(batch) * trainer.world_size
        self._last_batch_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("elapsed_s", time.perf_counter() - self._training_started, on_step=False, on_epoch=True)
        seconds = self._last_batch_end - self._started
        if self._epoch_images == 0 or seconds <= 0:
            return
        self.images += self._epoch_images
        self.seconds += seconds
        pl_module.log("train_images_per_s", self._epoch_images / seconds, on_step=False, on_epoch=True)

    @property
    def images_per_second(self) -> float | None:
        """Training photos per second over this process's epochs (None before the first)."""
        return round(self.images / self.seconds, 1) if self.seconds > 0 else None

"""Keep a run inside its time budget when the machine turns out slower than the plan measured.

The plan (plantid.train.plan) fixes the epochs from a throughput probe at the start. When another
program takes the cores later, or the probe met a machine that was busy in another way, the
epochs take longer than planned and the run would end past the budget the user gave. At the end
of each epoch this callback estimates the next one from the last one (its training part scaled
by the square of the image sizes, for progressive resizing; validation always runs at the final
size) and, when it would end more than a tenth past the budget, stops the run there with one
warning: the best checkpoint so far is the run's model, as always.
"""

from __future__ import annotations

import logging
import time

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

# An overrun the guard lets pass, as a share of the budget: one epoch dropped costs more than a
# tenth's overrun, and the estimate (pixels, not measured speed) is rough.
TOLERANCE = 0.1


class BudgetGuard(Callback):
    """Stop at an epoch's end when the next epoch would end more than `seconds` after training began
    (and a tenth of the budget: `TOLERANCE`).

    `seconds` is what the budget leaves for the epochs once the plan's probe has run (the same
    account the plan keeps); `epoch_sizes` is the image size of each planned epoch, to scale the
    estimate when the next epoch trains at a larger size; `budget_minutes` words the warning.
    """

    def __init__(self, seconds: float, epoch_sizes: list[int], budget_minutes: float) -> None:
        self.seconds = seconds
        self.epoch_sizes = epoch_sizes
        self.budget_minutes = budget_minutes
        self.deadline: float | None = None
        self.epoch_started: float | None = None
        self.validation_started: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.deadline = time.perf_counter() + self.seconds + TOLERANCE * 60 * self.budget_minutes

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_started = time.perf_counter()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validation_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch, planned = trainer.current_epoch, len(self.epoch_sizes)
        if self.deadline is None or self.epoch_started is None or epoch + 1 >= planned:
            return  # the last epoch: nothing left to skip
        now = time.perf_counter()
        validated = self.validation_started is not None and self.validation_started >= self.epoch_started
        split = self.validation_started if validated else now
        growth = (self.epoch_sizes[epoch + 1] / self.epoch_sizes[epoch]) ** 2
        next_epoch = (split - self.epoch_started) * growth + (now - split)
        if now + next_epoch <= self.deadline:
            return
        trainer.should_stop = True
        log.warning(
            "stopping after epoch %d of %d to stay inside the %g-minute budget: this machine trained more slowly "
            "than the plan measured at the start (another program using the cores?); the best epoch so far is "
            "the model. Give it more time with train.budget_minutes=...",
            epoch + 1, planned, self.budget_minutes,
        )

"""Keep a run's epochs on its time budget when the machine turns out faster or slower than planned.

The plan (plantid.train.plan) fixes the epochs, and the share of the photos each trains on, from
a throughput probe of a few seconds at the start. A probe that met a busy moment (another run
starting, its photos being decoded) or a machine that another program takes later leaves the
epochs shorter or longer than the budget. At the end of each epoch this callback measures the
epochs so far (seconds per training batch, scaled by the square of the image size for
progressive resizing, pooled over every epoch so that one noisy epoch does not swing the plan;
validation, which always runs at the final size) and re-plans how many
batches each remaining epoch trains on, so the run ends at `AIM` of the budget: at most every
photo, at least one batch. The learning-rate schedule is rebuilt over the new number of steps
from the step reached (`PlantClassifierModule.reschedule`). When even one batch an epoch would
end more than a tenth past the budget, the run stops there with one warning: the best
checkpoint so far is the run's model, as always.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

# An overrun the guard lets pass, as a share of the budget: one epoch dropped costs more than a
# tenth's overrun, and the estimate (pixels, not measured speed) is rough.
TOLERANCE = 0.1
# The share of the budget a re-plan fills: the measured epochs leave little to guess, and the
# last epoch's noise stays inside the budget.
AIM = 0.95
# A re-plan that changes the batches per epoch by less than this share is not worth a new schedule.
MIN_CHANGE = 0.1


def batches_per_epoch(seconds_left: float, batch_seconds: float, validation_seconds: float,
                      growths: list[float], most: int) -> int:
    """The training batches each remaining epoch may take so they all end within `seconds_left`:
    epoch j costs batches x `batch_seconds` x `growths[j]` (its pixels over the measured epoch's)
    plus `validation_seconds`; between 1 and `most` (every photo)."""
    room = seconds_left - len(growths) * validation_seconds
    per_batch = batch_seconds * sum(growths)
    if per_batch <= 0:
        return most
    return int(max(1, min(most, math.floor(room / per_batch))))


class EpochClock:
    """The epochs' measured seconds, pooled: a training batch's seconds at any size (the pixels'
    ratio to the size they were measured at) and a validation's seconds, averaged over every epoch
    so far. One epoch alone swung a plan of a few batches back and forth (4 -> 7 -> 4 of 7 on a
    busy machine), each swing a new schedule."""

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self.pixel_batches = 0.0  # batches x image side squared, over every epoch so far
        self.validation_seconds = 0.0
        self.validations = 0

    def add(self, batches: int, size: int, train_seconds: float, validation_seconds: float | None) -> None:
        """One finished epoch: `batches` training batches at `size` px in `train_seconds`, then its
        validation (None: the epoch had none)."""
        self.train_seconds += train_seconds
        self.pixel_batches += batches * size * size
        if validation_seconds is not None:
            self.validation_seconds += validation_seconds
            self.validations += 1

    def batch_seconds(self, size: int) -> float:
        """Seconds of one training batch at `size` px, from every epoch so far."""
        return self.train_seconds / max(self.pixel_batches, 1e-9) * size * size

    def validation(self) -> float:
        """Seconds of one validation, from every epoch so far (0 when none ran)."""
        return self.validation_seconds / self.validations if self.validations else 0.0


class BudgetGuard(Callback):
    """Re-plan the remaining epochs' batches at each epoch's end to end at `AIM` of the budget, and
    stop when even one batch an epoch would end more than `TOLERANCE` past it.

    `seconds` is what the budget leaves for the epochs once the plan's probe has run (the same
    account the plan keeps); `epoch_sizes` is the image size of each planned epoch; `budget_minutes`
    words the messages. The batches chosen travel in last.ckpt: a resumed run (which has no budget
    account left, so no guard) trains its remaining epochs on them (plantid.train.run).
    """

    def __init__(self, seconds: float, epoch_sizes: list[int], budget_minutes: float) -> None:
        self.seconds = seconds
        self.epoch_sizes = epoch_sizes
        self.budget_minutes = budget_minutes
        self.started: float | None = None
        self.epoch_started: float | None = None
        self.validation_started: float | None = None
        self.batches: int | None = None  # the re-planned training batches per epoch
        self.clock = EpochClock()

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_started = time.perf_counter()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validation_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch, planned = trainer.current_epoch, len(self.epoch_sizes)
        if self.started is None or self.epoch_started is None or epoch + 1 >= planned:
            return  # the last epoch: nothing left to plan
        now = time.perf_counter()
        validated = self.validation_started is not None and self.validation_started >= self.epoch_started
        split = self.validation_started if validated else now
        batches = max(1, int(trainer.num_training_batches))
        size = self.epoch_sizes[epoch]
        self.clock.add(batches, size, split - self.epoch_started, now - split if validated else None)
        batch_seconds = self.clock.batch_seconds(size)
        validation_seconds = self.clock.validation()
        growths = [(later / size) ** 2 for later in self.epoch_sizes[epoch + 1:]]
        budget = 60 * self.budget_minutes
        aim_left = self.started + self.seconds - (1.0 - AIM) * budget - now
        most = _all_batches(trainer)
        chosen = batches_per_epoch(aim_left, batch_seconds, validation_seconds, growths, most)
        deadline = self.started + self.seconds + TOLERANCE * budget
        # every process of a multi-device run takes the first one's decision, so all train the same batches
        chosen = trainer.strategy.broadcast(chosen, src=0)
        if abs(chosen - batches) >= MIN_CHANGE * batches or (chosen == most and batches < most):
            self._replan(trainer, pl_module, chosen, len(growths), most)
            batches = chosen
        over = now + batches * batch_seconds * growths[0] + validation_seconds > deadline
        if not trainer.strategy.broadcast(over, src=0):
            return
        trainer.should_stop = True
        log.warning(
            "stopping after epoch %d of %d to stay inside the %g-minute budget: this machine trained more slowly "
            "than the plan measured at the start (another program using the cores?); the best epoch so far is "
            "the model. Give it more time with train.budget_minutes=...",
            epoch + 1, planned, self.budget_minutes,
        )

    def _replan(self, trainer: L.Trainer, pl_module: L.LightningModule, batches: int, epochs_left: int,
                most: int) -> None:
        """Train the remaining epochs on `batches` batches each, the schedule stretched to match."""
        before = int(trainer.num_training_batches)
        trainer.limit_train_batches = batches
        self.batches = batches
        accumulate = max(1, int(trainer.accumulate_grad_batches))
        steps_per_epoch = math.ceil(batches / accumulate)
        pl_module.reschedule(pl_module.global_step + epochs_left * steps_per_epoch, steps_per_epoch)
        left = "the last epoch trains" if epochs_left == 1 else f"the remaining {epochs_left} epochs train"
        log.info("re-planned to the %g-minute budget from the epochs measured so far: %s on %d of %d batches%s "
                 "(were %d)", self.budget_minutes, left, batches, most, " each" if epochs_left != 1 else "", before)


def _all_batches(trainer: L.Trainer) -> int:
    """The training batches of one pass over every photo (the train dataloader's length)."""
    loaders = trainer.train_dataloader
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    try:
        return max(1, len(loader))
    except TypeError:  # an unsized loader: never more than now
        return max(1, int(trainer.num_training_batches))

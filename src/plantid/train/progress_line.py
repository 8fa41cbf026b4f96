"""The training progress as one line: stage, epoch k of n (counted from 1), the current size, the
latest losses and accuracy, and the time left for the whole run (every epoch still to come, at
its own size, and its validation), e.g.

    training  epoch 3 of 9 · 128 px · batch 40/65 · loss 0.412 · val acc 86.1% · 3:05 left

On a terminal the line is redrawn in place; in a log (not a terminal) one line is written per
epoch. It replaces Lightning's progress bar, whose metric list carries the logger's `v_num`, and
whose "Epoch 0/26" counts from zero to the last index.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import lightning as L


def format_seconds(seconds: float) -> str:
    """'1:05:03', '3:05' or '0:42'."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressLine(L.Callback):
    """One line of progress for the whole run (see the module docstring).

    `epoch_sizes` is the image size of each epoch (the resize phases, then the final size): the
    time left scales each later epoch by its pixels relative to the epochs measured so far.
    """

    def __init__(self, epoch_sizes: list[int], stream: TextIO | None = None):
        self.epoch_sizes = list(epoch_sizes)
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._epoch_started = 0.0
        self._pixel_seconds = 0.0  # seconds per (image pixels) of the epochs finished, validation included
        self._done_pixels = 0.0
        self._stage = "training"
        self._width = 0

    # ---- what the line says

    def _size(self, epoch: int) -> int:
        return self.epoch_sizes[min(epoch, len(self.epoch_sizes) - 1)] if self.epoch_sizes else 0

    def seconds_left(self, epoch: int, done_share: float, finished: bool = False) -> float | None:
        """Estimated seconds to the end of the run, `done_share` of epoch `epoch` (0-based) being done
        (all of it when `finished`)."""
        if finished:
            rate = self._pixel_seconds / self._done_pixels if self._done_pixels else None
            return None if rate is None else sum(rate * self._size(e) ** 2 for e in range(epoch + 1, len(self.epoch_sizes)))
        elapsed = time.perf_counter() - self._epoch_started
        if self._done_pixels > 0:
            rate = self._pixel_seconds / self._done_pixels
        elif done_share > 0:
            rate = elapsed / done_share / max(1, self._size(epoch) ** 2)
        else:
            return None
        this_epoch = max(0.0, rate * self._size(epoch) ** 2 - elapsed)
        later = sum(rate * self._size(e) ** 2 for e in range(epoch + 1, len(self.epoch_sizes)))
        return this_epoch + later

    def line(self, trainer: L.Trainer, batch: int | None = None, total: int | None = None,
             finished: bool = False) -> str:
        """The progress line for the trainer's state now."""
        epoch = trainer.current_epoch
        parts = [f"{self._stage:<10}epoch {epoch + 1} of {trainer.max_epochs}", f"{self._size(epoch)} px"]
        if batch is not None and total:
            parts.append(f"batch {batch}/{total}")
        metrics = trainer.callback_metrics
        for key, label, as_pct in (("train_loss_step", "loss", False), ("val_loss", "val loss", False),
                                   ("val_acc", "val acc", True)):
            value = metrics.get(key)
            if value is not None:
                number = float(value)
                parts.append(f"{label} {100 * number:.1f}%" if as_pct else f"{label} {number:.3f}")
        share = (batch or 0) / total if total else 0.0
        left = self.seconds_left(epoch, share, finished)
        parts.append("time left: measuring" if left is None else f"{format_seconds(left)} left")
        return " · ".join(parts)

    def _show(self, text: str, final: bool = False) -> None:
        if self.live:
            padded = text.ljust(self._width)
            self._width = len(text)
            self.stream.write("\r" + padded + ("\n" if final else ""))
            self.stream.flush()
        elif final:
            self.stream.write(text + "\n")
            self.stream.flush()

    # ---- Lightning hooks

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stage = "training"
        self._epoch_started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.is_global_zero and self.live:
            self._show(self.line(trainer, batch_idx + 1, int(trainer.num_training_batches)))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stage = "validating" if not trainer.sanity_checking else self._stage

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning validates before this hook, so the epoch's time includes its validation
        self._pixel_seconds += time.perf_counter() - self._epoch_started
        self._done_pixels += self._size(trainer.current_epoch) ** 2
        self._stage = "training"
        if trainer.is_global_zero:
            self._epoch_started = time.perf_counter()
            self._show(self.line(trainer, finished=True), final=True)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.stream.write("testing the best checkpoint on the test split\n")
            self.stream.flush()


def epoch_sizes(epochs: int, phases: list[Any], final_size: int) -> list[int]:
    """The image size of each epoch: the resize phases in order (never above the final size), then the final size."""
    sizes = [min(int(p.image_size), final_size) for p in phases for _ in range(int(p.epochs))]
    return (sizes + [final_size] * epochs)[:epochs]

"""Stop unpromising trials early: report each epoch's val accuracy to Optuna and obey its pruner.

optuna-integration's PyTorchLightningPruningCallback does the same, but it is another
dependency for these few lines, and it stops the trainer and raises only after `fit` returns,
which would still test the pruned run; raising here skips that.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import optuna

MONITOR = "val_acc"  # what trials are selected on: validation accuracy, never test


class PruneOnValAcc(L.Callback):
    """Lightning callback: `trial.report(val_acc, epoch)` after each validation; raise
    `optuna.TrialPruned` (out of `trainer.fit`) when the study's pruner says stop.

    For one training process (train.devices=1): under DDP each rank would report.
    """

    def __init__(self, trial: optuna.trial.Trial, monitor: str = MONITOR) -> None:
        self.trial = trial
        self.monitor = monitor

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        """Report this epoch's score; prune if the trial is behind the others at this epoch."""
        if trainer.sanity_checking:
            return
        score = trainer.callback_metrics.get(self.monitor)
        if score is None:
            return
        epoch = trainer.current_epoch
        self.trial.report(float(score), step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.monitor} {float(score):.4f} at epoch {epoch} is below the pruner's bar")

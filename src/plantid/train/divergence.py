"""Stop a training whose loss or weights stop being finite numbers (a diverged run).

A learning rate far too large (optim.lr=inf, or 10 where 1e-3 was meant) turns the weights into
NaN within a step; Lightning would train on, save NaN checkpoints, and a trust file with NaN
in it would follow, so every later prediction is NaN. The check is kept on the device during the
epoch (no synchronisation per step) and read once before each validation and at the end, so a
diverged epoch never becomes a checkpoint.
"""

from __future__ import annotations

import lightning as L
import torch

from plantid.errors import PlantidError


class DivergenceGuard(L.Callback):
    """Raise a one-line PlantidError when the training loss or a weight is NaN or infinite."""

    def __init__(self) -> None:
        self.bad_steps: torch.Tensor | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        bad = (~torch.isfinite(loss.detach())).any()
        self.bad_steps = bad if self.bad_steps is None else self.bad_steps | bad

    def _check(self, trainer, pl_module) -> None:
        loss_bad = bool(self.bad_steps) if self.bad_steps is not None else False
        weights_bad = any(not bool(torch.isfinite(p.detach()).all()) for p in pl_module.parameters())
        if loss_bad or weights_bad:
            what = "the training loss" if loss_bad else "the model's weights"
            raise PlantidError(
                f"training diverged in epoch {trainer.current_epoch + 1}: {what} became NaN or infinite, so this "
                "epoch was not saved and no trust file was fitted; lower optim.lr (e.g. optim.lr=1e-3) and train "
                "again into a new folder")

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._check(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module)

"""Training: augmentation, losses, LR schedules, the LightningModule and run assembly."""

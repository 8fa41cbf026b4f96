"""The linear-probe head start (model.head_init=probe): the fit itself, and a real run starting from it."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from plantid.config import load_config
from plantid.errors import PlantidError
from plantid.train.head_init import fit_linear_head
from plantid.train.run import train_run


def test_fit_linear_head_separates_blobs_and_smoothing_tempers_its_confidence() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = 4 * torch.randn(3, 16, generator=generator)
    labels = torch.arange(300) % 3
    features = centres[labels] + torch.randn(300, 16, generator=generator)
    sharp = fit_linear_head(features, labels, 3)
    smooth = fit_linear_head(features, labels, 3, label_smoothing=0.3)
    for weight, bias in (sharp, smooth):
        assert weight.shape == (3, 16) and bias.shape == (3,)
        assert ((features @ weight.T + bias).argmax(1) == labels).float().mean() > 0.95
    top = [torch.softmax(features @ w.T + b, 1).max(1).values.mean() for w, b in (sharp, smooth)]
    assert top[1] < top[0]


class TrainAccuracyAtStart(L.Callback):
    """Accuracy of the model on its unaugmented training photos when training starts."""

    accuracy: float | None = None

    @torch.no_grad()
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.eval()
        right = total = 0
        for images, y in trainer.datamodule.dataloader_for("train"):
            x, y = pl_module.on_after_batch_transfer((images, y), 0)
            right += int((pl_module(x).argmax(1) == y).sum())
            total += len(y)
        pl_module.train()
        self.accuracy = right / total


@pytest.mark.parametrize("head_init", ["random", "probe"])
def test_a_run_starts_from_the_probe_head_only_when_asked(tmp_path: Path, make_image_folder, head_init: str) -> None:
    photos = make_image_folder(tmp_path / "photos", per_class=10)
    cfg = load_config("cpu-default", [
        f"data.root={photos}", "data.image_size=32", "data.batch_size=8", "data.val=0.2", "data.test=0.2",
        f"data.cache_dir={tmp_path / 'cache'}", "model.weights=none", "train.epochs=1", "train.resize_phases=[]",
        "train.limit_train_batches=1", "train.progress=false", f"model.head_init={head_init}",
    ])
    start = TrainAccuracyAtStart()
    train_run(cfg, tmp_path / "run", callbacks=[start])
    if head_init == "probe":  # a probe on even random features fits 18 photos of 3 colours
        assert start.accuracy == 1.0
    else:
        assert start.accuracy < 0.7


def test_probe_head_init_needs_a_linear_head() -> None:
    with pytest.raises(PlantidError, match="model.head_init=probe fits a linear head"):
        load_config("cpu-default", ["model.head=seed", "model.head_init=probe"])

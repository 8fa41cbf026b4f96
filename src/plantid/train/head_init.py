"""Start fine-tuning from a fitted head: the linear probe, then fine-tune (LP-FT).

A randomly initialised head sends large, meaningless gradients into the pretrained backbone in
the first steps, which distorts the features a short CPU run has no time to repair (Kumar et al.
2022, "Fine-Tuning can Distort Pretrained Features"). With ``model.head_init: probe`` the head
starts as a multinomial logistic regression fitted on the frozen network's features of the
training photos (no augmentation, the first phase's size), so fine-tuning starts where a linear
probe ends. Costs one inference pass over the training photos. Off by default until measured
(docs/decisions.md, "The outside benchmark").
"""

from __future__ import annotations

import logging
import time

import lightning as L
import torch
from torch import nn

from plantid.models import members_of
from plantid.train.augment import resize_batch, train_image_size

log = logging.getLogger("plantid")

L2 = 1e-3  # on the mean loss: keeps the probe's logits moderate, as a fine-tuning start should be
LBFGS_STEPS = 100


def fit_linear_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (K x D) and bias (K) of a softmax regression of `labels` on `features` (L-BFGS)."""
    features = features.double()
    weight = torch.zeros(num_classes, features.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=LBFGS_STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(features @ weight.T + bias, labels, label_smoothing=label_smoothing)
        loss = loss + L2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach().float(), bias.detach().float()


class ProbeHeadInit(L.Callback):
    """Before the first training step of a fresh run, set each member's linear head to the linear
    probe of its frozen features (a resumed run keeps its trained head)."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    @torch.no_grad()
    def _features(self, trainer: L.Trainer, module: L.LightningModule, member: nn.Module,
                  size: int) -> tuple[torch.Tensor, torch.Tensor]:
        features, labels = [], []
        for images, y in trainer.datamodule.dataloader_for("train", shuffle=False):
            x, y = module.on_after_batch_transfer((images.to(module.device), y.to(module.device)), 0)
            feats, _ = member.features_and_logits(resize_batch(x, size))
            features.append(feats.float().cpu())
            labels.append(y.cpu())
        return torch.cat(features), torch.cat(labels)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Fit and copy in the heads, unless the run resumes from a checkpoint."""
        if trainer.ckpt_path is not None or trainer.global_step > 0:
            return
        started = time.perf_counter()
        cfg = pl_module.cfg
        size = train_image_size(cfg.train.resize_phases, cfg.data.image_size, 0)
        for member in members_of(pl_module.model):
            head = member.backbone.get_classifier()
            was_training = member.training
            member.eval()
            features, labels = self._features(trainer, pl_module, member, size)
            member.train(was_training)
            weight, bias = fit_linear_head(features, labels, head.out_features, self.label_smoothing)
            with torch.no_grad():
                head.weight.copy_(weight.to(head.weight))
                head.bias.copy_(bias.to(head.bias))
            accuracy = ((features @ weight.T + bias).argmax(1) == labels).float().mean().item()
            log.info("head from a linear probe of %d training photos at %d px (train accuracy %.1f%%) in %.0f s",
                     len(labels), size, 100 * accuracy, time.perf_counter() - started)

"""Temperature scaling (Guo et al. 2017): one number T that makes softmax(logits / T) honest.

Fine-tuned networks are usually over-confident: a top probability of 0.9 is right less than 90%
of the time. Dividing the logits by a single temperature, fitted on validation photos by
minimising the negative log-likelihood, fixes most of it without changing any prediction's rank.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from plantid.errors import PlantidError

MIN_T, MAX_T = 0.05, 20.0
ECE_BINS = 15  # torchmetrics' default; every ECE plantid prints and the reliability diagram use it


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / temperature)."""
    return float(F.cross_entropy(logits.double() / temperature, labels.long()))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200, smoothing: float = 0.0) -> float:
    """The temperature minimising the NLL of `labels` (N) under softmax(`logits` (N x K) / T), by LBFGS.

    Optimised over log T, so T stays positive; clamped to [0.05, 20]. When every val photo is
    right by a margin, the NLL falls without end as T shrinks and the fit ends at the clamp: a
    model "sure" of everything (one flower run: NLL of new photos 0.83). The fit is then redone
    with the targets smoothed by 1/(N + 2), the rule of succession's share for an error not yet
    seen (NLL 0.11 on the same photos; docs/decisions.md, "A temperature for a val split without errors").
    `smoothing` is torch's label smoothing of the targets.
    """
    if logits.ndim != 2 or labels.ndim != 1 or len(logits) != len(labels):
        raise ValueError(f"need N x K logits and N labels, got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if len(labels) == 0:
        raise PlantidError("no validation photos to fit the temperature on; split with val > 0")
    x = logits.detach().double()
    y = labels.detach().long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x / log_t.exp(), y, label_smoothing=smoothing)
        loss.backward()
        return loss

    optimizer.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t):
        return 1.0
    if t <= MIN_T and smoothing == 0.0:
        return fit_temperature(logits, labels, max_iter, smoothing=1.0 / (len(labels) + 2))
    return min(MAX_T, max(MIN_T, t))


def confidence_bins(confidence: torch.Tensor, bins: int = ECE_BINS) -> tuple[torch.Tensor, torch.Tensor]:
    """(the bins' bins + 1 edges, each photo's bin index) for top probabilities `confidence` (N):
    torchmetrics' equal-width bins, so the reliability diagram and the noise floor bin photos as
    its ECE does."""
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    return edges, torch.bucketize(confidence.double(), edges[1:-1], right=True)


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error (L1, equal-width confidence bins), torchmetrics' definition."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    if len(labels) == 0:
        return float("nan")
    probs = probabilities.float()
    return float(multiclass_calibration_error(probs, labels.long(), num_classes=probs.shape[1], n_bins=bins, norm="l1"))


def crossfit_probabilities(logits: torch.Tensor, labels: torch.Tensor, folds: int = 2, seed: int = 0) -> torch.Tensor:
    """Softmax of each photo's logits at a temperature fitted on the OTHER folds (N x K).

    The ECE of these probabilities estimates calibration after temperature scaling from validation
    photos alone: the temperature never sees the photo it is scored on, as on the test split.
    """
    n = len(labels)
    if n < 2 * folds:
        raise PlantidError(f"{n} validation photos are too few to cross-fit the temperature in {folds} folds")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    fold_of = torch.empty(n, dtype=torch.long)
    fold_of[order] = torch.arange(n) % folds
    probabilities = torch.empty(logits.shape, dtype=torch.float64)
    for k in range(folds):
        held, rest = fold_of == k, fold_of != k
        t = fit_temperature(logits[rest], labels[rest])
        probabilities[held] = torch.softmax(logits[held].double() / t, 1)
    return probabilities


def ece_if_calibrated(probabilities: torch.Tensor, bins: int = ECE_BINS, draws: int = 1000,
                      seed: int = 0) -> tuple[float, float, float]:
    """(mean, 5th, 95th percentile) of the ECE that a PERFECTLY calibrated model with these top
    probabilities would measure on this many photos.

    ECE over a few hundred photos is biased upwards by sampling noise alone: each bin's accuracy
    is an average of a few dozen right-or-wrong answers. A perfectly calibrated model is right
    with probability equal to its confidence, so drawing that many answers per photo gives the
    ECE it would show: the floor against which a measured ECE should be read.
    """
    confidence = probabilities.double().max(dim=1).values
    if len(confidence) == 0:
        return float("nan"), float("nan"), float("nan")
    generator = torch.Generator().manual_seed(seed)
    correct = torch.rand((draws, len(confidence)), generator=generator, dtype=torch.float64) < confidence
    _, index = confidence_bins(confidence, bins)
    gap = torch.zeros((draws, bins), dtype=torch.float64)
    gap.index_add_(1, index, confidence - correct.double())
    eces = gap.abs().sum(dim=1) / len(confidence)
    low, high = torch.quantile(eces, torch.tensor([0.05, 0.95], dtype=torch.float64))
    return float(eces.mean()), float(low), float(high)

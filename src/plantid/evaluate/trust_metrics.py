"""Numbers that say how far a run's trust can be trusted: AUROC of the OOD score, shares kept and
rejected at the run's threshold, calibration error and the reliability diagram's bins.

Pure functions on arrays, JSON-ready results (floats rounded to 6 decimals).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from plantid.trust.calibration import ECE_BINS, confidence_bins, expected_calibration_error

DECIMALS = 6


def _r(x: float) -> float:
    return round(float(x), DECIMALS)


def ood_auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float | None:
    """Probability that a foreign photo scores higher than a known one (ties count half): AUROC.

    Computed by torchmetrics on the scores' ranks scaled to [0, 1] (it would squash raw scores
    outside [0, 1] through a sigmoid, tying all large ones). None when either side is empty.
    """
    from torchmetrics.functional.classification import binary_auroc

    if len(in_scores) == 0 or len(out_scores) == 0:
        return None
    scores = np.concatenate([np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)])
    ranks = torch.from_numpy(_average_ranks(scores) / len(scores))
    target = torch.cat([torch.zeros(len(in_scores)), torch.ones(len(out_scores))]).long()
    return _r(binary_auroc(ranks, target))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their average rank (like scipy.stats.rankdata)."""
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank of each unique value's first occurrence
    return (first + (counts + 1) / 2.0)[inverse]


def share_above(scores: np.ndarray, threshold: float) -> float | None:
    """Share of scores above the threshold (answered unknown); None for no scores."""
    scores = np.asarray(scores)
    return None if len(scores) == 0 else _r(np.mean(scores > threshold))


def calibration(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Expected calibration error (`plantid.trust.calibration.expected_calibration_error`) and the
    reliability diagram's bins: per bin its mean confidence, accuracy and photo count."""
    probs = torch.from_numpy(np.asarray(probabilities, np.float32))
    target = torch.from_numpy(np.asarray(labels, np.int64))
    ece = expected_calibration_error(probs, target, bins)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == target).double()
    edges, index = confidence_bins(confidence, bins)
    rows = []
    for b in range(bins):
        mask = index == b
        n = int(mask.sum())
        rows.append({"low": _r(edges[b]), "high": _r(edges[b + 1]), "count": n,
                     "confidence": _r(confidence[mask].double().mean()) if n else None,
                     "accuracy": _r(correct[mask].mean()) if n else None})
    return {"ece": _r(ece), "bins": rows}

"""Several photos of one plant, one answer: the combining rule, defined once.

A plant photographed from several sides (a leaf, a flower, the whole plant) is one question.
Each photo is predicted alone (calibrated probabilities and, with trust files, an OOD score);
then:

* probabilities: the mean of the photos' calibrated log-probabilities, renormalized (a
  normalized geometric mean). A species must stay plausible on every photo to lead; one photo
  that rules it out weighs more than in an arithmetic mean. This is the product of the photos'
  likelihoods as if they were independent views, tempered by 1/n: photos that agree give an
  answer about as confident as one photo's, not n times more (photos of one plant are not
  independent, and the plain product would be over-confident);
* unknown: the mean of the photos' OOD scores, compared with the run's single-photo threshold.

Why, and what it buys: docs/decisions.md, "2026-12-07 · Several photos of one plant". The
exported web app (plantid.infer.webapp's app.js) repeats these few lines in JavaScript; its
parity test holds them to this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from plantid.infer.predictor import Prediction

# Photos of one plant answered together by the web page, the JSON API and the exported app.
MAX_GROUP_PHOTOS = 5
# log(0) guard: float32's smallest normal number, the floor the JavaScript twin uses too.
PROBABILITY_FLOOR = float(np.finfo(np.float32).tiny)


@dataclass
class GroupPrediction:
    """One answer for several photos of one plant, with each photo's own prediction."""

    name: str
    photos: list[Prediction]
    probabilities: np.ndarray | None = None
    top: list[tuple[str, float]] = field(default_factory=list)
    ood_score: float | None = None
    unknown: bool | None = None

    @property
    def ok(self) -> bool:
        """True when at least one photo of the group could be read."""
        return self.probabilities is not None

    @property
    def used(self) -> list[Prediction]:
        """The photos the answer combines (the readable ones)."""
        return [p for p in self.photos if p.ok]


def combine_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """n x K calibrated probabilities -> K: softmax of the mean log-probability (float64)."""
    logp = np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), PROBABILITY_FLOOR))
    mean = logp.mean(axis=0)
    weights = np.exp(mean - mean.max())
    return weights / weights.sum()


def combine_scores(scores: Sequence[float]) -> float:
    """The group's OOD score: the mean of its photos' scores."""
    return float(np.mean(np.asarray(scores, dtype=np.float64)))


def combine(name: str, photos: list[Prediction], classes: Sequence[str], threshold: float | None,
            top_k: int) -> GroupPrediction:
    """The group's answer from its photos' predictions; unreadable photos are left out of it.

    `threshold` is the run's single-photo OOD threshold (None without trust files: no unknown).
    """
    group = GroupPrediction(name=name, photos=list(photos))
    used = group.used
    if not used:
        return group
    group.probabilities = combine_probabilities(np.stack([p.probabilities for p in used]))
    order = np.argsort(-group.probabilities, kind="stable")[: max(1, min(top_k, len(classes)))]
    group.top = [(classes[i], float(group.probabilities[i])) for i in order]
    scores = [p.ood_score for p in used]
    if threshold is not None and all(s is not None for s in scores):
        group.ood_score = combine_scores(scores)
        group.unknown = bool(group.ood_score > threshold)
    return group

"""The two levels behind a prediction's three answers, chosen on validation photos only:

* the unknown-photo threshold: a finite-sample (split-conformal) order statistic of the val
  scores, chosen so that with probability `confidence` over the draw of the val photos at least
  `keep` of NEW photos of the known species score at or below it. The k-th smallest of n
  exchangeable scores keeps a share of new photos distributed Beta(k, n + 1 - k) (Vovk 2012,
  "Conditional validity of inductive conformal predictors"), so k is the smallest with
  P(Beta(k, n + 1 - k) < keep) <= 1 - confidence. The plain empirical quantile keeps `keep` only
  on the val photos themselves: on 54 of them it kept 83% of new photos.
  When even the largest val score cannot promise it, the folder is too small: the threshold is
  that largest score and `promise_note` says how many val photos the promise needs.
* the answer level: the smallest calibrated top probability at which the val photos answered
  with a species reach `answered_accuracy`; below it the answer is "unsure between A and B".
  Counted on val's labels when at least `MIN_COUNTED` val photos are kept as known; below that
  (one error among 54 photos moves the count by 2 points, and an error among the most confident
  few left no level at all: every photo "unsure"), the accuracy the calibrated probabilities
  themselves expect of the photos at or above each level (`expected_answer_level`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom

from plantid.errors import PlantidError

MIN_COUNTED = 100  # kept val photos from which the answer level is counted on their labels


def kept_share_at_risk(k: int, n: int, keep: float) -> float:
    """P(the k-th smallest of n val scores keeps less than `keep` of new photos) = P(Binom(n, keep) >= k)."""
    return float(binom.sf(k - 1, n, keep))


def val_photos_needed(keep: float, confidence: float) -> int:
    """The fewest val photos whose largest score keeps `keep` of new photos with `confidence`."""
    return int(math.ceil(math.log(1.0 - confidence) / math.log(keep)))


def conformal_threshold(scores: np.ndarray, keep: float, confidence: float) -> tuple[float, bool]:
    """(threshold, promised): the smallest val score that keeps `keep` of new photos with probability
    `confidence`; `promised` is False when there are too few val scores and the largest is returned."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(s)
    if n == 0:
        raise PlantidError("no validation photos to choose the unknown-photo threshold on; split with val > 0")
    for k in range(max(1, math.ceil(keep * n)), n + 1):
        if kept_share_at_risk(k, n, keep) <= 1.0 - confidence:
            return float(s[k - 1]), True
    return float(s[-1]), False


def promise_note(n: int, keep: float, confidence: float) -> str:
    """One line for a val split too small to promise the kept share."""
    return (f"{n} val photos are too few to promise that {100 * keep:g}% of new photos of the known species are "
            f"kept (with {100 * confidence:g}% confidence it needs {val_photos_needed(keep, confidence)}): the "
            f"threshold is the largest val score; add photos or split with a larger val share")


def _level_from_top(confidence: np.ndarray, value: np.ndarray, target: float) -> float:
    """The smallest confidence c such that the mean of `value` over the photos with confidence >= c
    reaches `target` (a level falls only between distinct confidences, so tied photos are answered
    together); 1.0 when no level reaches it."""
    order = np.argsort(-confidence, kind="stable")
    conf_sorted = confidence[order]
    mean_from_top = np.cumsum(value[order]) / np.arange(1, len(conf_sorted) + 1)
    last_of_tie = np.append(conf_sorted[1:] < conf_sorted[:-1], True)
    reached = np.nonzero(last_of_tie & (mean_from_top >= target))[0]
    return float(conf_sorted[reached[-1]]) if len(reached) else 1.0


def answer_level(probabilities: np.ndarray, labels: np.ndarray, kept: np.ndarray | None,
                 answered_accuracy: float) -> float:
    """The smallest top probability c such that the val photos with top probability >= c (and kept
    as known) are right at least `answered_accuracy` of the time; 1.0 when no level reaches it.

    `probabilities` are calibrated (N x K); `kept` (N bool) leaves out photos answered unknown.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    mask = np.ones(len(y), bool) if kept is None else np.asarray(kept, bool)
    p, y = p[mask], y[mask]
    if len(y) == 0:
        return 1.0
    right = (p.argmax(axis=1) == y).astype(np.float64)
    return _level_from_top(p.max(axis=1), right, answered_accuracy)


def expected_answer_level(probabilities: np.ndarray, kept: np.ndarray | None, answered_accuracy: float) -> float:
    """The smallest top probability c such that the mean calibrated top probability of the val photos
    at or above c (and kept as known), the accuracy the calibrated model expects of them, reaches
    `answered_accuracy`; 1.0 when no level reaches it. Reads no labels."""
    p = np.asarray(probabilities, dtype=np.float64)
    confidence = p.max(axis=1) if kept is None else p.max(axis=1)[np.asarray(kept, bool)]
    if len(confidence) == 0:
        return 1.0
    return _level_from_top(confidence, confidence, answered_accuracy)


def choose_answer_level(probabilities: np.ndarray, labels: np.ndarray, kept: np.ndarray | None,
                        answered_accuracy: float) -> tuple[float, str]:
    """(level, rule): `answer_level` counted on val's labels when at least `MIN_COUNTED` val photos are
    kept as known, else `expected_answer_level` from their calibrated probabilities; `rule` says which."""
    n_kept = len(labels) if kept is None else int(np.sum(kept))
    if n_kept >= MIN_COUNTED:
        return answer_level(probabilities, labels, kept, answered_accuracy), f"counted on {n_kept} val photos"
    return (expected_answer_level(probabilities, kept, answered_accuracy),
            f"expected from the calibrated probabilities of {n_kept} val photos (fewer than {MIN_COUNTED} to count on)")


def selective_summary(probabilities: np.ndarray, labels: np.ndarray, unknown: np.ndarray | None,
                      level: float | None) -> dict[str, float | int | None]:
    """Coverage (share answered with a species), accuracy of those answered (selective accuracy), and
    the shares answered unsure and unknown, for photos of the known species."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    n = len(y)
    if n == 0:
        return {"photos": 0, "answered": 0, "coverage": None, "answered_accuracy": None, "unsure": None, "unknown": None}
    is_unknown = np.zeros(n, bool) if unknown is None else np.asarray(unknown, bool)
    unsure = ~is_unknown & (p.max(axis=1) < (level if level is not None else 0.0))
    answered = ~is_unknown & ~unsure
    right = p.argmax(axis=1) == y
    return {
        "photos": int(n),
        "answered": int(answered.sum()),
        "coverage": round(float(answered.mean()), 6),
        "answered_accuracy": round(float(right[answered].mean()), 6) if answered.any() else None,
        "answered_right": int(right[answered].sum()),
        "unsure": round(float(unsure.mean()), 6),
        "unknown": round(float(is_unknown.mean()), 6),
    }

"""The threshold that holds on small val splits, the answer level, and the three answers."""

from __future__ import annotations

import numpy as np
import pytest

from plantid.infer.answers import answer_for, short_label
from plantid.trustfit.fit import choose_threshold
from plantid.trust.selective import (
    MIN_COUNTED,
    answer_level,
    choose_answer_level,
    conformal_threshold,
    expected_answer_level,
    promise_note,
    selective_summary,
    val_photos_needed,
)


def _kept_on_new_photos(threshold_of, n_val: int, trials: int = 400, seed: int = 0) -> np.ndarray:
    """For `trials` draws of n_val val scores, the share of 20,000 NEW photos (same distribution) kept."""
    rng = np.random.default_rng(seed)
    new = np.sort(rng.gamma(2.0, 1.0, 20_000))
    kept = []
    for _ in range(trials):
        t = threshold_of(rng.gamma(2.0, 1.0, n_val))
        kept.append(np.searchsorted(new, t, side="right") / len(new))
    return np.array(kept)


def test_conformal_threshold_keeps_the_promised_share_of_new_photos_where_the_plain_quantile_does_not():
    keep, confidence = 0.9, 0.9
    plain = _kept_on_new_photos(lambda s: choose_threshold(s, keep), 54)
    conformal = _kept_on_new_photos(lambda s: conformal_threshold(s, keep, confidence)[0], 54)
    # the val quantile keeps 90% of the val photos but falls short on new photos about half the time
    assert np.mean(plain < keep) > 0.3
    # the finite-sample bound falls short in at most ~10% of draws (binomial noise over 400 draws)
    assert np.mean(conformal < keep) <= 0.14
    assert np.median(conformal) > np.median(plain)


def test_too_few_val_photos_cannot_promise_the_share_and_say_how_many_it_needs():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=20)
    threshold, promised = conformal_threshold(scores, 0.95, 0.9)
    assert not promised and threshold == scores.max()
    assert val_photos_needed(0.95, 0.9) == 45
    assert conformal_threshold(rng.normal(size=45), 0.95, 0.9)[1]
    note = promise_note(20, 0.95, 0.9)
    assert "20 val photos" in note and "needs 45" in note


def test_answer_level_reaches_the_target_accuracy_of_the_answered_photos():
    rng = np.random.default_rng(2)
    n, k = 2000, 4
    confidence = rng.uniform(0.3, 1.0, n)
    labels = rng.integers(0, k, n)
    right = rng.uniform(size=n) < confidence  # calibrated: right as often as it says
    predicted = np.where(right, labels, (labels + 1) % k)
    p = np.full((n, k), 0.0)
    p[np.arange(n), predicted] = confidence
    p[np.arange(n), (predicted + 1) % k] = 1 - confidence
    level = answer_level(p, labels, None, 0.9)
    answered = confidence >= level
    assert right[answered].mean() >= 0.9
    assert 0.7 < level < 0.95  # not everything thrown out: a calibrated model reaches 90% well below 0.9
    summary = selective_summary(p, labels, None, level)
    assert summary["coverage"] == pytest.approx(answered.mean(), abs=1e-6)
    assert summary["answered_accuracy"] >= 0.9 and summary["unknown"] == 0.0
    assert answer_level(p, labels, None, 1.01) == 1.0  # unreachable: nothing is named


def _calibrated_draw(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities, labels, right) of n photos whose top probability is right as often as it says."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.5, 1.0, n)
    labels = rng.integers(0, k, n)
    right = rng.uniform(size=n) < confidence
    predicted = np.where(right, labels, (labels + 1) % k)
    p = np.zeros((n, k))
    p[np.arange(n), predicted] = confidence
    p[np.arange(n), (predicted + 1) % k] = 1 - confidence
    return p, labels, right


def test_a_small_val_split_takes_the_level_its_calibrated_probabilities_expect():
    p, labels, right = _calibrated_draw(54, 6, seed=3)
    top = np.argsort(-p.max(1))[:2]
    labels = labels.copy()
    labels[top] = (p[top].argmax(1) + 2) % 6  # the two most confident photos wrong: counting finds no level
    assert answer_level(p, labels, None, 0.95) == 1.0
    level, rule = choose_answer_level(p, labels, None, 0.95)
    assert level == expected_answer_level(p, None, 0.95) < 1.0 and "calibrated probabilities of 54" in rule
    answered = p.max(1) >= level
    assert 0 < answered.sum() < len(p) and p.max(1)[answered].mean() >= 0.95
    # on new photos of the same calibrated model, the photos named at that level are right ~95% of the time
    new_p, _, new_right = _calibrated_draw(20_000, 6, seed=4)
    assert new_right[new_p.max(1) >= level].mean() == pytest.approx(0.95, abs=0.02)
    # unknown photos do not count, and enough val photos are counted on their labels
    kept = np.ones(len(p), bool)
    kept[top] = False
    assert expected_answer_level(p, kept, 0.95) == expected_answer_level(p[~np.isin(np.arange(54), top)], None, 0.95)
    big_p, big_labels, _ = _calibrated_draw(MIN_COUNTED, 6, seed=5)
    level, rule = choose_answer_level(big_p, big_labels, None, 0.95)
    assert level == answer_level(big_p, big_labels, None, 0.95) and rule.startswith(f"counted on {MIN_COUNTED}")


def test_three_answers_and_their_words():
    top = [("Daisy", 0.55), ("Tulip", 0.30)]
    unsure = answer_for(top, False, 0.8, 6)
    assert unsure.kind == "unsure" and unsure.species == ("Daisy", "Tulip")
    assert unsure.text == "Unsure between Daisy (55%) and Tulip (30%)"
    named = answer_for([("Daisy", 0.91), ("Tulip", 0.05)], False, 0.8, 6)
    assert named.kind == "species" and short_label(named) == "Daisy"
    unknown = answer_for([("Daisy", 0.91), ("Tulip", 0.05)], True, 0.8, 6)
    assert unknown.kind == "unknown" and "Not one of the 6 species" in unknown.text
    assert answer_for(top, None, None, 6).kind == "species"  # no trust files: always named

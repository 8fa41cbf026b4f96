"""Metrics against values computed by hand on small fixed arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plantid.evaluate.metrics import (
    classification_metrics,
    confusion_counts,
    top_ks_for,
    worst_errors,
)
from plantid.evaluate.plots import row_normalize

# 6 photos, 4 classes; class "d" has no photo and is never predicted.
PROBS = np.array(
    [
        [0.7, 0.2, 0.1, 0.0],  # true a, pred a
        [0.6, 0.3, 0.1, 0.0],  # true a, pred a
        [0.2, 0.5, 0.3, 0.0],  # true b, pred b
        [0.1, 0.8, 0.1, 0.0],  # true b, pred b
        [0.5, 0.4, 0.1, 0.0],  # true b, pred a (b second: top-2 hit)
        [0.3, 0.2, 0.5, 0.0],  # true c, pred c
    ]
)
LABELS = np.array([0, 0, 1, 1, 1, 2])
CLASSES = ["a", "b", "c", "d"]


def test_hand_computed_metrics():
    out = classification_metrics(PROBS, LABELS, CLASSES)
    assert out["confusion"] == [[2, 0, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    pc = {r["class"]: r for r in out["per_class"]}
    # a: tp 2, fp 1, fn 0 -> P 2/3, R 1, F1 0.8
    assert pc["a"]["precision"] == pytest.approx(2 / 3, abs=1e-6)
    assert pc["a"]["recall"] == pytest.approx(1.0)
    assert pc["a"]["f1"] == pytest.approx(0.8, abs=1e-6)
    # b: tp 2, fp 0, fn 1 -> P 1, R 2/3, F1 0.8
    assert pc["b"]["precision"] == pytest.approx(1.0)
    assert pc["b"]["recall"] == pytest.approx(2 / 3, abs=1e-6)
    assert pc["b"]["f1"] == pytest.approx(0.8, abs=1e-6)
    assert pc["c"] == {"class": "c", "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    # d: zero support, zero predictions -> zeros (no NaN), left out of the macro averages
    assert pc["d"] == {"class": "d", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert [r["support"] for r in out["per_class"]] == [2, 3, 1, 0]

    m = out["metrics"]
    assert m["accuracy"] == pytest.approx(5 / 6, abs=1e-6)
    assert m["balanced_accuracy"] == pytest.approx((1 + 2 / 3 + 1) / 3, abs=1e-6)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.8 + 1.0) / 3, abs=1e-6)
    assert m["top_k"] == {"2": 1.0, "3": 1.0}


def test_class_never_predicted_has_zero_precision_not_nan():
    # c (support 2) is never predicted; b is predicted for both c photos.
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1], [0.35, 0.6, 0.05]])
    labels = np.array([0, 0, 1, 1, 2, 2])
    out = classification_metrics(probs, labels, ["a", "b", "c"])
    c = out["per_class"][2]
    assert c["precision"] == 0.0 and not math.isnan(c["precision"])
    assert c["recall"] == 0.0 and c["f1"] == 0.0 and c["support"] == 2
    b = out["per_class"][1]  # tp 2, fp 2 -> P 0.5, R 1, F1 2/3
    assert b["precision"] == pytest.approx(0.5) and b["recall"] == 1.0 and b["f1"] == pytest.approx(2 / 3, abs=1e-6)
    assert out["metrics"]["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert out["metrics"]["balanced_accuracy"] == pytest.approx((1 + 1 + 0) / 3, abs=1e-6)
    assert out["metrics"]["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3, abs=1e-6)
    # top-2: the c photos have c third -> misses; the rest are top-1 hits
    assert out["metrics"]["top_k"] == {"2": pytest.approx(4 / 6, abs=1e-6)}


def test_zero_support_class_predicted_is_excluded_from_macro_averages():
    # class c has no photos but is predicted once (a false positive).
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    labels = np.array([0, 0, 1, 1])
    out = classification_metrics(probs, labels, ["a", "b", "c"])
    c = out["per_class"][2]
    assert c == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert out["confusion"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
    # macro over the present classes a (R 0.5, P 1, F1 2/3) and b (R 1, P 1, F1 1)
    assert out["metrics"]["balanced_accuracy"] == pytest.approx(0.75, abs=1e-6)
    assert out["metrics"]["macro_f1"] == pytest.approx((2 / 3 + 1) / 2, abs=1e-6)
    assert out["metrics"]["accuracy"] == pytest.approx(0.75, abs=1e-6)


def test_top_k_only_below_the_number_of_classes():
    assert top_ks_for(2) == []
    assert top_ks_for(3) == [2]
    assert top_ks_for(8) == [2, 3]
    two = classification_metrics(np.array([[0.6, 0.4], [0.3, 0.7]]), np.array([1, 1]), ["x", "y"])
    assert two["metrics"]["top_k"] == {}
    assert two["metrics"]["accuracy"] == pytest.approx(0.5)


def test_confusion_rows_are_true_classes_and_row_normalize():
    cm = confusion_counts(np.array([[0.1, 0.9], [0.2, 0.8], [0.7, 0.3]]), np.array([0, 0, 1]))
    assert cm.tolist() == [[0, 2], [1, 0]]
    norm = row_normalize([[1, 3], [0, 0]])
    assert norm.tolist() == [[0.25, 0.75], [0.0, 0.0]]


def test_worst_errors_most_confident_first_with_limit():
    paths = [f"p{i}.jpg" for i in range(6)]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.45, 0.55], [0.95, 0.05], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    worst = worst_errors(probs, labels, paths, ["a", "b"])
    assert [w["path"] for w in worst] == ["p3.jpg", "p1.jpg", "p4.jpg", "p2.jpg"]
    assert worst[0] == {"path": "p3.jpg", "true": "b", "pred": "a", "confidence": 0.95}
    assert all(w["true"] != w["pred"] for w in worst)
    assert [w["path"] for w in worst_errors(probs, labels, paths, ["a", "b"], limit=2)] == ["p3.jpg", "p1.jpg"]
    assert worst_errors(probs[:1], labels[:1], paths[:1], ["a", "b"]) == []


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        classification_metrics(np.zeros((3, 2)), np.array([0, 1]), ["a", "b"])
    with pytest.raises(ValueError):
        classification_metrics(np.zeros((2, 2)), np.array([0, 2]), ["a", "b"])
    with pytest.raises(ValueError):
        classification_metrics(np.zeros((2, 3)), np.array([0, 1]), ["a", "b"])
    with pytest.raises(ValueError):
        classification_metrics(np.zeros((0, 2)), np.zeros(0, dtype=int), ["a", "b"])


def test_wilson_interval_matches_the_textbook_values_and_stays_in_bounds():
    from plantid.evaluate.metrics import wilson_interval

    low, high = wilson_interval(47, 54)  # 87.04% on 54 photos: about +-9 points
    assert low == pytest.approx(0.7556, abs=5e-4) and high == pytest.approx(0.9359, abs=5e-4)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] < 0.75  # all right is not certainty
    assert wilson_interval(0, 0) is None


def test_intervals_cover_the_true_accuracy_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    hits = {"accuracy": 0, "balanced_accuracy": 0}
    trials = 200
    for _ in range(trials):
        labels = rng.integers(0, 3, 60)
        right = rng.uniform(size=60) < np.array([0.9, 0.8, 0.7])[labels]  # true balanced accuracy 0.8
        predicted = np.where(right, labels, (labels + 1) % 3)
        out = classification_metrics(np.eye(3)[predicted], labels, classes)
        truth_acc = np.mean(np.array([0.9, 0.8, 0.7])[labels])
        lo, hi = out["intervals"]["accuracy"]
        hits["accuracy"] += lo <= truth_acc <= hi
        lo, hi = out["intervals"]["balanced_accuracy"]
        hits["balanced_accuracy"] += lo <= 0.8 <= hi
        assert set(out["intervals"]["recall"]) == set(classes)
    assert hits["accuracy"] / trials > 0.88
    assert hits["balanced_accuracy"] / trials > 0.85


def test_balanced_accuracy_interval_holds_the_estimate_on_small_classes():
    """17 classes of 10 photos, one mistake: the interval is around 99.4%, not below it (a bootstrap
    from shrunken recalls put it at 78-89%), and stays inside [0, 1]."""
    from plantid.evaluate.metrics import balanced_accuracy_interval

    confusion = np.diag([10] * 17)
    confusion[3, 3], confusion[3, 4] = 9, 1
    estimate = np.mean(np.diag(confusion) / confusion.sum(axis=1))
    low, high = balanced_accuracy_interval(confusion)
    assert low < estimate <= high == 1.0 and low > 0.9
    low, high = balanced_accuracy_interval(np.array([[0, 5], [5, 0]]))  # every photo wrong
    assert low == 0.0 and 0 < high < 0.5
    assert balanced_accuracy_interval(np.zeros((2, 2), dtype=int)) is None

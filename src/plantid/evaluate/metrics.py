"""Classification metrics as pure functions: probabilities (N x K) and labels (N) in, plain dicts out.

Everything is computed with torchmetrics' functional API and returned as JSON-ready Python
numbers (floats rounded to 6 decimals), in the shape used by ``eval.json``:

* ``metrics``: ``accuracy`` (micro, = trace / n), ``balanced_accuracy`` (mean per-class recall),
  ``macro_f1`` (mean per-class F1) and ``top_k`` ({"2": .., "3": ..} for every k < K);
* ``per_class``: one ``{"class", "precision", "recall", "f1", "support"}`` per class, in label order;
* ``confusion``: K x K integer counts, rows = true class, columns = predicted class;
* ``intervals``: 95% intervals: ``accuracy`` and each class's ``recall`` (Wilson score intervals),
  ``balanced_accuracy`` (its standard error from each class's photos). On 54 test photos accuracy is only
  known to about +-9 points, which a bare "87.04%" hides.

Conventions (the same as scikit-learn's with ``zero_division=0``):

* a class that is never predicted has precision 0 (not NaN), and F1 0 unless it has no support;
* a class with zero support (absent from the evaluated images) has recall 0 and F1 0 in its
  row, but is left out of ``balanced_accuracy`` and ``macro_f1``: the macro averages run over the
  classes present in the evaluated labels. On a test split that holds every class this is the
  usual macro average; on a folder with a subset of the classes it does not punish the model for
  classes it was never shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

TOP_KS = (2, 3)
DECIMALS = 6
Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


def _r(x: float) -> float:
    return round(float(x), DECIMALS)


def _as_tensors(probabilities: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.as_tensor(np.asarray(probabilities, dtype=np.float32))
    target = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be N x K, got shape {tuple(probs.shape)}")
    if target.ndim != 1 or target.shape[0] != probs.shape[0]:
        raise ValueError(f"labels must be a vector of length {probs.shape[0]}, got shape {tuple(target.shape)}")
    k = probs.shape[1]
    if k < 2:
        raise ValueError("need at least two classes")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= k):
        raise ValueError(f"labels must be class indices in [0, {k - 1}]")
    return probs, target


def confusion_counts(probabilities: Any, labels: Any) -> np.ndarray:
    """K x K int64 counts of (true row, predicted column = argmax) pairs."""
    probs, target = _as_tensors(probabilities, labels)
    k = probs.shape[1]
    if target.numel() == 0:
        return np.zeros((k, k), dtype=np.int64)
    cm = multiclass_confusion_matrix(probs, target, num_classes=k, validate_args=False)
    return cm.cpu().numpy().astype(np.int64)


def top_ks_for(num_classes: int, ks: Sequence[int] = TOP_KS) -> list[int]:
    """The top-k values reported for K classes: those strictly below K."""
    return [k for k in ks if k < num_classes]


def classification_metrics(
    probabilities: Any, labels: Any, classes: Sequence[str], ks: Sequence[int] = TOP_KS
) -> dict[str, Any]:
    """Metrics, per-class table and confusion counts for one set of predictions.

    ``probabilities`` is N x K (rows need not sum to 1; argmax is the prediction), ``labels`` N
    class indices into ``classes``. Returns ``{"metrics": .., "per_class": [..], "confusion": [[..]]}``.
    """
    probs, target = _as_tensors(probabilities, labels)
    k = probs.shape[1]
    if len(classes) != k:
        raise ValueError(f"{len(classes)} class names for {k} probability columns")
    n = int(target.shape[0])
    if n == 0:
        raise ValueError("no predictions to evaluate")
    common = dict(num_classes=k, average="none", validate_args=False)
    precision = multiclass_precision(probs, target, **common).double().numpy()
    recall = multiclass_recall(probs, target, **common).double().numpy()
    f1 = multiclass_f1_score(probs, target, **common).double().numpy()
    cm = confusion_counts(probs, target)
    support = cm.sum(axis=1)
    present = support > 0
    top_k = {
        str(kk): _r(multiclass_accuracy(probs, target, num_classes=k, top_k=kk, average="micro", validate_args=False))
        for kk in top_ks_for(k, ks)
    }
    metrics = {
        "accuracy": _r(np.trace(cm) / n),
        "balanced_accuracy": _r(recall[present].mean()),
        "macro_f1": _r(f1[present].mean()),
        "top_k": top_k,
    }
    per_class = [
        {
            "class": str(name),
            "precision": _r(np.nan_to_num(precision[i])),
            "recall": _r(np.nan_to_num(recall[i])),
            "f1": _r(np.nan_to_num(f1[i])),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    ]
    return {"metrics": metrics, "per_class": per_class, "confusion": cm.tolist(), "intervals": metric_intervals(cm, classes)}


def wilson_interval(successes: int, n: int, z: float = Z95) -> list[float] | None:
    """The 95% Wilson score interval [low, high] of a proportion successes / n; None when n = 0.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or n successes,
    which is what small test splits give (Brown, Cai and DasGupta 2001).
    """
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [_r(max(0.0, centre - half)), _r(min(1.0, centre + half))]


def balanced_accuracy_interval(confusion: np.ndarray, z: float = Z95) -> list[float] | None:
    """95% interval of the balanced accuracy (the mean of the present classes' recalls), around it:
    plus or minus z standard errors, each class's variance taken at its Agresti-Coull recall
    (right + 2) / (n + 4), so a class with every photo right still varies; clipped to [0, 1].

    Centred on the estimate, so it always contains it; on small classes (a few photos each) it
    errs wide, never narrow (a bootstrap from shrunken recalls had missed the estimate itself)."""
    cm = np.asarray(confusion, dtype=np.int64)
    support = cm.sum(axis=1)
    present = np.flatnonzero(support > 0)
    if len(present) == 0:
        return None
    n = support[present].astype(float)
    right = np.diag(cm)[present].astype(float)
    balanced = float(np.mean(right / n))
    adjusted = (right + 2) / (n + 4)
    half = z * float(np.sqrt(np.sum(adjusted * (1 - adjusted) / n))) / len(present)
    return [_r(max(0.0, balanced - half)), _r(min(1.0, balanced + half))]


def metric_intervals(confusion: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """eval.json's "intervals": 95% intervals of accuracy (Wilson), balanced accuracy (standard error) and
    each class's recall (Wilson), from the confusion counts."""
    cm = np.asarray(confusion, dtype=np.int64)
    return {
        "level": 0.95,
        "accuracy": wilson_interval(int(np.trace(cm)), int(cm.sum())),
        "balanced_accuracy": balanced_accuracy_interval(cm),
        "recall": {str(name): wilson_interval(int(cm[i, i]), int(cm[i].sum())) for i, name in enumerate(classes)},
    }


def worst_errors(
    probabilities: Any, labels: Any, paths: Sequence[str], classes: Sequence[str], limit: int = 24
) -> list[dict[str, Any]]:
    """The misclassified images, most confident mistakes first (ties: input order), at most `limit`.

    Each is ``{"path", "true", "pred", "confidence"}`` where confidence is the predicted class's
    probability.
    """
    probs, target = _as_tensors(probabilities, labels)
    if len(paths) != probs.shape[0]:
        raise ValueError(f"{len(paths)} paths for {probs.shape[0]} predictions")
    p = probs.double().numpy()
    y = target.numpy()
    pred = p.argmax(axis=1) if len(y) else np.zeros(0, dtype=np.int64)
    wrong = np.flatnonzero(pred != y)
    conf = p[wrong, pred[wrong]] if len(wrong) else np.zeros(0)
    order = wrong[np.argsort(-conf, kind="stable")][: max(0, limit)]
    return [
        {"path": str(paths[i]), "true": str(classes[y[i]]), "pred": str(classes[pred[i]]), "confidence": _r(p[i, pred[i]])}
        for i in order
    ]

"""Typed records of a run folder's files (read and written through here, so a renamed field fails
loudly), and the words plantid uses for them. Torch-free: the report, the runs table and serve's
model card read run folders without loading a model.
"""

from __future__ import annotations

from typing import Any


def describe_detector(summary: dict[str, Any]) -> str:
    """The unknown-photo score in words, from a trust summary (trust.json, eval.json's "trust"),
    e.g. "mahalanobis+knn+stage (k = 50; mean of its parts; last stage blocks.6)": the CLI, the
    evaluate table and the report name it the same way."""
    details = [f"k = {summary['k']}"] if "k" in summary else []
    if str(summary["detector"]).startswith("mahalanobis+knn"):  # the detectors made of parts
        details.append("mean of its parts" if summary.get("combine") == "mean" else "largest of its parts")
    if summary.get("taps"):
        details.append(f"last stage {', '.join(summary['taps'])}")
    return str(summary["detector"]) + (f" ({'; '.join(details)})" if details else "")

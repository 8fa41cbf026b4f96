"""The model card the page and `GET /api/model` show: what the run is and how well it did."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from plantid.infer.predictor import Predictor
from plantid.runfolder import RunFolder


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def finite(value: Any) -> float | None:
    """The value as a float, or None when it is missing or not finite (JSON has no NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def build_model_card(predictor: Predictor, run_dir: Path, gradcam_available: bool, max_upload_bytes: int,
                     top_k: int) -> dict[str, Any]:
    """`GET /api/model`: what the served model knows and how well it did, for the page and clients."""
    run_dir = run_dir if run_dir.is_dir() else run_dir.parent
    summary = _read_json(RunFolder(run_dir).summary) or {}
    evaluation = _read_json(RunFolder(run_dir).eval)
    trained = getattr(predictor, "trained", None)
    backbone = summary.get("model") or (trained.config.model.name if trained is not None else None)
    if backbone is None:
        config = _read_config(run_dir)
        backbone = config.model.name if config is not None else "unknown"

    metrics = (evaluation or {}).get("metrics") or {}
    per_class = (evaluation or {}).get("per_class") or []
    per_class_f1 = {
        str(row["class"]): finite(row.get("f1"))
        for row in per_class
        if isinstance(row, dict) and "class" in row
    }
    eval_split = (evaluation or {}).get("split")
    test_accuracy = None
    if evaluation is not None and eval_split in (None, "test"):
        test_accuracy = finite(metrics.get("accuracy"))
    if test_accuracy is None:
        test_accuracy = finite(summary.get("test_acc"))
    parameters = summary.get("parameters")
    return {
        "model_id": predictor.model_id,
        "backbone": backbone,
        "image_size": predictor.image_size,
        "classes": list(predictor.classes),
        "backend": predictor.backend,
        "test_accuracy": test_accuracy,
        "per_class_f1": per_class_f1,
        "balanced_accuracy": finite(metrics.get("balanced_accuracy")),
        # 95% intervals of the evaluated split (accuracy, balanced_accuracy, per-class recall), or None
        "intervals": (evaluation or {}).get("intervals"),
        # the three answers on the evaluated split: coverage and accuracy of the photos named, or None
        "answers": ((evaluation or {}).get("trust") or {}).get("answers"),
        "macro_f1": finite(metrics.get("macro_f1")),
        "gradcam_available": gradcam_available,
        "evaluated": evaluation is not None,
        "eval_split": eval_split,
        "best_val_accuracy": finite(summary.get("best_val_acc")),
        "parameters": parameters.get("total") if isinstance(parameters, dict) else None,
        "max_upload_bytes": max_upload_bytes,
        "top_k": top_k,
        # detector, temperature, threshold, keep (plantid.trust), or None: no unknown check
        "trust": predictor.trust,
    }


def _read_config(run_dir: Path) -> Any:
    try:
        from plantid.config import load_run_config

        return load_run_config(RunFolder(run_dir).config)
    except Exception:
        return None


def package_version() -> str:
    """The installed plantid version, or "0" when running from an uninstalled source tree."""
    try:
        from importlib.metadata import version

        return version("plantid")
    except Exception:
        return "0"

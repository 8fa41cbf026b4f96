"""The model card the page and `GET /api/model` show: what the run is and how well it did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plantid.config import load_run_config
from plantid.infer.predictor import Predictor
from plantid.records import finite, read_evaluation, read_or_warn, read_summary
from plantid.runfolder import RunFolder


def build_model_card(predictor: Predictor, run_dir: Path, gradcam_available: bool, max_upload_bytes: int,
                     top_k: int) -> dict[str, Any]:
    """`GET /api/model`: what the served model knows and how well it did, for the page and clients."""
    run_dir = run_dir if run_dir.is_dir() else run_dir.parent
    summary = read_or_warn(read_summary, run_dir)
    evaluation = read_or_warn(read_evaluation, run_dir)
    trained = getattr(predictor, "trained", None)
    backbone = (summary.model if summary else None) or (trained.config.model.name if trained is not None else None)
    if backbone is None:
        config = _read_config(run_dir)
        backbone = config.model.name if config is not None else "unknown"

    metrics = evaluation.metrics if evaluation else None
    per_class_f1 = {row.name: finite(row.f1) for row in (evaluation.per_class if evaluation else [])}
    eval_split = evaluation.split if evaluation else None
    test_accuracy = None
    if evaluation is not None and eval_split == "test":
        test_accuracy = finite(evaluation.metrics.accuracy)
    if test_accuracy is None and summary is not None:
        test_accuracy = finite(summary.test_acc)
    parameters = summary.parameters if summary else None
    return {
        "model_id": predictor.model_id,
        "backbone": backbone,
        "image_size": predictor.image_size,
        "classes": list(predictor.classes),
        "backend": predictor.backend,
        "test_accuracy": test_accuracy,
        "per_class_f1": per_class_f1,
        "balanced_accuracy": finite(metrics.balanced_accuracy) if metrics else None,
        # 95% intervals of the evaluated split (accuracy, balanced_accuracy, per-class recall), or None
        "intervals": evaluation.intervals if evaluation else None,
        # the three answers on the evaluated split: coverage and accuracy of the photos named, or None
        "answers": evaluation.trust.answers.model_dump() if evaluation and evaluation.trust and evaluation.trust.answers
        else None,
        "macro_f1": finite(metrics.macro_f1) if metrics else None,
        "gradcam_available": gradcam_available,
        "evaluated": evaluation is not None,
        "eval_split": eval_split,
        "best_val_accuracy": finite(summary.best_val_acc) if summary else None,
        "parameters": parameters.get("total") if parameters else None,
        "max_upload_bytes": max_upload_bytes,
        "top_k": top_k,
        # detector, temperature, threshold, keep (plantid.trust), or None: no unknown check
        "trust": predictor.trust,
    }


def _read_config(run_dir: Path) -> Any:
    try:
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

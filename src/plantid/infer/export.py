"""`plantid export RUN`: a run as an ONNX model (`onnx_export`), a browser app (`web_export`) or a
challenge submission (`submission`).

`--format onnx` writes RUN/export/model.onnx and preprocessing.json, `--quantize` adds
model.int8.onnx (`plantid.infer.quantize`); `--format web` writes RUN/web, a static folder that
runs the model in a browser, offline (int8 by default when it keeps its val accuracy);
`--format submission` writes RUN/submission.
"""

from __future__ import annotations

import os
from pathlib import Path

from plantid.errors import PlantidError
from plantid.infer.checkpoint import load_trained
from plantid.infer.onnx_export import export_onnx
from plantid.infer.quantize import CALIBRATION_IMAGES, DEFAULT_QUANTIZATION, QUANTIZATIONS
from plantid.infer.submission import SUBMISSION_FILES, export_submission
from plantid.infer.web_export import WEB_DIR, check_runtime, check_web_target, export_web
from plantid.outputs import json_object, refuse_foreign_file, refuse_foreign_folder
from plantid.records import EXPORT_FORMAT_PREFIX
from plantid.runfolder import EXPORT_DIR, INT8_FILE, ONNX_FILE, PREPROCESSING_FILE, SUBMISSION_DIR, check_run_folder

FORMATS = ("onnx", "web", "submission")


def export_run(run_dir: str | os.PathLike, export_format: str, out: Path | None = None, quantize: bool | None = None,
               quantization: str = DEFAULT_QUANTIZATION, calibration_images: int = CALIBRATION_IMAGES) -> list[Path]:
    """Export a run folder as 'onnx', 'web' or 'submission' and return the files/folders written.

    `quantize` None means no int8 model for onnx and submission, and for web int8 when it kept
    its val accuracy. `quantization` (one of QUANTIZATIONS) picks how model.int8.onnx is made.
    """
    fmt = (export_format or "").strip().lower()
    if fmt not in FORMATS:
        raise PlantidError(f"unknown export format '{export_format}': use onnx, web or submission")
    if fmt == "web":  # a missing runtime or a folder that is not ours is said before the checkpoint is read
        check_runtime()
        check_web_target(Path(out) if out is not None else Path(run_dir) / WEB_DIR)
    if quantization not in QUANTIZATIONS:
        raise PlantidError(f"unknown quantization '{quantization}': use one of {', '.join(QUANTIZATIONS)}")
    run_dir = Path(run_dir)
    check_run_folder(run_dir)
    if fmt == "onnx":
        target = Path(out) if out is not None else None
        if target is not None and target.suffix.lower() != ".onnx":
            target = target / ONNX_FILE
        if target is not None:
            refuse_foreign_export(target, bool(quantize))
    elif fmt == "submission":
        refuse_foreign_folder(Path(out) if out is not None else run_dir / SUBMISSION_DIR, set(SUBMISSION_FILES),
                              is_plantid_submission, "submission")
    trained = load_trained(run_dir)  # PlantidError (exit 2) for a missing folder or checkpoint
    if trained.checkpoint.is_file() and run_dir.is_file():
        run_dir = trained.checkpoint.parent
    if fmt == "web":
        return [export_web(trained, run_dir, Path(out) if out is not None else run_dir / WEB_DIR, quantize=quantize).folder]
    quantize = bool(quantize)
    if fmt == "onnx":
        target = Path(out) if out is not None else run_dir / EXPORT_DIR / ONNX_FILE
        if target.suffix.lower() != ".onnx":
            target = target / ONNX_FILE
        made = not target.parent.exists()
        try:
            return export_onnx(trained, run_dir, target, quantize=quantize, quantization=quantization,
                               calibration_images=calibration_images)
        except BaseException:
            if made and target.parent.is_dir() and not any(target.parent.iterdir()):
                target.parent.rmdir()  # a failed first export (full disk) leaves no empty export/ behind
            raise
    folder = Path(out) if out is not None else run_dir / SUBMISSION_DIR
    return [export_submission(trained, run_dir, folder, quantize=quantize, quantization=quantization,
                              calibration_images=calibration_images)]


def is_plantid_export_meta(path: Path) -> bool:
    """True for a preprocessing.json plantid wrote (it names its format)."""
    return str((json_object(path) or {}).get("format", "")).startswith(EXPORT_FORMAT_PREFIX)


def is_plantid_submission(folder: Path) -> bool:
    """True for a submission folder plantid wrote: its preprocessing.json says so."""
    meta = json_object(folder / PREPROCESSING_FILE) or {}
    return is_plantid_export_meta(folder / PREPROCESSING_FILE) and "submission" in meta


def refuse_foreign_export(target: Path, quantize: bool) -> None:
    """Refuse an ONNX export whose files would replace files plantid did not write (a user's model,
    a checkpoint given as --out, a foreign preprocessing.json beside it)."""
    folder = target.parent
    if folder.exists() and not folder.is_dir():
        raise PlantidError(f"--out {target}: {folder} is a file, not a folder; choose another --out")
    refuse_foreign_file(folder / PREPROCESSING_FILE, is_plantid_export_meta, "preprocessing.json")
    ours = is_plantid_export_meta(folder / PREPROCESSING_FILE)
    for path in [target] + ([folder / INT8_FILE] if quantize else []):
        refuse_foreign_file(path, lambda _: ours, "ONNX export")

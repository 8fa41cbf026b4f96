"""Which backend answers a prediction when the user did not pick one (`--backend auto`).

The run's ONNX export answers one photo in about 0.5 s and 130 MB, the checkpoint through torch
in 5-6 s and 930 MB (loading torch and timm is most of it; docs/benchmarks.md). So `auto` takes
the export whenever it is known to give the same answers as the checkpoint would:

* no test-time views were asked for (views run on torch only);
* RUN/export/model.onnx and preprocessing.json exist and the export was made from the checkpoint
  the run uses now (same size and SHA-256 as preprocessing.json records);
* the trust files the export carries are the run's current ones (`plantid.records.same_trust`),
  or neither has any.

Otherwise torch answers, and the reason says why and how to get the fast path. Nothing here
imports torch: deciding must not cost what it tries to save.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from plantid.fileio import sha256_file
from plantid.errors import PlantidError
from plantid.records import read_export, read_trust, same_trust
from plantid.runfolder import ONNX_FILE, PREPROCESSING_FILE, RunFolder

BACKENDS = ("auto", "torch", "onnx", "onnx-int8")


@dataclass(frozen=True)
class BackendChoice:
    """The backend that will answer and, in one sentence, why."""

    backend: str
    reason: str


def choose_backend(run_dir: str | os.PathLike, wants_views: bool = False) -> BackendChoice:
    """The backend for `--backend auto` on `run_dir`: 'onnx' when its export matches the run, else 'torch'."""
    run_dir = Path(run_dir)
    if run_dir.suffix == ".onnx" or (run_dir / ONNX_FILE).is_file():
        return BackendChoice("onnx", f"{run_dir} is an ONNX export")
    run = RunFolder(run_dir)
    hint = f"`plantid export {run.root} --format onnx` makes one-photo predictions about 10x faster"
    if wants_views:
        return BackendChoice("torch", "test-time views run on the checkpoint")
    model, meta_path = run.export_dir / ONNX_FILE, run.export_dir / PREPROCESSING_FILE
    checkpoint = run.checkpoint()
    if checkpoint is None:
        if model.is_file() and meta_path.is_file():
            return BackendChoice("onnx", f"{model} (the folder holds no checkpoint)")
        return BackendChoice("torch", "no ONNX export")
    if not (model.is_file() and meta_path.is_file()):
        return BackendChoice("torch", f"no ONNX export; {hint}")
    try:
        meta = read_export(run.export_dir).as_dict()
    except PlantidError as exc:
        return BackendChoice("torch", str(exc))
    if (meta.get("source_checkpoint_size") != checkpoint.stat().st_size
            or meta.get("source_checkpoint_sha256") != sha256_file(checkpoint)):
        return BackendChoice("torch", f"{model} was exported from other weights than {checkpoint.name}; "
                                      f"export again to use it")
    if meta.get("size_bytes") is not None and model.stat().st_size != meta["size_bytes"]:
        return BackendChoice("torch", f"{model} does not match {PREPROCESSING_FILE} (interrupted export?); export again")
    try:
        current_trust = read_trust(run.root)
    except PlantidError as exc:  # torch reads it too, and says so in one line
        return BackendChoice("torch", str(exc))
    if not same_trust(current_trust, meta.get("trust")):
        return BackendChoice("torch", f"the run's trust files changed since {model} was exported; export again to use it")
    return BackendChoice("onnx", f"{model}, exported from {checkpoint.name}")

"""Penultimate features and logits of a run's model over photos, in batches, through the
Predictor's torch backend (the one preprocessing: the run's pixel cache or `load_image`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plantid.data.cache import build_cache, resolve_cache_dir
from plantid.data.images import BadImageError, load_image
from plantid.data.split import read_manifest
from plantid.errors import PlantidError
from plantid.runfolder import RunFolder


def features_and_logits(backend, images: np.ndarray, rows: np.ndarray | None = None,
                        batch_size: int = 128, taps: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(features N x D, logits N x K), float32, for `images[rows]` (uint8 M x S x S x 3; all rows when None).

    `backend` is a plantid.infer.predictor.TorchBackend (no TTA: the features of the photo itself);
    `taps` adds the pooled outputs of those backbone modules after the penultimate features.
    """
    rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    feats, logits = [], []
    for start in range(0, len(rows), batch_size):
        f, z = backend.features_and_logits(np.ascontiguousarray(images[rows[start:start + batch_size]]), taps)
        feats.append(f)
        logits.append(z)
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(feats), np.concatenate(logits)


def manifest_pixels(run_dir: Path, trained) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The run's pixel cache (every split.csv row, as training built it), and per split its row
    indices and label indices into the model's classes."""
    manifest_path = RunFolder(run_dir).manifest
    if not manifest_path.is_file():
        raise PlantidError(f"{manifest_path}: not found; trust is fitted on the run's own split (retrain the run)")
    manifest = read_manifest(manifest_path)
    index = {c: i for i, c in enumerate(trained.classes)}
    unknown = sorted(set(manifest.classes) - set(index))
    if unknown:
        raise PlantidError(f"{manifest_path}: labels {unknown} are not classes of the model; the split does not belong to it")
    pixels = build_cache([r.path for r in manifest.rows], trained.image_size,
                         resolve_cache_dir(trained.config.data.cache_dir))
    rows: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    for split in ("train", "val", "test"):
        picked = [(i, index[r.label]) for i, r in enumerate(manifest.rows) if r.split == split]
        rows[split] = np.array([i for i, _ in picked], dtype=np.int64)
        labels[split] = np.array([y for _, y in picked], dtype=np.int64)
    return pixels, rows, labels


def folder_pixels(paths: list[str], image_size: int) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Photos (any folder layout) decoded with the one preprocessing: (uint8 N x S x S x 3, used paths,
    (path, reason) of unreadable ones)."""
    images, used, skipped = [], [], []
    for path in paths:
        try:
            images.append(load_image(path, image_size))
            used.append(str(path))
        except BadImageError as exc:
            skipped.append((str(path), exc.reason))
    if not images:
        return np.zeros((0, image_size, image_size, 3), np.uint8), used, skipped
    return np.stack(images), used, skipped

"""Shared fixtures: real JPEG folders whose content depends on the class (learnable by a tiny model).

* ``make_image_folder(root, classes=("a", "b", "c"), per_class=12, size=32, seed=0) -> Path``
  writes ``root/<class>/<class>_<i>.jpg``: class k has a distinct dominant colour plus per-image
  noise and a brighter square at a random place, so every file differs (distinct sha256) and a
  small network separates the classes within a few steps.
* ``tiny_folder``: a tmp folder with 3 classes ("a", "b", "c") x 12 photos of 32x32.
* ``tiny_manifest``: ``split.csv`` for ``tiny_folder`` (val=0.25, test=0.25, seed 0), beside it.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # test support code (tests/support/) imports as `tests.support.*`
    sys.path.insert(0, str(REPO_ROOT))

PALETTE = [
    (220, 40, 40),
    (40, 200, 60),
    (40, 70, 220),
    (230, 210, 40),
    (200, 50, 200),
    (40, 200, 210),
    (240, 140, 30),
    (120, 120, 120),
]


def class_colour(index: int) -> tuple[int, int, int]:
    """The dominant colour of class number `index` (deterministic beyond the palette too)."""
    if index < len(PALETTE):
        return PALETTE[index]
    digest = hashlib.sha256(f"class-colour-{index}".encode()).digest()
    return digest[0], digest[1], digest[2]


def write_class_image(path: Path, class_index: int, size: int, rng: np.random.Generator) -> Path:
    """One real JPEG: class colour + Gaussian noise + a lighter square patch."""
    base = np.array(class_colour(class_index), dtype=np.float32)
    img = base + rng.normal(0.0, 18.0, size=(size, size, 3)).astype(np.float32)
    side = max(2, size // 4)
    y, x = rng.integers(0, size - side + 1, size=2)
    img[y : y + side, x : x + side] += 50.0
    pixels = np.clip(img, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="RGB").save(path, format="JPEG", quality=92)
    return path


def _make_image_folder(
    root: Path,
    classes: Sequence[str] = ("a", "b", "c"),
    per_class: int = 12,
    size: int = 32,
    seed: int = 0,
) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(classes):
        rng = np.random.default_rng([seed, k])
        for i in range(per_class):
            write_class_image(root / name / f"{name}_{i:03d}.jpg", k, size, rng)
    return root


@pytest.fixture
def make_image_folder() -> Callable[..., Path]:
    """Factory fixture: ``make_image_folder(root, classes=..., per_class=..., size=..., seed=...) -> root``."""
    return _make_image_folder


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """3 classes (a, b, c) x 12 real 32x32 JPEGs."""
    return _make_image_folder(tmp_path / "photos")


@pytest.fixture
def tiny_manifest(tiny_folder: Path) -> Path:
    """split.csv of `tiny_folder` (val 0.25, test 0.25, seed 0): 6 train, 3 val, 3 test per class."""
    from plantid.data.scan import scan_folder
    from plantid.data.split import make_split, write_manifest

    rows = make_split(scan_folder(tiny_folder), val=0.25, test=0.25, seed=0)
    return write_manifest(rows, tiny_folder.parent / "split.csv")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, finished tiny run folder (simple_cnn, 32 px, 3 classes, 2 epochs), trained once per session.

    Treat it as read-only; tests that write into a run (evaluate, export, report) should copy it
    first with ``copy_run``.
    """
    from plantid.config import load_config
    from plantid.train.run import train_run

    base = tmp_path_factory.mktemp("trained")
    data = _make_image_folder(base / "photos", per_class=16)
    cfg = load_config("simple-cnn", [
        f"data.root={data}", "data.image_size=32", "data.val=0.25", "data.test=0.25",
        f"data.cache_dir={base / 'cache'}", "train.epochs=2", "train.progress=false",
        "data.batch_size=8",
    ])
    train_run(cfg, base / "run")
    return base / "run"


@pytest.fixture
def copy_run(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of `trained_run` that a test may write into."""
    import shutil

    return Path(shutil.copytree(trained_run, tmp_path / "run", symlinks=True))

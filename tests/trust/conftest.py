"""Fixtures for tests/trust: a tiny trained run with enough val photos to place a threshold,
its trust files fitted, and generated out-of-distribution images (noise, flat colours, shuffled
patches of the run's own photos)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.support.images import make_image_folder

SIZE = 32


@pytest.fixture(scope="session")
def trust_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """simple_cnn, 32 px, 3 classes x 40 photos (val 0.25: 30 val photos), 3 epochs, with trust fitted.

    Read-only: copy it (`trust_run_copy`) to write into it.
    """
    from plantid.config import load_config
    from plantid.train.run import train_run
    from plantid.trustfit.fit import fit_trust

    base = tmp_path_factory.mktemp("trust")
    data = make_image_folder(base / "photos", per_class=40, size=SIZE)
    cfg = load_config("simple-cnn", [
        f"data.root={data}", f"data.image_size={SIZE}", "data.val=0.25", "data.test=0.25",
        f"data.cache_dir={base / 'cache'}", "train.epochs=3", "train.progress=false", "data.batch_size=16",
    ])
    train_run(cfg, base / "run")
    fit_trust(base / "run")
    return base / "run"


@pytest.fixture
def trust_run_copy(trust_run: Path, tmp_path: Path) -> Path:
    """A private copy of `trust_run` a test may write into."""
    return Path(shutil.copytree(trust_run, tmp_path / "run", symlinks=True))


def generated_ood(run: Path, n: int = 24, size: int = SIZE, seed: int = 0) -> dict[str, np.ndarray]:
    """uint8 N x S x S x 3 batches of images no class looks like: uniform noise, flat colours
    (black, white, mid grey and colours off the test palette) and 4 x 4 shuffled patches of the
    run's own test photos."""
    from plantid.data.images import load_image
    from plantid.data.split import read_manifest

    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    colours = [(0, 0, 0), (255, 255, 255), (128, 128, 128), (128, 64, 0), (0, 128, 128), (255, 128, 200)]
    flat = np.stack([np.full((size, size, 3), colours[i % len(colours)], np.uint8) for i in range(n)])
    photos = [load_image(r.path, size) for r in read_manifest(run / "split.csv").rows_for("test")]
    grid, cell = 4, size // 4
    shuffled = []
    for i in range(n):
        tiles = [photos[(i + j) % len(photos)][y * cell:(y + 1) * cell, x * cell:(x + 1) * cell]
                 for j, (y, x) in enumerate((y, x) for y in range(grid) for x in range(grid))]
        order = rng.permutation(len(tiles))
        rows = [np.concatenate([tiles[order[r * grid + c]] for c in range(grid)], axis=1) for r in range(grid)]
        shuffled.append(np.concatenate(rows, axis=0))
    return {"noise": noise, "flat": flat, "shuffled": np.stack(shuffled)}

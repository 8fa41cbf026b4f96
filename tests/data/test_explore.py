"""explore() writes real, readable figures for a folder and for a manifest."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from plantid.data.explore import explore
from plantid.errors import PlantidError


def _console() -> Console:
    return Console(record=True, width=140, file=io.StringIO())


def _check_png(path: Path, min_w: int = 300, min_h: int = 200) -> np.ndarray:
    assert path.is_file() and path.suffix == ".png"
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        assert img.width >= min_w and img.height >= min_h, img.size
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 5  # not a blank canvas
    return pixels


def test_explore_folder(make_image_folder, tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "photos", classes=("a", "b", "c", "d"), per_class=5, size=24)
    make_image_folder(tmp_path / "photos", classes=("rare",), per_class=1, size=24)
    console = _console()
    out = explore(root, tmp_path / "figs", console=console, samples_per_class=4)
    assert set(out) == {"class_distribution", "samples", "sizes"}
    assert out["class_distribution"].name == "class_distribution.png"
    for p in out.values():
        assert p.parent == tmp_path / "figs"
        _check_png(p)
    samples = _check_png(out["samples"])
    assert samples.shape[0] > samples.shape[1] * 0.6  # 5 rows of 4 thumbnails: a tall grid
    text = console.export_text()
    assert "rare" in text and "total" in text and "class_distribution.png" in text
    assert not list((tmp_path / "figs").glob(".*tmp"))
    # deterministic: same input, same pictures
    again = explore(root, tmp_path / "figs2", console=_console(), samples_per_class=4)
    np.testing.assert_array_equal(_check_png(again["samples"]), samples)


def test_explore_manifest(tiny_manifest: Path, tmp_path: Path) -> None:
    console = _console()
    out = explore(tiny_manifest, tmp_path / "figs", console=console, samples_per_class=3)
    dist = _check_png(out["class_distribution"])
    _check_png(out["samples"])
    _check_png(out["sizes"])
    # stacked split bars use the train/val/test colours
    colours = {tuple(c) for c in dist.reshape(-1, 3)[::7]}
    assert (0x4C, 0x72, 0xB0) in colours and (0xDD, 0x84, 0x52) in colours and (0x55, 0xA8, 0x68) in colours
    text = console.export_text()
    for needle in ("train", "val", "test", "18", "9", "36"):
        assert needle in text


def test_explore_errors(tmp_path: Path, tiny_folder: Path) -> None:
    with pytest.raises(PlantidError, match="folder not found"):
        explore(tmp_path / "missing", tmp_path / "figs", console=_console())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PlantidError, match="cannot write the figures") as exc:
        explore(tiny_folder, blocker / "figs", console=_console())
    assert str(blocker / "figs") in str(exc.value)

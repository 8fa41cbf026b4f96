"""explore() writes real, readable figures for a folder and for a manifest.

The class-distribution bars are measured in the written PNG (their height in pixels must be
proportional to the photo counts, which are read independently from the folder or split.csv), and
the terminal table is parsed row by row and compared with the same counts.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from skimage.measure import label, regionprops

from plantid.data.explore import NORMAL_COLOUR, RARE_COLOUR, explore
from plantid.figures import SPLIT_COLOURS
from plantid.errors import PlantidError

MIN_BAR_WIDTH = 30  # pixels: wider than any legend patch or text, narrower than any bar here


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


def _bars(pixels: np.ndarray, colour: str) -> list[tuple[int, int]]:
    """(left x, height) in pixels of every solid bar filled with `colour` ('#rrggbb'), left to right."""
    rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    regions = regionprops(label((pixels == rgb).all(axis=-1)))
    boxes = [r.bbox for r in regions if r.bbox[3] - r.bbox[1] >= MIN_BAR_WIDTH]  # (row0, col0, row1, col1)
    return sorted((col0, row1 - row0) for row0, col0, row1, col1 in boxes)


def _assert_proportional(heights: list[int], counts: list[int]) -> None:
    """Bar heights are one scale times the counts (to 2 pixels of rounding and edge lines)."""
    assert len(heights) == len(counts)
    scale = max(heights) / max(counts)
    for height, count in zip(heights, counts):
        assert abs(height - scale * count) <= 2, (heights, counts)


def _table_rows(text: str) -> dict[str, list[str]]:
    """The rows of a rich table in `text`, keyed by their first cell."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows[cells[0]] = cells[1:]
    return rows


def test_explore_folder(make_image_folder, tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "photos", classes=("a", "b", "c", "d"), per_class=5, size=24)
    make_image_folder(tmp_path / "photos", classes=("rare",), per_class=1, size=24, seed=1)
    counts = {d.name: len(list(d.glob("*.jpg"))) for d in sorted(root.iterdir())}
    assert counts == {"a": 5, "b": 5, "c": 5, "d": 5, "rare": 1}
    console = _console()
    out = explore(root, tmp_path / "figs", console=console, samples_per_class=4)
    assert set(out) == {"class_distribution", "samples", "sizes"}
    assert out["class_distribution"].name == "class_distribution.png"
    for p in out.values():
        assert p.parent == tmp_path / "figs"
        _check_png(p)
    assert not list((tmp_path / "figs").glob(".*tmp"))

    # One bar per class in class order, its height proportional to the count; the rare one in its colour.
    dist = _check_png(out["class_distribution"])
    normal, rare = _bars(dist, NORMAL_COLOUR), _bars(dist, RARE_COLOUR)
    assert len(normal) == 4 and len(rare) == 1
    assert max(x for x, _ in normal) < rare[0][0]  # "rare" sorts last
    _assert_proportional([h for _, h in normal + rare], list(counts.values()))

    samples = _check_png(out["samples"])
    assert samples.shape[0] > samples.shape[1] * 0.6  # 5 rows of 4 thumbnails: a tall grid

    text = console.export_text()
    table = _table_rows(text)
    assert {name: int(table[name][0]) for name in counts} == counts
    assert int(table["total"][0]) == sum(counts.values())
    assert f"wrote class_distribution: {out['class_distribution']}" in text
    # deterministic: same input, same pictures
    again = explore(root, tmp_path / "figs2", console=_console(), samples_per_class=4)
    np.testing.assert_array_equal(_check_png(again["samples"]), samples)


def test_explore_manifest(tiny_manifest: Path, tmp_path: Path) -> None:
    with tiny_manifest.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    per_split = {s: Counter(r["label"] for r in rows if r["split"] == s) for s in SPLIT_COLOURS}
    classes = sorted({r["label"] for r in rows})
    assert [sum(per_split[s].values()) for s in SPLIT_COLOURS] == [18, 9, 9]  # the fixture's 6/3/3 per class

    console = _console()
    out = explore(tiny_manifest, tmp_path / "figs", console=console, samples_per_class=3)
    dist = _check_png(out["class_distribution"])
    _check_png(out["samples"])
    _check_png(out["sizes"])

    # Stacked bars: one segment per split and class, each as tall as its count says, the same scale.
    segments = {s: _bars(dist, colour) for s, colour in SPLIT_COLOURS.items()}
    for s in SPLIT_COLOURS:
        assert len(segments[s]) == len(classes), (s, segments[s])
    heights = [h for s in SPLIT_COLOURS for _, h in segments[s]]
    _assert_proportional(heights, [per_split[s][c] for s in SPLIT_COLOURS for c in classes])

    table = _table_rows(console.export_text())
    for c in classes:
        counts = [per_split[s][c] for s in SPLIT_COLOURS]
        assert table[c] == [str(n) for n in counts + [sum(counts)]]
    totals = [sum(per_split[s].values()) for s in SPLIT_COLOURS]
    assert table["total"] == [str(n) for n in totals + [len(rows)]]


def test_explore_errors(tmp_path: Path, tiny_folder: Path) -> None:
    with pytest.raises(PlantidError, match="folder not found"):
        explore(tmp_path / "missing", tmp_path / "figs", console=_console())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PlantidError, match="cannot write the figures") as exc:
        explore(tiny_folder, blocker / "figs", console=_console())
    assert str(blocker / "figs") in str(exc.value)

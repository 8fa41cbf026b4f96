"""A split that grows: photos already listed never change side, only new photos are assigned."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from PIL import Image

from plantid.data.scan import scan_folder
from plantid.data.split import grow_split, make_split, read_manifest, split_or_grow, write_manifest
from tests.support.cli import PLANTID


def _sides(rows) -> dict[str, str]:
    return {r.sha256: r.split for r in rows}


def _hold_back(folder: Path, share: float, parking: Path) -> list[Path]:
    """Move the last `share` of each class's photos out of `folder` (to add them back later)."""
    moved = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        photos = sorted(class_dir.iterdir())
        for photo in photos[round(len(photos) * (1 - share)):]:
            target = parking / class_dir.name / photo.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(photo, target)
            moved.append(target)
    return moved


def _bring_back(parking: Path, folder: Path) -> None:
    for photo in sorted(parking.rglob("*.jpg")):
        shutil.move(photo, folder / photo.parent.name / photo.name)


def test_growing_from_70_percent_to_all_moves_no_existing_photo(make_image_folder, tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "photos", classes=("a", "b", "c"), per_class=20)
    _hold_back(folder, 0.3, tmp_path / "later")
    first = make_split(scan_folder(folder), seed=3)
    assert len(first) == 42
    _bring_back(tmp_path / "later", folder)

    grown, growth = grow_split(scan_folder(folder), read_manifest(write_manifest(first, tmp_path / "split.csv")),
                               seed=3)
    before, after = _sides(first), _sides(grown)
    moved = [sha for sha, side in before.items() if after[sha] != side]
    assert moved == []  # the goal: 0 existing photos change side
    assert len(grown) == 60 and growth.kept == 42 and growth.removed == 0
    assert sum(growth.added.values()) == 18
    # the new photos fill each class's quotas over the whole folder (15% val, 15% test of 20 = 3 each)
    for label in ("a", "b", "c"):
        per_split = Counter(r.split for r in grown if r.label == label)
        assert per_split == {"train": 14, "val": 3, "test": 3}, (label, per_split)


def test_relabelled_removed_and_near_duplicate_photos(make_image_folder, tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "photos", classes=("a", "b"), per_class=12)
    manifest_path = tmp_path / "out" / "split.csv"
    first, growth = split_or_grow(scan_folder(folder), manifest_path)
    assert growth is None  # nothing to grow yet: a fresh split
    write_manifest(first, manifest_path)
    train_photo = next(Path(r.path) for r in first if r.split == "train" and r.label == "a")
    test_photo = next(Path(r.path) for r in first if r.split == "test" and r.label == "b")
    val_photo = next(Path(r.path) for r in first if r.split == "val" and r.label == "a")

    # a train photo saved again larger (a near duplicate), in another class; a test photo moved to
    # class a (relabelled); a val photo deleted
    with Image.open(train_photo) as img:
        img.resize((40, 40)).save(folder / "b" / "resaved.jpg", quality=80)
    shutil.move(test_photo, folder / "a" / test_photo.name)
    val_photo.unlink()

    grown, growth = split_or_grow(scan_folder(folder), manifest_path)
    by_path = {Path(r.path).name: r for r in grown}
    assert by_path["resaved.jpg"].split == "train"  # follows its group: train content never reaches test
    moved = by_path[test_photo.name]
    assert (moved.label, moved.split) == ("a", "test")  # a new label, the same side
    assert val_photo.name not in by_path
    assert (growth.kept, growth.relabelled, growth.removed) == (23, 1, 1)
    assert growth.added == {"train": 1, "val": 0, "test": 0}
    assert not ({r.sha256 for r in first if r.split == "train"} & {r.sha256 for r in grown if r.split != "train"})


def test_split_command_grows_the_manifest_in_out(make_image_folder, tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "photos", classes=("a", "b"), per_class=10)
    parked = _hold_back(folder, 0.3, tmp_path / "later")
    out = tmp_path / "split"
    subprocess.run([*PLANTID, "split", str(folder), "--out", str(out)], check=True, capture_output=True, text=True)
    first = read_manifest(out / "split.csv").rows
    _bring_back(tmp_path / "later", folder)
    proc = subprocess.run([*PLANTID, "split", str(folder), "--out", str(out)], check=True, capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "200"})
    assert "14 photo(s) kept their split" in proc.stdout
    grown = {r.sha256: r.split for r in read_manifest(out / "split.csv").rows}
    assert len(grown) == 14 + len(parked)
    assert all(grown[r.sha256] == r.split for r in first)

"""Near duplicates on generated photos: resized / re-encoded / brightened copies are grouped, scan.json
records them, the split keeps each group on one side, and the threshold is settable."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance

from plantid.data.near_duplicates import NEAR_DUPLICATE_DISTANCE, close_pairs, group_near_duplicates
from plantid.data.scan import ScanReport, read_scan_json, scan_folder, write_scan_json
from plantid.data.split import make_split
from plantid.errors import PlantidError


def _photo(seed: int, size: int = 128) -> Image.Image:
    """A photo-like picture: a smooth random colour field with a few random shapes (its own layout per seed)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(30, 226, (6, 6, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, mode="RGB").resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.integers(0, size * 3 // 4, 2)
        w, h = rng.integers(size // 8, size // 3, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colour)
        else:
            draw.rectangle([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colour)
    return img


def _save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        kw = {"quality": 92, **kw}
    img.save(path, **kw)
    return path


def _variants(img: Image.Image) -> dict[str, Image.Image]:
    """What happens to a photo on its way into a folder twice: another size, another encoding, a brighter edit."""
    w, h = img.size
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=45)
    return {
        "resized": img.resize((w * 2 // 3, h * 2 // 3), Image.Resampling.BILINEAR),
        "reencoded": Image.open(io.BytesIO(buf.getvalue())).convert("RGB"),
        "brighter": ImageEnhance.Brightness(img).enhance(1.12),
        "cropped": img.crop((2, 2, w - 2, h - 2)),
    }


@pytest.fixture
def folder_with_copies(tmp_path: Path) -> Path:
    """Classes a and b, 10 distinct photos each; photo a/a_00 has four altered copies, one of them filed under b."""
    root = tmp_path / "photos"
    for k, label in enumerate(("a", "b")):
        for i in range(10):
            _save(_photo(100 * k + i), root / label / f"{label}_{i:02d}.jpg")
    for name, img in _variants(_photo(0)).items():
        label = "b" if name == "brighter" else "a"
        _save(img, root / label / f"copy_{name}.png" if name == "reencoded" else root / label / f"copy_{name}.jpg")
    return root


def test_altered_copies_of_a_photo_form_one_group_and_other_photos_none(folder_with_copies: Path) -> None:
    report = scan_folder(folder_with_copies)
    assert report.duplicate_groups == []  # no two files are byte-identical
    assert report.near_duplicate_distance == NEAR_DUPLICATE_DISTANCE
    assert report.near_duplicate_groups == [
        sorted(["a/a_00.jpg", "a/copy_resized.jpg", "a/copy_reencoded.png", "a/copy_cropped.jpg", "b/copy_brighter.jpg"])
    ]
    hashes = {e.relpath: e.phash for e in report.entries}
    assert all(len(h) == 16 for h in hashes.values())
    # the distances agree with imagehash's own comparison, and the distinct photos are far apart
    originals = [p for p in hashes if "copy" not in p]
    dist = [imagehash.hex_to_hash(hashes[p]) - imagehash.hex_to_hash(hashes[q]) for p in originals for q in originals if p < q]
    assert min(dist) > NEAR_DUPLICATE_DISTANCE


def test_threshold_is_settable_and_negative_turns_the_search_off(folder_with_copies: Path) -> None:
    assert scan_folder(folder_with_copies, near_duplicate_distance=-1).near_duplicate_groups == []
    strict = scan_folder(folder_with_copies, near_duplicate_distance=0)
    loose = scan_folder(folder_with_copies, near_duplicate_distance=NEAR_DUPLICATE_DISTANCE)
    assert sum(map(len, strict.near_duplicate_groups)) < sum(map(len, loose.near_duplicate_groups))
    with pytest.raises(PlantidError, match="over 64"):
        scan_folder(folder_with_copies, near_duplicate_distance=65)


def test_same_picture_in_another_colour_is_not_a_near_duplicate(tmp_path: Path) -> None:
    """phash sees grey levels only: a red and a blue tint of one grey picture hash alike; the colour gate parts them."""
    grey = np.asarray(_photo(7).convert("L"), dtype=np.float32)
    dim = grey * 0.25
    red = Image.fromarray(np.stack([grey, dim, dim], -1).astype(np.uint8), mode="RGB")
    blue = Image.fromarray(np.stack([dim, dim, grey], -1).astype(np.uint8), mode="RGB")
    root = tmp_path / "p"
    _save(red, root / "a" / "red.png")
    _save(blue, root / "b" / "blue.png")
    _save(_photo(8), root / "a" / "other.png")
    _save(_photo(9), root / "b" / "other.png")
    report = scan_folder(root)
    names = [e.relpath for e in report.entries]
    pair = tuple(sorted((names.index("a/red.png"), names.index("b/blue.png"))))
    hashes = [e.phash for e in report.entries]
    assert pair in {(i, j) for i, j, _ in close_pairs(hashes, NEAR_DUPLICATE_DISTANCE)}  # phash alone: a match
    assert report.near_duplicate_groups == []


def test_byte_identical_copies_stay_in_duplicate_groups_only_unless_a_near_copy_joins_them(tmp_path: Path) -> None:
    root = tmp_path / "p"
    for i in range(4):
        _save(_photo(20 + i), root / "a" / f"{i}.jpg")
        _save(_photo(40 + i), root / "b" / f"{i}.jpg")
    data = (root / "a" / "0.jpg").read_bytes()
    (root / "b" / "same_as_a0.jpg").write_bytes(data)
    report = scan_folder(root)
    assert report.duplicate_groups == [["a/0.jpg", "b/same_as_a0.jpg"]]
    assert report.near_duplicate_groups == []  # not counted twice
    _save(_photo(20).resize((90, 90)), root / "a" / "0_small.jpg")
    report = scan_folder(root)
    assert report.near_duplicate_groups == [["a/0.jpg", "a/0_small.jpg", "b/same_as_a0.jpg"]]


@pytest.mark.parametrize("seed", range(6))
def test_split_keeps_every_near_duplicate_group_on_one_side(tmp_path: Path, seed: int) -> None:
    root = tmp_path / "p"
    groups = []
    for k, label in enumerate(("a", "b", "c")):
        for i in range(12):
            _save(_photo(1000 * k + i), root / label / f"{i:02d}.jpg")
        for i in range(3):  # three photos per class each get two altered copies; one copy lands in the next class
            base = _photo(1000 * k + i)
            v = _variants(base)
            other = ("a", "b", "c")[(k + 1) % 3]
            _save(v["resized"], root / label / f"{i:02d}_resized.jpg")
            _save(v["brighter"], root / other / f"from_{label}{i:02d}_brighter.jpg")
            groups.append({f"{label}/{i:02d}.jpg", f"{label}/{i:02d}_resized.jpg", f"{other}/from_{label}{i:02d}_brighter.jpg"})
    report = scan_folder(root)
    assert sorted(map(sorted, groups)) == report.near_duplicate_groups
    rows = make_split(report, val=0.2, test=0.2, seed=seed)
    side = {Path(r.path).relative_to(report.root).as_posix(): r.split for r in rows}
    assert len(side) == len(report.entries)
    for g in groups:
        assert len({side[p] for p in g}) == 1, (g, [side[p] for p in g])
    assert set(side.values()) == {"train", "val", "test"}


def test_grouping_holds_groups_together_where_the_plain_split_separates_them(tmp_path: Path) -> None:
    root = tmp_path / "p"
    for k, label in enumerate(("a", "b")):
        for i in range(10):
            base = _photo(500 * k + i)
            _save(base, root / label / f"{i:02d}.jpg")
            _save(_variants(base)["reencoded"], root / label / f"{i:02d}_copy.jpg")
    report = scan_folder(root)
    assert len(report.near_duplicate_groups) == 20
    crossed_plain = crossed_grouped = 0
    for seed in range(5):
        for rep, plain in ((_without_near_duplicates(report), True), (report, False)):
            side = {Path(r.path).name: r.split for r in make_split(rep, val=0.25, test=0.25, seed=seed)}
            crossed = sum(1 for g in report.near_duplicate_groups if len({side[Path(p).name] for p in g}) > 1)
            if plain:
                crossed_plain += crossed
            else:
                crossed_grouped += crossed
    assert crossed_grouped == 0 and crossed_plain > 0


def _without_near_duplicates(report: ScanReport) -> ScanReport:
    data = report.to_json()
    data["near_duplicate_groups"] = []
    return ScanReport.from_json(data)


def test_scan_json_records_the_groups_and_old_files_still_load(folder_with_copies: Path, tmp_path: Path) -> None:
    report = scan_folder(folder_with_copies, near_duplicate_distance=8)
    path = write_scan_json(report, tmp_path / "scan.json")
    data = json.loads(path.read_text())
    assert data["near_duplicate_distance"] == 8
    assert data["near_duplicate_groups"] == report.near_duplicate_groups and report.near_duplicate_groups
    back = read_scan_json(path)
    assert back.near_duplicate_groups == report.near_duplicate_groups
    assert [e.phash for e in back.entries] == [e.phash for e in report.entries]
    assert make_split(back, seed=3) == make_split(report, seed=3)
    # a scan.json written before near duplicates existed: no hashes, no groups; it still splits
    for key in ("near_duplicate_groups", "near_duplicate_distance"):
        data.pop(key)
    for e in data["entries"]:
        e.pop("phash"), e.pop("mean_rgb")
    old = ScanReport.from_json(data)
    assert old.near_duplicate_groups == [] and len(make_split(old)) == len(report.entries)


def test_close_pairs_matches_a_brute_force_count_across_blocks() -> None:
    """Enough hashes for the blockwise comparison to take several blocks; checked against unpackbits."""
    rng = np.random.default_rng(0)
    n = 2300
    words = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    hashes = [f"{int(w):016x}" for w in words]
    hashes[5] = ""  # a photo without a hash is skipped
    got = {(i, j): d for i, j, d in close_pairs(hashes, 25)}
    expected = {}
    for i in range(n):
        if not hashes[i]:
            continue
        x = (words[i] ^ words[i + 1 :]).astype(">u8").view(np.uint8).reshape(-1, 8)
        d = np.unpackbits(x, axis=1).sum(axis=1)
        for off in np.nonzero(d <= 25)[0]:
            j = i + 1 + int(off)
            if hashes[j]:
                expected[(i, j)] = int(d[off])
    assert expected and got == expected
    assert group_near_duplicates(hashes, -1) == []


def test_cli_scan_reports_the_count_and_split_keeps_groups(folder_with_copies: Path, tmp_path: Path) -> None:
    env_cmd = [sys.executable, "-m", "plantid.cli"]
    scan = subprocess.run(
        [*env_cmd, "scan", str(folder_with_copies), "--out", str(tmp_path / "scan.json")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
    )
    assert scan.returncode == 0, scan.stderr
    text = " ".join(scan.stdout.split())
    assert "1 group(s) of near-duplicate photos (5 files, perceptual-hash distance <= 10), 1 of them across classes" in text
    off = subprocess.run(
        [*env_cmd, "scan", str(folder_with_copies), "--out", str(tmp_path / "off.json"), "--near-dup-distance", "-1"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
    )
    assert off.returncode == 0, off.stderr
    assert json.loads((tmp_path / "off.json").read_text())["near_duplicate_groups"] == []
    split = subprocess.run(
        [*env_cmd, "split", str(folder_with_copies), "--out", str(tmp_path / "s"), "--seed", "1"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
    )
    assert split.returncode == 0, split.stderr
    assert "kept each of 1 near-duplicate group(s) on one side" in split.stdout
    rows = (tmp_path / "s" / "split.csv").read_text().splitlines()[1:]
    sides = {r.split(",")[2] for r in rows if "/a/a_00.jpg" in r or "/copy_" in r}
    assert len(sides) == 1

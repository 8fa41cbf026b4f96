"""make_split / manifests / materialize on real scanned folders."""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plantid.data.scan import scan_folder
from plantid.data.split import (
    ManifestRow,
    make_split,
    manifest_text,
    materialize,
    read_manifest,
    write_manifest,
)
from plantid.errors import PlantidError
from tests.support.cli import run_plantid


def _jpeg(seed: int, size: int = 8) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _write_tree(root: Path, files: dict[str, bytes], order: list[str]) -> Path:
    for rel in order:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(files[rel])
    return root


def _uneven_files(counts: dict[str, int]) -> dict[str, bytes]:
    files = {}
    seed = 0
    for label, n in counts.items():
        for i in range(n):
            files[f"{label}/{label}_{i:03d}.jpg"] = _jpeg(seed)
            seed += 1
    return files


def test_split_is_deterministic_and_independent_of_creation_order(tmp_path: Path) -> None:
    files = _uneven_files({"rose": 9, "tulip": 14, "fern": 5})
    root = tmp_path / "photos"
    order = sorted(files)
    _write_tree(root, files, order)
    first = manifest_text(make_split(scan_folder(root), seed=7))
    assert first == manifest_text(make_split(scan_folder(root), seed=7))

    shutil.rmtree(root)
    shuffled = order[:]
    random.Random(3).shuffle(shuffled)
    shuffled.reverse()
    _write_tree(root, files, shuffled)  # same files, created in another order
    out = write_manifest(make_split(scan_folder(root), seed=7), tmp_path / "split.csv")
    assert out.read_bytes() == first.encode("utf-8")
    assert first.splitlines()[0] == "path,label,split,sha256"

    other_seed = manifest_text(make_split(scan_folder(root), seed=8))
    assert other_seed != first  # the seed matters


def test_split_does_not_depend_on_hash_randomization(tiny_folder: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path;"
        "from plantid.data.scan import scan_folder;"
        "from plantid.data.split import make_split, manifest_text;"
        "sys.stdout.write(manifest_text(make_split(scan_folder(Path(sys.argv[1])), seed=3)))"
    )
    outs = []
    for hashseed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        res = subprocess.run([sys.executable, "-c", code, str(tiny_folder)], capture_output=True, text=True, env=env,
                             check=True, timeout=60)
        outs.append(res.stdout)
    assert outs[0] == outs[1]
    assert outs[0] == manifest_text(make_split(scan_folder(tiny_folder), seed=3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_is_stratified_within_one_image(tmp_path: Path, seed: int) -> None:
    counts = {"a": 7, "b": 13, "c": 20, "d": 33, "e": 3}
    root = _write_tree(tmp_path / "p", _uneven_files(counts), sorted(_uneven_files(counts)))
    val, test = 0.2, 0.1
    rows = make_split(scan_folder(root), val=val, test=test, seed=seed)
    assert len(rows) == sum(counts.values())
    got = Counter((r.label, r.split) for r in rows)
    for label, n in counts.items():
        assert abs(got[(label, "val")] - n * val) <= 1, (label, got)
        assert abs(got[(label, "test")] - n * test) <= 1, (label, got)
        assert got[(label, "train")] >= 1
    order = [("train", "val", "test").index(r.split) for r in rows]
    assert order == sorted(order)


def test_duplicates_land_on_the_same_split(make_image_folder, tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "p", classes=("a", "b", "c"), per_class=10, size=8)
    for i in range(4):  # several duplicate groups, within a class and across classes
        shutil.copy(root / "a" / f"a_{i:03d}.jpg", root / "a" / f"copy_{i}.jpg")
        shutil.copy(root / "a" / f"a_{i:03d}.jpg", root / "b" / f"clash_{i}.jpg")
        shutil.copy(root / "c" / f"c_{i:03d}.jpg", root / "c" / f"twin_{i}.jpg")
    report = scan_folder(root)
    assert len(report.duplicate_groups) == 8 and len(report.conflicts) == 4
    for seed in range(6):
        rows = make_split(report, val=0.2, test=0.2, seed=seed)
        splits_by_hash = defaultdict(set)
        for r in rows:
            splits_by_hash[r.sha256].add(r.split)
        assert all(len(s) == 1 for s in splits_by_hash.values()), seed
        assert {r.split for r in rows} == {"train", "val", "test"}


def test_already_split_root_keeps_given_splits(make_image_folder, tmp_path: Path) -> None:
    root = tmp_path / "given"
    make_image_folder(root / "train", classes=("x", "y"), per_class=5, size=8, seed=1)
    make_image_folder(root / "val", classes=("x", "y"), per_class=2, size=8, seed=2)
    rows = make_split(scan_folder(root), val=0.5, test=0.3, seed=9)
    by_split = Counter(r.split for r in rows)
    assert by_split == {"train": 10, "val": 4}
    for r in rows:
        assert Path(r.path).relative_to(root.resolve()).parts[0] == r.split


def test_manifest_round_trip_and_its_queries(tiny_manifest: Path, tiny_folder: Path) -> None:
    m = read_manifest(tiny_manifest)
    assert m.classes == ["a", "b", "c"]
    assert m.class_counts("train") == {"a": 6, "b": 6, "c": 6}
    assert m.class_counts("val") == {"a": 3, "b": 3, "c": 3}
    assert m.class_counts() == {"a": 12, "b": 12, "c": 12}
    assert m.split_sizes() == {"train": 18, "val": 9, "test": 9}
    assert len(m.rows_for("test")) == 9 and all(r.split == "test" for r in m.rows_for("test"))
    assert m.digest() == hashlib.sha256(tiny_manifest.read_bytes()).hexdigest()
    for r in m.rows:
        assert Path(r.path).is_file() and Path(r.path).is_absolute()
        assert r.sha256 == hashlib.sha256(Path(r.path).read_bytes()).hexdigest()
    # write(read(x)) == x
    again = write_manifest(m.rows, tiny_manifest.parent / "again.csv")
    assert again.read_bytes() == tiny_manifest.read_bytes()
    with pytest.raises(PlantidError, match="unknown split"):
        m.rows_for("holdout")


def test_relative_paths_resolve_against_the_manifest(tiny_folder: Path) -> None:
    rel = tiny_folder.parent / "rel.csv"
    rel.write_text("path,label,split,sha256\nphotos/a/a_000.jpg,a,train,\nphotos/b/b_000.jpg,b,val,\n")
    m = read_manifest(rel)
    assert m.rows[0].path == str(tiny_folder / "a" / "a_000.jpg")
    assert m.rows[1].split == "val" and m.rows[1].sha256 == ""


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "header must be"),
        ("file,class,split\nx.jpg,a,train\n", "header must be"),
        ("path,label,split,sha256\n", "lists no photos"),
        ("path,label,split,sha256\n/x/1.jpg,a,train,\n/x/2.jpg,b,holdout,\n", r":3: unknown split 'holdout'"),
        ("path,label,split,sha256\n/x/1.jpg,a,train,\n/x/1.jpg,b,val,\n", "listed twice"),
        ("path,label,split,sha256\n/x/1.jpg,a,train,\n/x/2.jpg,a,val,\n", "single class"),
        ("path,label,split,sha256\n/x/1.jpg,a,train\n", "expected 4 columns"),
        ("path,label,split,sha256\n/x/1.jpg,a,train,xyz\n/x/2.jpg,b,val,\n", "not 64 hex digits"),
    ],
)
def test_bad_manifests_are_plantid_errors(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "split.csv"
    p.write_text(text)
    with pytest.raises(PlantidError, match=message) as exc:
        read_manifest(p)
    assert str(p) in str(exc.value)


def test_missing_manifest_and_unwritable_output(tmp_path: Path) -> None:
    with pytest.raises(PlantidError, match="manifest not found.*plantid split"):
        read_manifest(tmp_path / "nope.csv")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rows = [ManifestRow("/x/1.jpg", "a", "train", ""), ManifestRow("/x/2.jpg", "b", "val", "")]
    with pytest.raises(PlantidError, match="cannot write the split manifest") as exc:
        write_manifest(rows, blocker / "split.csv")
    assert str(blocker / "split.csv") in str(exc.value)


def test_bad_fractions(tiny_folder: Path) -> None:
    report = scan_folder(tiny_folder)
    with pytest.raises(PlantidError, match="val \\+ test"):
        make_split(report, val=0.6, test=0.5)
    rows = make_split(report, val=0.0, test=0.0)
    assert {r.split for r in rows} == {"train"}


@pytest.mark.parametrize("mode", ["copy", "link"])
def test_materialize(make_image_folder, tmp_path: Path, mode: str) -> None:
    root = make_image_folder(tmp_path / "p", classes=("a", "b"), per_class=6, size=8)
    (root / "a" / "x").mkdir()
    (root / "a" / "y").mkdir()
    (root / "a" / "x" / "same.jpg").write_bytes(_jpeg(101))
    (root / "a" / "y" / "same.jpg").write_bytes(_jpeg(102))
    (root / "a" / "z").mkdir()
    (root / "a" / "z" / "same.jpg").write_bytes(_jpeg(103))
    rows = make_split(scan_folder(root), val=0.0, test=0.25, seed=0)
    # put all three 'same.jpg' photos in one split/class folder to force collisions
    rows = [ManifestRow(r.path, r.label, "train", r.sha256) if r.path.endswith("same.jpg") else r for r in rows]
    (tmp_path / "out").mkdir()
    write_manifest(rows, tmp_path / "out" / "split.csv")  # the CLI materializes beside split.csv
    out = materialize(rows, tmp_path / "out", mode=mode)
    assert out == tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["split.csv", "test", "train"]
    written = sorted(p for p in out.rglob("*") if not p.is_dir() and p.name != "split.csv")
    assert len(written) == len(rows)
    same = sorted(p.name for p in (out / "train" / "a").glob("same*"))
    assert len(same) == 3 and "same.jpg" in same
    contents = Counter(hashlib.sha256(p.read_bytes()).hexdigest() for p in written)
    assert contents == Counter(r.sha256 for r in rows)
    if mode == "link":
        assert all(p.is_symlink() and Path(os.readlink(p)).is_absolute() for p in written)
    else:
        assert not any(p.is_symlink() for p in written)
    # the materialized tree scans back as an already split root with the same splits
    rescanned = scan_folder(out)
    assert rescanned.presplit
    assert Counter((e.label, e.given_split) for e in rescanned.entries) == Counter((r.label, r.split) for r in rows)
    # deterministic names: doing it again gives the same tree
    out2 = materialize(list(reversed(rows)), tmp_path / "out2", mode=mode)
    assert sorted(p.relative_to(out2) for p in out2.rglob("*")) == sorted(
        p.relative_to(out) for p in out.rglob("*") if p.name != "split.csv"
    )
    with pytest.raises(PlantidError, match="already exists") as exc:
        materialize(rows, out, mode=mode)
    assert str(out / "train") in str(exc.value)
    assert not list(out.glob(".materialize*")) and not list(out2.glob(".materialize*"))  # no temp folder left


def test_materialize_failure_leaves_nothing(tiny_manifest: Path, tmp_path: Path) -> None:
    rows = read_manifest(tiny_manifest).rows
    rows = rows + [ManifestRow(str(tmp_path / "gone.jpg"), "a", "test", "")]
    with pytest.raises(PlantidError, match="gone.jpg: listed in the manifest but missing"):
        materialize(rows, tmp_path / "out", mode="copy")
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(PlantidError, match="unknown materialize mode"):
        materialize(rows, tmp_path / "out", mode="move")  # type: ignore[arg-type]


def test_paths_in_messages_are_never_cut_by_a_newline_on_a_narrow_terminal(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / ("a-long-folder-name-" * 4) / "split"
    proc = run_plantid("split", tiny_folder, "--out", out, env={"COLUMNS": "40"})
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out / 'split.csv'}" in proc.stdout  # one line, whole, for the terminal to fold

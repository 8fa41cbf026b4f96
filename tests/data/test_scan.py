"""scan_folder on real files: good photos, a corpus of bad inputs, odd layouts, duplicates, errors."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from plantid.data.images import MAX_IMAGE_PIXELS
from plantid.data.scan import ScanReport, print_scan_table, read_scan_json, scan_folder, write_scan_json
from plantid.errors import PlantidError
from tests.support.images import png_bomb

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def snapshot(root: Path) -> dict[str, tuple]:
    """Every name under root with its kind and content hash / link target / permission bits."""
    snap: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            st = os.lstat(p)
            if p.is_symlink():
                snap[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                snap[rel] = ("dir", st.st_mode)
            elif not stat.S_ISREG(st.st_mode):
                snap[rel] = ("special", st.st_mode)
            elif st.st_mode & 0o444 == 0:
                snap[rel] = ("file-unreadable", st.st_size, st.st_mtime_ns)
            else:
                snap[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mode, st.st_mtime_ns)
    return snap


def jpeg_bytes(colour=(200, 30, 30), size=(24, 24), exif: Image.Exif | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, colour)
    img.save(buf, format="JPEG", quality=90, **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


def test_scan_good_folder(tiny_folder: Path) -> None:
    before = snapshot(tiny_folder)
    report = scan_folder(tiny_folder)
    assert isinstance(report, ScanReport)
    assert report.root == tiny_folder.resolve()
    assert report.classes == ["a", "b", "c"]
    assert report.class_counts() == {"a": 12, "b": 12, "c": 12}
    assert report.bad == [] and report.duplicate_groups == [] and report.conflicts == []
    assert not report.presplit
    keys = [(e.label, e.relpath) for e in report.entries]
    assert keys == sorted(keys)
    first = report.entries[0]
    assert first.relpath == "a/a_000.jpg" and first.label == "a" and first.given_split is None
    assert Path(first.path).is_absolute() and Path(first.path) == tiny_folder.resolve() / "a" / "a_000.jpg"
    assert first.sha256 == hashlib.sha256(Path(first.path).read_bytes()).hexdigest()
    assert (first.width, first.height, first.mode) == (32, 32, "RGB")
    assert snapshot(tiny_folder) == before


def test_bad_corpus_hidden_nested_unicode_and_symlink_loops(make_image_folder, tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=3, size=16)
    a = root / "a"
    good = (a / "a_000.jpg").read_bytes()
    (a / "zero.jpg").write_bytes(b"")
    (a / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (a / "text.jpg").write_text("this is not a photo\n")
    (a / "bomb.png").write_bytes(png_bomb(10_000))
    assert 10_000 * 10_000 > MAX_IMAGE_PIXELS
    (a / "notes.txt").write_text("field notes")
    (a / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (a / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (a / ".hidden.jpg").write_bytes(good)
    (root / "__MACOSX" / "a").mkdir(parents=True)  # zip litter: not a class
    (root / "__MACOSX" / "a" / "._a_000.jpg").write_bytes(b"\x00\x05\x16\x07")
    (root / ".git").mkdir()
    (root / ".git" / "x.jpg").write_bytes(good)
    (a / "nested" / "deeper").mkdir(parents=True)
    (a / "nested" / "deeper" / "deep.jpg").write_bytes(jpeg_bytes((10, 200, 10)))
    (a / "fleur_é_花.JPG").write_bytes(jpeg_bytes((10, 10, 200)))
    os.symlink("does-not-exist.jpg", a / "broken.jpg")
    os.mkfifo(a / "pipe.jpg")  # reading it would block forever: must be rejected without opening
    os.symlink("..", a / "loop_up")  # a/loop_up -> root (already visited)
    os.symlink(".", a / "nested" / "self")  # a/nested/self -> a/nested
    (root / "README.md").write_text("loose file at the top")
    before = snapshot(root)

    report = scan_folder(root)

    reasons = {Path(b.path).relative_to(root).as_posix(): b.reason for b in report.bad}
    assert reasons["a/zero.jpg"] == "empty file (0 bytes)"
    assert "truncated" in reasons["a/truncated.jpg"]
    assert "not an image" in reasons["a/text.jpg"]
    assert "decompression bomb" in reasons["a/bomb.png"]
    assert "not an image file extension" in reasons["a/notes.txt"]
    assert reasons["a/broken.jpg"] == "broken symlink"
    assert reasons["a/pipe.jpg"] == "not a regular file"
    assert "already scanned" in reasons["a/loop_up"]
    assert "already scanned" in reasons["a/nested/self"]
    assert "not inside a class folder" in reasons["README.md"]
    assert len(reasons) == 10
    rel = {e.relpath for e in report.entries}
    assert rel == {"a/a_000.jpg", "a/a_001.jpg", "a/a_002.jpg", "a/nested/deeper/deep.jpg", "a/fleur_é_花.JPG",
                   "b/b_000.jpg", "b/b_001.jpg", "b/b_002.jpg"}
    assert all(e.label == "a" for e in report.entries if e.relpath.startswith("a/"))
    assert not any("hidden" in r or ".DS_Store" in r or "Thumbs" in r or ".git" in r for r in rel | set(reasons))
    assert report.classes == ["a", "b"] and report.class_counts() == {"a": 5, "b": 3}
    assert snapshot(root) == before  # DATA is never modified


def test_colour_modes_are_converted_with_notes(make_image_folder, tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=1, size=16)
    a = root / "a"
    Image.new("RGBA", (10, 12), (255, 0, 0, 128)).save(a / "rgba.png")
    Image.new("P", (10, 12), 3).save(a / "palette.png")
    Image.new("L", (10, 12), 77).save(a / "gray.jpg")
    Image.new("LA", (10, 12), (77, 200)).save(a / "gray_alpha.png")
    Image.new("CMYK", (10, 12), (0, 255, 255, 0)).save(a / "cmyk.jpg")
    Image.fromarray(np.full((12, 10), 40000, dtype=np.uint16)).save(a / "sixteen.png")
    Image.new("RGB", (10, 12), (1, 2, 3)).save(a / "plain.bmp")
    report = scan_folder(root)
    assert report.bad == []
    by_name = {Path(e.relpath).name: e for e in report.entries}
    expected_modes = {"rgba.png": "RGBA", "palette.png": "P", "gray.jpg": "L", "gray_alpha.png": "LA",
                      "cmyk.jpg": "CMYK", "plain.bmp": "RGB"}
    for name, mode in expected_modes.items():
        e = by_name[name]
        assert e.mode == mode, name
        assert (e.width, e.height) == (10, 12), name
        if mode != "RGB":
            assert f"converted {mode} to RGB" in e.notes, (name, e.notes)
    sixteen = by_name["sixteen.png"]
    assert sixteen.mode.startswith("I") and any(n.startswith("converted I") for n in sixteen.notes)


def test_exif_orientation_is_applied(make_image_folder, tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=1, size=16)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    (root / "a" / "rotated.jpg").write_bytes(jpeg_bytes(size=(40, 20), exif=exif))
    report = scan_folder(root)
    e = next(e for e in report.entries if e.relpath == "a/rotated.jpg")
    assert (e.width, e.height) == (20, 40)
    assert "EXIF orientation 6 applied" in e.notes


@pytest.mark.skipif(not IS_ROOT, reason="only meaningful when the test can read everything (root)")
def test_directory_named_like_a_photo_is_walked_not_decoded(make_image_folder, tmp_path: Path) -> None:
    # Running as root, chmod 000 does not stop reads; a folder named x.jpg is the unreadable-file stand-in.
    root = make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=2, size=16)
    (root / "a" / "x.jpg").mkdir()
    report = scan_folder(root)
    assert report.class_counts() == {"a": 2, "b": 2}
    assert report.bad == []


@pytest.mark.skipif(IS_ROOT, reason="root can read a chmod 000 file, so it cannot be unreadable here")
def test_unreadable_file_is_reported(make_image_folder, tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=2, size=16)
    locked = root / "a" / "locked.jpg"
    locked.write_bytes(jpeg_bytes())
    locked.chmod(0)
    try:
        report = scan_folder(root)
    finally:
        locked.chmod(0o644)
    reasons = {Path(b.path).name: b.reason for b in report.bad}
    assert reasons["locked.jpg"].startswith("unreadable")


def test_duplicates_and_label_conflicts(make_image_folder, tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=4, size=16)
    shutil.copy(root / "a" / "a_000.jpg", root / "b" / "stolen.jpg")  # conflict a/b
    shutil.copy(root / "c" / "c_001.jpg", root / "c" / "again.jpg")  # duplicate within c
    report = scan_folder(root)
    assert report.duplicate_groups == [["a/a_000.jpg", "b/stolen.jpg"], ["c/again.jpg", "c/c_001.jpg"]]
    assert report.conflicts == [["a/a_000.jpg", "b/stolen.jpg"]]
    assert report.class_counts() == {"a": 4, "b": 5, "c": 5}  # duplicates are kept and flagged


def test_already_split_root(make_image_folder, tmp_path: Path) -> None:
    root = tmp_path / "split"
    make_image_folder(root / "train", classes=("x", "y"), per_class=4, size=16, seed=1)
    make_image_folder(root / "validation", classes=("x", "y"), per_class=2, size=16, seed=2)
    make_image_folder(root / "test", classes=("x", "y", "z"), per_class=1, size=16, seed=3)
    report = scan_folder(root)
    assert report.presplit
    assert report.classes == ["x", "y", "z"]
    assert report.class_counts() == {"x": 7, "y": 7, "z": 1}
    given = {e.relpath: e.given_split for e in report.entries}
    assert given["train/x/x_000.jpg"] == "train"
    assert given["validation/y/y_001.jpg"] == "val"
    assert given["test/z/z_000.jpg"] == "test"
    assert set(given.values()) == {"train", "val", "test"}


def test_split_root_mixed_with_class_folders_is_an_error(make_image_folder, tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    make_image_folder(root / "train", classes=("x", "y"), per_class=1, size=16)
    make_image_folder(root, classes=("rose",), per_class=1, size=16)
    with pytest.raises(PlantidError, match="mixes split folders"):
        scan_folder(root)


def test_a_class_named_test_without_subfolders_is_a_class(make_image_folder, tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", classes=("test", "train"), per_class=2, size=16)
    report = scan_folder(root)
    assert not report.presplit and report.classes == ["test", "train"]


def test_user_errors(make_image_folder, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(PlantidError, match="folder not found") as exc:
        scan_folder(missing)
    assert str(missing) in str(exc.value)

    a_file = tmp_path / "file.jpg"
    a_file.write_bytes(jpeg_bytes())
    with pytest.raises(PlantidError, match="not a folder") as exc:
        scan_folder(a_file)
    assert str(a_file) in str(exc.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "loose.jpg").write_bytes(jpeg_bytes())
    with pytest.raises(PlantidError, match="no class folders") as exc:
        scan_folder(empty)
    assert str(empty.resolve()) in str(exc.value)

    one = make_image_folder(tmp_path / "one", classes=("only",), per_class=2, size=16)
    with pytest.raises(PlantidError, match="only one class") as exc:
        scan_folder(one)
    assert str(one.resolve()) in str(exc.value)

    hollow = make_image_folder(tmp_path / "hollow", classes=("a", "b"), per_class=2, size=16)
    (hollow / "c").mkdir()
    (hollow / "c" / "broken.jpg").write_bytes(b"")
    with pytest.raises(PlantidError, match="class 'c' has no usable photos.*broken.jpg: empty file"):
        scan_folder(hollow)


def test_write_scan_json_and_table(tiny_folder: Path, tmp_path: Path) -> None:
    (tiny_folder / "a" / "bad.jpg").write_bytes(b"nope")
    report = scan_folder(tiny_folder)
    out = write_scan_json(report, tmp_path / "out" / "scan.json")
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["classes"] == ["a", "b", "c"]
    assert data["class_counts"] == {"a": 12, "b": 12, "c": 12}
    assert data["num_images"] == 36 and len(data["entries"]) == 36
    assert data["bad"][0]["path"].endswith("bad.jpg") and "not an image" in data["bad"][0]["reason"]
    assert data["entries"][0]["sha256"] == report.entries[0].sha256
    assert not list((tmp_path / "out").glob(".*tmp"))  # no temp file left behind
    assert read_scan_json(out) == report
    with pytest.raises(PlantidError, match="scan report not found"):
        read_scan_json(tmp_path / "missing.json")

    console = Console(record=True, width=160, file=io.StringIO())
    print_scan_table(report, console)
    text = console.export_text()
    for needle in ("a", "b", "c", "12", "32x32", "RGB 12", "bad.jpg", "not an image", "total", "36"):
        assert needle in text


def test_unwritable_scan_json_is_a_clear_error(tiny_folder: Path, tmp_path: Path) -> None:
    report = scan_folder(tiny_folder)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where a folder should be")
    target = blocker / "scan.json"
    with pytest.raises(PlantidError, match="cannot write the scan report") as exc:
        write_scan_json(report, target)
    assert str(target) in str(exc.value)
    if not IS_ROOT:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(PlantidError, match="cannot write"):
                write_scan_json(report, ro / "scan.json")
        finally:
            ro.chmod(0o755)

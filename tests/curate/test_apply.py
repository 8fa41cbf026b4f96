"""`plantid apply`: decisions carried out in the photo folder, idempotent, undone byte for byte."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from plantid.curate.apply import apply_decisions, plan_apply, undo_apply
from plantid.curate.corrections import append_decision, effective_decisions, read_decisions
from plantid.data.scan import scan_folder
from plantid.errors import PlantidError
from plantid.runlock import run_lock
from tests.support.cli import PLANTID, one_line_error, run_plantid
from tests.support.images import write_class_image

CLASSES = ("a", "b", '<b>x&y "q"')


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None) under root, by relative path."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def folder_and_run(make_image_folder, tmp_path: Path) -> tuple[Path, Path, Path]:
    folder = make_image_folder(tmp_path / "photos", classes=CLASSES, per_class=6)
    run = tmp_path / "run"
    run.mkdir()
    import numpy as np

    outside = write_class_image(tmp_path / "unlabelled" / "new.jpg", 0, 32, np.random.default_rng(5))
    return folder.resolve(), run, outside.resolve()


def test_apply_is_idempotent_and_undo_restores_the_folder_byte_for_byte(folder_and_run) -> None:
    folder, run, outside = folder_and_run
    odd = CLASSES[2]
    original = _snapshot(folder)
    append_decision(run, str(folder / "a" / "a_000.jpg"), "relabel", label="b", given="a", source="audit")
    append_decision(run, str(folder / "a" / "a_001.jpg"), "relabel", label=odd, given="a", source="val error")
    append_decision(run, str(folder / "b" / "b_000.jpg"), "exclude", given="b", source="audit")
    append_decision(run, str(folder / odd / f"{odd}_000.jpg"), "keep", given=odd, source="audit")
    append_decision(run, str(outside), "relabel", label="a", source="unsure")

    dry = apply_decisions(run, folder, dry_run=True)
    assert len(dry.operations) == 4 and _snapshot(folder) == original  # a dry run changes nothing

    done = apply_decisions(run, folder)
    assert [op.kind for op in done.operations] == ["move", "move", "move", "copy"]
    assert (folder / "b" / "a_000.jpg").is_file() and not (folder / "a" / "a_000.jpg").exists()
    assert (folder / odd / "a_001.jpg").is_file()
    assert (folder / "_excluded" / "b" / "b_000.jpg").is_file()
    assert (folder / "a" / "new.jpg").read_bytes() == outside.read_bytes() and outside.is_file()
    report = scan_folder(folder)  # the excluded photo is out of the data set, not a class
    assert report.classes == sorted(CLASSES) and len(report.entries) == 18 - 1 + 1
    after = _snapshot(folder)

    again = apply_decisions(run, folder)
    assert again.operations == [] and _snapshot(folder) == after  # re-running is a no-op

    append_decision(run, str(folder / "a" / "a_001.jpg"), "undo")  # the review takes one decision back
    back = apply_decisions(run, folder)
    assert [op.describe() for op in back.operations] == [f"move {folder / odd / 'a_001.jpg'} -> {folder / 'a' / 'a_001.jpg'}"]

    undone = undo_apply(run, folder)
    assert len(undone.operations) == 5
    assert _snapshot(folder) == original  # byte for byte, no folder left behind
    assert undo_apply(run, folder).operations == []


def test_photos_of_one_name_relabelled_to_one_species_each_keep_a_name(folder_and_run) -> None:
    """Cameras number their files alike: IMG_0001.jpg in two class folders, both relabelled into a
    third that has one too. Every photo lands, under a name of its own; undo restores the folder."""
    folder, run, _ = folder_and_run
    odd = CLASSES[2]
    for label in ("a", "b"):
        os.replace(folder / label / f"{label}_000.jpg", folder / label / "IMG_0001.jpg")
    os.replace(folder / odd / f"{odd}_000.jpg", folder / odd / "IMG_0001.jpg")
    original = _snapshot(folder)
    for label in ("a", "b"):
        append_decision(run, str(folder / label / "IMG_0001.jpg"), "relabel", label=odd, given=label, source="audit")
    done = apply_decisions(run, folder)
    assert [op.kind for op in done.operations] == ["move", "move"]
    landed = sorted(p.name for p in (folder / odd).glob("IMG_0001*.jpg"))
    assert len(landed) == 3 and landed[0] == "IMG_0001.jpg"  # the photo already there keeps its name
    assert sorted(p.read_bytes() for p in (folder / odd).glob("IMG_0001*.jpg")) == sorted(
        original[f"{d}/IMG_0001.jpg"] for d in ("a", "b", odd))
    assert apply_decisions(run, folder).operations == []
    undo_apply(run, folder)
    assert _snapshot(folder) == original


def test_a_photo_changed_since_review_is_left_alone(folder_and_run) -> None:
    folder, run, _ = folder_and_run
    photo = folder / "a" / "a_002.jpg"
    append_decision(run, str(photo), "exclude", given="a")
    photo.write_bytes(photo.read_bytes() + b"\0")
    operations, notes = plan_apply(run, folder)
    assert operations == [] and "changed since it was reviewed" in notes[0]


def test_undo_takes_back_only_the_latest_decision(folder_and_run) -> None:
    folder, run, _ = folder_and_run
    path = str(folder / "a" / "a_003.jpg")
    append_decision(run, path, "relabel", label="b")
    append_decision(run, path, "exclude")
    append_decision(run, path, "undo")
    (run / "corrections.jsonl").open("a").write('{"time": "cut sh')  # a line cut short by a crash
    decisions = read_decisions(run)
    assert [d.action for d in decisions] == ["relabel", "exclude", "undo"]
    assert effective_decisions(decisions)[path].label == "b"


def test_apply_elsewhere_is_refused_until_undone(folder_and_run, make_image_folder, tmp_path: Path) -> None:
    folder, run, _ = folder_and_run
    append_decision(run, str(folder / "a" / "a_000.jpg"), "exclude")
    apply_decisions(run, folder)
    other = make_image_folder(tmp_path / "other")
    with pytest.raises(PlantidError, match="undo them there first"):
        apply_decisions(run, other)
    with pytest.raises(PlantidError, match="cannot relabel"):
        append_decision(run, str(folder / "b" / "b_001.jpg"), "relabel", label="_excluded")
        plan_apply(run, folder)


def test_apply_command_refuses_a_missing_folder(trained_run: Path, tmp_path: Path) -> None:
    proc = subprocess.run([*PLANTID, "apply", str(trained_run), "--to", str(tmp_path / "nowhere")],
                          capture_output=True, text=True)
    assert "not a folder" in one_line_error(proc)


def test_review_decisions_and_apply_are_refused_while_another_command_holds_the_run(make_image_folder, copy_run: Path,
                                                                                    tmp_path: Path) -> None:
    folder, run = make_image_folder(tmp_path / "photos", classes=CLASSES, per_class=2).resolve(), copy_run
    append_decision(run, str(folder / "a" / "a_000.jpg"), "relabel", label="b", given="a", source="audit")
    before = _snapshot(folder)
    with run_lock(run, "train"):
        with pytest.raises(PlantidError, match=f"in use by another plantid command \\(process {os.getpid()}\\)"):
            append_decision(run, str(folder / "b" / "b_000.jpg"), "exclude", given="b", source="audit")
        line = one_line_error(run_plantid("apply", run, "--to", folder))
        assert f"process {os.getpid()}" in line and "plantid apply" in line, line
        assert _snapshot(folder) == before and not (run / "applied.json").exists()
    assert len(read_decisions(run)) == 1  # the refused decision left no line behind
    done = run_plantid("apply", run, "--to", folder)
    assert done.returncode == 0, done.stderr
    assert (folder / "b" / "a_000.jpg").is_file()

"""`plantid sort`: unlabelled photos filed by species / unsure / unknown, originals untouched."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plantid.curate.sort import SORTED_CSV, UNKNOWN, UNSURE, sort_photos
from plantid.errors import PlantidError
from tests.support.cli import PLANTID, one_line_error
from tests.support.images import write_class_image


def _unlabelled(root: Path) -> Path:
    """Photos of the run's first two classes (colours 0 and 1) in nested folders, plus noise pictures."""
    rng = np.random.default_rng(7)
    for i in range(4):
        write_class_image(root / "day1" / f"p{i}.jpg", 0, 32, rng)
        write_class_image(root / "day2" / f"p{i}.jpg", 1, 32, rng)  # same names as day1: must not collide
    for i in range(3):
        noise = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(noise).save(root / f"noise{i}.png")
    (root / "notes.txt").write_text("not a photo")
    return root


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trusted_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny run with its trust files fitted (temperature, unknown-photo score)."""
    import shutil

    from plantid.trustfit.fit import fit_trust

    run = Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("sort") / "run", symlinks=True))
    fit_trust(run)
    return run


def test_sort_links_every_photo_and_leaves_originals(trusted_run: Path, tmp_path: Path) -> None:
    photos = _unlabelled(tmp_path / "new")
    before = _tree_digest(photos)
    result = sort_photos(trusted_run, photos, tmp_path / "sorted", sure=0.8)
    assert _tree_digest(photos) == before  # nothing moved or changed

    rows = list(csv.DictReader((tmp_path / "sorted" / SORTED_CSV).open(encoding="utf-8")))
    assert len(rows) == 11 and len({r["placed"] for r in rows}) == 11  # day1/p0 and day2/p0 both placed
    classes = set(json.loads((trusted_run / "labels.json").read_text(encoding="utf-8")))
    for row in rows:
        placed = Path(row["placed"])
        assert placed.is_symlink() and placed.resolve() == Path(row["path"]).resolve()
        assert placed.parent.name == row["decision"]
        if row["decision"] in classes:
            assert row["decision"] == row["species"] and float(row["probability"]) >= 0.8
        elif row["decision"] == UNSURE:
            assert float(row["probability"]) < 0.8
        else:
            assert row["decision"] == UNKNOWN and float(row["ood_score"]) > 0
    noise = [r["decision"] for r in rows if "noise" in r["path"]]
    assert noise.count(UNKNOWN) >= 2, rows  # pure noise looks like none of the species
    assert result.counts()[UNKNOWN] >= 2


def test_sort_copy_places_copies_with_the_same_decisions(trusted_run: Path, tmp_path: Path) -> None:
    photos = _unlabelled(tmp_path / "new")
    linked = sort_photos(trusted_run, photos, tmp_path / "linked", sure=0.9)
    copied = sort_photos(trusted_run, photos, tmp_path / "copied", copy=True, sure=0.9)
    assert [d.decision for d in copied.decisions] == [d.decision for d in linked.decisions]
    for d in copied.decisions:
        placed = Path(d.placed)
        assert not placed.is_symlink() and placed.read_bytes() == Path(d.path).read_bytes()


def test_sort_refuses_an_existing_out_and_out_inside_the_photos(trusted_run: Path, tmp_path: Path) -> None:
    photos = _unlabelled(tmp_path / "new")
    (tmp_path / "taken").mkdir()
    with pytest.raises(PlantidError, match="already exists"):
        sort_photos(trusted_run, photos, tmp_path / "taken")
    with pytest.raises(PlantidError, match="inside"):
        sort_photos(trusted_run, photos, photos / "sorted")
    proc = subprocess.run([*PLANTID, "sort", str(trusted_run), str(photos), "--out", str(tmp_path / "taken")],
                          capture_output=True, text=True)
    assert "already exists" in one_line_error(proc)


def test_sort_by_default_files_each_photo_as_the_run_answers_it(trusted_run: Path, tmp_path: Path) -> None:
    from plantid.infer.predictor import Predictor

    photos = _unlabelled(tmp_path / "new")
    result = sort_photos(trusted_run, photos, tmp_path / "sorted")
    answers = {str(p.source): p.answer for p in Predictor.from_run(trusted_run).predict(
        [d.path for d in result.decisions])}
    for d in result.decisions:
        answer = answers[d.path]
        expected = d.species if answer.kind == "species" else answer.kind
        assert d.decision == expected, (d, answer)

"""Several photos of one plant: the combining rule, and `plantid predict --group` (folder and CSV)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from plantid.data.split import read_manifest
from plantid.infer.group import combine, combine_probabilities
from plantid.infer.predictor import Prediction, Predictor
from tests.support.cli import PLANTID, one_line_error


def test_combined_probabilities_are_the_normalized_geometric_mean() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.45, 0.05], [0.6, 0.0, 0.4]], np.float32)
    combined = combine_probabilities(probs)
    expected = np.exp(np.log(np.maximum(probs.astype(np.float64), np.finfo(np.float32).tiny)).mean(0))
    np.testing.assert_allclose(combined, expected / expected.sum(), rtol=1e-12)
    assert combined.sum() == pytest.approx(1.0)
    assert combined[1] < 1e-10  # ruled out by one photo: a geometric mean keeps it out
    np.testing.assert_allclose(combine_probabilities(probs[:1]), probs[0], rtol=1e-6)  # one photo: itself


def test_group_unknown_follows_the_mean_score_and_skips_unreadable_photos() -> None:
    classes = ["a", "b"]

    def photo(p0: float, score: float) -> Prediction:
        return Prediction(source=f"{p0}", probabilities=np.array([p0, 1 - p0], np.float32), ood_score=score,
                          unknown=score > 1.0)

    broken = Prediction(source="broken.jpg", error="truncated image data")
    group = combine("plant", [photo(0.9, 0.4), broken, photo(0.8, 1.4)], classes, threshold=1.0, top_k=2)
    assert [p.source for p in group.used] == ["0.9", "0.8"]
    assert group.ood_score == pytest.approx(0.9) and group.unknown is False  # one odd photo does not decide
    assert group.top[0][0] == "a" and group.top[0][1] == pytest.approx(combine_probabilities(
        np.array([[0.9, 0.1], [0.8, 0.2]]))[0])
    far = combine("other", [photo(0.6, 1.3), photo(0.5, 1.1)], classes, threshold=1.0, top_k=1)
    assert far.unknown is True and len(far.top) == 1
    untrusted = combine("old run", [photo(0.6, 1.3)], classes, threshold=None, top_k=2)
    assert untrusted.unknown is None and untrusted.ood_score is None
    assert not combine("none", [broken], classes, threshold=1.0, top_k=2).ok


@pytest.fixture(scope="module")
def plants(run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two 'plants' as folders of 3 test photos of one class each, a broken photo in one, and a group CSV."""
    rows = read_manifest(run / "split.csv").rows
    root = tmp_path_factory.mktemp("plants")
    by_label: dict[str, list[Path]] = {}
    for r in rows:
        by_label.setdefault(r.label, []).append(Path(r.path))
    chosen = sorted(by_label)[:2]
    for i, label in enumerate(chosen):
        folder = root / "plants" / f"plant{i}"
        folder.mkdir(parents=True)
        for photo in by_label[label][:3]:
            shutil.copy(photo, folder / photo.name)
    (root / "plants" / "plant1" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    lines = ["group,file"] + [f"p{i},{p.relative_to(root)}" for i in range(2)
                              for p in sorted((root / "plants" / f"plant{i}").glob("*.jpg"))]
    (root / "groups.csv").write_text("\n".join(lines) + "\n")
    return {"root": root, "plants": root / "plants", "csv": root / "groups.csv"}


def _predict(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*PLANTID, "predict", *args], capture_output=True, text=True, cwd=cwd, timeout=180)


def test_predict_group_by_folder_and_by_csv_agree_with_the_rule(run: Path, plants: dict[str, Path]) -> None:
    by_folder = _predict(str(run), str(plants["plants"]), "--group", "folder", "--format", "json",
                         "--backend", "onnx", cwd=plants["root"])
    assert by_folder.returncode == 0, by_folder.stderr
    groups = json.loads(by_folder.stdout)
    assert [Path(g["group"]).name for g in groups] == ["plant0", "plant1"]
    assert [len(g["files"]) for g in groups] == [3, 3]  # the broken photo is reported and left out
    assert any(line.startswith("skipped ") and "broken.jpg" in line for line in by_folder.stderr.splitlines())
    predictor = Predictor.from_run(run, backend="onnx")
    for group in groups:
        singles = predictor.predict(group["files"], top_k=len(predictor.classes))
        expected = combine_probabilities(np.stack([p.probabilities for p in singles]))
        got = {p["label"]: p["probability"] for p in group["predictions"]}
        assert group["predictions"][0]["label"] == predictor.classes[int(expected.argmax())]
        for label, prob in got.items():
            assert prob == pytest.approx(expected[predictor.classes.index(label)], abs=2e-6)
        assert [p["file"] for p in group["photos"]] == group["files"]

    by_csv = _predict(str(run), "--group", str(plants["csv"]), "--format", "csv", "--backend", "onnx",
                      "--top-k", "2", cwd=plants["root"])
    assert by_csv.returncode == 0, by_csv.stderr
    rows = list(csv.DictReader(io.StringIO(by_csv.stdout)))
    assert [(r["group"], r["photos"], r["rank"]) for r in rows] == [
        ("p0", "3", "1"), ("p0", "3", "2"), ("p1", "3", "1"), ("p1", "3", "2")]
    assert [r["label"] for r in rows if r["rank"] == "1"] == [g["predictions"][0]["label"] for g in groups]

    table = _predict(str(run), str(plants["plants"]), "--group", "folder", "--backend", "onnx", cwd=plants["root"])
    assert table.returncode == 0 and "(3 photos)" in table.stdout and "2 group(s)" in table.stdout


def test_predict_group_refusals(run: Path, plants: dict[str, Path], tmp_path: Path) -> None:
    line = one_line_error(_predict(str(run), "leaf.jpg", "--group", str(plants["csv"]), cwd=plants["root"]))
    assert "the CSV lists the photos" in line
    bad = tmp_path / "bad.csv"
    bad.write_text("plant,photo\nx,y.jpg\n")
    assert "group,file" in one_line_error(_predict(str(run), "--group", str(bad), cwd=tmp_path))
    bad.write_text("group,file\nx,missing.jpg\n")
    line = one_line_error(_predict(str(run), "--group", str(bad), cwd=tmp_path))
    assert f"{bad}:2" in line and "missing.jpg" in line
    assert "neither 'folder'" in one_line_error(_predict(str(run), "--group", "by-plant", cwd=tmp_path))

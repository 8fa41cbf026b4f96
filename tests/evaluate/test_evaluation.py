"""evaluate_run on a tiny real run: eval.json shape and consistency, TTA, PNGs, folder splits."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from plantid.errors import PlantidError
from plantid.evaluate.evaluation import evaluate_run
from plantid.runfolder import evaluation_files as output_names
from tests.support.images import write_class_image

EVAL_KEYS = {"split", "n_images", "classes", "checkpoint", "metrics", "per_class", "confusion", "intervals", "tta",
             "worst", "trust"}
METRIC_KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "top_k"}


def write_photos(root: Path, folders: dict[str, int], per_class: int, seed: int = 0) -> Path:
    """root/<folder>/<i>.jpg, each a 32 px photo of the tiny run's class number `folders[folder]`."""
    for k, (folder, class_index) in enumerate(folders.items()):
        rng = np.random.default_rng([seed, k])
        for i in range(per_class):
            write_class_image(root / folder / f"{i:03d}.jpg", class_index, 32, rng)
    return root


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def assert_consistent(section: dict, n: int, classes: list[str]) -> None:
    cm = np.array(section["confusion"])
    assert cm.shape == (len(classes), len(classes)) and cm.dtype.kind == "i"
    assert cm.sum() == n
    assert section["metrics"]["accuracy"] == pytest.approx(np.trace(cm) / n, abs=1e-6)
    assert set(section["metrics"]) == METRIC_KEYS
    assert [r["class"] for r in section["per_class"]] == classes
    assert [r["support"] for r in section["per_class"]] == cm.sum(axis=1).tolist()
    for r in section["per_class"]:
        assert set(r) == {"class", "precision", "recall", "f1", "support"}
        assert 0.0 <= r["precision"] <= 1.0 and 0.0 <= r["recall"] <= 1.0 and 0.0 <= r["f1"] <= 1.0
    recalls = [r["recall"] for r in section["per_class"] if r["support"]]
    assert section["metrics"]["balanced_accuracy"] == pytest.approx(np.mean(recalls), abs=1e-5)


def assert_png(path: Path) -> tuple[int, int]:
    assert path.is_file()
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        return img.size


def test_test_split_with_tta(copy_run: Path, tiny_classes: list[str]):
    from plantid.data.split import read_manifest

    console = quiet()
    result = evaluate_run(copy_run, "test", tta="hflip", console=console)
    saved = json.loads((copy_run / "eval.json").read_text(encoding="utf-8"))
    assert saved == result
    assert set(saved) == EVAL_KEYS
    classes = tiny_classes
    assert saved["classes"] == classes and saved["split"] == "test" and saved["checkpoint"] == "best.ckpt"
    n_test = len(read_manifest(copy_run / "split.csv").rows_for("test"))
    assert saved["n_images"] == n_test > 0
    assert_consistent(saved, n_test, classes)
    assert set(saved["metrics"]["top_k"]) == {"2"}  # 3 classes: only k=2 < K

    tta = saved["tta"]
    assert set(tta) == {"views", "metrics", "per_class", "confusion", "intervals"}
    low, high = saved["intervals"]["accuracy"]
    assert low <= saved["metrics"]["accuracy"] <= high  # a 95% interval around the measured accuracy
    assert tta["views"] == ["identity", "hflip"]
    assert_consistent(tta, n_test, classes)

    n_errors = n_test - int(np.trace(np.array(saved["confusion"])))
    assert len(saved["worst"]) == min(n_errors, 24)
    for name in ("confusion_matrix.png", "errors.png"):
        width, height = assert_png(copy_run / name)
        assert width > 200 and height > 100
    text = console.file.getvalue()
    assert "with TTA" in text and "balanced accuracy" in text and "x&y" in text


def test_default_tta_is_the_runs_eval_tta(copy_run: Path):
    from plantid.infer.checkpoint import load_trained
    from plantid.infer.view_names import parse_tta

    configured = load_trained(copy_run).config.eval.tta
    result = evaluate_run(copy_run, "val", tta="default", console=quiet())
    assert result["tta"]["views"] == list(parse_tta(configured)) == ["identity", "hflip", "vflip", "rot180"]


def test_val_split_writes_its_own_files_without_tta(copy_run: Path, tiny_classes: list[str]):
    result = evaluate_run(copy_run, "val", console=quiet())
    names = output_names("val")
    assert names == {"json": "eval_val.json", "confusion": "confusion_matrix_val.png", "errors": "errors_val.png",
                     "reliability": "reliability_val.png", "ood": "ood_scores_val.png"}
    saved = json.loads((copy_run / "eval_val.json").read_text(encoding="utf-8"))
    assert saved == result and saved["split"] == "val" and saved["tta"] is None
    assert_consistent(saved, saved["n_images"], tiny_classes)
    assert_png(copy_run / "confusion_matrix_val.png")
    assert_png(copy_run / "errors_val.png")


def test_folder_split_with_mislabelled_photos(copy_run: Path, tiny_classes: list[str], tmp_path: Path):
    # "a" holds photos that look like b, so most of them are mistakes; the third class is absent.
    folder = write_photos(tmp_path / "new photos", {"a": 1, "b": 1}, per_class=5, seed=7)
    result = evaluate_run(copy_run, str(folder), console=quiet())
    saved = json.loads((copy_run / "eval_new_photos.json").read_text(encoding="utf-8"))
    assert saved == result and saved["split"] == "new photos" and saved["n_images"] == 10
    classes = tiny_classes
    assert saved["classes"] == classes  # the run's label space, not the folder's
    assert_consistent(saved, 10, classes)
    [absent] = [c for c in classes if c not in ("a", "b")]
    assert saved["per_class"][classes.index(absent)]["support"] == 0
    cm = np.array(saved["confusion"])
    n_errors = 10 - int(np.trace(cm))
    assert n_errors >= 1
    worst = saved["worst"]
    assert len(worst) == n_errors
    assert all(w["true"] != w["pred"] and Path(w["path"]).is_file() for w in worst)
    assert [w["confidence"] for w in worst] == sorted((w["confidence"] for w in worst), reverse=True)
    width, height = assert_png(copy_run / "errors_new_photos.png")
    assert height > 150  # a grid of photos, not the one-line "no errors" picture


def test_folder_with_unknown_classes_is_refused(copy_run: Path, tmp_path: Path):
    folder = write_photos(tmp_path / "other", {"a": 0, "zinnia": 1, "yarrow": 2}, per_class=2)
    with pytest.raises(PlantidError, match="zinnia") as err:
        evaluate_run(copy_run, str(folder), console=quiet())
    assert "yarrow" in str(err.value)
    assert not (copy_run / "eval_other.json").exists()


def test_bad_split_and_bad_tta_are_refused(copy_run: Path, tmp_path: Path):
    with pytest.raises(PlantidError, match="no-such-split"):
        evaluate_run(copy_run, "no-such-split", console=quiet())
    with pytest.raises(PlantidError, match="sideways"):
        evaluate_run(copy_run, "test", tta="sideways", console=quiet())
    with pytest.raises(PlantidError):
        evaluate_run(tmp_path / "missing-run", "test", console=quiet())


def test_output_names_are_safe():
    assert output_names("test")["json"] == "eval.json"
    assert output_names("my photos/../x")["json"] == "eval_my_photos_.._x.json"
    assert output_names("...")["json"] == "eval_folder.json"


def test_a_run_without_a_test_split_evaluates_val_by_default(copy_run: Path):
    """`plantid evaluate RUN` scores test; for a run trained with data.test=0 (no test rows) it says so
    and scores val instead of stopping at an empty split."""
    from tests.support.cli import invoke

    assert invoke("evaluate", str(copy_run)).returncode == 0 and (copy_run / "eval.json").is_file()
    manifest = copy_run / "split.csv"
    with manifest.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert any(r["split"] == "test" for r in rows)
    with manifest.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "split": "train" if r["split"] == "test" else r["split"]} for r in rows)
    (copy_run / "eval_val.json").unlink(missing_ok=True)
    proc = invoke("evaluate", str(copy_run))
    assert proc.returncode == 0, proc.stderr
    assert "no test split" in proc.stderr and "evaluating val" in proc.stderr
    assert json.loads((copy_run / "eval_val.json").read_text(encoding="utf-8"))["split"] == "val"

    # the report: val is the headline, said once; the data table has no empty test column
    (copy_run / "eval.json").unlink()  # scored when the run still had a test split
    assert invoke("report", str(copy_run)).returncode == 0
    page = (copy_run / "report.html").read_text(encoding="utf-8")
    assert ">Validation accuracy<" in page and "Best val accuracy" not in page
    assert "<th>train</th><th>val</th><th>total</th>" in page and "<th>test</th>" not in page

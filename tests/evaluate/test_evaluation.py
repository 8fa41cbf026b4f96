"""evaluate_run on a tiny real run: eval.json shape and consistency, TTA, PNGs, folder splits."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from plantid.errors import PlantidError
from plantid.evaluate.evaluation import evaluate_run, output_names

CLASSES = ("a", "b", '<b>x&y "q"')
COLOURS = [(220, 40, 40), (40, 200, 60), (40, 70, 220)]
EVAL_KEYS = {"split", "n_images", "classes", "checkpoint", "metrics", "per_class", "confusion", "tta", "worst"}
METRIC_KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "top_k"}


def write_photos(root: Path, folders: dict[str, int], per_class: int = 12, size: int = 32, seed: int = 0) -> Path:
    """root/<folder>/<i>.jpg showing the colour of class index `folders[folder]` (+ noise, a bright patch)."""
    for k, (folder, colour_index) in enumerate(folders.items()):
        rng = np.random.default_rng([seed, k])
        for i in range(per_class):
            img = np.array(COLOURS[colour_index], dtype=np.float32) + rng.normal(0, 18, (size, size, 3))
            y, x = rng.integers(0, size - 8, 2)
            img[y : y + 8, x : x + 8] += 50
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / folder / f"{i:03d}.jpg", quality=92)
    return root


def train_tiny_run(base: Path) -> Path:
    """A real 2-epoch simple-cnn run on 3 classes x 12 photos of 32 px (a few seconds on a CPU)."""
    from plantid.config import load_config
    from plantid.train.run import train_run

    photos = write_photos(base / "photos", {c: i for i, c in enumerate(CLASSES)})
    cfg = load_config("simple-cnn", [
        f"data.root={photos}", "data.image_size=32", "data.val=0.2", "data.test=0.2",
        f"data.cache_dir={base / 'cache'}", "train.epochs=2", "train.progress=false", "train.patience=0",
    ])
    run_dir = base / "run"
    train_run(cfg, run_dir)
    return run_dir


def shared_tiny_run(tmp_path_factory, name: str) -> Path:
    """A private copy (in a fresh folder) of one tiny run trained once per test session."""
    base = tmp_path_factory.getbasetemp() / "plantid-evaluate-tiny-run"
    if not (base / "run" / "train_summary.json").is_file():
        shutil.rmtree(base, ignore_errors=True)
        train_tiny_run(base)
    target = tmp_path_factory.mktemp(name) / "run"
    shutil.copytree(base / "run", target)
    return target


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return shared_tiny_run(tmp_path_factory, "evalrun")


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


def test_test_split_with_tta(tiny_run: Path):
    from plantid.data.split import read_manifest

    console = quiet()
    result = evaluate_run(tiny_run, "test", tta="hflip", console=console)
    saved = json.loads((tiny_run / "eval.json").read_text(encoding="utf-8"))
    assert saved == result
    assert set(saved) == EVAL_KEYS
    classes = sorted(CLASSES)
    assert saved["classes"] == classes and saved["split"] == "test" and saved["checkpoint"] == "best.ckpt"
    n_test = len(read_manifest(tiny_run / "split.csv").rows_for("test"))
    assert saved["n_images"] == n_test > 0
    assert_consistent(saved, n_test, classes)
    assert set(saved["metrics"]["top_k"]) == {"2"}  # 3 classes: only k=2 < K

    tta = saved["tta"]
    assert set(tta) == {"views", "metrics", "per_class", "confusion"}
    assert tta["views"] == ["identity", "hflip"]
    assert_consistent(tta, n_test, classes)

    n_errors = n_test - int(np.trace(np.array(saved["confusion"])))
    assert len(saved["worst"]) == min(n_errors, 24)
    for name in ("confusion_matrix.png", "errors.png"):
        width, height = assert_png(tiny_run / name)
        assert width > 200 and height > 100
    text = console.file.getvalue()
    assert "with TTA" in text and "balanced accuracy" in text and "x&y" in text


def test_default_tta_is_the_runs_eval_tta(tiny_run: Path):
    from plantid.infer.checkpoint import load_trained
    from plantid.infer.view_names import parse_tta

    configured = load_trained(tiny_run).config.eval.tta
    result = evaluate_run(tiny_run, "val", tta="default", console=quiet())
    assert result["tta"]["views"] == list(parse_tta(configured)) == ["identity", "hflip", "vflip", "rot180"]


def test_val_split_writes_its_own_files_without_tta(tiny_run: Path):
    result = evaluate_run(tiny_run, "val", console=quiet())
    names = output_names("val")
    assert names == {"json": "eval_val.json", "confusion": "confusion_matrix_val.png", "errors": "errors_val.png"}
    saved = json.loads((tiny_run / "eval_val.json").read_text(encoding="utf-8"))
    assert saved == result and saved["split"] == "val" and saved["tta"] is None
    assert_consistent(saved, saved["n_images"], sorted(CLASSES))
    assert_png(tiny_run / "confusion_matrix_val.png")
    assert_png(tiny_run / "errors_val.png")


def test_folder_split_with_mislabelled_photos(tiny_run: Path, tmp_path: Path):
    # "a" holds photos that look like b, so most of them are mistakes; class c is absent.
    folder = write_photos(tmp_path / "new photos", {"a": 1, "b": 1}, per_class=5, seed=7)
    result = evaluate_run(tiny_run, str(folder), console=quiet())
    saved = json.loads((tiny_run / "eval_new_photos.json").read_text(encoding="utf-8"))
    assert saved == result and saved["split"] == "new photos" and saved["n_images"] == 10
    classes = sorted(CLASSES)
    assert saved["classes"] == classes  # the run's label space, not the folder's
    assert_consistent(saved, 10, classes)
    assert saved["per_class"][classes.index('<b>x&y "q"')]["support"] == 0
    cm = np.array(saved["confusion"])
    n_errors = 10 - int(np.trace(cm))
    assert n_errors >= 1
    worst = saved["worst"]
    assert len(worst) == n_errors
    assert all(w["true"] != w["pred"] and Path(w["path"]).is_file() for w in worst)
    assert [w["confidence"] for w in worst] == sorted((w["confidence"] for w in worst), reverse=True)
    width, height = assert_png(tiny_run / "errors_new_photos.png")
    assert height > 150  # a grid of photos, not the one-line "no errors" picture


def test_folder_with_unknown_classes_is_refused(tiny_run: Path, tmp_path: Path):
    folder = write_photos(tmp_path / "other", {"a": 0, "zinnia": 1, "yarrow": 2}, per_class=2)
    with pytest.raises(PlantidError, match="zinnia") as err:
        evaluate_run(tiny_run, str(folder), console=quiet())
    assert "yarrow" in str(err.value)
    assert not (tiny_run / "eval_other.json").exists()


def test_bad_split_and_bad_tta_are_refused(tiny_run: Path, tmp_path: Path):
    with pytest.raises(PlantidError, match="no-such-split"):
        evaluate_run(tiny_run, "no-such-split", console=quiet())
    with pytest.raises(PlantidError, match="sideways"):
        evaluate_run(tiny_run, "test", tta="sideways", console=quiet())
    with pytest.raises(PlantidError):
        evaluate_run(tmp_path / "missing-run", "test", console=quiet())


def test_output_names_are_safe():
    assert output_names("test")["json"] == "eval.json"
    assert output_names("my photos/../x")["json"] == "eval_my_photos_.._x.json"
    assert output_names("...")["json"] == "eval_folder.json"

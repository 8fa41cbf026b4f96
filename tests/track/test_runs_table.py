"""`plantid runs` and `plantid compare` on run folders written by real tiny trainings."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from plantid.config import load_config
from plantid.records import metrics_by_epoch
from plantid.runfolder import RunFolder
from plantid.track.compare import compare_runs
from plantid.track.runs_table import find_runs, recipe_differences
from tests.support.cli import invoke, one_line_error


@pytest.fixture(scope="module")
def runs_folder(tiny_photos: Path, trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/ with the suite's trained run (evaluated with views) and a newer run at another learning
    rate, 1 epoch, in a subfolder; tracked into the session's MLflow store like every test run."""
    from plantid.evaluate.evaluation import evaluate_run
    from plantid.train.run import train_run

    base = tmp_path_factory.mktemp("runs-table")
    runs = base / "runs"
    shutil.copytree(trained_run, runs / "base")
    evaluate_run(runs / "base", split="test", tta="default")
    time.sleep(0.05)  # the newer run's summary is written later: newest first must put it first
    cfg = load_config("simple-cnn", [
        f"data.root={tiny_photos}", "data.image_size=32", "data.val=0.25", "data.test=0.25",
        f"data.cache_dir={base / 'cache'}", "train.epochs=1", "train.progress=false", "data.batch_size=8",
        "optim.lr=0.01",
    ])
    train_run(cfg, runs / "lr" / "fast")
    return runs


def test_runs_table_lists_real_runs_newest_first(runs_folder: Path, tiny_photos: Path):
    rows = find_runs(runs_folder)
    assert [r.name for r in rows] == ["lr/fast", "base"]
    fast, base = rows
    assert "optim.lr=0.01" in fast.overrides and not any(o.startswith("optim.lr") for o in base.overrides)
    assert "train.epochs=1" in fast.overrides and "train.epochs=2" in base.overrides
    assert not any(o.startswith(("data.root", "data.cache_dir", "track.")) for o in fast.overrides)
    for row in rows:
        summary = json.loads(RunFolder(row.path).summary.read_text())
        assert row.recipe == "simple-cnn" and row.recipe_found
        assert row.best_val == summary["best_val_acc"] and row.train_seconds == summary["train_seconds"]
        assert row.dataset == tiny_photos.name and row.classes == 3
    evaluation = json.loads(RunFolder(runs_folder / "base").eval.read_text())
    assert base.test == evaluation["metrics"]["accuracy"]
    assert base.test_views == evaluation["tta"]["metrics"]["accuracy"] and base.views == 4  # the flips
    assert fast.test == json.loads(RunFolder(fast.path).summary.read_text())["test_acc"] and fast.test_views is None
    assert (runs_folder / "mlruns").exists() is False  # the session store, not one beside these runs


def test_runs_command_prints_the_table(runs_folder: Path):
    proc = invoke("runs", str(runs_folder))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if "lr/fast" in line)
    second = next(i for i, line in enumerate(lines) if line.strip().startswith("base"))
    assert first < second
    assert "optim.lr=0.01" in proc.stdout and "simple-cnn" in proc.stdout
    assert "2 runs under" in proc.stdout


def test_runs_refuses_a_missing_folder_and_says_when_a_folder_has_no_runs(tmp_path: Path):
    line = one_line_error(invoke("runs", str(tmp_path / "nope")))
    assert str(tmp_path / "nope") in line and "no such folder" in line
    (tmp_path / "empty").mkdir()
    proc = invoke("runs", str(tmp_path / "empty"))
    assert proc.returncode == 0 and "no runs under" in proc.stdout


def test_compare_shows_differences_and_overlays_the_curves(runs_folder: Path, tmp_path: Path):
    png = tmp_path / "curves.png"
    result = compare_runs([runs_folder / "base", runs_folder / "lr" / "fast"], png)
    assert result.names == ["base", "fast"]
    settings = dict(result.settings)
    assert settings["optim.lr"] == ["0.001", "0.01"] and settings["train.epochs"] == ["2", "1"]
    assert "optim.name" not in settings  # equal in both
    results = dict(result.results)
    assert results["epochs"] == ["2", "1"]
    base_curves = metrics_by_epoch(RunFolder(runs_folder / "base").metrics)
    assert sorted(base_curves["val_acc"]) == [0, 1] and sorted(result.curves[1]["val_acc"]) == [0]
    with Image.open(png) as img:
        assert img.format == "PNG" and img.width > 600 and img.height > 400


def test_compare_command_writes_the_figure_and_refuses_non_runs(runs_folder: Path, tmp_path: Path):
    proc = invoke("compare", str(runs_folder / "base"), str(runs_folder / "lr" / "fast"), "--out", str(tmp_path / "c.png"))
    assert proc.returncode == 0, proc.stderr
    assert "optim.lr" in proc.stdout and (tmp_path / "c.png").is_file()

    line = one_line_error(invoke("compare", str(runs_folder / "base"), str(runs_folder / "lr")))
    assert str(runs_folder / "lr") in line and "not a plantid run folder" in line
    line = one_line_error(invoke("compare", str(runs_folder / "base"), str(tmp_path / "missing")))
    assert "no such run folder" in line
    line = one_line_error(invoke("compare", str(runs_folder / "base")))
    assert "at least two" in line


def test_planned_values_and_paths_are_not_overrides():
    cfg = load_config("cpu-default", ["optim.lr=0.003", "data.root=/photos"])
    planned_train = cfg.train.model_copy(update={"epochs": 9, "planned": "budget 10 min: ... -> 9 epochs"})
    planned = cfg.model_copy(update={"train": planned_train,
                                     "data": cfg.data.model_copy(update={"image_size": 192})})
    overrides, found = recipe_differences(planned)
    assert found and overrides == ["optim.lr=0.003"]
    # Without a plan note the same numbers were chosen by hand: they are overrides.
    by_hand = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 9})})
    assert "train.epochs=9" in recipe_differences(by_hand)[0]
    custom = load_config("simple-cnn", ["recipe=mine", "optim.lr=0.5"])
    overrides, found = recipe_differences(custom)
    assert not found and "optim.lr=0.5" in overrides

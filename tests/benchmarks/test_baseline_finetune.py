"""The benchmark scripts on tiny generated folders: the outside benchmark's plain scripts end to end (real
processes), and the photo folders the label-loop and warm-start benchmarks build."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run_script(name: str, *args: str) -> dict:
    """Run benchmarks/<name> with `args`; the JSON it printed (and wrote with --out)."""
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True, text=True,
                          timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def test_yardstick_trains_on_every_photo_of_a_folder_and_scores_another(make_image_folder, tmp_path: Path) -> None:
    """Folder mode: all 36 photos train, the outside folder is scored, and the file equals the print."""
    inner = make_image_folder(tmp_path / "inner")
    outside = make_image_folder(tmp_path / "outside", seed=1)
    out = tmp_path / "result.json"
    result = run_script("baseline_finetune.py", str(inner), "--eval", f"outside={outside}", "--out", str(out),
                        "--epochs", "1", "--size", "32", "--batch-size", "8")
    assert result == json.loads(out.read_text())
    assert result["n"] == {"train": 36, "outside": 36} and result["epochs"] == 1 and result["image_size"] == 32
    assert 0.0 <= result["accuracy"]["outside"] <= 1.0 and result["train_seconds"] > 0


def test_yardstick_on_a_manifest_trains_on_train_rows_and_sizes_itself_from_the_photos(tiny_manifest: Path) -> None:
    """Split mode scores val and test; with no --size the 32-px photos get the recipe's smallest size."""
    result = run_script("baseline_finetune.py", str(tiny_manifest), "--epochs", "1", "--batch-size", "8")
    assert result["n"] == {"train": 18, "val": 9, "test": 9}
    assert result["image_size"] == 96  # 32-px photos round up to the 96-px floor
    assert set(result["accuracy"]) == {"val", "test"}


def test_linear_probe_fits_frozen_features_and_separates_the_classes(make_image_folder, tmp_path: Path) -> None:
    """The generated classes differ by colour: frozen ImageNet features separate them well."""
    inner = make_image_folder(tmp_path / "inner")
    outside = make_image_folder(tmp_path / "outside", seed=1)
    result = run_script("linear_probe.py", str(inner), "--eval", f"outside={outside}")
    assert result["n"] == {"train": 36} and result["accuracy"]["outside"] >= 0.9


def _script_module(name: str):
    """A benchmark script imported as a module (the scripts import their shared code by file name)."""
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_outer_split_keeps_identical_files_together_and_depends_on_the_seed(make_image_folder, tmp_path: Path) -> None:
    """Byte-identical copies land on one side; seeds give different outside folders of about the share."""
    bench = _script_module("bench_outside")
    data = make_image_folder(tmp_path / "data", per_class=40)
    shutil.copyfile(data / "a" / "a_000.jpg", data / "a" / "copy_of_a_000.jpg")
    sides = []
    for seed in (0, 1):
        inner, outside = bench.outer_split(data, seed, tmp_path / f"seed{seed}")
        names = {p.relative_to(outside).as_posix() for p in outside.rglob("*.jpg")}
        inner_names = {p.relative_to(inner).as_posix() for p in inner.rglob("*.jpg")}
        assert not names & inner_names and len(names | inner_names) == 121
        assert ("a/a_000.jpg" in names) == ("a/copy_of_a_000.jpg" in names)
        assert 0.08 < len(names) / 121 < 0.35
        sides.append(names)
    assert sides[0] != sides[1]
    digest = hashlib.sha256((data / "b" / "b_003.jpg").read_bytes()).hexdigest()
    assert bench.is_outside(digest, 0) == ("b/b_003.jpg" in sides[0])


def test_yardstick_size_shrinks_until_its_budget_fits_enough_epochs() -> None:
    """Room for every epoch keeps the photos' size; a set too large for the budget gets the smallest."""
    import timm
    import torch

    yardstick = _script_module("baseline_finetune")
    model = timm.create_model(yardstick.MODEL, pretrained=False, num_classes=3)
    state = torch.random.get_rng_state()
    assert yardstick.size_for_budget(model, 160, n_train=2, batch_size=2, n_classes=3, seconds=1e6) == 160
    assert yardstick.size_for_budget(model, 192, n_train=10**7, batch_size=2, n_classes=3, seconds=60) == 96
    assert torch.equal(state, torch.random.get_rng_state())  # the timing leaves training's randomness alone


def test_the_yardstick_schedule_stretched_after_its_first_epoch_runs_to_its_end() -> None:
    """Re-planned from the first epoch's real time (4 -> 8 epochs of 10 steps), the one-cycle schedule
    goes on from step 10 of the longer cycle: it climbs to the peak and ends at the floor, step for step."""
    import torch

    yardstick = _script_module("baseline_finetune")
    optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    schedule = yardstick.one_cycle(optimizer, 1e-3, epochs=4, steps=10)
    for _ in range(10):
        optimizer.step()
        schedule.step()
    at_the_switch = optimizer.param_groups[0]["lr"]
    schedule = yardstick.one_cycle(optimizer, 1e-3, epochs=8, steps=10, done=10)
    used = []  # the rate each of the remaining 70 optimizer steps takes
    for _ in range(70):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert used[0] < at_the_switch  # step 10 of 80 is earlier in the warm-up than step 10 of 40
    assert max(used) == pytest.approx(1e-3) and used[-1] == pytest.approx(1e-3 / 25 / 1e4)


def test_the_yardstick_replans_within_its_budget_as_epochs_slow_down() -> None:
    """The epochs done always count; more are added only while the budget left holds them at the
    mean epoch time so far, and never past the cap."""
    yardstick = _script_module("baseline_finetune")
    assert yardstick.epochs_within(budget_left=100.0, epoch_seconds=30.0, done=2) == 5
    assert yardstick.epochs_within(budget_left=20.0, epoch_seconds=30.0, done=7) == 7  # slowed: stop here
    assert yardstick.epochs_within(budget_left=-5.0, epoch_seconds=30.0, done=7) == 7
    assert yardstick.epochs_within(budget_left=1e9, epoch_seconds=1.0, done=3) == yardstick.MAX_EPOCHS


def test_flipped_copy_moves_the_share_into_other_classes_and_is_made_once(make_image_folder, tmp_path: Path) -> None:
    """The label-loop benchmark's folder: every photo linked once, a seeded share in a wrong class."""
    bench = _script_module("bench_label_loop")
    data = make_image_folder(tmp_path / "data", per_class=20)
    out = tmp_path / "flipped"
    flips = bench.flipped_copy(data, out, 0.1, seed=3)
    links = sorted(p for p in out.rglob("*") if p.is_symlink())
    assert len(links) == 60 and len(flips) == 6
    for link in links:
        true = link.resolve().parent.name
        given = link.parent.name
        assert (str(link) in flips) == (given != true)
        if str(link) in flips:
            assert flips[str(link)] == true
    again = bench.flipped_copy(data, out, 0.1, seed=3)
    assert again == flips and sorted(p for p in out.rglob("*") if p.is_symlink()) == links


def test_warm_start_folders_split_each_class_into_a_first_share_and_the_rest(make_image_folder, tmp_path: Path) -> None:
    bench = _script_module("bench_warm_start")
    data = make_image_folder(tmp_path / "data", per_class=10)
    photos = tmp_path / "photos"
    first = bench.link_photos(data, photos, 0.7, seed=1, rest=False)
    first_names = {p.relative_to(photos).as_posix() for p in photos.rglob("*") if p.is_symlink()}
    rest = bench.link_photos(data, photos, 0.7, seed=1, rest=True)
    every = {p.relative_to(photos).as_posix() for p in photos.rglob("*") if p.is_symlink()}
    assert first == 21 and rest == 9 and len(every) == 30
    assert all(sum(n.startswith(f"{c}/") for n in first_names) == 7 for c in ("a", "b", "c"))
    assert every == {p.relative_to(data).as_posix() for p in data.rglob("*.jpg")}

"""plantid.train.plan: sizes from the photos, epochs from a time budget, resolved into config.yaml."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from PIL import Image

from plantid.config import ResizePhase, load_config
from plantid.data.split import read_manifest
from plantid.errors import PlantidError
from plantid.train.plan import (
    MAX_EPOCHS,
    MAX_EPOCHS_SMALL_DATA,
    MIN_EPOCHS,
    SIZE_BY_RESOLUTION,
    Speed,
    epoch_seconds,
    max_epochs_for,
    phases_for,
    photo_short_side,
    plan_epochs,
    plan_run,
    size_for_photos,
    train_batches_for_share,
)

AUTO = ["data.image_size=auto", "train.resize_phases=auto", "train.epochs=auto", "train.budget_minutes=10"]


def _estimate(epochs: int, phases: list[ResizePhase], final: int, n_train: int, n_val: int, speed: Speed,
              share: float) -> float:
    small = [p.image_size for p in phases for _ in range(p.epochs)]
    sizes = small + [final] * (epochs - len(small))
    return sum(epoch_seconds(s, n_train, n_val, speed, share) for s in sizes)


def test_photo_short_side_reads_the_median_of_the_headers(tmp_path: Path) -> None:
    paths = []
    for i, (w, h) in enumerate([(300, 200), (500, 375), (96, 96), (640, 480), (375, 500)]):
        path = tmp_path / f"{i}.jpg"
        Image.new("RGB", (w, h), (i * 40, 90, 30)).save(path)
        paths.append(str(path))
    (tmp_path / "bad.jpg").write_bytes(b"not a photo")
    assert photo_short_side(paths + [str(tmp_path / "bad.jpg")]) == 375  # 96 200 375 375 480; bad skipped
    assert photo_short_side([]) is None


def test_size_for_photos_follows_the_resolution_table() -> None:
    assert size_for_photos(None) == SIZE_BY_RESOLUTION[0][1]
    assert size_for_photos(96) == 192  # the leaves' measured plan: 96 px photos upsampled to 192
    for smallest, size in SIZE_BY_RESOLUTION:
        assert size_for_photos(smallest) == size
    sizes = [size_for_photos(s) for s in range(0, 2000, 16)]
    assert sizes == sorted(sizes)  # larger photos never get a smaller size


def test_phases_take_two_thirds_of_epochs_and_size() -> None:
    assert phases_for(9, 192) == [ResizePhase(epochs=6, image_size=128)]  # today's cpu-default
    assert phases_for(9, 224) == [ResizePhase(epochs=6, image_size=160)]
    assert phases_for(3, 192) == [ResizePhase(epochs=2, image_size=128)]
    assert phases_for(2, 192) == [] and phases_for(9, 128) == [] and phases_for(9, 32) == []


def test_plan_epochs_fills_the_budget_and_never_exceeds_it() -> None:
    speed = Speed(train={128: 76.9, 192: 38.4}, evaluate=150.0, seconds=8.0)  # 2 cores, measured
    # 2,081 leaf photos in 10 minutes: the whole default (9 epochs, 6 at 128 px)
    epochs, phases, share = plan_epochs(480, 192, 2081, 446, speed)
    assert (epochs, phases, share) == (MAX_EPOCHS, [ResizePhase(epochs=6, image_size=128)], 1.0)
    # a third of the time: fewer epochs, each on every photo, inside the budget
    epochs, phases, share = plan_epochs(160, 192, 2081, 446, speed)
    assert MIN_EPOCHS <= epochs < MAX_EPOCHS and share == 1.0
    assert _estimate(epochs, phases, 192, 2081, 446, speed, share) <= 160
    assert _estimate(epochs + 1, phases_for(epochs + 1, 192), 192, 2081, 446, speed, 1.0) > 160  # the most that fit
    # 30,000 photos: three epochs on a share of the photos each, still inside the budget
    epochs, phases, share = plan_epochs(480, 192, 30000, 4500, speed)
    assert epochs == MIN_EPOCHS and 0.0 < share < 1.0
    assert _estimate(epochs, phases, 192, 30000, 4500, speed, share) == pytest.approx(480, rel=0.02)


def test_the_epoch_cap_is_a_number_of_steps() -> None:
    """The leaves keep 9 epochs, the 952 flower photos get the 18 measured, tiny sets at most 27."""
    assert max_epochs_for(2081, 32) == MAX_EPOCHS == 9
    assert max_epochs_for(30000, 32) == MAX_EPOCHS  # budget-bound anyway: never fewer than 9
    assert max_epochs_for(952, 32) == 18
    assert max_epochs_for(40, 8) == MAX_EPOCHS_SMALL_DATA == 27
    speed = Speed(train={128: 76.9, 192: 38.4}, evaluate=150.0, seconds=8.0)
    # the flowers on 2 idle cores with 8 minutes: the 18-epoch cap binds, not the budget
    epochs, phases, share = plan_epochs(480, 192, 952, 204, speed, max_epochs=max_epochs_for(952, 32))
    assert (epochs, phases, share) == (18, [ResizePhase(epochs=12, image_size=128)], 1.0)


def test_a_share_becomes_whole_batches_and_never_none() -> None:
    # the ablation that crashed: a busy machine planned 1% of 65 batches, which Lightning refuses
    assert train_batches_for_share(0.01, 2081, 32) == 1
    assert train_batches_for_share(0.5, 2081, 32) == 33  # half of ceil(2081 / 32) = 66 batches
    assert train_batches_for_share(0.999, 100, 32) == 4


def test_auto_epochs_need_a_budget() -> None:
    with pytest.raises(PlantidError, match="budget_minutes"):
        load_config("cpu-default", ["train.epochs=auto", "train.budget_minutes=null"])


def test_plan_run_resolves_auto_with_a_real_probe(tiny_manifest: Path) -> None:
    manifest = read_manifest(tiny_manifest)
    cfg = load_config("cpu-default", [*AUTO, "data.batch_size=4", "data.eval_batch_size=4", "train.threads=1"])
    planned = plan_run(cfg, manifest)
    assert planned.data.image_size == size_for_photos(32)  # the fixture's photos are 32 px
    cap = max_epochs_for(len(manifest.rows_for("train")), 4)
    assert isinstance(planned.train.epochs, int) and MIN_EPOCHS <= planned.train.epochs <= cap
    assert planned.train.resize_phases == phases_for(planned.train.epochs, planned.data.image_size)
    assert "budget 10 min" in planned.train.planned and "photos/s" in planned.train.planned
    assert plan_run(planned, manifest) is planned  # nothing left to plan: unchanged, no probe


def test_a_plan_share_halves_the_epoch_cap_and_the_budget(tiny_manifest: Path) -> None:
    """A warm start's plan (train.plan_share=0.5): at most half the cap, within half the budget."""
    manifest = read_manifest(tiny_manifest)
    cfg = load_config("cpu-default", [*AUTO, "data.batch_size=4", "data.eval_batch_size=4", "train.threads=1",
                                      "train.plan_share=0.5"])
    planned = plan_run(cfg, manifest)
    cap = max_epochs_for(len(manifest.rows_for("train")), 4)
    assert MIN_EPOCHS <= planned.train.epochs <= math.ceil(cap / 2) < cap


def test_explicit_settings_win_over_the_plan(tiny_manifest: Path) -> None:
    manifest = read_manifest(tiny_manifest)
    cfg = load_config("cpu-default", [*AUTO, "train.epochs=4", "data.image_size=160"])
    planned = plan_run(cfg, manifest)
    assert planned.train.epochs == 4 and planned.data.image_size == 160
    assert planned.train.resize_phases == [ResizePhase(epochs=3, image_size=96)]
    assert "budget" not in planned.train.planned  # no probe for explicit epochs


def test_train_run_records_the_plan_in_config_yaml(tiny_manifest: Path, tmp_path: Path) -> None:
    """A budgeted run writes numbers, not 'auto', into config.yaml and trains the planned epochs."""
    from plantid.train.run import train_run

    cfg = load_config("cpu-default", [
        f"data.manifest={tiny_manifest}", "data.image_size=32", "train.resize_phases=auto", "train.epochs=auto",
        "train.budget_minutes=0.5", "data.batch_size=8", "data.eval_batch_size=8", "train.threads=1",
        "train.progress=false", f"data.cache_dir={tmp_path / 'cache'}",
    ])
    result = train_run(cfg, tmp_path / "run")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert isinstance(saved["train"]["epochs"], int) and saved["data"]["image_size"] == 32
    assert saved["train"]["resize_phases"] == []  # 32 px is too small for a first phase
    assert "budget 0.5 min" in saved["train"]["planned"]
    assert result.epochs_run == saved["train"]["epochs"]


def test_a_run_slower_than_its_plan_stops_inside_its_budget(tiny_manifest: Path, tmp_path: Path, caplog) -> None:
    """When the epochs take longer than the budget allows (here a budget shorter than any epoch), the
    run stops at an epoch's end with a warning instead of training its whole plan, and delivers
    the best epoch so far; epochs a user fixed are not cut."""
    from plantid.train.run import train_run

    settings = [f"data.manifest={tiny_manifest}", "data.image_size=32", "train.resize_phases=auto",
                "data.batch_size=8", "data.eval_batch_size=8", "train.threads=1", "train.progress=false",
                f"data.cache_dir={tmp_path / 'cache'}", "train.budget_minutes=0.001"]
    with caplog.at_level(logging.WARNING, logger="plantid.train.budget_guard"):
        result = train_run(load_config("cpu-default", [*settings, "train.epochs=auto"]), tmp_path / "run")
    planned = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["epochs"]
    assert planned >= 3 and result.epochs_run == 1
    assert f"stopping after epoch 1 of {planned} to stay inside the 0.001-minute budget" in caplog.text
    assert result.best_checkpoint.is_file()

    caplog.clear()
    fixed = train_run(load_config("cpu-default", [*settings, "train.epochs=2"]), tmp_path / "fixed")
    assert fixed.epochs_run == 2 and "stopping after" not in caplog.text


def test_batches_per_epoch_fill_the_time_left_and_stay_between_one_batch_and_every_photo() -> None:
    """Two epochs left in 100 s, 5 s of validation each, 1 s a batch now and 2.25 s at the next size:
    (100 - 10) / 3.25 -> 27 batches; never more than every photo, never none."""
    from plantid.train.budget_guard import batches_per_epoch

    assert batches_per_epoch(100.0, 1.0, 5.0, [1.0, 2.25], most=1000) == 27
    assert batches_per_epoch(100.0, 1.0, 5.0, [1.0, 2.25], most=20) == 20
    assert batches_per_epoch(5.0, 1.0, 5.0, [1.0, 2.25], most=1000) == 1


def test_the_epoch_clock_pools_every_epoch_at_the_pixels_of_each() -> None:
    """A slow epoch of 7 batches at 128 px (7 s) and a fast one of 4 (2 s): a batch costs the pooled
    9 s / 11 batches at 128 px, not the last epoch's 0.5 s, and 2.25 times that at 192 px; the
    validation is the mean of those that ran."""
    from plantid.train.budget_guard import EpochClock

    clock = EpochClock()
    assert clock.validation() == 0.0
    clock.add(7, 128, 7.0, 3.0)
    clock.add(4, 128, 2.0, None)
    assert clock.batch_seconds(128) == pytest.approx(9.0 / 11)
    assert clock.batch_seconds(192) == pytest.approx(9.0 / 11 * 2.25)
    assert clock.validation() == pytest.approx(3.0)
    clock.add(2, 192, 4.5, 1.0)  # 2 batches at 192 px weigh as 4.5 at 128 px
    assert clock.batch_seconds(128) == pytest.approx(13.5 / 15.5)
    assert clock.validation() == pytest.approx(2.0)


class _BatchesSeen(Callback):
    """Records each epoch's training batches and the learning rate each step trained with."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rates.append(float(trainer.optimizers[0].param_groups[0]["lr"]))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.batches.append(int(trainer.num_training_batches))


class _StopAfter(Callback):
    """Ends the fit after `epochs` epochs, as a killed run would have left its last.ckpt."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def _one_batch_plan(tiny_manifest: Path, tmp_path: Path, schedule: str):
    """A budgeted run's config whose plan gave each of its 3 epochs one batch of 4 photos (a probe
    that met a busy moment), its data and module, and how many batches every photo makes."""
    from plantid.data.datamodule import PlantDataModule
    from plantid.train.module import PlantClassifierModule

    cfg = load_config("cpu-default", [
        f"data.manifest={tiny_manifest}", "data.image_size=32", "train.epochs=3", "train.resize_phases=[]",
        "train.limit_train_batches=1", "data.batch_size=4", "data.eval_batch_size=8", "train.threads=1",
        "train.progress=false", "track.mlflow=false", f"data.cache_dir={tmp_path / 'cache'}",
        f"optim.schedule={schedule}",
    ])
    data = PlantDataModule(manifest_path=tiny_manifest, image_size=32, batch_size=4, eval_batch_size=8,
                           cache_dir=tmp_path / "cache")
    data.setup("fit")
    module = PlantClassifierModule(cfg.model_dump(mode="json"), data.classes, data.class_counts)
    return cfg, data, module, math.ceil(len(read_manifest(tiny_manifest).rows_for("train")) / 4)


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_epochs_faster_than_planned_train_on_more_photos_to_the_budget(tiny_manifest: Path, tmp_path: Path,
                                                                        schedule: str, caplog) -> None:
    """A budget the one-batch epochs leave mostly unused: after the first epoch the rest train on
    every photo, and the schedule is stretched to the new number of steps (one-cycle would refuse
    a step past its end; both peak and end near their lowest rate)."""
    from plantid.train.run import build_trainer

    cfg, data, module, every = _one_batch_plan(tiny_manifest, tmp_path, schedule)
    seen = _BatchesSeen()
    trainer = build_trainer(cfg, tmp_path / "run", [seen], epoch_seconds=600.0)
    with caplog.at_level(logging.INFO, logger="plantid.train.budget_guard"):
        trainer.fit(module, datamodule=data)
    assert every > 1 and seen.batches == [1, every, every]
    assert "the remaining 2 epochs train on" in caplog.text
    assert max(seen.rates) > 0.5 * cfg.optim.lr and seen.rates[-1] < 0.05 * cfg.optim.lr


def test_a_resumed_run_keeps_the_batches_its_budget_re_planned(tiny_manifest: Path, tmp_path: Path) -> None:
    """Killed after 2 of 3 re-planned epochs, `train --resume` (which has no budget left to keep)
    trains the last epoch on the re-planned batches, not the config's one, and its one-cycle
    schedule, restored from last.ckpt, ends where it should instead of refusing a step."""
    from plantid.config import dump_config
    from plantid.train.run import build_trainer, train_run

    cfg, data, module, every = _one_batch_plan(tiny_manifest, tmp_path, "onecycle")
    run = tmp_path / "run"
    trainer = build_trainer(cfg, run, [_StopAfter(2)], epoch_seconds=600.0)
    trainer.fit(module, datamodule=data)
    (run / "config.yaml").write_text(dump_config(cfg))
    (run / "split.csv").write_bytes(tiny_manifest.read_bytes())
    seen = _BatchesSeen()
    result = train_run(None, run, resume=True, callbacks=[seen])
    assert seen.batches == [every] and result.epochs_run == 3
    assert seen.rates[-1] < 0.05 * cfg.optim.lr


def test_a_busy_machine_halves_the_threads_unless_the_user_fixed_them() -> None:
    """Two trainings of 2 threads each on 2 cores take turns spinning (5x slower epochs than their
    probes): a busy probe trains on half the threads; `train.threads` given is never changed."""
    from plantid.train.plan import _busy, threads_beside_others

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert threads_beside_others(load_config("cpu-default", [])) == 2
        assert threads_beside_others(load_config("cpu-default", ["train.threads=4"])) is None
        torch.set_num_threads(1)
        assert threads_beside_others(load_config("cpu-default", [])) is None
    finally:
        torch.set_num_threads(before)
    cores = os.cpu_count() or 1
    assert _busy(own_cpu=2.0 * cores, machine_cpu=2.0 * cores + 0.1, wall=2.0, threads=cores) is None
    assert f"other programs used 1.0 of its {cores} cores" in _busy(2.0, 2.0 + 2.0, wall=2.0, threads=cores)
    assert _busy(0.2, float("nan"), wall=1.0, threads=2) is not None  # no /proc/stat: starved threads


def test_the_machine_cpu_clock_counts_this_process_work() -> None:
    """/proc/stat's busy seconds grow by at least most of what a busy loop here spends."""
    from plantid.runtime import machine_cpu_seconds

    before, own = machine_cpu_seconds(), time.process_time()
    if before is None:
        pytest.skip("no /proc/stat on this system")
    while time.process_time() - own < 0.5:
        pass
    assert machine_cpu_seconds() - before >= 0.4


def test_planned_from_budget_reads_the_plans_own_note(tiny_manifest: Path) -> None:
    """The other devices of a multi-device run add a budget guard only when the first one planned
    from the budget: a budgeted plan says so in train.planned; fixed epochs with an auto size do not."""
    from plantid.train.plan import planned_from_budget

    budgeted = plan_run(load_config("cpu-default", [f"data.manifest={tiny_manifest}", *AUTO, "train.threads=1"]),
                        read_manifest(tiny_manifest))
    fixed = plan_run(load_config("cpu-default", [f"data.manifest={tiny_manifest}", "data.image_size=auto",
                                                 "train.epochs=4"]), read_manifest(tiny_manifest))
    assert planned_from_budget(budgeted) and not planned_from_budget(fixed)
    assert fixed.train.planned and not planned_from_budget(load_config("cpu-default", []))

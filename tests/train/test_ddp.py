"""Multi-process data parallel training on this CPU: 2 ranks over gloo through Lightning's DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, sys
    from pathlib import Path

    import lightning as L

    from plantid.config import load_config
    from plantid.train.run import train_run

    data, out, record, devices = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])

    class RecordBatches(L.Callback):
        # Fingerprints of every training image each rank sees in each epoch.
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            images, _ = batch
            seen = self.__dict__.setdefault("seen", {})
            for img in images:
                digest = hashlib.sha1(img.detach().cpu().numpy().tobytes()).hexdigest()
                seen.setdefault(str(trainer.current_epoch), []).append(digest)

        def on_train_end(self, trainer, pl_module):
            record.mkdir(parents=True, exist_ok=True)
            (record / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.__dict__.get("seen", {})))

    overrides = [
        f"data.root={data}", "data.image_size=32", "data.val=0.25", "data.test=0.25", "data.batch_size=4",
        f"data.cache_dir={out.parent / 'cache'}", "train.epochs=4", "train.progress=false",
        "train.accelerator=cpu", f"train.devices={devices}", "augment.preset=none",
    ]
    if devices > 1:
        overrides.append("train.strategy=ddp")
    train_run(load_config("simple-cnn", overrides), out, callbacks=[RecordBatches()])
    """
)


def _train(tmp_path: Path, data: Path, name: str, devices: int) -> tuple[dict, Path]:
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out, record = tmp_path / name, tmp_path / f"{name}-batches"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(data), str(out), str(record), str(devices)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "train_summary.json").read_text()), record


@pytest.mark.slow  # two trainings, one of them two processes
def test_two_cpu_ranks_see_disjoint_shards_and_match_single_process(tmp_path: Path, make_image_folder):
    data = make_image_folder(tmp_path / "photos", per_class=16)
    single, single_record = _train(tmp_path, data, "single", devices=1)
    ddp, ddp_record = _train(tmp_path, data, "ddp", devices=2)

    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert ddp["train_images_per_s"] > 0 and single["train_images_per_s"] > 0
    rank0 = json.loads((ddp_record / "rank0.json").read_text())
    rank1 = json.loads((ddp_record / "rank1.json").read_text())
    everything = json.loads((single_record / "rank0.json").read_text())
    for epoch in rank0:
        seen0, seen1 = set(rank0[epoch]), set(rank1[epoch])
        assert seen0 and seen1
        assert not seen0 & seen1, f"epoch {epoch}: ranks share training images"
        assert seen0 | seen1 == set(everything[epoch]), f"epoch {epoch}: the shards do not cover the train split"
    # Same data, seed and epochs: both learn the easy colours; DDP only changes the effective batch.
    assert ddp["best_val_acc"] >= 0.75 and single["best_val_acc"] >= 0.75
    assert abs(ddp["test_acc"] - single["test_acc"]) <= 0.25


@pytest.mark.slow  # a two-process training through the command line
def test_plantid_train_on_two_devices_shares_the_first_process_lock_and_plan(tmp_path: Path, tiny_folder: Path):
    """`plantid train ... train.devices=2 train.strategy=ddp`, as the README shows it: Lightning starts
    the second process with the same command line; it trains from the split and budgeted plan the
    first one wrote (no lock refusal, no second probe) and leaves the report to the first."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "plantid.cli", "train", "--data", str(tiny_folder), "--out", str(out),
                           "train.accelerator=cpu", "train.devices=2", "train.strategy=ddp", "train.budget_minutes=0.2",
                           "train.progress=false", "data.image_size=32", "track.mlflow=false"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_run"] >= 1
    assert (out / "trust.json").is_file()
    assert proc.stdout.count("best val acc") == 1 and "in use by another plantid command" not in proc.stderr

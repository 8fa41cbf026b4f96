"""Training end to end on real tiny images: run folder, CLI errors, SIGKILL + resume, recipes on CPU."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.support.cli import PLANTID, invoke, limit_file_size, one_line_error, run_plantid


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_trained_run_folder_holds_everything(trained_run: Path, tiny_photos: Path, tiny_classes: list[str]):
    for name in ("config.yaml", "split.csv", "labels.json", "best.ckpt", "last.ckpt", "metrics.csv", "train_summary.json"):
        assert (trained_run / name).is_file(), name
    assert any((trained_run / "tb").rglob("events.out.tfevents.*"))
    assert tiny_classes == sorted(p.name for p in tiny_photos.iterdir())
    assert json.loads((trained_run / "labels.json").read_text()) == tiny_classes
    summary = json.loads((trained_run / "train_summary.json").read_text())
    assert summary["epochs_run"] == 2 and 0.0 <= summary["test_acc"] <= 1.0
    rows = _metrics(trained_run)
    val_epochs = [r for r in rows if r.get("val_acc")]
    assert len(val_epochs) == 2
    assert any(r.get("lr-Adam") for r in rows)
    # Each epoch logs its training speed (24 photos an epoch); the summary gives the run's average.
    speeds = [float(r["train_images_per_s"]) for r in rows if r.get("train_images_per_s")]
    assert len(speeds) == 2 and all(s > 0 for s in speeds)
    assert min(speeds) - 0.1 <= summary["train_images_per_s"] <= max(speeds) + 0.1  # rounded to 0.1
    # and the wall time since training began, growing epoch by epoch, within the run's training time
    elapsed = [float(r["elapsed_s"]) for r in rows if r.get("elapsed_s")]
    assert len(elapsed) == 2 and 0 < elapsed[0] < elapsed[1] <= summary["train_seconds"] + 1.0
    # The checkpoint is loadable without unpickling arbitrary objects.
    ckpt = torch.load(trained_run / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["classes"] == tiny_classes
    assert "optimizer_states" not in ckpt  # best.ckpt is for inference: weights only
    # last.ckpt is the state after the final epoch, whether or not that epoch improved val_acc.
    last = torch.load(trained_run / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2 * 3  # 2 epochs x 3 batches of 8 out of 24 train photos


def _train_simple_cnn(tmp_path: Path, data: Path, out: Path, *settings: str) -> subprocess.CompletedProcess:
    """`plantid train` of the from-scratch CNN at 32 px on a generated folder split 50/25/25."""
    proc = run_plantid("train", "--data", str(data), "--recipe", "simple-cnn", "--out", str(out),
                    "data.image_size=32", "train.progress=false", "data.batch_size=8",
                    f"data.cache_dir={tmp_path / 'cache'}", "data.val=0.25", "data.test=0.25", *settings)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_tiny_model_learns_the_tiny_data(tmp_path: Path, make_image_folder):
    data = make_image_folder(tmp_path / "photos", per_class=16)
    out = tmp_path / "run"
    proc = _train_simple_cnn(tmp_path, data, out, "train.epochs=6")
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["best_val_acc"] >= 0.8  # colours are easy; a broken loop stays near 1/3
    assert "test acc" in proc.stdout


def test_score_test_false_leaves_the_test_split_unread(tmp_path: Path, make_image_folder):
    data = make_image_folder(tmp_path / "photos", per_class=8)
    out = tmp_path / "run"
    proc = _train_simple_cnn(tmp_path, data, out, "train.epochs=1", "train.score_test=false")
    assert json.loads((out / "train_summary.json").read_text())["test_acc"] is None
    assert all(not r.get("test_acc") for r in _metrics(out))
    assert "test acc n/a" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--recipe", "nope"], "unknown recipe 'nope'"),
        (["train.epoch=2"], "unknown setting 'train.epoch'"),
        (["data.batch_size=0"], "bad value for 'data.batch_size'"),
        (["--recipe", "simple-cnn", "train.resize_phases=[{epochs: 1, image_size: 64}]"], "fixes its input size"),
    ],
)
def test_train_user_errors_are_one_line(tmp_path: Path, tiny_folder: Path, args, message):
    assert message in one_line_error(invoke("train", "--data", tiny_folder, "--out", tmp_path / "run", *args))


def test_refuses_to_overwrite_and_resume_needs_a_run(trained_run: Path, tiny_folder: Path, tmp_path: Path):
    assert "already holds a trained run" in one_line_error(invoke("train", "--data", tiny_folder, "--out", trained_run))
    assert "nothing to resume" in one_line_error(invoke("train", "--resume", tmp_path / "missing"))


def _train_args(data: Path, out: Path, cache: Path, epochs: int) -> list[str]:
    return ["train", "--data", str(data), "--recipe", "inception", "--out", str(out),
            "data.image_size=32", f"train.epochs={epochs}", "train.progress=false", "data.batch_size=2",
            "data.val=0.25", "data.test=0.25", f"data.cache_dir={cache}", "model.dropout=0.3",
            "augment.mix_prob=0.5", "augment.cutmix_alpha=1.0", "train.ema_decay=0.9"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path: Path, make_image_folder):
    data = make_image_folder(tmp_path / "photos", per_class=16)
    cache = tmp_path / "cache"
    epochs = 4
    reference = tmp_path / "reference"
    proc = run_plantid(*_train_args(data, reference, cache, epochs))
    assert proc.returncode == 0, proc.stderr[-2000:]

    crashed = tmp_path / "crashed"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    child = subprocess.Popen([*PLANTID, *_train_args(data, crashed, cache, epochs)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (crashed / "last.ckpt").exists():
            assert child.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.1)  # into the next epoch (each has 12 steps of 2 images)
        assert child.poll() is None, "training finished before it could be killed"
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert not (crashed / "train_summary.json").exists()
    interrupted_at = torch.load(crashed / "last.ckpt", map_location="cpu", weights_only=True)["epoch"]
    assert interrupted_at < epochs - 1

    proc = run_plantid("train", "--resume", str(crashed))
    assert proc.returncode == 0, proc.stderr[-2000:]

    ref_ckpt = torch.load(reference / "last.ckpt", map_location="cpu", weights_only=True)
    new_ckpt = torch.load(crashed / "last.ckpt", map_location="cpu", weights_only=True)
    # With an EMA of the weights, state_dict holds the average and current_model_state the
    # raw weights: both must be restored and replayed exactly.
    for part in ("state_dict", "current_model_state"):
        ref_state, new_state = ref_ckpt[part], new_ckpt[part]
        assert ref_state.keys() == new_state.keys()
        for key in ref_state:
            assert torch.allclose(ref_state[key].float(), new_state[key].float(), atol=1e-6), (part, key)
    averaged, raw = ref_ckpt["state_dict"], ref_ckpt["current_model_state"]
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw), "the EMA should differ from the raw weights"
    ref_summary = json.loads((reference / "train_summary.json").read_text())
    new_summary = json.loads((crashed / "train_summary.json").read_text())
    assert new_summary["test_acc"] == ref_summary["test_acc"]
    assert new_summary["best_val_acc"] == ref_summary["best_val_acc"]
    ref_val = [r["val_loss"] for r in _metrics(reference) if r.get("val_loss")]
    new_val = [r["val_loss"] for r in _metrics(crashed) if r.get("val_loss")]
    assert float(new_val[-1]) == pytest.approx(float(ref_val[-1]), abs=1e-6)


def test_max_minutes_stops_a_run_early_and_still_tests_it(tmp_path: Path, tiny_folder: Path):
    from plantid.config import load_config
    from plantid.train.run import train_run

    cfg = load_config("simple-cnn", [
        f"data.root={tiny_folder}", "data.image_size=32", "data.batch_size=4", "data.val=0.25", "data.test=0.25",
        f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=500", "train.max_minutes=0.001",
        "train.progress=false",
    ])
    result = train_run(cfg, tmp_path / "run")
    assert result.epochs_run < 5  # 0.06 s: a 500-epoch run stops after its first steps
    assert result.test_acc is not None and (tmp_path / "run" / "last.ckpt").is_file()


@pytest.mark.slow
def test_seed_convnext_large_recipe_starts_on_cpu(tmp_path: Path, tiny_folder: Path):
    """The GPU recipe must still build and take optimizer steps on a CPU (tiny images, two steps; ~200M parameters)."""
    from plantid.config import load_config
    from plantid.train.run import train_run

    cfg = load_config("seed-convnext-large", [
        f"data.root={tiny_folder}", "data.image_size=32", "data.batch_size=4", "data.val=0.25", "data.test=0.25",
        f"data.cache_dir={tmp_path / 'cache'}", "model.weights=none", "train.epochs=1",
        "train.limit_train_batches=2", "train.limit_val_batches=1", "train.progress=false",
    ])
    result = train_run(cfg, tmp_path / "run")
    assert result.epochs_run == 1 and (tmp_path / "run" / "best.ckpt").is_file()
    ckpt = torch.load(tmp_path / "run" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    assert any(k.startswith("model.head.") for k in ckpt["state_dict"])


def test_precision_auto_never_picks_emulated_bf16_on_cpu():
    from plantid.train.run import resolve_precision

    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"  # an explicit choice is kept
    expected = "32-true"
    if torch.cuda.is_available():
        expected = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    assert resolve_precision("auto", "auto") == expected


def test_progressive_resizing_trains_small_first_then_at_full_size(tmp_path: Path, tiny_folder: Path):
    """train.resize_phases: the model sees the phase sizes in training and the full size in validation."""
    import lightning as L

    from plantid.config import load_config
    from plantid.train.run import train_run

    seen: list[tuple[str, int, int]] = []

    class RecordInputSizes(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            def record(module, args):
                stage = "train" if module.training else "eval"
                seen.append((stage, trainer.current_epoch, args[0].shape[-1]))
            pl_module.model.register_forward_pre_hook(record)

    cfg = load_config("inception", [
        f"data.root={tiny_folder}", "data.image_size=40", "data.batch_size=6", "data.val=0.25", "data.test=0.25",
        f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=3", "train.progress=false",
        "train.resize_phases=[{epochs: 1, image_size: 32}, {epochs: 1, image_size: 36}]",
    ])
    result = train_run(cfg, tmp_path / "run", callbacks=[RecordInputSizes()])
    assert result.epochs_run == 3
    train_sizes = {(epoch, size) for stage, epoch, size in seen if stage == "train"}
    assert train_sizes == {(0, 32), (1, 36), (2, 40)}
    assert {size for stage, _, size in seen if stage == "eval"} == {40}
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["image_size"] == 40 and summary["train_image_sizes"] == [32, 36, 40]


def test_micro_batches_sum_into_the_same_optimizer_steps(tmp_path: Path, tiny_folder: Path):
    """data.micro_batch_size: each forward pass sees the micro-batch, and the optimizer steps (and so
    the learning-rate schedule) are those of the whole batch."""
    import lightning as L

    from plantid.config import load_config
    from plantid.train.run import train_run

    def run(name: str, extra: list[str]) -> tuple[set[int], int]:
        passes: set[int] = set()
        steps: list[int] = []

        class RecordPasses(L.Callback):
            def on_fit_start(self, trainer, pl_module):
                def record(module, args):
                    if module.training:
                        passes.add(args[0].shape[0])
                pl_module.model.register_forward_pre_hook(record)

            def on_train_end(self, trainer, pl_module):
                steps.append(trainer.global_step)

        cfg = load_config("inception", [
            f"data.root={tiny_folder}", "data.image_size=32", "data.batch_size=6", "data.val=0.25",
            "data.test=0.25", f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=2", "train.progress=false",
            *extra])
        train_run(cfg, tmp_path / name, callbacks=[RecordPasses()])
        return passes, steps[0]

    whole_passes, whole_steps = run("whole", [])
    micro_passes, micro_steps = run("micro", ["data.micro_batch_size=3"])
    assert max(whole_passes) == 6 and max(micro_passes) == 3
    assert micro_steps == whole_steps > 0


def test_a_micro_batch_that_does_not_divide_the_batch_is_refused(tmp_path: Path, tiny_folder: Path):
    proc = run_plantid("train", "--data", str(tiny_folder), "--out", str(tmp_path / "run"), "--recipe", "inception",
                       "data.batch_size=6", "data.micro_batch_size=4")
    assert proc.returncode != 0
    line = one_line_error(proc)
    assert "data.micro_batch_size=4 must divide data.batch_size=6" in line
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_a_checkpoint_that_cannot_be_written_is_a_one_line_error(tmp_path: Path, tiny_folder: Path):
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_folder), "--recipe", "simple-cnn", "--out", str(run),
            "data.image_size=32", "train.epochs=1", "train.progress=false", f"data.cache_dir={tmp_path / 'cache'}"]
    # The photos' cache (36 x 32 x 32 x 3 bytes) fits under 1 MB; a checkpoint (~7 MB) does not.
    proc = run_plantid(*args, preexec_fn=limit_file_size(1 << 20))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if "could not write the checkpoint" in line]
    assert len(error_lines) == 1 and "ckpt" in error_lines[0] and "free disk space" in error_lines[0], proc.stderr[-2000:]
    assert "run the same command again" in error_lines[0]
    leftovers = [p.name for p in run.iterdir() if p.name.endswith((".ckpt", ".tmp"))]
    assert leftovers == [], leftovers  # no truncated checkpoint a later run could trust
    # With room again, the same command trains the run.
    proc = run_plantid(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run / "best.ckpt").exists() and (run / "train_summary.json").exists()


def test_an_ensemble_trains_every_member_and_exports_as_one_model(tmp_path: Path, tiny_folder: Path):
    """model.members=2: both members learn, the checkpoint reloads as an Ensemble, ONNX matches torch."""
    import lightning as L
    import numpy as np

    from plantid.config import load_config
    from plantid.infer.checkpoint import load_trained
    from plantid.infer.export import export_run
    from plantid.infer.onnx_backend import OnnxBackend
    from plantid.infer.predictor import Predictor
    from plantid.models import Ensemble
    from plantid.train.run import train_run

    start: dict[str, torch.Tensor] = {}

    class RememberStartingWeights(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            start.update({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})

    cfg = load_config("inception", [
        f"data.root={tiny_folder}", "data.image_size=32", "data.batch_size=6", "data.val=0.25", "data.test=0.25",
        f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=2", "train.progress=false", "model.members=2",
    ])
    result = train_run(cfg, tmp_path / "run", callbacks=[RememberStartingWeights()])
    assert result.epochs_run == 2 and result.test_acc is not None
    trained = load_trained(tmp_path / "run")
    assert isinstance(trained.model, Ensemble) and len(trained.model.members) == 2
    end = trained.model.state_dict()
    for member in ("members.0.", "members.1."):
        moved = [k for k in end if k.startswith(member) and end[k].is_floating_point()
                 and not torch.equal(end[k], start[k])]
        assert len(moved) > 10, f"{member} did not train"
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["parameters"]["total"] == trained.model.parameter_counts()["total"]
    assert summary["model"] == "2 x inception" and summary["members"] == 2

    export_run(tmp_path / "run", "onnx")
    images = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    expected = Predictor.from_run(tmp_path / "run", backend="torch").predict_arrays(images)
    got = OnnxBackend.from_run(tmp_path / "run")(images)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_a_compiled_run_reloads_for_inference(tmp_path: Path, tiny_folder: Path):
    """train.compile=true keeps parameter names, so the checkpoint loads like any other (~2 min of inductor)."""
    from plantid.config import load_config
    from plantid.infer.checkpoint import load_trained
    from plantid.models import Ensemble
    from plantid.train.run import train_run

    cfg = load_config("inception", [
        f"data.root={tiny_folder}", "data.image_size=32", "data.batch_size=6", "data.val=0.25", "data.test=0.25",
        f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=1", "train.progress=false", "train.compile=true",
        "model.members=2",
    ])
    train_run(cfg, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert not [k for k in state if "_orig_mod" in k]
    assert isinstance(load_trained(tmp_path / "run").model, Ensemble)

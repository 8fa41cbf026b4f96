"""Crash safety: SIGKILL at any moment never leaves a half-written file that is later trusted.

The slow test kills a real tiny `plantid train` five times at seeded random points, from the scan
and the photo cache being written to mid-epoch and mid-checkpoint-write, goes on after each kill
the way a user would (`--resume` when a last.ckpt exists, else the same command), and checks the
run ends exactly where an uninterrupted one does. It then kills `plantid report` and `plantid
export` while they write. The fast tests pin the three pieces that made this hold: metrics.csv
keeps a resumed run's history, and a killed checkpoint save or cache build leaves no temporary
file behind once the next one runs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import signal
import subprocess
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.cli import PLANTID, run_plantid

SEED = 20  # seeds the kill delays
EPOCHS = 6


# --------------------------------------------------------------------------- fast: the pieces


def _csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_a_resumed_runs_metrics_keep_the_rows_before_its_checkpoint(tmp_path: Path):
    from plantid.train.metrics_log import RunCSVLogger

    first = RunCSVLogger(tmp_path)
    for step in range(30):  # three "epochs" of 10 steps; the crash came during the third
        first.log_metrics({"train_loss_step": 1.0 / (step + 1), "epoch": step // 10}, step=step)
        if step % 10 == 9:
            first.log_metrics({"val_loss": 0.5 - step / 100, "epoch": step // 10}, step=step)
    first.save()
    header, rows = _csv_rows(tmp_path / "metrics.csv")
    assert len(rows) == 33 and "val_loss" in header

    resumed = RunCSVLogger(tmp_path, resume_step=20)  # last.ckpt was written after step 19
    resumed.log_metrics({"train_loss_step": 0.25, "epoch": 2}, step=20)
    resumed.save()
    _, rows = _csv_rows(tmp_path / "metrics.csv")
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps) and steps[-1] == 20 and steps.count(20) == 1
    assert [int(r["step"]) for r in rows if r["val_loss"]] == [9, 19]  # epochs 0 and 1 survive the resume
    resumed.log_metrics({"test_acc": 0.75}, step=21)  # a new column: the file is rewritten whole
    resumed.save()
    header, rows = _csv_rows(tmp_path / "metrics.csv")
    assert "test_acc" in header and len(rows) == 2 * 10 + 2 + 2
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    fresh = RunCSVLogger(tmp_path)  # a new run in the folder starts a new file
    fresh.log_metrics({"train_loss_step": 2.0}, step=0)
    fresh.save()
    assert [r["step"] for r in _csv_rows(tmp_path / "metrics.csv")[1]] == ["0"]


def test_a_checkpoint_save_removes_the_temp_file_of_a_killed_save(tmp_path: Path):
    from plantid.train.run import AtomicCheckpointIO

    killed = tmp_path / ".last.ckpt.k1ll3d.tmp"  # what fileio.atomic_path leaves when the writer dies
    killed.write_bytes(os.urandom(4096))
    other = tmp_path / ".best.ckpt.busy.tmp"
    other.write_bytes(b"another file's save")
    AtomicCheckpointIO().save_checkpoint({"w": torch.arange(4.0)}, tmp_path / "last.ckpt")
    assert not killed.exists() and other.exists()
    assert torch.equal(torch.load(tmp_path / "last.ckpt", weights_only=True)["w"], torch.arange(4.0))


def test_a_cache_build_removes_the_temp_files_of_a_killed_build(tiny_folder: Path, tmp_path: Path):
    from plantid.data.cache import build_cache, cache_key, cache_paths

    paths = sorted(str(p) for p in tiny_folder.rglob("*.jpg"))
    cache = tmp_path / "cache"
    cache.mkdir()
    data, meta = cache_paths(cache_key(paths, 16), cache)
    leftovers = [cache / f".{data.name}.x9q.tmp", cache / f".{meta.name}.y7r.tmp"]
    for path in leftovers:
        path.write_bytes(bytes(1000))
    unrelated = cache / ".plantid-0123.u8.zz.tmp"  # another key's build may be running
    unrelated.write_bytes(b"")
    pixels = build_cache(paths, 16, cache)
    assert pixels.shape == (len(paths), 16, 16, 3)
    assert not any(p.exists() for p in leftovers) and unrelated.exists()


# --------------------------------------------------------------------------- slow: real kills


def _train_args(data: Path, out: Path, cache: Path) -> list[str]:
    return ["train", "--data", str(data), "--recipe", "inception", "--out", str(out),
            "data.image_size=32", f"train.epochs={EPOCHS}", "train.progress=false", "data.batch_size=2",
            "data.val=0.25", "data.test=0.25", f"data.cache_dir={cache}", "model.dropout=0.3",
            "augment.mix_prob=0.5", "augment.cutmix_alpha=1.0", "train.ema_decay=0.9"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}


def _kill_when(args: list[str], log: Path, ready: Callable[[float], bool], delay: float, timeout: float = 900,
               may_finish: bool = False) -> bool:
    """Start `plantid ARGS`, wait until `ready(seconds since start)`, sleep `delay` s, SIGKILL its process group.

    Returns True when it was killed; a command that ends first fails the test unless `may_finish`.
    """
    with open(log, "ab") as out:
        child = subprocess.Popen([*PLANTID, *args], env=_env(), stdout=out, stderr=out, start_new_session=True)
    started = time.monotonic()
    try:
        while not ready(time.monotonic() - started):
            if child.poll() is not None:
                assert may_finish, f"plantid {args[0]} ended (rc {child.returncode}) before the kill point"
                return False
            assert time.monotonic() - started < timeout, f"plantid {args[0]}: kill point not reached"
            time.sleep(0.001)
        time.sleep(delay)
        if child.poll() is not None:
            assert may_finish, f"plantid {args[0]} ended (rc {child.returncode}) before it could be killed"
            return False
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(60)
        return True
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(60)


def _temps(folder: Path, pattern: str) -> list[str]:
    return sorted(p.name for p in folder.glob(pattern)) if folder.is_dir() else []


def _ckpt_epoch(path: Path) -> int | None:
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"] if path.exists() else None


def _assert_nothing_half_written_is_trusted(run: Path, cache: Path) -> None:
    """Every file under its real name is complete; unfinished writes lie only under dot-temp names."""
    from plantid.config import load_run_config
    from plantid.data.scan import read_scan_json
    from plantid.data.split import read_manifest

    for name in ("best.ckpt", "last.ckpt"):
        if (run / name).exists():  # loads completely (a truncated zip raises)
            assert "state_dict" in torch.load(run / name, map_location="cpu", weights_only=True)
    if (run / "scan.json").exists():
        assert read_scan_json(run / "scan.json").entries
    if (run / "split.csv").exists():
        assert read_manifest(run / "split.csv").rows
    if (run / "config.yaml").exists():
        assert load_run_config(run / "config.yaml").train.epochs == EPOCHS
    if (run / "labels.json").exists():
        assert len(json.loads((run / "labels.json").read_text())) == 3
    if (run / "metrics.csv").exists():
        header, rows = _csv_rows(run / "metrics.csv")
        assert "step" in header and all(r["step"] for r in rows)
    for sidecar in cache.glob("plantid-*.json") if cache.is_dir() else []:  # a sidecar vouches for its pixels
        meta = json.loads(sidecar.read_text())
        pixels = sidecar.with_suffix(".u8")
        assert pixels.stat().st_size == meta["nbytes"]
        assert zlib.crc32(pixels.read_bytes()) == meta["crc32"]


def _val_losses(run: Path) -> list[tuple[int, float]]:
    return [(int(r["epoch"]), float(r["val_loss"])) for r in _csv_rows(run / "metrics.csv")[1] if r.get("val_loss")]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_five_kills_then_resume_match_an_uninterrupted_run(tmp_path: Path, make_image_folder):
    # 640 px photos, so scanning and caching them take long enough to be killed in the middle.
    data = make_image_folder(tmp_path / "photos", per_class=16, size=640)
    reference, run = tmp_path / "reference", tmp_path / "run"
    ref_cache, cache = tmp_path / "ref-cache", tmp_path / "cache"
    proc = run_plantid(*_train_args(data, reference, ref_cache), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    rng = random.Random(SEED)
    command = _train_args(data, run, cache)
    log = tmp_path / "train.log"
    kills: list[str] = []

    def go_on() -> list[str]:
        return ["train", "--resume", str(run)] if (run / "last.ckpt").exists() else command

    def exists(path: Path) -> Callable[[float], bool]:
        return lambda _: path.exists()

    def cache_temp(_: float) -> bool:
        return bool(_temps(cache, ".plantid-*.u8.*.tmp"))

    def ckpt_temp(_: float) -> bool:
        return bool(_temps(run, ".*.ckpt.*.tmp"))

    def new_checkpoint(since: int | None) -> Callable[[float], bool]:
        last = run / "last.ckpt"
        return lambda _: last.exists() and last.stat().st_mtime_ns != since

    def mtime(path: Path) -> int | None:
        return path.stat().st_mtime_ns if path.exists() else None

    # 1. while the folder is scanned and split.csv written
    _kill_when(command, log, exists(run), rng.uniform(0.0, 0.3))
    kills.append(f"scan: scan.json {'written' if (run / 'scan.json').exists() else 'not yet'}, "
                 f"split.csv {'written' if (run / 'split.csv').exists() else 'not yet'}")
    _assert_nothing_half_written_is_trusted(run, cache)
    assert not (run / "last.ckpt").exists()
    if not (run / "config.yaml").exists():  # no settings saved yet: `--resume` names the command to run
        refused = run_plantid("train", "--resume", str(run), timeout=900)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "nothing to resume" in lines[0] and "plantid train --data DATA" in lines[0], lines

    # 2. while the photo cache is written
    _kill_when(go_on(), log, cache_temp, rng.uniform(0.0, 0.05))
    assert not (run / "last.ckpt").exists()
    kills.append(f"cache: left {len(_temps(cache, '.plantid-*.tmp'))} temp file(s), "
                 f"{len(list(cache.glob('plantid-*.json')))} finished cache(s)")
    _assert_nothing_half_written_is_trusted(run, cache)

    # 3. after the cache, before (or soon after) the first checkpoint
    _kill_when(go_on(), log, exists(run / "labels.json"), rng.uniform(0.0, 1.5))
    kills.append(f"start: last.ckpt epoch {_ckpt_epoch(run / 'last.ckpt')}")
    _assert_nothing_half_written_is_trusted(run, cache)

    # 4. mid-epoch: a random moment after this process's first checkpoint. `--resume` goes on
    # either way: from last.ckpt, or, with none yet, from the start with config.yaml and split.csv.
    assert (run / "config.yaml").exists()
    _kill_when(["train", "--resume", str(run)], log, new_checkpoint(mtime(run / "last.ckpt")), rng.uniform(0.05, 0.5))
    kills.append(f"mid-epoch: last.ckpt epoch {_ckpt_epoch(run / 'last.ckpt')}")
    _assert_nothing_half_written_is_trusted(run, cache)

    # 5. while a checkpoint is being written (its temporary file exists)
    _kill_when(go_on(), log, ckpt_temp, 0.0)
    left = _temps(run, ".*.ckpt.*.tmp")
    kills.append(f"checkpoint write: left {left}, last.ckpt epoch {_ckpt_epoch(run / 'last.ckpt')}")
    _assert_nothing_half_written_is_trusted(run, cache)
    assert (run / "last.ckpt").exists() and not (run / "train_summary.json").exists()

    proc = run_plantid(*go_on(), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print("\nkills survived:\n  " + "\n  ".join(kills))

    # The same run as without the kills: metrics, every epoch's validation, and the weights.
    ref_summary = json.loads((reference / "train_summary.json").read_text())
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["test_acc"] == ref_summary["test_acc"]
    assert summary["best_val_acc"] == ref_summary["best_val_acc"]
    assert summary["epochs_run"] == ref_summary["epochs_run"] == EPOCHS
    ref_val, val = _val_losses(reference), _val_losses(run)
    assert [e for e, _ in val] == [e for e, _ in ref_val] == list(range(EPOCHS))  # the history survived
    assert np.allclose([v for _, v in val], [v for _, v in ref_val], atol=1e-6, rtol=0)
    ref_ckpt = torch.load(reference / "last.ckpt", map_location="cpu", weights_only=True)
    new_ckpt = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)
    for part in ("state_dict", "current_model_state"):
        assert ref_ckpt[part].keys() == new_ckpt[part].keys()
        for key, value in ref_ckpt[part].items():
            assert torch.allclose(value.float(), new_ckpt[part][key].float(), atol=1e-6), (part, key)

    # Nothing half-written is left that could be trusted, and the kills' temporary files are gone.
    _assert_nothing_half_written_is_trusted(run, cache)
    assert _temps(run, ".*.ckpt.*.tmp") == []
    assert _temps(cache, ".plantid-*.tmp") == []
    assert len(list(cache.glob("plantid-*.u8"))) == len(list(cache.glob("plantid-*.json"))) == 1

    # A report built now is complete: every epoch's curve, the test numbers.
    from plantid.records import metrics_by_epoch

    assert set(metrics_by_epoch(run / "metrics.csv")["val_acc"]) == set(range(EPOCHS))
    proc = run_plantid("evaluate", str(run), timeout=900)  # so that timing the report below times rendering and writing it
    assert proc.returncode == 0, proc.stderr[-3000:]
    started = time.monotonic()
    proc = run_plantid("report", str(run), timeout=900)
    report_seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (run / "report.html").read_text(encoding="utf-8")
    assert page.rstrip().endswith("</html>") and "Training curves" in page
    before = page

    # `plantid report` killed late in its work or while it writes: the previous page stays whole.
    at = rng.uniform(0.6, 0.95) * report_seconds
    killed = _kill_when(["report", str(run)], log, lambda t: t >= at or bool(_temps(run, ".report.html.*.tmp")), 0.0,
                        may_finish=True)
    page = (run / "report.html").read_text(encoding="utf-8")
    assert page == before or (not killed and page.rstrip().endswith("</html>"))
    print(f"report {'killed' if killed else 'finished'} at {at:.1f} of {report_seconds:.1f} s; "
          f"temporary files left: {_temps(run, '.report.html.*.tmp')}")

    # `plantid export` killed while it writes model.onnx: the previous export still loads as a
    # matching pair, or is refused as not matching; never a half graph.
    proc = run_plantid("export", str(run), "--format", "onnx", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    export = run / "export"
    old_model = _sha(export / "model.onnx")
    killed = _kill_when(["export", str(run), "--format", "onnx"], log,
                        lambda _: bool(_temps(export, ".model.onnx.*.tmp")), rng.uniform(0.0, 1.0), may_finish=True)
    from plantid.errors import PlantidError
    from plantid.infer.onnx_backend import OnnxBackend
    from plantid.infer.predictor import Predictor

    try:
        backend = OnnxBackend.from_run(run)
    except PlantidError as exc:
        assert "does not match" in str(exc)
    else:
        photo = next(data.rglob("*.jpg"))
        (by_onnx,) = Predictor.from_run(run, backend="onnx").predict([photo])
        (by_torch,) = Predictor.from_run(run, backend="torch").predict([photo])
        assert np.allclose(by_onnx.probabilities, by_torch.probabilities, atol=1e-4)
        assert backend.classes == json.loads((run / "labels.json").read_text())
    print(f"export {'killed' if killed else 'finished'}: model.onnx "
          f"{'unchanged' if _sha(export / 'model.onnx') == old_model else 'replaced'}, "
          f"temporary files left: {_temps(export, '.*.tmp')}")

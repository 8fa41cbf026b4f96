"""A user's files are never lost: outputs never replace what plantid did not write, never land in
the photo folder or on an input, one command writes into a run at a time, and a full or read-only
disk is one line with nothing half-written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plantid.infer.cli_predict import predict_command
from plantid.infer.export import export_run
from plantid.runlock import run_lock
from tests.support.cli import PLANTID, limit_file_size, one_line_error, run_plantid
from tests.support.refusals import refusal


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_never_replaces_or_deletes_a_folder_plantid_did_not_write(copy_run: Path, tmp_path: Path):
    user = tmp_path / "U"
    (user / "thesis").mkdir(parents=True)
    (user / "thesis" / "ch1.tex").write_text("x")
    assert "plantid did not write (thesis)" in refusal(export_run, copy_run, "submission", out=user)
    assert _tree(user) == {"thesis/ch1.tex": b"x"}
    notes = copy_run / "submission" / "notes.txt"  # the user's notes in the default submission folder
    notes.parent.mkdir()
    notes.write_text("keep me")
    assert "notes.txt" in refusal(export_run, copy_run, "submission")
    assert notes.read_text() == "keep me"
    # a user's own model file where the ONNX export would go
    mine = tmp_path / "models" / "model.onnx"
    mine.parent.mkdir()
    mine.write_bytes(b"my model")
    assert "not a ONNX export plantid wrote" in refusal(export_run, copy_run, "onnx", out=mine.parent)
    assert mine.read_bytes() == b"my model"
    # --out . in a folder that holds anything: one line, not a traceback
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "essay.txt").write_text("draft")
    proc = run_plantid("export", str(copy_run), "--format", "submission", "--out", ".", cwd=tmp_path / "work")
    assert "essay.txt" in one_line_error(proc)
    assert (tmp_path / "work" / "essay.txt").read_text() == "draft"


def test_predict_never_writes_onto_a_photo_a_checkpoint_or_a_users_file(copy_run: Path, tiny_photos: Path, tmp_path: Path):
    photo = tmp_path / "photo.jpg"
    shutil.copyfile(next(tiny_photos.rglob("*.jpg")), photo)
    before = photo.read_bytes()
    assert "is one of the photos" in refusal(predict_command, copy_run, [str(photo)], output_format="csv", out=photo)
    assert photo.read_bytes() == before
    checkpoint = copy_run / "best.ckpt"
    size = checkpoint.stat().st_size
    assert "not a predictions file plantid wrote" in refusal(
        predict_command, copy_run, [str(photo)], output_format="csv", out=checkpoint)
    assert checkpoint.stat().st_size == size
    # plantid's own output is replaced, as a re-run expects; in every format
    for fmt, name in (("csv", "p.csv"), ("json", "p.json"), ("table", "p.txt")):
        out = tmp_path / name
        for _ in range(2):
            assert predict_command(copy_run, [str(photo)], output_format=fmt, out=out) == 0
    # an empty argument is not the current folder
    assert "empty path" in refusal(predict_command, copy_run, [""])


def test_nothing_is_written_inside_the_photo_folder(tmp_path: Path, make_image_folder, copy_run: Path):
    data = make_image_folder(tmp_path / "D", per_class=4)
    before = _tree(data)
    proc = run_plantid("train", "--data", str(data), "--recipe", "simple-cnn", "--out", str(data / "a" / "run"))
    assert "inside the photo folder" in one_line_error(proc)
    proc = run_plantid("split", str(data), "--out", str(data), "--materialize", "link")
    assert "inside the photo folder" in one_line_error(proc)
    proc = run_plantid("explore", str(data), "--out", str(data / "plots"))
    assert "inside the photo folder" in one_line_error(proc)
    assert _tree(data) == before and not (data / "a" / "run").exists()
    # a run folder that lies inside its own photo folder (moved there, or from an older plantid)
    config = copy_run / "config.yaml"
    config.write_text(config.read_text().replace(f"root: {_root(config)}", f"root: {copy_run.parent}"))
    proc = run_plantid("report", str(copy_run))
    assert "inside the photo folder" in one_line_error(proc)
    assert not (copy_run / "report.html").exists()


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a command that stopped (exit 2, no traceback; progress lines allowed)."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def _root(config: Path) -> str:
    import yaml

    return yaml.safe_load(config.read_text())["data"]["root"]


def test_one_command_at_a_time_writes_into_a_run(copy_run: Path, tmp_path: Path, tiny_photos: Path):
    with run_lock(copy_run, "report"):
        proc = run_plantid("evaluate", str(copy_run))
        line = one_line_error(proc)
        assert f"in use by another plantid command (process {os.getpid()})" in line, line
        assert not (copy_run / "confusion_matrix.png").exists()
    # a training started while another holds the same --out is refused before it writes anything
    race = tmp_path / "race"
    with run_lock(race, "train"):
        proc = run_plantid("train", "--data", str(tiny_photos), "--recipe", "simple-cnn", "--out", str(race))
        assert f"process {os.getpid()}" in one_line_error(proc)
        assert sorted(p.name for p in race.iterdir() if not p.name.startswith(".")) == []
    assert not race.exists()  # the holder made the folder for nothing: it leaves none behind


@pytest.mark.slow
def test_two_trainings_into_one_folder_at_once_never_make_a_hybrid_run(tmp_path: Path, tiny_folder: Path):
    race = tmp_path / "race"
    args = ["train", "--data", str(tiny_folder), "--recipe", "simple-cnn", "--out", str(race), "data.image_size=32",
            "train.epochs=1", "train.progress=false", f"data.cache_dir={tmp_path / 'cache'}", "track.mlflow=false"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.Popen([*PLANTID, *args, "train.seed=1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    deadline = time.monotonic() + 60
    while not (race / ".plantid.lock.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = run_plantid(*args, "train.seed=2")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert f"process {first.pid}" in one_line_error(second)
    assert "seed: 1" in (race / "config.yaml").read_text()


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(copy_run: Path):
    before = {p.name for p in copy_run.iterdir()}
    for command in (["evaluate", str(copy_run)], ["report", str(copy_run)],
                    ["export", str(copy_run), "--format", "onnx"], ["trust", str(copy_run)]):
        proc = run_plantid(*command, preexec_fn=limit_file_size(2048))
        line = _error_line(proc)
        assert "free disk space" in line and str(copy_run) in line, line
        assert {p.name for p in copy_run.iterdir()} - before <= {".plantid.lock"}, command
        assert not list(copy_run.rglob("*.tmp")), command


@pytest.mark.slow
def test_a_read_only_run_folder_is_one_line_before_any_work(copy_run: Path):
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro {copy_run} {copy_run}"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip("needs a private read-only bind mount (unshare -m, as root)")
    for command in ("evaluate", "report", "trust", "audit", "export"):
        script = f'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
        proc = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(copy_run), sys.executable, "-m",
                               "plantid.cli", command, str(copy_run)], capture_output=True, text=True, timeout=300)
        line = _error_line(proc)
        assert str(copy_run) in line and "Read-only file system" in line, (command, line)

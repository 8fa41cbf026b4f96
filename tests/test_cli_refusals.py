"""Bad command-line arguments are refused in one line, before any work, leaving nothing behind."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.support.cli import invoke, one_line_error, run_plantid


def test_train_on_a_missing_folder_creates_no_run_folder(tmp_path: Path):
    out = tmp_path / "runs" / "new"
    line = one_line_error(invoke("train", "--data", str(tmp_path / "nope"), "--out", str(out)))
    assert str(tmp_path / "nope") in line and "no such folder" in line
    assert not out.exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["scan", "split", "explore"])
def test_data_commands_refuse_a_missing_folder(tmp_path: Path, command: str):
    extra = ["--out", str(tmp_path / "out")]
    line = one_line_error(invoke(command, str(tmp_path / "nope"), *extra))
    assert "no such folder" in line
    assert not (tmp_path / "out").exists()


def test_evaluate_on_a_folder_that_is_not_a_run_does_not_suggest_resume(tmp_path: Path):
    line = one_line_error(invoke("evaluate", str(tmp_path)))
    assert "not a plantid run folder" in line and "--resume" not in line


def test_serve_refuses_a_port_out_of_range(trained_run: Path):
    proc = run_plantid("serve", str(trained_run), "--port", "99999")  # a server: its own process
    assert "--port 99999" in one_line_error(proc)
    assert "serving" not in proc.stdout


def test_serve_refuses_a_port_in_use_before_saying_it_serves(trained_run: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = run_plantid("serve", str(trained_run), "--port", str(port))
    line = one_line_error(proc)
    assert f"127.0.0.1:{port}" in line and "--port" in line
    assert "serving" not in proc.stdout


def test_predict_refuses_an_unwritable_out_before_predicting(trained_run: Path, tiny_photos: Path, tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = one_line_error(invoke("predict", str(trained_run), str(tiny_photos), "--out", str(blocker / "preds.csv")))
    assert "does not exist" in line and str(blocker / "preds.csv") in line

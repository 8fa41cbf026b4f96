"""Bad command-line arguments are refused in one line, before any work, leaving nothing behind."""

from __future__ import annotations

import re
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


def test_busy_port_hint_names_a_port_that_is_free(trained_run: Path):
    import re

    with socket.socket() as busy, socket.socket() as next_busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        try:
            next_busy.bind(("127.0.0.1", port + 1))
            next_busy.listen(1)
        except OSError:
            pytest.skip("the port after the busy one is taken by something else")
        line = one_line_error(run_plantid("serve", str(trained_run), "--port", str(port)))
        suggested = int(re.search(r"e\.g\. --port (\d+)", line).group(1))
        assert suggested not in (port, port + 1)
        with socket.socket() as probe:  # it binds: the hint is usable
            probe.bind(("127.0.0.1", suggested))


def test_recipes_name_lists_every_setting_with_its_value_and_help():
    from plantid.config import load_config, setting_keys

    proc = run_plantid("recipes", "cpu-default", env={"COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.count("│") >= 4 and line.split("│")[1].strip()]
    lines = {line.split("│")[1].strip(): line for line in rows}
    assert set(setting_keys()) <= set(lines)
    budget = lines["train.budget_minutes"].split("│")
    assert budget[2].strip() == str(load_config("cpu-default").train.budget_minutes)
    assert "time" in budget[3]  # its help
    assert all(line.split("│")[3].strip() for line in lines.values())  # every setting has a line of help


def test_train_with_a_misspelt_setting_suggests_the_closest(tmp_path: Path, tiny_photos: Path):
    line = one_line_error(invoke("train", "--data", str(tiny_photos), "--out", str(tmp_path / "run"),
                                 "train.budget_minute=3"))
    assert "unknown setting 'train.budget_minute'" in line and "did you mean 'train.budget_minutes'" in line
    assert "plantid recipes" in line


def test_predict_refuses_an_unwritable_out_before_predicting(trained_run: Path, tiny_photos: Path, tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = one_line_error(invoke("predict", str(trained_run), str(tiny_photos), "--out", str(blocker / "preds.csv")))
    assert "does not exist" in line and str(blocker / "preds.csv") in line

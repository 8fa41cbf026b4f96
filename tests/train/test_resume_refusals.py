"""`plantid train --resume` on a last.ckpt that cannot be resumed: one line, and the run folder untouched."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import pytest

from plantid.runlock import HOLDER_FILE, LOCK_FILE
from tests.support.cli import invoke, one_line_error


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file's hash, leaving out the run lock (an empty file that stays once a command has held it)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in (LOCK_FILE, HOLDER_FILE)}


class _RunsCode:
    """Unpickling this calls os.getcwd: the shape of a hostile checkpoint, harmless here."""

    def __reduce__(self):
        return (os.getcwd, ())


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _hostile(path: Path) -> None:
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": {}, "epoch": 1, "payload": _RunsCode()}, fh)


def _not_a_training_checkpoint(path: Path) -> None:
    import torch

    torch.save({"weights": torch.zeros(3)}, path)


@pytest.mark.parametrize("damage, expected", [
    (_truncate, "truncated or corrupt"),
    (_hostile, "pickled Python objects"),
    (_not_a_training_checkpoint, "not a plantid training checkpoint"),
])
def test_resume_refuses_a_bad_last_checkpoint_and_changes_nothing(copy_run: Path, damage, expected: str):
    last = copy_run / "last.ckpt"
    damage(last)
    before = _snapshot(copy_run)
    assert "metrics.csv" in before

    line = one_line_error(invoke("train", "--resume", copy_run))
    assert str(last) in line and expected in line and "--out NEW_RUN" in line, line
    assert _snapshot(copy_run) == before

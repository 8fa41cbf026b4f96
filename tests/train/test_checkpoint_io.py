"""AtomicCheckpointIO: what it adds to Lightning's checkpoint save, on real files."""

import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from plantid.train.run import AtomicCheckpointIO


class _FolderSnapshot:
    """Pickles as the list of files in `folder` at the moment torch.save reaches it."""

    seen: list[str] = []

    def __init__(self, folder: Path):
        self.folder = folder

    def __reduce__(self):
        _FolderSnapshot.seen = sorted(os.listdir(self.folder))
        return (OrderedDict, ())  # something weights_only loading accepts


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_the_checkpoint_is_written_beside_itself_and_renamed_over_the_previous_one(tmp_path: Path):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.arange(3)}, target)
    io.save_checkpoint({"step": 2, "w": torch.arange(4), "probe": _FolderSnapshot(tmp_path)}, target)
    # Mid-write, the previous complete checkpoint is still in place next to a temporary name.
    assert "last.ckpt" in _FolderSnapshot.seen
    assert [n for n in _FolderSnapshot.seen if n != "last.ckpt"][0].startswith(".last.ckpt.")
    loaded = torch.load(target, weights_only=True)
    assert loaded["step"] == 2 and loaded["probe"] == OrderedDict()
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]


def test_a_save_that_fails_midway_keeps_the_previous_checkpoint(tmp_path: Path):
    target = tmp_path / "best.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, target)
    with pytest.raises(Exception):
        io.save_checkpoint({"step": 2, "bad": _Unpicklable()}, target)
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert sorted(os.listdir(tmp_path)) == ["best.ckpt"]


def test_saving_needs_no_system_temp_folder_unlike_lightnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Lightning stages its save in the system temp folder; ours stays in the run folder, so a
    # missing, full or other-filesystem /tmp cannot truncate or fail a checkpoint.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-temp-folder"))
    AtomicCheckpointIO().save_checkpoint({"step": 3}, tmp_path / "run" / "last.ckpt")
    assert torch.load(tmp_path / "run" / "last.ckpt", weights_only=True) == {"step": 3}
    with pytest.raises(FileNotFoundError):
        TorchCheckpointIO().save_checkpoint({"step": 3}, tmp_path / "lightning" / "last.ckpt")
